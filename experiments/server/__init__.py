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

The client side lives elsewhere: :func:`experiments.store.tracking.configure_client_retries` makes
MLflow's REST client ride out a server restart, and :mod:`experiments.store.redaction` keeps credentials
out of params, tags, text artifacts and error messages.

The package, by concern (each module imports only those above it):

* :mod:`~experiments.server.checks`: host, ``--allowed-hosts``, CORS, bind, port and URI checks; the errors;
* :mod:`~experiments.server.settings`: the defaults and :class:`ServerSettings`, which validates the options;
* :mod:`~experiments.server.auth`: the admin's credentials and the basic-auth config file;
* :mod:`~experiments.server.supervisor`: migrations, the ``mlflow server`` command line, starting it,
  waiting for ``/health`` and stopping it (:class:`ServerHandle`, :func:`start_server`, :func:`run_server`);
* :mod:`~experiments.server.command`: the ``ablate server`` parser and command (``python -m experiments.server``).
"""

from experiments.server.checks import (
    DEFAULT_PORT,
    ENV_ADMIN_PASSWORD,
    LOOPBACK_NAMES,
    SQL_SCHEMES,
    UNSPECIFIED_HOSTS,
    ServerConfigError,
    ServerError,
    allowed_hosts_for,
    check_bind,
    check_port,
    cors_origins_for,
    is_loopback_host,
    is_sql_uri,
    normalize_backend_uri,
)
from experiments.server.settings import (
    DEFAULT_HOST,
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_WORKERS,
    ENV_ALLOWED_HOSTS,
    ENV_AUTH_DB_URI,
    ENV_BACKEND_STORE_URI,
    ServerSettings,
    default_backend_store_uri,
)
from experiments.server.auth import (
    DEFAULT_ADMIN_USERNAME,
    ENV_ADMIN_USERNAME,
    ENV_SECRET_KEY,
    LEGACY_DEFAULT_PASSWORD,
    MIN_PASSWORD_LENGTH,
    admin_credentials,
    write_auth_config,
)
from experiments.server.supervisor import (
    LOG_TAIL_LINES,
    ServerHandle,
    build_command,
    run_server,
    start_server,
    upgrade_database,
    wait_healthy,
)
from experiments.server.command import add_server_parser, cmd_server, main

__all__ = [
    # checks
    "DEFAULT_PORT", "ENV_ADMIN_PASSWORD", "LOOPBACK_NAMES", "SQL_SCHEMES", "UNSPECIFIED_HOSTS",
    "ServerConfigError", "ServerError", "allowed_hosts_for", "check_bind", "check_port", "cors_origins_for",
    "is_loopback_host", "is_sql_uri", "normalize_backend_uri",
    # settings
    "DEFAULT_HOST", "DEFAULT_READY_TIMEOUT_S", "DEFAULT_WORKERS", "ENV_ALLOWED_HOSTS", "ENV_AUTH_DB_URI",
    "ENV_BACKEND_STORE_URI", "ServerSettings", "default_backend_store_uri",
    # auth
    "DEFAULT_ADMIN_USERNAME", "ENV_ADMIN_USERNAME", "ENV_SECRET_KEY", "LEGACY_DEFAULT_PASSWORD",
    "MIN_PASSWORD_LENGTH", "admin_credentials", "write_auth_config",
    # supervisor
    "LOG_TAIL_LINES", "ServerHandle", "build_command", "run_server", "start_server", "upgrade_database",
    "wait_healthy",
    # command
    "add_server_parser", "cmd_server", "main",
]
