"""What the MLflow UI shows of a study: the experiment's kind and description, the leaderboard view, links.

MLflow 3.17's UI reads all of it from the tracking store, so the launch writes it there:

* ``mlflow.experimentKind = custom_model_development`` (an experiment tag): the experiment opens
  on its runs ("Model training"), not on the GenAI overview of traces. The value is one of the
  experiment kinds the UI knows (``genai_development``, ``custom_model_development``, ...).
* ``mlflow.note.content`` on the experiment and on a run: its description, rendered as Markdown
  (the space's ``description``; a trial's backbone as a link to its pretraining run; the launch's
  headline).
* ``mlflow.sharedViewState.<key>`` (experiment tags): saved views of the experiment page, the
  state the UI's "Share" button stores and opens with ``?viewStateShareKey=<key>``. Ours are the
  leaderboard (fine-tuning runs only, sorted by ``det/AP50``, best first, the ablated axes and
  the key metrics as the visible columns, wide enough to read) and the compare view (the same,
  with the run list folded so that the charts get the width): two parallel-coordinates charts of
  the axes against ``det/AP50`` (see :func:`chart_axes`) and a bar chart of ``det/AP50``; and the
  cells view (the leaderboard grouped by the ``ablate.cell`` tag: one row per cell with the mean of
  its seeds, its seeds' runs folded under it). Their
  keys are among those the experiment page takes from a shared state in MLflow 3.17's built UI
  (its view-state keys and search facets; tests/experiments/results/test_ui.py checks the bundle);
  table or charts is the ``compareRunsMode`` URL parameter (``TABLE`` / ``CHART``).

A study launched before these tags existed still gets a working link from :func:`study_links`:
the search filter and the sort order in the URL, which the UI also reads.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from experiments.store.tracking import flatten_params
from trainers.vocabulary import (
    BACKBONE_PARAM,
    DET_AP50,
    NONE_VALUE,
    LEADERBOARD_METRICS,
    STAGE_FINETUNE,
    TAG_AXES,
    TAG_CELL,
    TAG_STAGE,
)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
KIND_MACHINE_LEARNING = "custom_model_development"  # shown as "Machine learning" by the UI
NOTE_TAG = "mlflow.note.content"  # an experiment's or a run's Markdown description
VIEW_STATE_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "ablate-leaderboard"  # our shared views; rewritten by every launch of the study
COMPARE_VIEW_KEY = "ablate-compare"  # the same, with the run list folded away so the charts get the width
CELLS_VIEW_KEY = "ablate-cells"  # the leaderboard grouped by cell: each cell's seeds averaged, best mean first
# MLflow's "Group by" as its UI stores it: average over the runs that share the tag's value
GROUP_BY_CELL = {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": TAG_CELL}]}
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # where `ablate ui` serves by default
FINETUNE_FILTER = f"tags.`{TAG_STAGE}` = '{STAGE_FINETUNE}'"
SECTION_UUID = "ablate-ablation-section"
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the runs table's column ids are "<type>.`<key>`"


def varying_params(param_sets: Sequence[Mapping[str, str]], candidates: Iterable[str]) -> list[str]:
    """The candidate params whose value differs across the runs (a missing param counts as a value).

    ``finetune.backbone`` first, then the rest as given: the order of the leaderboard's columns
    and of the parallel-coordinates axes.
    """
    out = []
    for key in dict.fromkeys(candidates):
        if len({p.get(key) for p in param_sets}) > 1:
            out.append(key)
    return sorted(out, key=lambda k: k != BACKBONE_PARAM)


def _is_number(value: str | None) -> bool:
    try:
        return value is not None and float(value) == float(value)
    except ValueError:
        return False


def kept_by_parallel_chart(param_sets: Sequence[Mapping[str, str]], axes: Sequence[str]) -> list[int]:
    """Which runs MLflow 3.17's parallel-coordinates chart draws for these axes (indices into ``param_sets``).

    The chart's own rule (``parallelCoordinatesPlotUtils`` in the UI): a run missing an axis is
    dropped; then axis by axis, if at least half the remaining runs have a number there, the axis
    is numeric and runs with text there (``none``, ``uniform``) are dropped; otherwise it is
    categorical and runs with a number there are dropped.
    """
    rows = [i for i, p in enumerate(param_sets) if all(p.get(a) is not None for a in axes)]
    for axis in axes:
        numeric = [i for i in rows if _is_number(param_sets[i].get(axis))]
        rows = numeric if len(numeric) >= len(rows) / 2 else [i for i in rows if not _is_number(param_sets[i].get(axis))]
    return rows


def chart_axes(param_sets: Sequence[Mapping[str, str]], axes: Sequence[str]) -> tuple[list[str], list[str]]:
    """The axes of the two parallel-coordinates charts: one that keeps every run, one of the pretrained runs.

    An axis whose values mix numbers and text (``pretrain.prototypes`` with ``none`` on the scratch
    baseline, ``lr_scheme`` 357 vs uniform) would make the chart drop runs (see
    :func:`kept_by_parallel_chart`), the baseline first; such axes go to the second chart, drawn
    over the pretrained runs only, where they vary without text.
    """
    everyone: list[str] = []
    for axis in axes:
        if len(kept_by_parallel_chart(param_sets, [*everyone, axis])) == len(param_sets):
            everyone.append(axis)
    pretrained = [p for p in param_sets if p.get(BACKBONE_PARAM) not in (None, "scratch")]
    second = [a for a in axes if len({p.get(a) for p in pretrained}) > 1]
    if set(second) <= set(everyone) or len(kept_by_parallel_chart(pretrained, second)) < len(pretrained):
        second = []
    return everyone, second


def _parallel(uuid: str, name: str, params: Sequence[str], metric: str) -> dict[str, Any]:
    return {"uuid": uuid, "type": "PARALLEL", "runsCountToCompare": 100, "metricSectionId": SECTION_UUID,
            "deleted": False, "isGenerated": False, "displayName": name, "selectedParams": list(params),
            "selectedMetrics": [metric], "showAllRuns": True}


def name_column_width(labels: Iterable[str], extra: int) -> int:
    """Pixels for the runs table's name column to show the longest of ``labels`` whole: 6 px a character (the
    UI's font draws these names at 5.5-5.7 px a character), plus ``extra`` for what the cell draws beside the
    name (colour dot, expander, count); at least 300, at most 520 (the axes keep the rest of a 1600 px window)."""
    longest = max((len(label) for label in labels), default=0)
    return max(300, min(520, 6 * longest + extra))


def view_state(axes: Sequence[str], param_sets: Sequence[Mapping[str, str]] = (), metric: str = DET_AP50,
               names: Sequence[str] = ()) -> dict[str, Any]:
    """The leaderboard as an MLflow shared view state (a JSON object the UI merges into its defaults).

    Args:
        axes: the ablated params (``finetune.norm``, ``pretrain.prototypes``), columns and chart axes.
        param_sets: the fine-tuning runs' params (planned), to choose axes each chart draws every run of.
        metric: the ranking metric, sorted best first and plotted against the axes.
        names: the fine-tuning runs' names (planned), to size the name column so that none is cut.
    """
    # few metric columns, so that the axes fit the first screen beside them (the chart view has the rest)
    metrics = [metric] + [m for m in LEADERBOARD_METRICS if m != metric]
    columns = [f"metrics.`{m}`" for m in metrics] + [f"params.`{a}`" for a in axes] + ["params.`finetune.seed`"]
    # wide enough for the full names (MLflow's default cuts "res18_ep2_p30 · bn · mlp · 357 · seed0" after
    # 12 characters, so that two trials look the same); about 7 px per character at the UI's font size
    widths = {RUN_NAME_COLUMN: name_column_width(names, 60),
              **{c: 7 * (len(c) - 10) + 28 for c in columns if c.startswith("params.")}}
    everyone, pretrained = chart_axes(param_sets, axes) if param_sets else (list(axes), [])
    charts = []
    if everyone:
        charts.append(_parallel("ablate-parallel", f"ablated axes vs {metric}", everyone, metric))
    if pretrained:
        charts.append(_parallel("ablate-parallel-pretrained", f"pretrained backbones: axes vs {metric}", pretrained,
                                metric))
    charts.append({"uuid": "ablate-bar", "type": "BAR", "runsCountToCompare": 100, "metricSectionId": SECTION_UUID,
                   "deleted": False, "isGenerated": False, "metricKey": metric, "displayName": metric})
    return {
        "searchFilter": FINETUNE_FILTER, "orderByKey": f"metrics.`{metric}`", "orderByAsc": False,
        "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns], "columnWidths": widths,
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": SECTION_UUID, "name": "Ablation", "display": True, "isReordered": True,
                                "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True, "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True,
        "useGroupedValuesInCharts": True, "groupBy": None,
    }


def experiment_tags(description: str, axes: Sequence[str], param_sets: Sequence[Mapping[str, str]] = (),
                    metric: str = DET_AP50, names: Sequence[str] = (), cells: Sequence[str] = ()) -> dict[str, str]:
    """The experiment tags a launch writes: the kind (runs first), the description and the leaderboard views.

    ``names`` and ``cells``: the planned fine-tuning runs' names and ``ablate.cell`` tags, which size the name
    column of the leaderboard and of the cells view (where a row reads "Group: <cell>") so that none is cut."""
    state = view_state(axes, param_sets, metric, names)
    # runListHidden folds the run list beside the charts; in the table view it would hide the rows
    compare = {**state, "runListHidden": True}
    grouped_width = name_column_width([f"Group: {c}" for c in cells], 90)
    cells_state = {**state, "groupBy": GROUP_BY_CELL,
                   "columnWidths": {**state["columnWidths"], RUN_NAME_COLUMN: grouped_width}}
    tags = {EXPERIMENT_KIND_TAG: KIND_MACHINE_LEARNING, TAG_AXES: ",".join(axes),
            VIEW_STATE_PREFIX + VIEW_KEY: json.dumps(state, separators=(",", ":")),
            VIEW_STATE_PREFIX + COMPARE_VIEW_KEY: json.dumps(compare, separators=(",", ":")),
            VIEW_STATE_PREFIX + CELLS_VIEW_KEY: json.dumps(cells_state, separators=(",", ":"))}
    if description:
        tags[NOTE_TAG] = description
    return tags


def run_link(experiment_id: str, run_id: str, text: str) -> str:
    """A Markdown link to a run's page, relative to the UI (works on any host the UI is served from)."""
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id})"


@dataclass(frozen=True)
class StudyLinks:
    """The UI links of one study."""

    study: str
    experiment_id: str
    leaderboard: str  # the fine-tuning runs as a table, best det/AP50 first
    compare: str  # the same runs as charts: the ablated axes against det/AP50
    axes: tuple[str, ...]
    cells: str = ""  # the table grouped by cell, seeds averaged ("" for a study launched before this view)


def links(base_url: str, experiment_id: str, study: str, tags: Mapping[str, str], metric: str = DET_AP50) -> StudyLinks:
    """The leaderboard and compare links of a study from its experiment tags.

    With our shared view (written by ``ablate launch``) the links open it; without it (a study
    launched by an older version) the search filter and sort order go in the URL instead, which
    the UI reads too, and the columns are MLflow's defaults.
    """
    base = base_url.rstrip("/") + f"/#/experiments/{experiment_id}/runs"
    axes = tuple(a for a in tags.get(TAG_AXES, "").split(",") if a)
    if VIEW_STATE_PREFIX + VIEW_KEY in tags:
        query = {"viewStateShareKey": VIEW_KEY}
        compare = {"viewStateShareKey": COMPARE_VIEW_KEY if VIEW_STATE_PREFIX + COMPARE_VIEW_KEY in tags else VIEW_KEY}
    else:
        query = {"searchFilter": FINETUNE_FILTER, "orderByKey": f"metrics.`{metric}`", "orderByAsc": "false"}
        compare = query
    # workflowType: the runs page of a "machine learning" experiment, whichever page the UI would open first
    table = base + "?" + urllib.parse.urlencode({"workflowType": "machine_learning", **query},
                                                quote_via=urllib.parse.quote)
    chart = base + "?" + urllib.parse.urlencode({"workflowType": "machine_learning", **compare,
                                                 "compareRunsMode": "CHART"}, quote_via=urllib.parse.quote)
    cells = ""
    if VIEW_STATE_PREFIX + CELLS_VIEW_KEY in tags:
        cells = base + "?" + urllib.parse.urlencode({"workflowType": "machine_learning",
                                                     "viewStateShareKey": CELLS_VIEW_KEY}, quote_via=urllib.parse.quote)
    return StudyLinks(study, experiment_id, table, chart, axes, cells)


def study_links(tracking_uri: str, base_url: str) -> list[StudyLinks]:
    """Links of every study in the store that has fine-tuning runs, newest experiment first (read-only)."""
    from experiments.store.sqlite_reader import ACTIVE_ONLY, read_client

    client = read_client(tracking_uri)
    out = []
    for exp in client.search_experiments(view_type=ACTIVE_ONLY, order_by=["last_update_time DESC"]):
        if not client.search_runs([exp.experiment_id], filter_string=FINETUNE_FILTER, max_results=1):
            continue
        out.append(links(base_url, exp.experiment_id, exp.name, exp.tags))
    return out


def finetune_extra_params(backbone: str, pretrain_config: Mapping[str, Any] | None, pretrain_fields: Iterable[str],
                          pretrain_processes: int) -> dict[str, str]:
    """The params a fine-tuning run carries besides its own config: its backbone and the backbone's pretraining.

    ``finetune.backbone`` is the pretraining run's name (``res18_ep2_p30``) or ``scratch``; a
    scratch run gets :data:`NONE_VALUE` for every pretraining field of the study, so that every
    ablated axis is a param of every fine-tuning run (a missing param is "unknown" in MLflow's
    charts and cannot be filtered on).
    """
    if pretrain_config is None:
        fields = list(dict.fromkeys(pretrain_fields))
        fields += ["world_size"] if fields else []
        return {BACKBONE_PARAM: "scratch", **{f"pretrain.{f}": NONE_VALUE for f in fields}}
    return {BACKBONE_PARAM: backbone, **flatten_params("pretrain", pretrain_config),
            "pretrain.world_size": str(pretrain_processes)}


def wait_until_answering(url: str, proc: Any, timeout_s: float = 120.0) -> bool:
    """Poll ``url`` (the server's ``/health``) until it answers; False when ``proc`` exits or time runs out."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own server on this machine
                return True
        except urllib.error.HTTPError:
            return True  # it answered
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    return False


def serve(cmd: Sequence[str], tracking_uri: str, host: str, port: int, open_browser: bool = False,
          out: Any = None, log: Path | None = None) -> int:
    """Run the MLflow UI command ``cmd``; once it answers, say so and print each study's links.

    Returns the server's exit code (0 after Ctrl-C). ``open_browser`` opens the newest study's
    leaderboard (or the UI's home page) with :mod:`webbrowser` once the server answers. ``log``: the
    server's own output (its notices, warnings and access log) goes to this file, not the terminal.
    """
    import signal
    import subprocess
    import sys
    import webbrowser

    out = out or sys.stdout
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else host
    base = f"http://{shown}:{port}"
    sink = open(log, "a") if log is not None else None  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(list(cmd), stdout=sink, stderr=subprocess.STDOUT if sink else None)
    # a SIGTERM (`timeout`, a service manager) stops the server too, through the finally below
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if not wait_until_answering(base + "/health", proc):
            if proc.poll() is None:
                print(f"ablate ui: the MLflow UI did not answer on {base} within 120 s; still waiting (Ctrl-C to stop)",
                      file=out, flush=True)
                return proc.wait()
            print(f"ablate ui: the MLflow UI exited with code {proc.returncode} before answering"
                  + (f"; its log: {log}" if log else ""), file=out, flush=True)
            return proc.returncode or 1
        print(f"MLflow UI answers on {base} (Ctrl-C to stop)", file=out, flush=True)
        found = study_links(tracking_uri, base)
        for link in found:
            print(f"  {link.study}: leaderboard (fine-tuning runs, best {DET_AP50} first)", file=out)
            print(f"    {link.leaderboard}", file=out)
            if link.cells:
                print(f"  {link.study}: cells (the same grouped by cell, seeds averaged)", file=out)
                print(f"    {link.cells}", file=out)
            print(f"  {link.study}: compare (the ablated axes against {DET_AP50})", file=out)
            print(f"    {link.compare}", file=out)
        if not found:
            print("  no study with fine-tuning runs in this store yet", file=out)
        out.flush()
        if open_browser:
            webbrowser.open(found[0].leaderboard if found else base)
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sink is not None:
            sink.close()


def register(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate ui [--port N] [--open]`` (experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("--port", type=int, default=5000, help="TCP port (default 5000; 0: any free port, printed)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1: this machine only); the UI has no auth, so an address off "
                        "loopback needs --insecure-no-auth (a team server: `ablate server --auth`)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --host off loopback: anyone who reaches the port can create, change and delete runs "
                        "and models (only on a network you trust)")
    p.add_argument("--open", action="store_true",
                   help="open the newest study's leaderboard in the default web browser once the UI answers")
    p.set_defaults(run=run)


def run(args: Any) -> int:
    """``ablate ui``: run ``mlflow ui`` on the local store, after the checks it cannot do itself.

    Refused with exit 2 before anything starts: an ``http(s)://`` store (already a server), a
    sqlite store that does not exist, a bind off loopback without ``--insecure-no-auth`` (the UI
    has no auth), a port outside 0..65535, a port in use. ``--port 0`` picks a free port. Once
    the server answers, it says so and prints each study's leaderboard and compare links
    (:func:`serve`); ``--open`` opens the newest one.
    """
    import sys

    from experiments.store.redaction import redact
    from experiments.server import ServerConfigError, check_bind, check_port
    from experiments.store.checks import check_store
    from experiments.store.tracking import artifact_root_for, uri_to_read

    uri = uri_to_read(args.tracking_uri)
    if uri.startswith("http"):
        raise ValueError(f"--tracking-uri {redact(uri)} is already a server: open it in a browser")
    check_store(uri, ValueError)  # a missing sqlite store: one line, no empty mlruns/ made
    try:
        check_bind(args.host, auth=False, insecure_no_auth=args.insecure_no_auth, command="ablate ui")
        bind = args.host if args.host.strip() not in ("", "::", "[::]") else "0.0.0.0"
        port = check_port(bind, args.port, allow_any=True)
    except ServerConfigError as exc:
        raise ValueError(str(exc)) from None
    # one worker (a UI for one person starts in seconds, not four), the app that keeps the assistant panel closed on
    # a first visit (experiments/results/ui_app.py)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(port),
           "--workers", "1", "--app-name", "ablate-ui"]
    root = artifact_root_for(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    log = log_path(uri, port)
    print(f"starting the MLflow UI on http://{args.host}:{port} (store {redact(uri)}; its own log: {log})", flush=True)
    return serve(cmd, uri, args.host, port, open_browser=args.open, log=None if args.verbose else log)


def log_path(uri: str, port: int) -> Path:
    """Where `ablate ui` writes the server's own output (notices, access log): beside a sqlite store, else in the
    temporary folder."""
    import tempfile

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent / "ui.log"
    return Path(tempfile.gettempdir()) / f"ablate-ui-{port}.log"
