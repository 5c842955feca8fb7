"""Running ``mlflow server``: migrate the database, build its command line, spawn it, wait for ``/health``, stop it."""

from __future__ import annotations

import collections
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

from experiments.store.objectstore import ObjectStoreError, check_bucket, is_s3
from experiments.store.redaction import redact
from experiments.server.auth import ENV_SECRET_KEY, admin_credentials, write_auth_config
from experiments.server.checks import (
    DEFAULT_PORT,
    ServerConfigError,
    ServerError,
    _is_local,
    _sqlite_path,
    allowed_hosts_for,
    check_port,
    cors_origins_for,
    is_loopback_host,
)
from experiments.server.settings import (
    DEFAULT_HOST,
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_WORKERS,
    ENV_AUTH_DB_URI,
    ENV_BACKEND_STORE_URI,
    ServerSettings,
)

LOG_TAIL_LINES = 200


# ---------------------------------------------------------------------------
# Before the start: the database and the command line
# ---------------------------------------------------------------------------


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
            password, port in use, an S3 artifact bucket that is missing or refuses the
            credentials of ``environ`` — nothing was started.
        ServerError: migrations failed, or the server died / did not become healthy in time.
    """
    env_in = dict(os.environ if environ is None else environ)
    settings = ServerSettings(backend_store_uri, artifacts_destination, host, port, auth, workers,
                              tuple(allowed_hosts), auth_db_uri if auth_db_uri is not None else env_in.get(ENV_AUTH_DB_URI),
                              insecure_no_auth)
    admin = admin_credentials(env_in) if settings.auth else None
    bind = settings.host if settings.host not in ("", "::", "[::]") else "0.0.0.0"
    check_port(bind, settings.port)
    if is_s3(settings.artifacts_destination):  # one line now, not a traceback at the first upload
        try:
            check_bucket(str(settings.artifacts_destination), "--artifacts-destination", env_in)
        except ObjectStoreError as e:
            raise ServerConfigError(str(e)) from None
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
