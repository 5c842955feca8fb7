"""experiments/server/auth.py: the admin's credentials from the environment (no default, no placeholder, not MLflow's
old public password, at least 12 characters) and the basic-auth config file (owner-only, no password in it)."""

from __future__ import annotations

import configparser

import pytest

from experiments import server as S
from experiments.server.auth import admin_credentials, write_auth_config


@pytest.mark.parametrize("env, message", [
    ({}, "ABLATE_ADMIN_PASSWORD"),
    ({S.ENV_ADMIN_PASSWORD: ""}, "ABLATE_ADMIN_PASSWORD"),
    ({S.ENV_ADMIN_PASSWORD: "password1234"}, "old public default"),
    ({S.ENV_ADMIN_PASSWORD: "short"}, "at least 12"),
    ({S.ENV_ADMIN_PASSWORD: "CHANGE_ME-admin-password"}, "placeholder"),
])
def test_admin_password_required(env, message):
    with pytest.raises(S.ServerConfigError, match=message):
        S.admin_credentials(env)


def test_admin_credentials_from_env():
    assert S.admin_credentials({S.ENV_ADMIN_PASSWORD: "a-long-password"}) == ("admin", "a-long-password")
    assert S.admin_credentials({S.ENV_ADMIN_PASSWORD: "a-long-password", S.ENV_ADMIN_USERNAME: "lab"})[0] == "lab"


@pytest.mark.parametrize("password", ["changeme-please-now", "Change_Me_1234567", "CHANGE-ME-now-or-else"])
def test_every_spelling_of_the_placeholder_is_refused(password):
    with pytest.raises(S.ServerConfigError, match="still the placeholder from docker/.env.example"):
        admin_credentials({S.ENV_ADMIN_PASSWORD: password})


def test_auth_config_is_owner_only_names_the_users_database_and_reads_back(tmp_path):
    uri = "postgresql+psycopg://u:p%40ss-123456@db/mlflow_auth"  # a '%' that configparser would interpolate
    path = write_auth_config(tmp_path, uri, "lab-admin")
    assert path == tmp_path / "basic_auth.ini" and path.stat().st_mode & 0o777 == 0o600
    parser = configparser.ConfigParser()
    parser.read(path)
    assert dict(parser["mlflow"]) == {"default_permission": "READ", "database_uri": uri, "admin_username": "lab-admin",
                                      "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth"}
    write_auth_config(tmp_path, "sqlite:///users.db", "boss")  # a fresh config for every start: nothing left over
    assert "p%40ss" not in path.read_text() and "admin_username = boss" in path.read_text()
