"""experiments/server/supervisor.py: the ``mlflow server`` command line (secrets only in the environment), a taken
port refused before anything starts, and a server process that never answers ``/health`` or exits early reported with
its redacted log and stopped (a stand-in process, no MLflow; real servers: test_server.py)."""

from __future__ import annotations

import socket
import sys

import pytest

from experiments import server as S
from experiments.server.supervisor import build_command
from experiments.testing.s3server import free_port


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


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(S.ServerConfigError, match="in use"):
            S.start_server(f"sqlite:///{tmp_path}/mlflow.db", port=busy.getsockname()[1])


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


def test_without_auth_no_stale_auth_or_store_variable_reaches_the_server(tmp_path):
    s = S.ServerSettings(f"sqlite:///{tmp_path}/mlflow.db", port=5055, workers=3)
    stale = {"MLFLOW_AUTH_ADMIN_PASSWORD": "old-pass-123456", "MLFLOW_AUTH_CONFIG_PATH": "/etc/old.ini",
             "MLFLOW_REGISTRY_STORE_URI": "sqlite:///other.db", "MLFLOW_DEFAULT_ARTIFACT_ROOT": "/elsewhere",
             "KEEP_ME": "1"}
    argv, env = build_command(s, environ=stale)
    assert argv[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert argv[argv.index("--port") + 1] == "5055" and argv[argv.index("--workers") + 1] == "3"
    assert "--cors-allowed-origins" not in argv  # loopback only: MLflow allows its origins already
    assert not (set(stale) - {"KEEP_ME"}) & set(env) and env["KEEP_ME"] == "1"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and env["PYTHONUNBUFFERED"] == "1"
    assert S.ENV_SECRET_KEY not in env


def test_auth_needs_its_config_and_credentials(tmp_path):
    s = S.ServerSettings(f"sqlite:///{tmp_path}/mlflow.db", auth=True)
    with pytest.raises(ValueError, match="build_command: auth needs auth_config and admin credentials"):
        build_command(s, environ={})
    config = S.write_auth_config(tmp_path, s.auth_db_uri, "admin")
    pinned = {S.ENV_SECRET_KEY: "k" * 64}  # a deployment that pins the CSRF key keeps it (sessions survive restarts)
    _, env = build_command(s, config, ("admin", "admin-pass-123456"), environ=pinned)
    assert env[S.ENV_SECRET_KEY] == "k" * 64
    _, first = build_command(s, config, ("admin", "admin-pass-123456"), environ={})
    _, second = build_command(s, config, ("admin", "admin-pass-123456"), environ={})
    assert first[S.ENV_SECRET_KEY] != second[S.ENV_SECRET_KEY]  # else a fresh one per start
