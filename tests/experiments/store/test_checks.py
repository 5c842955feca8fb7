"""experiments.store.checks: the tracking store seen from its clients. The fast reachability check, store failures
turned into one-line errors of the caller's class (credentials redacted), a missing entity, and plain values."""

from __future__ import annotations

import http.server
import math
import os
import sqlite3
import threading

import pytest

from experiments.store.checks import (
    check_store,
    failure_text,
    finite_or_none,
    fluent_store,
    is_missing,
    one_line,
    store_errors,
    store_failure,
)
from experiments.store.sqlite_reader import NotFound
from experiments.testing.s3server import free_port


class StoreError(ValueError):
    """Stands in for the caller's own error class (ReportError, LaunchSetupError, ...)."""


@pytest.fixture
def not_found_server():
    """A server that answers every path with 404, /health included (a proxy that hides it)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_check_store_needs_the_sqlite_file_or_a_server_that_answers(tmp_path, not_found_server):
    db = tmp_path / "mlruns" / "mlflow.db"
    with pytest.raises(StoreError, match=f"^no MLflow store at {db} .*; run `ablate launch` first or pass --tracking-uri"):
        check_store(f"sqlite:///{db}", StoreError)
    assert not db.exists()  # a typo creates no empty database
    db.parent.mkdir()
    db.touch()
    check_store(f"sqlite:///{db}", StoreError)
    check_store(not_found_server, StoreError)  # it answered: the API calls will tell the rest
    closed = f"http://bob:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(StoreError, match=r"is unreachable \(.*\); start it \(docker compose up\)") as info:
        check_store(closed, StoreError)
    assert "hunter2" not in str(info.value)


def test_store_failures_become_one_line_of_the_callers_error():
    from mlflow.exceptions import MlflowException

    uri = "http://bob:hunter2@tracking:5000"
    with pytest.raises(StoreError) as info:
        with store_errors(uri, "reading study s", StoreError):
            raise MlflowException("Run 'abc' not found\n  in experiment 1")
    assert str(info.value) == "reading study s (http://bob:***@tracking:5000) failed: Run 'abc' not found in experiment 1"
    with pytest.raises(StoreError, match=r"^reading study s \(.*\) failed: OSError: \[Errno 28\] No space left"):
        with store_errors(uri, "reading study s", StoreError):
            raise OSError(28, "No space left on device")
    own = StoreError("already one line")
    with pytest.raises(StoreError) as info:
        with store_errors(uri, "x", StoreError):
            raise own
    assert info.value is own
    with pytest.raises(KeyError):  # a bug of ours is no store failure
        with store_errors(uri, "x", StoreError):
            raise KeyError("oops")


def test_the_store_error_behind_an_error_is_found_and_told_without_its_sql():
    try:
        try:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        except sqlite3.Error as exc:
            raise RuntimeError("the launch broke") from exc
    except RuntimeError as outer:
        found = store_failure(outer)
    assert isinstance(found, sqlite3.OperationalError)
    assert store_failure(RuntimeError("no store involved")) is None
    text = failure_text(sqlite3.OperationalError("database is locked\n[SQL: UPDATE runs SET x=?]\n[parameters: (1,)]"))
    assert text == "OperationalError: database is locked"
    assert len(failure_text(OSError("x" * 2000))) == 500


def test_a_missing_entity_is_told_apart_from_other_failures():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

    assert is_missing(NotFound("no run abc"))
    assert is_missing(MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_missing(MlflowException("bad filter", error_code=INVALID_PARAMETER_VALUE))
    assert not is_missing(LookupError("not a store's"))


def test_fluent_store_puts_the_process_wide_uri_back_as_found(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", "sqlite:///outer.db")  # and back after the test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///outer.db")
    with fluent_store(f"sqlite:///{tmp_path / 'inner.db'}"):
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'inner.db'}"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///outer.db" and mlflow.get_tracking_uri() == "sqlite:///outer.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    with fluent_store(f"sqlite:///{tmp_path / 'inner.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'inner.db'}"
    assert "MLFLOW_TRACKING_URI" not in os.environ and tracking_utils._tracking_uri is None  # absent before: after too


def test_one_line_and_finite_or_none():
    assert one_line("a\n  b\tc ") == "a b c" and one_line(3) == "3"
    assert finite_or_none("0.25") == 0.25 and finite_or_none(2) == 2.0
    assert [finite_or_none(v) for v in (None, "n/a", math.nan, math.inf, [])] == [None] * 5


def test_fluent_store_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///somewhere-else.db")
    with fluent_store("sqlite:///inside.db"):
        assert mlflow.get_tracking_uri() == "sqlite:///inside.db"
    import os

    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///somewhere-else.db"
    assert mlflow.get_tracking_uri() == "sqlite:///somewhere-else.db"
