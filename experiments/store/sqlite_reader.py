"""Read an MLflow sqlite store without importing MLflow: the read-only commands' client.

``import mlflow`` costs 1.2-2.8 s on a 2-core machine (pandas, its GenAI packages, its protobufs), and
building its SQLAlchemy store adds the schema check. ``ablate status``, ``report``, ``models`` and
``launch --dry-run`` only read runs, tags, params, metric histories and registered versions, so on a
local ``sqlite:///`` store they read the tables with Python's ``sqlite3`` module instead, opened
read-only. :class:`SqliteReader` answers the subset of ``MlflowClient``'s reading methods those
commands call, with objects carrying the same attribute names (``run.info.run_id``,
``run.data.metrics``, ``version.tags``, ``page.token``), so the callers are the same code for either
client. Any other URI (an MLflow server, PostgreSQL) keeps ``MlflowClient``: :func:`read_client`
decides. ``tests/experiments/store/test_sqlite_reader.py`` checks every method against ``MlflowClient`` on
the same store.

The tables are MLflow 3's (``runs``, ``tags``, ``params``, ``metrics``, ``latest_metrics``,
``experiments``, ``experiment_tags``, ``registered_models``, ``model_versions`` and their tags and
aliases). Filters are the conjunctions the commands use: ``tags.`K` = 'V'``, ``params.`K` = 'V'``,
``attributes.status = 'S'`` (also ``!=``), and ``name = 'M'`` for model versions; anything else is a
``ValueError`` naming the filter.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

ACTIVE_ONLY, DELETED_ONLY, ALL = 1, 2, 3  # MLflow's ViewType values
PREFIX = "sqlite:///"
MLFLOW_CLIENT_ENV = "ABLATE_READ_WITH_MLFLOW"
BUSY_TIMEOUT_S = 30.0  # a launch writing at the same moment holds the lock for milliseconds
_TERM = re.compile(r"""^\s*(?:(tags|params|attributes|attribute|attr)\.)?(`[^`]+`|"[^"]+"|[\w./-]+)\s*(!?=)\s*'((?:[^']|'')*)'\s*$""",
                   re.IGNORECASE)
_RUN_COLUMNS = {"status": "status", "run_name": "name", "run_id": "run_uuid", "start_time": "start_time",
                "end_time": "end_time", "user_id": "user_id"}


@dataclass(frozen=True)
class Metric:
    key: str
    value: float
    timestamp: int
    step: int


@dataclass
class RunInfo:
    run_id: str
    run_name: str
    experiment_id: str
    status: str
    start_time: int | None
    end_time: int | None
    lifecycle_stage: str
    artifact_uri: str
    user_id: str

    @property
    def run_uuid(self) -> str:
        return self.run_id


@dataclass
class RunData:
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    info: RunInfo
    data: RunData


@dataclass
class Experiment:
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time: int | None
    last_update_time: int | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelVersion:
    name: str
    version: str
    creation_timestamp: int | None
    last_updated_timestamp: int | None
    description: str | None
    source: str | None
    run_id: str | None
    status: str | None
    current_stage: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


@dataclass
class RegisteredModel:
    name: str
    creation_timestamp: int | None
    last_updated_timestamp: int | None
    description: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


class Page(list):
    """A page of results with MLflow's ``token`` for the next one (None on the last)."""

    token: str | None = None


class NotFound(LookupError):
    """The store has no such run, experiment or model version (MLflow's RESOURCE_DOES_NOT_EXIST)."""

    error_code = "RESOURCE_DOES_NOT_EXIST"


def is_sqlite(tracking_uri: str) -> bool:
    return tracking_uri.startswith(PREFIX)


def reads_without_mlflow(tracking_uri: str) -> bool:
    """Whether a read-only command reads ``tracking_uri`` through :class:`SqliteReader`: a local sqlite store, unless
    ``ABLATE_READ_WITH_MLFLOW=1`` asks for MLflow's own client (``bench readonly`` measures both)."""
    return is_sqlite(tracking_uri) and os.environ.get(MLFLOW_CLIENT_ENV) != "1"


def sqlite_path(tracking_uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI."""
    return Path(tracking_uri[len(PREFIX):])


def _value(value: Any, is_nan: Any) -> float:
    return math.nan if is_nan else float(value)


def _lifecycle(view_type: int) -> tuple[str, ...]:
    return {ACTIVE_ONLY: ("active",), DELETED_ONLY: ("deleted",)}.get(view_type, ("active", "deleted"))


def parse_filter(text: str, allowed: Sequence[str] = ("tags", "params", "attributes")) -> list[tuple[str, str, str, str]]:
    """``"tags.`a` = 'x' and attributes.status = 'RUNNING'"`` -> ``[("tags", "a", "=", "x"), ("attributes", "status", "=", "RUNNING")]``.

    Raises:
        ValueError: a term this reader does not handle (it names the filter).
    """
    terms = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE) if text.strip() else []:
        match = _TERM.match(part)
        if not match:
            raise ValueError(f"filter {text!r}: cannot read {part!r} (this reader takes KIND.`KEY` = 'VALUE' terms "
                             "joined by and)")
        kind, key, op, value = match.groups()
        kind = (kind or "attributes").lower()
        kind = {"attribute": "attributes", "attr": "attributes"}.get(kind, kind)
        key = key.strip('`"')
        if kind not in allowed or (kind == "attributes" and key not in _RUN_COLUMNS and key != "name"):
            raise ValueError(f"filter {text!r}: {kind}.{key} is not searchable here")
        terms.append((kind, key, op, value.replace("''", "'")))
    return terms


class SqliteReader:
    """``MlflowClient``'s reading methods on an MLflow sqlite store, through ``sqlite3`` (read-only)."""

    def __init__(self, tracking_uri: str) -> None:
        if not is_sqlite(tracking_uri):
            raise ValueError(f"{tracking_uri!r} is not a sqlite:/// URI")
        self.tracking_uri = tracking_uri
        self._db = sqlite3.connect(f"{sqlite_path(tracking_uri).resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                   check_same_thread=False)

    def close(self) -> None:
        self._db.close()

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        return self._db.execute(sql, tuple(args)).fetchall()

    def _keyed(self, table: str, id_column: str, ids: Sequence[str], value: str = "value",
               convert: Any = None) -> dict[str, dict[str, Any]]:
        """``{id: {key: value}}`` of a key-value table for the owners ``ids`` (``value``: the selected columns after
        the key, passed to ``convert`` when given)."""
        out: dict[str, dict[str, Any]] = {i: {} for i in ids}
        for chunk in range(0, len(ids), 500):  # sqlite's bound-parameter limit
            part = ids[chunk:chunk + 500]
            for owner, k, *rest in self._rows(f"SELECT {id_column}, key, {value} FROM {table} "
                                              f"WHERE {id_column} IN ({','.join('?' * len(part))})", part):
                out[owner][k] = convert(*rest) if convert else rest[0]
        return out

    # -- experiments -------------------------------------------------------------------------------------------

    def _experiments(self, where: str, args: Sequence[Any]) -> list[Experiment]:
        rows = self._rows("SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time, "
                          f"last_update_time FROM experiments WHERE {where}", args)
        tags = self._keyed("experiment_tags", "experiment_id", [r[0] for r in rows])
        return [Experiment(str(r[0]), r[1], r[2], r[3], r[4], r[5], tags[r[0]]) for r in rows]

    def search_experiments(self, view_type: int = ACTIVE_ONLY, max_results: int | None = None,
                           order_by: Sequence[str] | None = None, **_: Any) -> Page:
        stages = _lifecycle(view_type)
        where = f"lifecycle_stage IN ({','.join('?' * len(stages))})"
        order = "creation_time DESC, experiment_id ASC"
        if order_by:
            column, _, direction = order_by[0].partition(" ")
            if column not in ("last_update_time", "creation_time", "name", "experiment_id"):
                raise ValueError(f"order_by {order_by[0]!r} is not supported here")
            order = f"{column} {'ASC' if direction.strip().upper() == 'ASC' else 'DESC'}, experiment_id ASC"
        found = self._experiments(f"{where} ORDER BY {order}", stages)
        return Page(found[:max_results] if max_results else found)

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        found = self._experiments("name = ?", [name])
        return found[0] if found else None

    def get_experiment(self, experiment_id: str) -> Experiment:
        found = self._experiments("experiment_id = ?", [int(experiment_id)])
        if not found:
            raise NotFound(f"No Experiment with id={experiment_id} exists")
        return found[0]

    # -- runs --------------------------------------------------------------------------------------------------

    def _runs(self, rows: list[tuple]) -> list[Run]:
        ids = [r[0] for r in rows]
        metrics = self._keyed("latest_metrics", "run_uuid", ids, value="value, is_nan", convert=_value)
        params = self._keyed("params", "run_uuid", ids)
        tags = self._keyed("tags", "run_uuid", ids)
        return [Run(RunInfo(r[0], r[1] or "", str(r[2]), r[3], r[4], r[5], r[6], r[7] or "", r[8] or ""),
                    RunData(metrics[r[0]], params[r[0]], tags[r[0]])) for r in rows]

    _RUN_SELECT = ("SELECT run_uuid, name, experiment_id, status, start_time, end_time, lifecycle_stage, artifact_uri, "
                   "user_id FROM runs")

    def get_run(self, run_id: str) -> Run:
        rows = self._rows(f"{self._RUN_SELECT} WHERE run_uuid = ?", [run_id])
        if not rows:
            raise NotFound(f"Run '{run_id}' not found")
        return self._runs(rows)[0]

    def search_runs(self, experiment_ids: Sequence[str], filter_string: str = "", run_view_type: int = ACTIVE_ONLY,
                    max_results: int = 1000, order_by: Sequence[str] | None = None,
                    page_token: str | None = None) -> Page:
        where, args = [], []
        where.append(f"experiment_id IN ({','.join('?' * len(experiment_ids))})")
        args += [int(e) for e in experiment_ids]
        stages = _lifecycle(run_view_type)
        where.append(f"lifecycle_stage IN ({','.join('?' * len(stages))})")
        args += stages
        for kind, key, op, value in parse_filter(filter_string):
            if kind == "attributes":
                where.append(f"{_RUN_COLUMNS.get(key, 'name')} {op} ?")
                args.append(value)
            else:
                table = "tags" if kind == "tags" else "params"
                test = "EXISTS" if op == "=" else "NOT EXISTS"
                where.append(f"{test} (SELECT 1 FROM {table} t WHERE t.run_uuid = runs.run_uuid AND t.key = ? "
                             "AND t.value = ?)")
                args += [key, value]
                if op == "!=":  # MLflow: != matches runs that have the key with another value
                    where.append(f"EXISTS (SELECT 1 FROM {table} t WHERE t.run_uuid = runs.run_uuid AND t.key = ?)")
                    args.append(key)
        order = []
        for clause in order_by or ():
            column, _, direction = clause.strip().partition(" ")
            column = column.split(".", 1)[-1] if column.startswith(("attributes.", "attribute.")) else column
            if column not in _RUN_COLUMNS:
                raise ValueError(f"order_by {clause!r} is not supported here")
            order.append(f"{_RUN_COLUMNS[column]} {'ASC' if direction.strip().upper() == 'ASC' else 'DESC'}")
        order += ["start_time DESC", "run_uuid ASC"]  # MLflow's own tie-breakers
        offset = int(page_token or 0)
        rows = self._rows(f"{self._RUN_SELECT} WHERE {' AND '.join(where)} ORDER BY {', '.join(order)} "
                          "LIMIT ? OFFSET ?", [*args, max_results + 1, offset])
        page = Page(self._runs(rows[:max_results]))
        page.token = str(offset + max_results) if len(rows) > max_results else None
        return page

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        return [Metric(key, _value(v, nan), t, s) for v, t, s, nan in self._rows(
            "SELECT value, timestamp, step, is_nan FROM metrics WHERE run_uuid = ? AND key = ? "
            "ORDER BY timestamp, step", [run_id, key])]

    # -- the model registry ------------------------------------------------------------------------------------

    def _aliases(self, name: str) -> dict[str, str]:
        return {a: str(v) for a, v in self._rows("SELECT alias, version FROM registered_model_aliases WHERE name = ?",
                                                 [name])}

    def search_registered_models(self, max_results: int = 100, **_: Any) -> Page:
        rows = self._rows("SELECT name, creation_time, last_updated_time, description FROM registered_models "
                          "ORDER BY name LIMIT ?", [max_results])
        tags = self._keyed("registered_model_tags", "name", [r[0] for r in rows])
        return Page(RegisteredModel(r[0], r[1], r[2], r[3], tags[r[0]], self._aliases(r[0])) for r in rows)

    def _versions(self, where: str, args: Sequence[Any]) -> list[ModelVersion]:
        rows = self._rows("SELECT name, version, creation_time, last_updated_time, description, source, run_id, "
                          f"status, current_stage FROM model_versions WHERE {where} ORDER BY name, version", args)
        out, aliases_of = [], {name: self._aliases(name) for name in {r[0] for r in rows}}
        for r in rows:
            tags = dict(self._rows("SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
                                   [r[0], r[1]]))
            aliases = [a for a, v in aliases_of[r[0]].items() if v == str(r[1])]
            out.append(ModelVersion(r[0], str(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], tags, aliases))
        return out

    def search_model_versions(self, filter_string: str = "", **_: Any) -> Page:
        where, args = ["current_stage != 'Deleted_Internal'"], []
        for _kind, key, op, value in parse_filter(filter_string, allowed=("attributes",)):
            if key != "name":
                raise ValueError(f"filter {filter_string!r}: only name = 'MODEL' is searchable here")
            where.append(f"name {op} ?")
            args.append(value)
        return Page(self._versions(" AND ".join(where), args))

    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        found = self._versions("name = ? AND version = ? AND current_stage != 'Deleted_Internal'", [name, int(version)])
        if not found:
            raise NotFound(f"Model Version (name={name}, version={version}) not found")
        return found[0]

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        version = self._aliases(name).get(alias)
        if version is None:
            raise NotFound(f"Registered model alias {alias} not found.")
        return self.get_model_version(name, version)


def read_client(tracking_uri: str, registry: bool = False) -> Any:
    """The client a read-only command uses: :class:`SqliteReader` on a local sqlite store, else ``MlflowClient``."""
    if reads_without_mlflow(tracking_uri):
        return SqliteReader(tracking_uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri if registry else None)


def writer(client: Any) -> Any:
    """A client that can write to the store ``client`` reads: ``client`` itself, or an ``MlflowClient`` in place of
    a :class:`SqliteReader` (``ablate report --log`` reads without MLflow, then logs its files with it)."""
    if not isinstance(client, SqliteReader):
        return client
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=client.tracking_uri)


__all__ = ["ACTIVE_ONLY", "ALL", "DELETED_ONLY", "NotFound", "SqliteReader", "is_sqlite", "parse_filter",
           "read_client", "reads_without_mlflow", "sqlite_path", "writer"]
