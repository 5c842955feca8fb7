"""``ablate report STUDY --runs``: every trial run of a study, one per line (:func:`runs_table`), as CSV or JSON.

Unrelated to the tables: it reads the same collected runs and exports them raw.
"""

from __future__ import annotations

import csv
import io
import json

from experiments.results.report.collect import ReportError, collect
from experiments.store.tracking import PARENT_TAG
from trainers.vocabulary import STAGES, TAG_CELL, TAG_HASH, TAG_PRUNED, TAG_SEED, TAG_UPSTREAM


def runs_table(tracking_uri: str, study: str, fmt: str = "csv") -> str:
    """Every trial run of ``study``, one per line, with all its params, tags of ours and final metrics.

    Columns: ``run_id, stage, name, status, usable, reason``, then every ``params.*`` and
    ``metrics.*`` seen in the study (sorted), blank where a run has none. ``fmt``: ``csv`` or
    ``json`` (a list of objects). Reads only; writes nothing.

    Raises:
        ReportError: another format, unreachable store, unknown or empty study.
    """
    if fmt not in ("csv", "json"):
        raise ReportError(f"--runs writes one line per run: use --format csv or --format json, not {fmt!r}")
    runs = collect(tracking_uri, study)
    trials = sorted(runs.runs, key=lambda r: (STAGES.index(r.stage), r.name, r.start_time))
    params = sorted({k for r in trials for k in r.params})
    metrics = sorted({k for r in trials for k in r.metrics})
    tags = [TAG_HASH, TAG_CELL, TAG_SEED, TAG_UPSTREAM, TAG_PRUNED, PARENT_TAG]
    header = ["run_id", "stage", "name", "status", "usable", "reason", *(f"tags.{t}" for t in tags),
              *(f"params.{p}" for p in params), *(f"metrics.{m}" for m in metrics)]
    rows = []
    for r in trials:
        rows.append([r.run_id, r.stage, r.name, r.status, str(r.usable).lower(), r.reason,
                     *(r.tags.get(t, "") for t in tags), *(r.params.get(p, "") for p in params),
                     *("" if (v := r.metrics.get(m)) is None else repr(float(v)) for m in metrics)])
    if fmt == "json":
        return json.dumps([dict(zip(header, row)) for row in rows], indent=2) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
