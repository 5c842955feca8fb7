"""Basic auth of the server: the admin's credentials and the auth config file (users' database, admin name)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from experiments.server.checks import ENV_ADMIN_PASSWORD, ServerConfigError

ENV_ADMIN_USERNAME = "ABLATE_ADMIN_USERNAME"
ENV_SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # CSRF key of the basic-auth app

DEFAULT_ADMIN_USERNAME = "admin"
# MLflow < 3.6 shipped admin/password1234 in basic_auth.ini (GHSA-gq3w-7jj3-x7gr).
LEGACY_DEFAULT_PASSWORD = "password1234"
MIN_PASSWORD_LENGTH = 12  # MLflow's user-store policy (mlflow.utils.validation._validate_password)


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
