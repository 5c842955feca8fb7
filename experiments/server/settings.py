"""The options of one tracking server: their defaults and :class:`ServerSettings`, which validates them."""

from __future__ import annotations

import dataclasses
import os

from experiments.store.redaction import redact
from experiments.server.checks import (
    DEFAULT_PORT,
    ServerConfigError,
    _connect_host,
    _is_local,
    _local_path,
    _sqlite_path,
    check_bind,
    is_sql_uri,
    normalize_backend_uri,
)

ENV_AUTH_DB_URI = "ABLATE_AUTH_DB_URI"
ENV_ALLOWED_HOSTS = "ABLATE_ALLOWED_HOSTS"
ENV_BACKEND_STORE_URI = "MLFLOW_BACKEND_STORE_URI"  # the name `mlflow server` itself reads

DEFAULT_HOST = "127.0.0.1"
DEFAULT_WORKERS = 4  # MLflow's own default; each worker is one uvicorn process
DEFAULT_READY_TIMEOUT_S = 120.0  # first start on a busy machine: imports + table creation


def default_backend_store_uri() -> str:
    """``$MLFLOW_BACKEND_STORE_URI``, else the project's local store ``sqlite:///<cwd>/mlruns/mlflow.db``."""
    env = os.environ.get(ENV_BACKEND_STORE_URI)
    if env:
        return env
    from experiments.store.tracking import DEFAULT_STORE_DIR

    return f"sqlite:///{DEFAULT_STORE_DIR.resolve() / 'mlflow.db'}"


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Validated options of one tracking server.

    Args:
        backend_store_uri: SQLAlchemy URL of the tracking database (sqlite / PostgreSQL).
        artifacts_destination: where proxied artifacts live (local folder, ``file://`` or
            ``s3://``); defaults to ``artifacts/`` beside a sqlite database file.
        host: bind address; loopback unless a team deployment opens it (``0.0.0.0``).
        port: TCP port.
        auth: MLflow basic auth; needs ``ABLATE_ADMIN_PASSWORD``.
        workers: uvicorn worker processes.
        allowed_hosts: extra Host-header names clients use (``mlflow``, ``gpu-box.lab``).
        auth_db_uri: database of the auth users; defaults to ``basic_auth.db`` beside a sqlite
            backend, required otherwise (never the tracking database: MLflow treats a database
            with foreign tables as non-empty and would try to migrate it).
        insecure_no_auth: allow a bind off loopback without ``auth`` (see :func:`check_bind`).
    """

    backend_store_uri: str
    artifacts_destination: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    auth: bool = False
    workers: int = DEFAULT_WORKERS
    allowed_hosts: tuple[str, ...] = ()
    auth_db_uri: str | None = None
    insecure_no_auth: bool = False

    def _beside_store(self, name: str, error: str) -> str:
        """``name`` in the sqlite store's folder; ``error`` (a ServerConfigError) when the store is not sqlite."""
        db = _sqlite_path(self.backend_store_uri)
        if db is None:
            raise ServerConfigError(error)
        return str(db.parent / name)

    def __post_init__(self) -> None:
        uri = self.backend_store_uri
        if not is_sql_uri(uri):
            raise ServerConfigError(
                f"--backend-store-uri {redact(uri)}: not a database URL; use sqlite:///path/mlflow.db or "
                "postgresql+psycopg://USER@HOST:5432/DB (the team backend)")
        object.__setattr__(self, "backend_store_uri", normalize_backend_uri(uri))
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ServerConfigError(f"--port {self.port}: must be an integer in 1..65535")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ServerConfigError(f"--workers {self.workers}: must be an integer >= 1")
        check_bind(self.host, self.auth, self.insecure_no_auth)
        object.__setattr__(self, "allowed_hosts", tuple(h.strip() for h in self.allowed_hosts if h.strip()))
        for name in self.allowed_hosts:
            if name == "*":
                raise ServerConfigError("--allowed-hosts '*' accepts every Host header (DNS rebinding); list the "
                                        "names clients use instead")
        dest = self.artifacts_destination
        if dest is None:
            dest = self._beside_store("artifacts", "--artifacts-destination is required with a non-sqlite backend (a "
                                      "shared folder, e.g. /mlartifacts on a volume, or s3://bucket/prefix)")
        if _is_local(dest):
            dest = str(_local_path(dest).resolve())
        object.__setattr__(self, "artifacts_destination", dest)
        if self.auth:
            auth_uri = self.auth_db_uri
            if auth_uri is None:
                auth_uri = "sqlite:///" + self._beside_store("basic_auth.db", (
                    "--auth with a non-sqlite backend needs --auth-db-uri (or $ABLATE_AUTH_DB_URI): a database "
                    "for the users, separate from the tracking one, e.g. postgresql+psycopg://USER@HOST/mlflow_auth"))
            if not is_sql_uri(auth_uri):
                raise ServerConfigError(f"--auth-db-uri {redact(auth_uri)}: not a database URL")
            auth_uri = normalize_backend_uri(auth_uri)
            if auth_uri == self.backend_store_uri:
                raise ServerConfigError("--auth-db-uri must differ from --backend-store-uri (MLflow migrates the "
                                        "tracking database and must find only its own tables there)")
            object.__setattr__(self, "auth_db_uri", auth_uri)

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the server."""
        return f"http://{_connect_host(self.host)}:{self.port}"
