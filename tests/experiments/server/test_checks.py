"""experiments/server/checks.py: which binds count as loopback, the ``--allowed-hosts`` and CORS lists built from the
bind host and the extra names, the port check (free, in range, on this machine; 0 picks one) and the sqlite URIs made
absolute."""

from __future__ import annotations

import socket

import pytest

from experiments import server as S
from experiments.server.checks import (
    allowed_hosts_for, check_bind, check_port, cors_origins_for, is_sql_uri, normalize_backend_uri,
)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LocalHost", True), ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.20", False),
    ("gpu-box.lab", False), ("localhost.evil.example", False),
])
def test_is_loopback_host(host, loopback):
    assert S.is_loopback_host(host) is loopback


def test_allowed_hosts_name_loopback_the_bind_host_and_the_extras_bare_and_with_the_port():
    loopback = ["localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000", "[::1]", "[::1]:5000"]
    assert allowed_hosts_for("127.0.0.1", 5000) == loopback  # no duplicate for a loopback bind
    assert allowed_hosts_for("0.0.0.0", 5000, ["mlflow", " ", "proxy:8080", "*.lab"]) == [
        *loopback, "mlflow", "mlflow:5000", "proxy:8080", "*.lab"]  # a name with a port or a wildcard stays as given
    assert allowed_hosts_for("fd00::7", 5000)[-2:] == ["[fd00::7]", "[fd00::7]:5000"]


def test_cors_origins_are_the_non_loopback_names_only():
    assert cors_origins_for("127.0.0.1", 5000) == []  # MLflow allows loopback origins already
    assert cors_origins_for("0.0.0.0", 5000, ["gpu-box.lab", "proxy:8080", "*.lab"]) == [
        "http://gpu-box.lab:5000", "https://gpu-box.lab"]


def test_check_bind_names_the_command_and_the_fixes():
    check_bind("127.0.0.1", auth=False, insecure_no_auth=False)  # loopback: always allowed
    check_bind("0.0.0.0", auth=True, insecure_no_auth=False)
    with pytest.raises(S.ServerConfigError, match=r"^ablate ui --host '': ablate ui has no auth, so anyone .*SSH tunnel"):
        check_bind("", auth=False, insecure_no_auth=False, command="ablate ui")


def test_check_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(S.ServerConfigError, match=rf"port {taken} on 127.0.0.1 is in use \(another server\?\); "
                                                      r"pick another with --port N \(--port 0: any free port\)"):
            check_port("127.0.0.1", taken, allow_any=True)
    assert check_port("127.0.0.1", taken) == taken  # free again
    assert check_port("127.0.0.1", 0, allow_any=True) > 0
    for bad, allow_any, message in ((0, False, r"--port 0: must be an integer in 1\.\.65535; e\.g\. --port 5000"),
                                    (65536, True, r"in 0\.\.65535 \(0: any free port\)"), (True, True, "--port True")):
        with pytest.raises(S.ServerConfigError, match=message):
            check_port("127.0.0.1", bad, allow_any=allow_any)
    with pytest.raises(S.ServerConfigError, match=r"--host 192\.0\.2\.7: cannot bind .*use an address of this machine"):
        check_port("192.0.2.7", 5000)  # TEST-NET-1: an address no machine here has


def test_sql_uris_and_sqlite_paths_made_absolute(tmp_path, monkeypatch):
    assert is_sql_uri("postgresql+psycopg://u@h/db") and is_sql_uri("SQLITE:///x.db") and is_sql_uri("mssql://h/db")
    assert not is_sql_uri("http://127.0.0.1:5000") and not is_sql_uri("mlruns") and not is_sql_uri("file:///mlruns")
    monkeypatch.chdir(tmp_path)
    assert normalize_backend_uri("sqlite:///db/mlflow.db?timeout=5") == f"sqlite:///{tmp_path}/db/mlflow.db?timeout=5"
    assert normalize_backend_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    for unchanged in ("sqlite:///:memory:", "postgresql+psycopg://u@h/db"):
        assert normalize_backend_uri(unchanged) == unchanged
