"""The team tracking server: real `mlflow server` processes on loopback, free ports.

* option checks and the command line (fast, no server);
* 8 writer processes logging through a server backed by sqlite and by PostgreSQL: every
  metric arrives exactly once;
* a client keeps logging while the server is down for ~10 s and loses nothing;
* basic auth: no password -> refused at start; 401 without credentials and for MLflow's old
  default password; the configured password works;
* an Optuna study on PostgreSQL with the collapse pruner.

Tests needing PostgreSQL (127.0.0.1:5432, or $ABLATE_TEST_POSTGRES_URL) or the basic-auth extra
(Flask-WTF, from ``mlflow[auth]``) skip here when those are missing, and fail under CI=true.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
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

PG_ADMIN_URL = os.environ.get("ABLATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
ADMIN_PASSWORD = "test-" + uuid.uuid4().hex  # >= 12 characters, different every run

WRITERS, RUNS, STEPS, KEYS, STEPS_PER_BATCH = 8, 3, 50, 4, 5


def _unavailable(reason: str) -> None:
    """Fail under CI (the dependency is part of the deployment), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must be available)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
# Fast checks: options, command line, retries
# ---------------------------------------------------------------------------


def test_settings_defaults_are_safe(tmp_path):
    s = S.ServerSettings(f"sqlite:///{tmp_path}/mlflow.db")
    assert s.host == "127.0.0.1"
    assert s.artifacts_destination == str(tmp_path / "artifacts")
    argv, env = S.build_command(s, environ={})
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--serve-artifacts" in argv and argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "artifacts")
    hosts = argv[argv.index("--allowed-hosts") + 1].split(",")
    assert "127.0.0.1:5000" in hosts and "localhost" in hosts and "*" not in hosts
    assert not any(h.startswith(("10.", "192.168")) for h in hosts)  # MLflow's default would allow private nets
    assert "--app-name" not in argv
    assert env[S.ENV_BACKEND_STORE_URI] == f"sqlite:///{tmp_path}/mlflow.db"


def test_secrets_stay_out_of_the_command_line(tmp_path):
    auth_cfg = S.write_auth_config(tmp_path, "postgresql+psycopg://u:dbpass-123456@db/auth", "boss")
    s = S.ServerSettings("postgresql+psycopg://u:dbpass-123456@db/mlflow", str(tmp_path / "art"), host="0.0.0.0",
                         auth=True, allowed_hosts=("mlflow", "gpu-box.lab"),
                         auth_db_uri="postgresql+psycopg://u:dbpass-123456@db/auth")
    argv, env = S.build_command(s, auth_cfg, ("boss", "admin-pass-123456"), environ={})
    joined = " ".join(argv)
    assert "dbpass-123456" not in joined and "admin-pass-123456" not in joined
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "admin-pass-123456" and env["MLFLOW_AUTH_ADMIN_USERNAME"] == "boss"
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(auth_cfg) and len(env[S.ENV_SECRET_KEY]) >= 32
    hosts = argv[argv.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow:5000", "gpu-box.lab", "gpu-box.lab:5000"} <= set(hosts) and "0.0.0.0" not in hosts
    assert "http://gpu-box.lab:5000" in argv[argv.index("--cors-allowed-origins") + 1].split(",")
    # the config file: the users' database and the admin name, never a password; owner-only
    text = auth_cfg.read_text()
    assert "database_uri = postgresql+psycopg://u:dbpass-123456@db/auth" in text and "admin_username = boss" in text
    assert "admin_password" not in text and "password1234" not in text
    assert auth_cfg.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"backend_store_uri": "http://127.0.0.1:5000"}, "not a database URL"),
    ({"backend_store_uri": "postgresql+psycopg://postgres@h/db"}, "--artifacts-destination is required"),
    ({"backend_store_uri": "postgresql+psycopg://postgres@h/db", "artifacts_destination": "/a", "auth": True},
     "--auth-db-uri"),
    ({"backend_store_uri": "sqlite:///x.db", "port": 0}, "--port 0"),
    ({"backend_store_uri": "sqlite:///x.db", "workers": 0}, "--workers 0"),
    ({"backend_store_uri": "sqlite:///x.db", "allowed_hosts": ("*",)}, "DNS rebinding"),
    ({"backend_store_uri": "sqlite:///x.db", "auth": True, "auth_db_uri": "sqlite:///x.db"}, "must differ"),
])
def test_settings_refuse_bad_options(kwargs, message):
    with pytest.raises(S.ServerConfigError, match=message):
        S.ServerSettings(**kwargs)


@pytest.mark.parametrize("env, message", [
    ({}, "ABLATE_ADMIN_PASSWORD"),
    ({S.ENV_ADMIN_PASSWORD: ""}, "ABLATE_ADMIN_PASSWORD"),
    ({S.ENV_ADMIN_PASSWORD: "password1234"}, "old public default"),
    ({S.ENV_ADMIN_PASSWORD: "short"}, "at least 12"),
    ({S.ENV_ADMIN_PASSWORD: "CHANGE_ME-admin-password"}, "placeholder"),
])
def test_admin_password_required(env, message):
    with pytest.raises(S.ServerConfigError, match=message):
        S.admin_credentials(env)


def test_admin_credentials_from_env():
    assert S.admin_credentials({S.ENV_ADMIN_PASSWORD: "a-long-password"}) == ("admin", "a-long-password")
    assert S.admin_credentials({S.ENV_ADMIN_PASSWORD: "a-long-password", S.ENV_ADMIN_USERNAME: "lab"})[0] == "lab"


def test_ablate_server_auth_without_password_starts_nothing(tmp_path, monkeypatch, capsys):
    """`ablate server --auth` with no ABLATE_ADMIN_PASSWORD: exit 2, a clear message, no server, no files."""
    import argparse

    monkeypatch.delenv(S.ENV_ADMIN_PASSWORD, raising=False)
    parser = argparse.ArgumentParser(prog="ablate")
    S.add_server_parser(parser.add_subparsers(dest="command"))
    port = free_port()
    args = parser.parse_args(["server", "--backend-store-uri", f"sqlite:///{tmp_path}/db/mlflow.db", "--port",
                              str(port), "--auth"])
    assert S.cmd_server(args) == 2
    err = capsys.readouterr().err
    assert "ABLATE_ADMIN_PASSWORD" in err and "there is no default" in err
    assert not (tmp_path / "db").exists()  # refused before migrations or anything else
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing listens there


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(S.ServerConfigError, match="in use"):
            S.start_server(f"sqlite:///{tmp_path}/mlflow.db", port=busy.getsockname()[1])


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LocalHost", True), ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.20", False),
    ("gpu-box.lab", False), ("localhost.evil.example", False),
])
def test_is_loopback_host(host, loopback):
    assert S.is_loopback_host(host) is loopback


def test_bind_off_loopback_needs_auth_or_explicit_insecure(tmp_path):
    db = f"sqlite:///{tmp_path}/mlflow.db"
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        with pytest.raises(S.ServerConfigError, match=r"without --auth: anyone who can reach this machine could "
                                                      r"create, change and delete runs.*--auth.*--insecure-no-auth"):
            S.ServerSettings(db, host=host)
    assert S.ServerSettings(db, host="0.0.0.0", auth=True).host == "0.0.0.0"
    assert S.ServerSettings(db, host="0.0.0.0", insecure_no_auth=True).host == "0.0.0.0"
    assert S.ServerSettings(db, host="127.0.0.1").host == "127.0.0.1"
    assert S.ServerSettings(db, host="::1").host == "::1"


def test_ablate_server_open_bind_without_auth_starts_nothing(tmp_path, capsys):
    """`ablate server --host 0.0.0.0` without --auth: exit 2, the reason and the fixes, no files."""
    import argparse

    parser = argparse.ArgumentParser(prog="ablate")
    S.add_server_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["server", "--backend-store-uri", f"sqlite:///{tmp_path}/db/mlflow.db", "--port",
                              str(free_port()), "--host", "0.0.0.0"])
    assert args.insecure_no_auth is False
    assert S.cmd_server(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--host 0.0.0.0 without --auth" in err and "--insecure-no-auth" in err
    assert not (tmp_path / "db").exists()  # refused before migrations or anything else
    assert parser.parse_args(["server", "--host", "0.0.0.0", "--insecure-no-auth"]).insecure_no_auth is True


@pytest.fixture
def ui(monkeypatch, tmp_path):
    """Run `ablate ui ARGS` through experiments.cli.main on a store in tmp_path, with the server command recorded, not run.

    Returns a function of the extra arguments -> (exit code, stdout, stderr, the server's argv or None).
    """
    from mlflow.tracking import MlflowClient

    from experiments import cli
    from experiments.results import ui as ui_module

    MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # the store exists
    execs: list[list[str]] = []
    monkeypatch.setattr(ui_module, "serve", lambda cmd, *a, **k: execs.append(list(cmd)) or 0)
    monkeypatch.setattr(cli, "quiet_libraries", lambda verbose=False: None)  # it sets process-wide variables

    def run(capsys, *extra: str):
        execs.clear()
        code = cli.main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *extra])
        out = capsys.readouterr()
        return code, out.out, out.err, (execs[0] if execs else None)

    return run


def test_ui_off_loopback_needs_insecure_no_auth(ui, capsys):
    port = str(free_port())
    code, out, err, argv = ui(capsys, "--host", "0.0.0.0", "--port", port)
    assert code == 2 and argv is None and out == ""
    assert "ablate ui --host 0.0.0.0: ablate ui has no auth" in err and "--insecure-no-auth" in err
    code, out, err, argv = ui(capsys, "--host", "0.0.0.0", "--port", port, "--insecure-no-auth")
    assert code == 0 and argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == port
    code, out, err, argv = ui(capsys, "--port", port)  # the default: loopback, no flag needed
    assert code == 0 and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert f"starting the MLflow UI on http://127.0.0.1:{port} " in out


def test_ui_refuses_a_taken_or_invalid_port(ui, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err, argv = ui(capsys, "--port", str(port))
    assert code == 2 and argv is None and out == ""  # no ready banner for a server that cannot start
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port N" in err
    for bad in ("70000", "-1"):
        code, out, err, argv = ui(capsys, "--port", bad)
        assert code == 2 and argv is None and f"--port {bad}: must be an integer in 0..65535" in err


def test_ui_port_zero_picks_a_free_port_and_prints_it(ui, capsys):
    code, out, err, argv = ui(capsys, "--port", "0")
    assert code == 0, err
    port = int(argv[argv.index("--port") + 1])
    assert port > 0 and f"starting the MLflow UI on http://127.0.0.1:{port} " in out and ":0 " not in out


def _fake_server(tmp_path, code: str) -> S.ServerHandle:
    """A ServerHandle around a stand-in process (no MLflow): exercises readiness, logs and stopping."""
    import subprocess
    import sys

    settings = S.ServerSettings(f"sqlite:///{tmp_path}/mlflow.db", port=free_port())
    proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    return S.ServerHandle(settings, proc, None, tmp_path / "server.log", None, extra_secrets=["Hidden-Pass-123"])


def test_not_ready_in_time_reports_the_log_and_stops(tmp_path):
    handle = _fake_server(tmp_path, "print('starting with Hidden-Pass-123', flush=True); import time; time.sleep(60)")
    with pytest.raises(S.ServerError, match=r"did not answer .*/health within 1 s") as info:
        S.wait_healthy(handle, timeout_s=1)
    assert "starting with ***" in str(info.value) and "Hidden-Pass-123" not in str(info.value)
    assert not handle.alive()
    assert "starting with ***" in (tmp_path / "server.log").read_text()


def test_early_exit_reports_the_exit_code_and_log(tmp_path):
    handle = _fake_server(tmp_path, "import sys; print('Error initializing backend store'); sys.exit(3)")
    with pytest.raises(S.ServerError, match="exited with code 3") as info:
        S.wait_healthy(handle, timeout_s=60)
    assert "Error initializing backend store" in str(info.value)


def test_configure_client_retries_keeps_user_values(monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    applied = configure_client_retries()
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in applied and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

    retries, factor = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    # urllib3 waits 0, 2f, 4f, ... (capped at 120 s) between tries: the client must keep trying
    # well past a 10 s restart.
    waited = sum(min(120, factor * 2 ** (n - 1)) for n in range(2, retries + 1))
    assert waited > 60
    assert configure_client_retries() == {}  # everything set now: a second call changes nothing
    with pytest.raises(ValueError, match="0..10"):
        configure_client_retries(max_retries=11)


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
