"""experiments/server/command.py: `ablate server` (also ``python -m experiments.server``): its options reach
:func:`run_server`, bad options exit 2 before anything starts, a server that fails exits 1, an interrupt 130."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from experiments import server as S
from experiments.server import command
from experiments.testing.s3server import free_port


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
def started(monkeypatch):
    """``run_server`` recorded, not run: ``calls`` holds the arguments of each call; it returns (or raises) ``outcome``."""
    record = SimpleNamespace(calls=[], outcome=0)

    def run_server(*args, **kwargs):
        record.calls.append((args, kwargs))
        if isinstance(record.outcome, BaseException):
            raise record.outcome
        return record.outcome

    monkeypatch.setattr(command, "run_server", run_server)
    return record


def test_options_reach_the_server(started, monkeypatch, tmp_path):
    monkeypatch.setenv(S.ENV_BACKEND_STORE_URI, f"sqlite:///{tmp_path}/env.db")
    monkeypatch.setenv(S.ENV_ALLOWED_HOSTS, " mlflow, ,gpu-box.lab,")
    assert command.main(["--port", "5055", "--workers", "2", "--host", "0.0.0.0", "--insecure-no-auth"]) == 0
    (args, kwargs), = started.calls
    assert args == (f"sqlite:///{tmp_path}/env.db", None, "0.0.0.0", 5055, False, 2, ["mlflow", "gpu-box.lab"], None,
                    S.DEFAULT_READY_TIMEOUT_S)
    assert kwargs == {"insecure_no_auth": True}
    command.main(["--backend-store-uri", "sqlite:///given.db", "--allowed-hosts", "lab", "--auth"])
    args, kwargs = started.calls[-1]
    assert args[0] == "sqlite:///given.db" and args[4] is True and args[6] == ["lab"]  # the option beats the variable


@pytest.mark.parametrize("outcome, code, said", [
    (S.ServerConfigError("port 5000 on 127.0.0.1 is in use"), 2, "ablate: error: port 5000 on 127.0.0.1 is in use\n"),
    (S.ServerError("the MLflow server exited with code 3"), 1, "ablate: error: the MLflow server exited with code 3\n"),
    (KeyboardInterrupt(), 130, "ablate server: interrupted\n"),
], ids=["bad options", "server failed", "interrupted"])
def test_failures_exit_with_their_code_and_one_line(started, capsys, outcome, code, said):
    started.outcome = outcome
    assert command.main(["--backend-store-uri", "sqlite:///x.db"]) == code
    assert capsys.readouterr().err == said
