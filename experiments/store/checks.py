"""The tracking store seen from its clients: reachability, failures as one-line errors, plain values.

Shared by ``report``, ``registry``, ``pull``, ``gc``, ``launch`` and the CLI. Each caller passes the
error class its users see (``ReportError``, ``RegistryError``, ``GcError``, ``LaunchSetupError``):
the store only knows that something failed, the caller knows what the user was doing.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Iterator

from experiments.store.redaction import redact
from experiments.store.sqlite_reader import is_sqlite, sqlite_path

PROBE_TIMEOUT_S = 5.0  # an unreachable server fails in seconds, not after MLflow's minutes of retries


def check_store(tracking_uri: str, error: type[ValueError]) -> None:
    """Fail fast, with one line, when the tracking store cannot be reached.

    A sqlite store must exist (a typo would otherwise create an empty database); an
    ``http(s)://`` server must answer its ``/health`` endpoint within a few seconds (MLflow's
    own client would retry for minutes before giving up).

    Raises:
        error: naming the store and what to do.
    """
    if is_sqlite(tracking_uri):
        db = sqlite_path(tracking_uri)
        if not db.is_file():
            raise error(f"no MLflow store at {db} (tracking URI {redact(tracking_uri)}); "
                        "run `ablate launch` first or pass --tracking-uri")
    elif tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):  # noqa: S310 - the user's own server
                pass
        except urllib.error.HTTPError:
            return  # it answered: a proxy or auth layer may refuse /health, the API calls will tell
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise error(f"tracking server {redact(tracking_uri)} is unreachable ({reason}); "
                        "start it (docker compose up) or check --tracking-uri") from exc


def one_line(text: Any) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed: error messages stay one line."""
    return " ".join(str(text).split())


@contextlib.contextmanager
def store_errors(tracking_uri: str, what: str, error: type[ValueError]) -> Iterator[None]:
    """Turn store failures inside the block (MLflow, SQL, HTTP, disk) into a one-line ``error`` naming ``what``.

    Our own errors (``error`` and its subclasses) pass through unchanged.
    """
    try:
        yield
    except error:
        raise
    except Exception as exc:
        if isinstance(exc, _mlflow_errors()):
            raise error(one_line(f"{what} ({redact(tracking_uri)}) failed: {exc.message}")) from exc
        if isinstance(exc, (*_client_errors(), OSError)):  # a database or server that went away, a full disk
            raise error(one_line(f"{what} ({redact(tracking_uri)}) failed: {type(exc).__name__}: {exc}")) from exc
        raise


def _loaded(*names: tuple[str, str]) -> tuple[type, ...]:
    """The exception classes ``(module, class)`` of the modules this process has imported: a class whose module
    was never imported cannot have been raised, and importing MLflow only to test for its errors costs seconds
    (the read-only commands never import it: experiments/store/sqlite_reader.py)."""
    return tuple(getattr(sys.modules[module], cls) for module, cls in names if module in sys.modules)


def _mlflow_errors() -> tuple[type, ...]:
    return _loaded(("mlflow.exceptions", "MlflowException"))


def _client_errors() -> tuple[type, ...]:
    """SQL, HTTP and sqlite3 failures, and the reader's missing entity."""
    return _loaded(("sqlalchemy.exc", "SQLAlchemyError"), ("requests.exceptions", "RequestException"),
                   ("sqlite3", "Error"), ("experiments.store.sqlite_reader", "NotFound"))


def store_failure(exc: BaseException) -> BaseException | None:
    """The tracking-store error (MLflow, SQL, HTTP) behind ``exc``, following its causes; None if there is none."""
    kinds = _mlflow_errors() + _client_errors()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def failure_text(exc: BaseException) -> str:
    """``Type: message`` of a store error on one line, without the SQL statement and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "message", exc)).split("[SQL:")[0]
    return redact(one_line(f"{type(exc).__name__}: {text}"))[:500]


def is_missing(exc: Exception) -> bool:
    """Whether a store error (MLflow's, or the sqlite reader's ``NotFound``) says the requested entity (run, model,
    version, alias) does not exist."""
    return isinstance(exc, _mlflow_errors() + _client_errors()) and getattr(exc, "error_code", None) in (
        "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


@contextlib.contextmanager
def fluent_store(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``tracking_uri`` for a block, then restore it.

    ``log_model`` has no tracking-URI argument, and the SQL registry store looks logged models
    up through the process-wide URI. ``mlflow.set_tracking_uri`` also writes (or, given None,
    deletes) ``MLFLOW_TRACKING_URI`` in the environment, so both are put back exactly as found.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_uri = tracking_utils._tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when that is a finite number, else None (missing, NaN, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
