"""The team tracking server as a whole (experiments/server): real `mlflow server` processes on loopback, free ports.

* 8 writer processes logging through a server backed by sqlite and by PostgreSQL: every
  metric arrives exactly once;
* a client keeps logging while the server is down for ~10 s and loses nothing (its retry
  settings: :func:`experiments.store.tracking.configure_client_retries`);
* basic auth: 401 without credentials and for MLflow's old default password; the configured
  password works;
* an Optuna study on PostgreSQL with the collapse pruner;
* the package exports every name of its modules.

The options, the command line and the process supervision, each without a server, are tested at their modules' paths
(test_checks.py, test_settings.py, test_auth.py, test_supervisor.py, test_command.py).

Tests needing PostgreSQL (127.0.0.1:5432, or $ABLATE_TEST_POSTGRES_URL) or the basic-auth extra
(Flask-WTF, from ``mlflow[auth]``) skip here when those are missing, and fail under CI=true.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import time
import traceback
import uuid

import pytest
import requests
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from experiments.store import redaction as R
from experiments import server as S
from experiments.store.tracking import configure_client_retries
from experiments.testing.s3server import free_port

PG_ADMIN_URL = os.environ.get("ABLATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
ADMIN_PASSWORD = "test-" + uuid.uuid4().hex  # >= 12 characters, different every run

WRITERS, RUNS, STEPS, KEYS, STEPS_PER_BATCH = 8, 3, 50, 4, 5


def _unavailable(reason: str) -> None:
    """Fail under CI (the dependency is part of the deployment), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must be available)")
    pytest.skip(reason)


# ---------------------------------------------------------------------------
# Fixtures: PostgreSQL databases, the auth extra
# ---------------------------------------------------------------------------


def _pg_conninfo(url: str) -> dict:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return {"host": u.host or "127.0.0.1", "port": u.port or 5432, "user": u.username or "postgres",
            "password": u.password, "dbname": u.database or "postgres"}


@pytest.fixture
def make_pg_database():
    """A factory of fresh, uniquely named PostgreSQL databases (SQLAlchemy URLs); all dropped afterwards.

    Fails when PostgreSQL is unreachable and CI=true, skips otherwise.
    """
    import psycopg

    info = _pg_conninfo(PG_ADMIN_URL)
    try:
        conn = psycopg.connect(**{k: v for k, v in info.items() if v is not None}, connect_timeout=3, autocommit=True)
    except Exception as exc:  # noqa: BLE001 - any connection failure means "not here"
        _unavailable(f"PostgreSQL not reachable at {R.redact(PG_ADMIN_URL)}: {exc}")
    created: list[str] = []
    base = PG_ADMIN_URL.rsplit("/", 1)[0]

    def make() -> str:
        name = f"ablate_test_{uuid.uuid4().hex[:12]}"
        conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{base}/{name}"

    try:
        yield make
    finally:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def auth_extra():
    """MLflow's basic-auth app needs Flask-WTF (the `mlflow[auth]` extra)."""
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        _unavailable("MLflow basic auth needs Flask-WTF: install the `mlflow[auth]` extra")


# ---------------------------------------------------------------------------
# Concurrency: 8 writer processes, several runs each, exactly once
# ---------------------------------------------------------------------------


def _value(worker: int, run: int, key: int, step: int) -> float:
    return worker * 1e6 + run * 1e4 + key * 1e3 + step + 0.25


def _writer(url: str, run_ids: list[str], worker: int, barrier, errors) -> None:
    try:
        client = MlflowClient(tracking_uri=url)
        barrier.wait(timeout=60)
        ts0 = int(time.time() * 1000)
        for start in range(0, STEPS, STEPS_PER_BATCH):
            for r, run_id in enumerate(run_ids):
                metrics = [Metric(f"w{worker}/m{k}", _value(worker, r, k, step), ts0 + step, step)
                           for step in range(start, min(STEPS, start + STEPS_PER_BATCH)) for k in range(KEYS)]
                client.log_batch(run_id, metrics=metrics)
    except BaseException:  # noqa: BLE001 - reported to the test process
        errors.put(f"writer {worker}: {traceback.format_exc()}")
        raise SystemExit(1)


def _check_concurrent_writers(url: str) -> None:
    client = MlflowClient(tracking_uri=url)
    exp = client.create_experiment(f"concurrency-{uuid.uuid4().hex[:6]}")
    run_ids = [client.create_run(exp, run_name=f"run{r}").info.run_id for r in range(RUNS)]
    ctx = mp.get_context("fork")  # the test process has MLflow imported already: no re-import per writer
    barrier, errors = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, run_ids, w, barrier, errors)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, "\n".join(problems)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    for r, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert len(run.data.metrics) == WRITERS * KEYS
        for w in range(WRITERS):
            for k in range(KEYS):
                history = client.get_metric_history(run_id, f"w{w}/m{k}")
                got = sorted((m.step, m.value) for m in history)
                assert got == [(step, _value(w, r, k, step)) for step in range(STEPS)], (r, w, k)


@pytest.mark.slow
def test_concurrent_writers_sqlite(tmp_path):
    with S.start_server(f"sqlite:///{tmp_path}/mlflow.db", port=free_port(), workers=2,
                        log_path=tmp_path / "server.log") as server:
        _check_concurrent_writers(server.url)


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_writers_postgres(tmp_path, make_pg_database):
    uri = make_pg_database()  # brand new and empty: migrations must create the tables
    with S.start_server(uri, str(tmp_path / "artifacts"), port=free_port(), workers=2,
                        log_path=tmp_path / "server.log") as server:
        _check_concurrent_writers(server.url)
        # artifacts go through the server's proxy into the destination folder
        client = MlflowClient(tracking_uri=server.url)
        run = client.create_run(client.create_experiment("artifacts"))
        client.log_text(run.info.run_id, "hello", "notes/hello.txt")
        assert list((tmp_path / "artifacts").rglob("hello.txt"))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")


# ---------------------------------------------------------------------------
# A server restart of ~10 s loses no metric
# ---------------------------------------------------------------------------

RESTART_STEPS = 24


def _slow_writer(url: str, run_id: str, sent, errors) -> None:
    try:
        configure_client_retries()
        client = MlflowClient(tracking_uri=url)
        for step in range(RESTART_STEPS):
            client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (step + 1), 1_000_000 + step, step),
                                              Metric("acc", step / 100.0, 1_000_000 + step, step)])
            sent.value = step + 1
            time.sleep(0.15)
    except BaseException:  # noqa: BLE001
        errors.put(traceback.format_exc())
        raise SystemExit(1)


@pytest.mark.slow
def test_client_survives_server_restart(tmp_path):
    uri, port = f"sqlite:///{tmp_path}/mlflow.db", free_port()
    server = S.start_server(uri, port=port, workers=1, log_path=tmp_path / "server.log")
    try:
        client = MlflowClient(tracking_uri=server.url)
        run_id = client.create_run(client.create_experiment("restart")).info.run_id
        ctx = mp.get_context("fork")
        sent, errors = ctx.Value("i", 0), ctx.Queue()
        writer = ctx.Process(target=_slow_writer, args=(server.url, run_id, sent, errors))
        writer.start()
        deadline = time.monotonic() + 60
        while sent.value < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sent.value >= 5, "the writer did not get going"
        server.stop()
        time.sleep(1)  # a request in flight at the stop was answered; its step may land just after
        down_at = sent.value
        time.sleep(9)
        assert sent.value == down_at, "requests succeeded while the server was down?"
        server = S.start_server(uri, port=port, workers=1, log_path=tmp_path / "server.log")
        writer.join(timeout=240)
        assert errors.empty(), errors.get()
        assert writer.exitcode == 0
        for key, fn in (("loss", lambda s: 1.0 / (s + 1)), ("acc", lambda s: s / 100.0)):
            got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            assert got == [(s, fn(s)) for s in range(RESTART_STEPS)]
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# Basic auth against a real server
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_auth_server_refuses_missing_and_default_credentials(tmp_path, auth_extra, monkeypatch):
    monkeypatch.setenv(S.ENV_ADMIN_PASSWORD, ADMIN_PASSWORD)
    monkeypatch.delenv(S.ENV_ADMIN_USERNAME, raising=False)
    with S.start_server(f"sqlite:///{tmp_path}/mlflow.db", port=free_port(), workers=1, auth=True,
                        log_path=tmp_path / "server.log") as server:
        api = f"{server.url}/api/2.0/mlflow/experiments/search"
        params = {"max_results": 1}
        assert requests.get(api, params=params, timeout=30).status_code == 401
        assert requests.get(api, params=params, auth=("admin", "password1234"), timeout=30).status_code == 401
        assert requests.get(api, params=params, auth=("admin", ADMIN_PASSWORD + "x"), timeout=30).status_code == 401
        ok = requests.get(api, params=params, auth=("admin", ADMIN_PASSWORD), timeout=30)
        assert ok.status_code == 200, ok.text
        assert requests.get(f"{server.url}/health", timeout=30).status_code == 200  # health stays open
        # a Host header that is not ours (DNS rebinding) is refused even with valid credentials
        evil = requests.get(api, params=params, auth=("admin", ADMIN_PASSWORD), headers={"Host": "evil.example:80"},
                            timeout=30)
        assert evil.status_code == 403
        # the MLflow client authenticates with MLFLOW_TRACKING_USERNAME / PASSWORD
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        client = MlflowClient(tracking_uri=server.url)
        run = client.create_run(client.create_experiment("auth"))
        client.log_batch(run.info.run_id, metrics=[Metric("x", 1.0, 0, 0)])
        assert client.get_metric_history(run.info.run_id, "x")[0].value == 1.0
        assert ADMIN_PASSWORD not in (tmp_path / "server.log").read_text()
    users = (tmp_path / "basic_auth.db").read_bytes()
    assert b"admin" in users and ADMIN_PASSWORD.encode() not in users  # stored hashed


# ---------------------------------------------------------------------------
# Optuna on PostgreSQL
# ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_optuna_study_on_postgres(make_pg_database):
    import optuna

    from experiments.pruning.pruner import CollapsePruner, make_pruner, signals_by_step

    url = make_pg_database()
    pruner = make_pruner("pretrain", {"enabled": True})
    assert isinstance(pruner, CollapsePruner)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="pg", storage=url, pruner=pruner, direction="minimize")
    reported: dict[str, list[tuple[int, float]]] = {}
    pruned_at: dict[str, int | None] = {}
    for kind in ("healthy", "collapsed"):
        trial = study.ask()
        trial.set_user_attr("kind", kind)
        reported[kind], pruned_at[kind] = [], None
        for epoch in range(1, 11):
            ratio = 0.999 if kind == "collapsed" else 1.0 - 0.05 * epoch
            trial.set_user_attr(f"ablate.signals@{epoch}", {"swav/loss_over_ln_k": ratio, "swav/embedding_std": 0.05,
                                                             "swav/prototypes_used": 12.0})
            trial.report(ratio, epoch)
            reported[kind].append((epoch, ratio))
            if trial.should_prune():
                pruned_at[kind] = epoch
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, reported[kind][-1][1])
    assert pruned_at == {"healthy": None, "collapsed": 6}  # warmup 2 + patience 4
    # read back through a fresh connection: what a second process (the UI, `ablate report`) sees
    again = optuna.load_study(study_name="pg", storage=url)
    by_kind = {t.user_attrs["kind"]: t for t in again.get_trials(deepcopy=False)}
    assert by_kind["collapsed"].state == optuna.trial.TrialState.PRUNED
    assert by_kind["healthy"].state == optuna.trial.TrialState.COMPLETE
    for kind, values in reported.items():
        assert sorted(by_kind[kind].intermediate_values.items()) == values
        assert sorted(signals_by_step(by_kind[kind])) == [e for e, _ in values]


# ---------------------------------------------------------------------------
# The package
# ---------------------------------------------------------------------------


def test_the_package_exports_every_name_of_its_modules():
    """``from experiments.server import X`` is how the rest of the service reaches each module's names."""
    by_module = {name: importlib.import_module(f"experiments.server.{name}")
                 for name in ("checks", "settings", "auth", "supervisor", "command")}
    assert len(S.__all__) == len(set(S.__all__))
    for name in S.__all__:
        homes = [m for m, module in by_module.items() if getattr(module, name, None) is getattr(S, name)]
        assert homes, f"experiments.server.{name} is none of its modules' names"
