"""The team tracking server: ``ablate server``, a hardened front for ``mlflow server``.

What it adds to a bare ``mlflow server``:

* safe network defaults: loopback bind unless ``--host`` is given, and a bind off loopback only
  with ``--auth`` (or an explicit ``--insecure-no-auth``, see :func:`check_bind`); ``--allowed-hosts`` always set
  (loopback names + the bind host + ``--allowed-hosts`` extras, each with and without the port) so
  a DNS-rebinding page cannot reach the API, and the matching CORS origins for the browser UI;
* artifact proxying on (``--serve-artifacts --artifacts-destination``): clients never need
  credentials for the artifact store, only for the server;
* ``--auth``: MLflow's basic-auth app. The admin password comes from ``ABLATE_ADMIN_PASSWORD``
  (the server refuses to start without one, or with MLflow's historic default ``password1234``);
  a fresh auth config is written for every start (``MLFLOW_AUTH_CONFIG_PATH``, mode 0600, users
  kept in ``--auth-db-uri``), so nothing falls back to the ``basic_auth.ini`` shipped in the wheel;
* database migrations once, before the workers start (what ``mlflow db upgrade URI`` does; a
  brand-new database gets its tables created instead);
* readiness: ``/health`` is polled before the command reports ready; on a timeout or an early
  exit the error carries the server's last log lines;
* secrets stay out of ``ps`` and logs: the backend URI travels in ``MLFLOW_BACKEND_STORE_URI``,
  the admin password in the child's environment, and every log line goes through :func:`redact`.

The client side lives elsewhere: :func:`experiments.tracking.configure_client_retries` makes
MLflow's REST client ride out a server restart, and :mod:`experiments.redaction` keeps credentials
out of params, tags, text artifacts and error messages.

Size: about 770 lines, past the ~600 aimed for: the three sections (the options and their checks,
running and watching the process, the command) are one server's life cycle and share its config.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import errno
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO
from urllib.parse import unquote, urlsplit

from experiments.redaction import redact

ENV_ADMIN_PASSWORD = "ABLATE_ADMIN_PASSWORD"
ENV_ADMIN_USERNAME = "ABLATE_ADMIN_USERNAME"
ENV_AUTH_DB_URI = "ABLATE_AUTH_DB_URI"
ENV_ALLOWED_HOSTS = "ABLATE_ALLOWED_HOSTS"
ENV_BACKEND_STORE_URI = "MLFLOW_BACKEND_STORE_URI"  # the name `mlflow server` itself reads
ENV_SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # CSRF key of the basic-auth app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_WORKERS = 4  # MLflow's own default; each worker is one uvicorn process
DEFAULT_ADMIN_USERNAME = "admin"
DEFAULT_READY_TIMEOUT_S = 120.0  # first start on a busy machine: imports + table creation
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
UNSPECIFIED_HOSTS = ("0.0.0.0", "::", "[::]", "")
# MLflow < 3.6 shipped admin/password1234 in basic_auth.ini (GHSA-gq3w-7jj3-x7gr).
LEGACY_DEFAULT_PASSWORD = "password1234"
MIN_PASSWORD_LENGTH = 12  # MLflow's user-store policy (mlflow.utils.validation._validate_password)
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
LOG_TAIL_LINES = 200



class ServerConfigError(ValueError):
    """Bad server options (missing password, no artifact destination, port taken); nothing was started."""


class ServerError(RuntimeError):
    """The server was started but did not become healthy, or it died."""


# ---------------------------------------------------------------------------
# Server options
# ---------------------------------------------------------------------------


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def is_sql_uri(uri: str) -> bool:
    """An SQLAlchemy URL of a database MLflow can use (``sqlite:///``, ``postgresql+psycopg://``, ...)."""
    return _scheme(uri) in SQL_SCHEMES


def _sqlite_path(uri: str) -> Path | None:
    if _scheme(uri) != "sqlite":
        return None
    rest = uri.split("://", 1)[1]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(unquote(rest[1:].split("?", 1)[0]))


def normalize_backend_uri(uri: str) -> str:
    """A sqlite URI made absolute (the server and its migrations must agree on the file)."""
    path = _sqlite_path(uri)
    if path is None:
        return uri
    query = "?" + uri.split("?", 1)[1] if "?" in uri else ""
    return f"sqlite:///{path.resolve()}{query}"


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)


def default_backend_store_uri() -> str:
    """``$MLFLOW_BACKEND_STORE_URI``, else the project's local store ``sqlite:///<cwd>/mlruns/mlflow.db``."""
    env = os.environ.get(ENV_BACKEND_STORE_URI)
    if env:
        return env
    from experiments.tracking import DEFAULT_STORE_DIR

    return f"sqlite:///{DEFAULT_STORE_DIR.resolve() / 'mlflow.db'}"


def _host_names(host: str, port: int, extra: Sequence[str]) -> list[str]:
    """Host-header values the server accepts: each name bare (behind a proxy on :80/:443) and with the port."""
    names: list[str] = list(LOOPBACK_NAMES)
    bind = host.strip()
    if bind not in UNSPECIFIED_HOSTS:
        names.append(_bracket_ipv6(bind))
    names += [n.strip() for n in extra if n.strip()]
    out: list[str] = []
    for name in names:
        forms = [name] if "*" in name or _has_port(name) else [name, f"{name}:{port}"]
        out += [f for f in forms if f not in out]
    return out


def _bracket_ipv6(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _has_port(name: str) -> bool:
    if name.startswith("["):
        return "]:" in name
    return name.count(":") == 1


def allowed_hosts_for(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``--allowed-hosts`` list: loopback names, the bind host and ``extra``, bare and with ``:port``."""
    return _host_names(host, port, extra)


def cors_origins_for(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """Browser origins of the UI for the non-loopback names (loopback origins MLflow allows already)."""
    origins: list[str] = []
    for name in _host_names(host, port, extra):
        if "*" in name or _has_port(name) or name in LOOPBACK_NAMES:
            continue
        for origin in (f"http://{name}:{port}", f"https://{name}"):
            if origin not in origins:
                origins.append(origin)
    return origins


def _connect_host(host: str) -> str:
    """Where this machine reaches a server bound to ``host`` (an unspecified bind -> loopback)."""
    if host in UNSPECIFIED_HOSTS:
        return "127.0.0.1"
    return _bracket_ipv6(host)


def is_loopback_host(host: str) -> bool:
    """Whether a bind to ``host`` is reachable from this machine only: 127.0.0.0/8, ``::1`` or ``localhost``.

    Anything else counts as open to the network: ``0.0.0.0`` / ``::`` (every interface), a LAN
    address, or a host name (it may resolve to any interface; only ``localhost`` is trusted).
    """
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def check_bind(host: str, auth: bool, insecure_no_auth: bool, command: str = "ablate server") -> None:
    """Refuse to open an unauthenticated tracking server or UI to the network.

    Anyone who reaches an MLflow server without auth can create, change and delete runs,
    experiments and registered models. A loopback bind (:func:`is_loopback_host`) is always
    allowed; any other needs ``auth`` or the explicit ``insecure_no_auth``. Shared by
    ``ablate server`` and ``ablate ui`` (which has no auth).

    Raises:
        ServerConfigError: ``host`` is off loopback, without auth and without ``insecure_no_auth``.
    """
    if auth or insecure_no_auth or is_loopback_host(host):
        return
    shown = host if host.strip() else "''"
    risk = "anyone who can reach this machine could create, change and delete runs, experiments and models"
    if command == "ablate server":
        raise ServerConfigError(f"{command} --host {shown} without --auth: {risk}; add --auth (admin password in "
                                f"${ENV_ADMIN_PASSWORD}), bind --host 127.0.0.1, or pass --insecure-no-auth on a "
                                "network you trust")
    raise ServerConfigError(f"{command} --host {shown}: {command} has no auth, so {risk}; keep --host 127.0.0.1 "
                            "(reach it from elsewhere through an SSH tunnel), run `ablate server --auth` for a team, "
                            "or pass --insecure-no-auth on a network you trust")


def _bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound right now (None when it can); an unspecified host binds every interface."""
    name = host.strip().strip("[]")
    family = socket.AF_INET6 if ":" in name else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
            s.bind((name or "0.0.0.0", port))
    except OSError as exc:  # socket.gaierror (an unknown host name) included
        return exc
    return None


def _port_free(host: str, port: int) -> bool:
    return _bind_error(host, port) is None


def check_port(host: str, port: int, allow_any: bool = False) -> int:
    """The port a server on ``host`` will listen on, checked free now; ``0`` (with ``allow_any``) picks a free one.

    Raises:
        ServerConfigError: ``port`` outside 1..65535 (0..65535 with ``allow_any``), already in
            use, or ``host`` not an address of this machine.
    """
    lowest = 0 if allow_any else 1
    if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port <= 65535:
        hint = " (0: any free port)" if allow_any else ""
        raise ServerConfigError(f"--port {port}: must be an integer in {lowest}..65535{hint}; e.g. --port {DEFAULT_PORT}")
    name = host.strip().strip("[]")
    if port == 0:
        family = socket.AF_INET6 if ":" in name else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((name or "0.0.0.0", 0))
                return int(s.getsockname()[1])
        except OSError as exc:
            raise ServerConfigError(f"--host {host}: cannot bind it ({exc.strerror or exc}); use an address of this "
                                    "machine, e.g. --host 127.0.0.1") from exc
    error = _bind_error(host, port)
    if error is None:
        return port
    if error.errno in (errno.EADDRINUSE, errno.EACCES):
        what = "is in use (another server?)" if error.errno == errno.EADDRINUSE else "needs root (ports below 1024)"
        any_port = " (--port 0: any free port)" if allow_any else ""
        raise ServerConfigError(f"port {port} on {host or '0.0.0.0'} {what}; pick another with --port N{any_port} "
                                "or stop the other process")
    raise ServerConfigError(f"--host {host}: cannot bind {host}:{port} ({error.strerror or error}); use an address of "
                            "this machine, e.g. --host 127.0.0.1")


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
            db = _sqlite_path(self.backend_store_uri)
            if db is None:
                raise ServerConfigError(
                    "--artifacts-destination is required with a non-sqlite backend (a shared folder, e.g. "
                    "/mlartifacts on a volume, or s3://bucket/prefix)")
            dest = str(db.parent / "artifacts")
        if _is_local(dest):
            dest = str(_local_path(dest).resolve())
        object.__setattr__(self, "artifacts_destination", dest)
        if self.auth:
            auth_uri = self.auth_db_uri
            if auth_uri is None:
                db = _sqlite_path(self.backend_store_uri)
                if db is None:
                    raise ServerConfigError(
                        "--auth with a non-sqlite backend needs --auth-db-uri (or $ABLATE_AUTH_DB_URI): a database "
                        "for the users, separate from the tracking one, e.g. postgresql+psycopg://USER@HOST/mlflow_auth")
                auth_uri = f"sqlite:///{db.parent / 'basic_auth.db'}"
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


def admin_credentials(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(username, password) of the auth admin from ``ABLATE_ADMIN_USERNAME`` / ``ABLATE_ADMIN_PASSWORD``.

    Raises:
        ServerConfigError: no password, a CHANGE_ME placeholder, MLflow's historic default, or
            shorter than 12 characters.
    """
    env = os.environ if environ is None else environ
    username = env.get(ENV_ADMIN_USERNAME) or DEFAULT_ADMIN_USERNAME
    password = env.get(ENV_ADMIN_PASSWORD, "")
    if not password:
        raise ServerConfigError(
            f"--auth needs the admin password in ${ENV_ADMIN_PASSWORD} (there is no default); e.g. "
            f"export {ENV_ADMIN_PASSWORD}=\"$(python -c 'import secrets; print(secrets.token_urlsafe(24))')\"")
    if "changeme" in password.lower().replace("_", "").replace("-", ""):
        raise ServerConfigError(f"${ENV_ADMIN_PASSWORD} is still the placeholder from docker/.env.example; set a real "
                                "password")
    if password == LEGACY_DEFAULT_PASSWORD:
        raise ServerConfigError(f"${ENV_ADMIN_PASSWORD} is MLflow's old public default password; choose another")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ServerConfigError(f"${ENV_ADMIN_PASSWORD} is {len(password)} characters; MLflow requires at least "
                                f"{MIN_PASSWORD_LENGTH}")
    return username, password


def write_auth_config(directory: str | Path, auth_db_uri: str, admin_username: str) -> Path:
    """A fresh basic-auth config (``MLFLOW_AUTH_CONFIG_PATH``), readable by the owner only.

    It names the users' database and the admin's username: the admin password reaches MLflow
    through ``MLFLOW_AUTH_ADMIN_PASSWORD`` in the server's environment and is never written to
    disk. (A PostgreSQL ``auth_db_uri`` may carry the database password; the file lives in a
    private temporary folder removed when the server stops.) Authenticated users get READ on
    other users' experiments by default.
    """
    path = Path(directory) / "basic_auth.ini"
    text = "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {auth_db_uri.replace('%', '%%')}",  # configparser interpolation
        f"admin_username = {admin_username}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def upgrade_database(uri: str) -> None:
    """Bring a tracking database to MLflow's current schema, once, before any worker starts.

    Does exactly what ``mlflow db upgrade URI`` does (mlflow/db.py) — a brand-new, empty
    database gets its tables created, an existing one is migrated — but in this process, so the
    URL (and its password) never appears on a command line, and the engine is disposed so no
    connection stays open.
    """
    from mlflow.store.db import utils as db_utils

    path = _sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = db_utils.create_sqlalchemy_engine_with_retry(uri)
    except Exception as exc:  # noqa: BLE001 - any driver error: report it without the password
        raise ServerError(f"cannot open the tracking database {redact(uri)}: {redact(str(exc))}") from None
    try:
        if db_utils._is_empty_database(engine):
            db_utils._initialize_tables(engine)
        else:
            db_utils._upgrade_db(engine)
    except Exception as exc:  # noqa: BLE001
        raise ServerError(f"migrating {redact(uri)} failed (restore the backup taken before the upgrade, "
                          f"see docker/README.md): {redact(str(exc))}") from None
    finally:
        engine.dispose()


def build_command(settings: ServerSettings, auth_config: Path | None = None,
                  admin: tuple[str, str] | None = None,
                  environ: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and its environment (secrets only in the environment)."""
    base = dict(os.environ if environ is None else environ)
    argv = [sys.executable, "-m", "mlflow", "server",
            "--serve-artifacts", "--artifacts-destination", str(settings.artifacts_destination),
            "--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers),
            "--allowed-hosts", ",".join(allowed_hosts_for(settings.host, settings.port, settings.allowed_hosts))]
    origins = cors_origins_for(settings.host, settings.port, settings.allowed_hosts)
    if origins:
        argv += ["--cors-allowed-origins", ",".join(origins)]
    env = {**base, ENV_BACKEND_STORE_URI: settings.backend_store_uri, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_REGISTRY_STORE_URI", None)  # the registry lives in the same database
    env.pop("MLFLOW_DEFAULT_ARTIFACT_ROOT", None)  # new experiments use the proxy (mlflow-artifacts:/)
    # GenAI job execution (huey workers) is no part of an ablation service: fewer processes.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if settings.auth:
        if auth_config is None or admin is None:
            raise ValueError("build_command: auth needs auth_config and admin credentials")
        argv += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
        # Set explicitly: a stale MLFLOW_AUTH_ADMIN_* of the caller would override the config file.
        env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin
        # The CSRF key must be the same in every worker; the parent generates one per start
        # unless the deployment pins it (browser sessions then survive restarts).
        env[ENV_SECRET_KEY] = base.get(ENV_SECRET_KEY) or secrets.token_hex(32)
    else:
        for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH"):
            env.pop(key, None)
    return argv, env


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------


class ServerHandle:
    """A running ``mlflow server`` (its own process group), its log and how to stop it.

    Use as a context manager, or call :meth:`stop`. ``url`` is where a client on this machine
    reaches it; ``log_tail()`` returns its last (redacted) log lines.
    """

    def __init__(self, settings: ServerSettings, process: subprocess.Popen, state_dir: Path | None,
                 log_path: Path | None, echo: TextIO | None, extra_secrets: Sequence[str] = ()) -> None:
        self.settings = settings
        self.process = process
        self.url = settings.url
        self.log_path = log_path
        self._state_dir = state_dir
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._echo = echo
        self._secrets = tuple(extra_secrets)
        self._reader = threading.Thread(target=self._pump, name=f"mlflow-server-{settings.port}-log", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None  # always a pipe: set by start_server
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for raw in self.process.stdout:
                line = redact(raw.rstrip("\n"), self._secrets)
                self._lines.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
                if self._echo is not None:
                    print(line, file=self._echo, flush=True)
        finally:
            if log:
                log.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        """Whether the ``mlflow server`` process is still running."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last log lines (secrets redacted)."""
        return "\n".join(list(self._lines)[-lines:])

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        code = self.process.wait()
        self._reader.join(timeout=5)
        self._cleanup()
        return code

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # the server, its uvicorn supervisor and workers
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM to the process group: uvicorn finishes in-flight requests), then SIGKILL."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=10)
        # Workers may outlive their parent for a moment; make sure the port is released.
        self._signal_group(signal.SIGKILL)
        self._reader.join(timeout=5)
        self._cleanup()
        return self.process.returncode

    def _cleanup(self) -> None:
        if self._state_dir is not None:
            import shutil

            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _health(url: str, timeout_s: float = 2.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(f"{url}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(handle: ServerHandle, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
    """Poll ``/health`` until it answers 200.

    Raises:
        ServerError: the process exited, or ``timeout_s`` passed; with the last log lines. The
            server is stopped first.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        if not handle.alive():
            handle.stop()
            raise ServerError(f"the MLflow server exited with code {handle.process.returncode} before it was "
                              f"ready; last log lines:\n{handle.log_tail()}")
        if _health(handle.url):
            return
        if time.monotonic() > deadline:
            handle.stop()
            raise ServerError(f"the MLflow server did not answer {handle.url}/health within {timeout_s:.0f} s; "
                              f"last log lines:\n{handle.log_tail()}")
        time.sleep(delay)
        delay = min(1.0, delay * 1.5)


def start_server(backend_store_uri: str, artifacts_destination: str | None = None, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, auth: bool = False, workers: int = DEFAULT_WORKERS,
                 allowed_hosts: Sequence[str] = (), auth_db_uri: str | None = None,
                 ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S, log_path: str | Path | None = None,
                 echo: TextIO | None = None, environ: Mapping[str, str] | None = None,
                 insecure_no_auth: bool = False) -> ServerHandle:
    """Start ``mlflow server`` in the background and return once ``/health`` answers.

    Order: validate options (and, with ``auth``, the admin password) -> check the port is free ->
    migrate the database -> write the auth config -> spawn the server in its own process group ->
    poll ``/health``.

    Args:
        backend_store_uri: tracking database (SQLAlchemy URL).
        artifacts_destination: proxied artifact store (see :class:`ServerSettings`).
        host: bind address (loopback by default).
        port: TCP port.
        auth: MLflow basic auth with the admin from ``ABLATE_ADMIN_USERNAME``/``ABLATE_ADMIN_PASSWORD``.
        workers: uvicorn worker processes.
        allowed_hosts: extra Host-header names clients use.
        auth_db_uri: database of the auth users (see :class:`ServerSettings`).
        ready_timeout_s: how long to wait for ``/health``.
        log_path: append the server's (redacted) output to this file.
        echo: also print the output there (``sys.stdout`` for a foreground server).
        environ: environment to read the admin password from and pass on (default: ``os.environ``).
        insecure_no_auth: allow a bind off loopback without ``auth`` (see :func:`check_bind`).

    Raises:
        ServerConfigError: bad options (a bind off loopback without auth included), no admin
            password, port in use — nothing was started.
        ServerError: migrations failed, or the server died / did not become healthy in time.
    """
    env_in = dict(os.environ if environ is None else environ)
    settings = ServerSettings(backend_store_uri, artifacts_destination, host, port, auth, workers,
                              tuple(allowed_hosts), auth_db_uri if auth_db_uri is not None else env_in.get(ENV_AUTH_DB_URI),
                              insecure_no_auth)
    admin = admin_credentials(env_in) if settings.auth else None
    bind = settings.host if settings.host not in ("", "::", "[::]") else "0.0.0.0"
    check_port(bind, settings.port)
    if _is_local(str(settings.artifacts_destination)):
        Path(str(settings.artifacts_destination)).mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.backend_store_uri)
    state_dir = Path(tempfile.mkdtemp(prefix="ablate-server-"))
    try:
        auth_config = None
        if settings.auth:
            assert admin is not None and settings.auth_db_uri is not None  # set just above when auth is on
            auth_path = _sqlite_path(settings.auth_db_uri)
            if auth_path is not None:
                auth_path.parent.mkdir(parents=True, exist_ok=True)
            auth_config = write_auth_config(state_dir, settings.auth_db_uri, admin[0])
        argv, env = build_command(settings, auth_config, admin, env_in)
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
    except BaseException:
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)
        raise
    secrets_to_hide = [admin[1]] if admin else []
    handle = ServerHandle(settings, process, state_dir, Path(log_path) if log_path else None, echo, secrets_to_hide)
    try:
        wait_healthy(handle, ready_timeout_s)
    except BaseException:
        handle.stop()
        raise
    return handle


def run_server(backend_store_uri: str, artifacts_destination: str | None = None, host: str = DEFAULT_HOST,
               port: int = DEFAULT_PORT, auth: bool = False, workers: int = DEFAULT_WORKERS,
               allowed_hosts: Sequence[str] = (), auth_db_uri: str | None = None,
               ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S, out: TextIO = sys.stdout,
               insecure_no_auth: bool = False) -> int:
    """Run the server in the foreground until it exits or this process gets SIGINT / SIGTERM.

    The server's log goes to ``out``; once ``/health`` answers, one line says where it listens.
    SIGTERM is handled (not the default action) because this is PID 1 in the compose container,
    where an unhandled SIGTERM is ignored and ``docker stop`` would wait for SIGKILL.

    Returns:
        The server's exit code (0 after a requested stop).
    """
    def _interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds start_server / wait below, which stop the server group

    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    handle: ServerHandle | None = None
    try:
        handle = start_server(backend_store_uri, artifacts_destination, host, port, auth, workers, allowed_hosts,
                              auth_db_uri, ready_timeout_s, echo=out, insecure_no_auth=insecure_no_auth)
        s = handle.settings
        if not s.auth and not is_loopback_host(s.host):
            print(f"ablate server: WARNING: --insecure-no-auth: anyone who can reach port {s.port} can create, change "
                  "and delete runs and models", file=out, flush=True)
        print(f"ablate server: ready on http://{s.host}:{s.port} (store {redact(s.backend_store_uri)}, artifacts "
              f"{redact(str(s.artifacts_destination))}, auth {'on' if s.auth else 'off'}); Ctrl-C to stop",
              file=out, flush=True)
        try:
            return handle.wait()
        except KeyboardInterrupt:
            print("ablate server: stopping", file=out, flush=True)
            handle.stop()
            return 0
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if handle is not None:
            handle.stop()


# ---------------------------------------------------------------------------
# The `ablate server` command
# ---------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_server_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ablate server`` to the CLI's subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "server", help="run the team MLflow tracking server (artifact proxying, optional basic auth)",
        description="Run `mlflow server` with safe defaults: loopback bind, allowed Host headers, proxied "
                    "artifacts, migrations before start, /health checked before reporting ready.")
    p.add_argument("--backend-store-uri", default=None, metavar="URI",
                   help="tracking database (default: $MLFLOW_BACKEND_STORE_URI, else sqlite:///mlruns/mlflow.db); "
                        "prefer the variable for a URL with a password, it stays out of `ps`")
    p.add_argument("--artifacts-destination", default=None, metavar="URI",
                   help="where proxied artifacts are stored: folder or s3://... (default: artifacts/ beside a "
                        "sqlite database; required for PostgreSQL)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="bind address (default 127.0.0.1: this machine only; 0.0.0.0 for a team server, which "
                        "needs --auth or --insecure-no-auth)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default 5000)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="uvicorn worker processes (default 4)")
    p.add_argument("--auth", action="store_true",
                   help=f"MLflow basic auth; the admin password comes from ${ENV_ADMIN_PASSWORD} (required), the "
                        f"username from ${ENV_ADMIN_USERNAME} (default admin)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow a --host off loopback without --auth: anyone who reaches the port can create, "
                        "change and delete runs and models (only on a network you trust)")
    p.add_argument("--auth-db-uri", default=None, metavar="URI",
                   help=f"database of the auth users (default: ${ENV_AUTH_DB_URI}, else basic_auth.db beside a "
                        "sqlite backend; required with PostgreSQL)")
    p.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help=f"comma-separated host names clients use to reach the server, besides loopback and --host "
                        f"(default: ${ENV_ALLOWED_HOSTS}); other Host headers are refused (DNS rebinding)")
    p.add_argument("--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT_S, metavar="SECONDS",
                   help="how long to wait for /health before giving up (default 120)")
    return p


def cmd_server(args: argparse.Namespace) -> int:
    """``ablate server``: 0 after a clean stop, 2 for bad options, 1 if the server failed."""
    hosts = args.allowed_hosts if args.allowed_hosts is not None else os.environ.get(ENV_ALLOWED_HOSTS, "")
    try:
        return run_server(args.backend_store_uri or default_backend_store_uri(), args.artifacts_destination,
                          args.host, args.port, args.auth, args.workers, _csv(hosts), args.auth_db_uri,
                          args.ready_timeout, insecure_no_auth=args.insecure_no_auth)
    except ServerConfigError as exc:
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # stopped while starting; start_server has already stopped the server
        print("ablate server: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.server ...`` — the same options as ``ablate server``."""
    parser = argparse.ArgumentParser(prog="ablate")
    sub = parser.add_subparsers(dest="command", required=True)
    add_server_parser(sub)
    return cmd_server(parser.parse_args(["server", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    sys.exit(main())
