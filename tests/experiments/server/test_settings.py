"""experiments/server/settings.py: :class:`ServerSettings` validates a tracking server's options (safe defaults, a bind
off loopback only with auth or an explicit opt-out, no wildcard host) and normalises them: absolute sqlite paths, the
artifact and users' databases beside a sqlite store; no secret in its errors."""

from __future__ import annotations

import dataclasses

import pytest

from experiments import server as S
from experiments.server.settings import ENV_BACKEND_STORE_URI, ServerSettings, default_backend_store_uri


def test_settings_defaults_are_safe(tmp_path):
    s = S.ServerSettings(f"sqlite:///{tmp_path}/mlflow.db")
    assert s.host == "127.0.0.1"
    assert s.artifacts_destination == str(tmp_path / "artifacts")
    argv, env = S.build_command(s, environ={})
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--serve-artifacts" in argv and argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "artifacts")
    hosts = argv[argv.index("--allowed-hosts") + 1].split(",")
    assert "127.0.0.1:5000" in hosts and "localhost" in hosts and "*" not in hosts
    assert not any(h.startswith(("10.", "192.168")) for h in hosts)  # MLflow's default would allow private nets
    assert "--app-name" not in argv
    assert env[S.ENV_BACKEND_STORE_URI] == f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.parametrize("kwargs, message", [
    ({"backend_store_uri": "http://127.0.0.1:5000"}, "not a database URL"),
    ({"backend_store_uri": "postgresql+psycopg://postgres@h/db"}, "--artifacts-destination is required"),
    ({"backend_store_uri": "postgresql+psycopg://postgres@h/db", "artifacts_destination": "/a", "auth": True},
     "--auth-db-uri"),
    ({"backend_store_uri": "sqlite:///x.db", "port": 0}, "--port 0"),
    ({"backend_store_uri": "sqlite:///x.db", "workers": 0}, "--workers 0"),
    ({"backend_store_uri": "sqlite:///x.db", "allowed_hosts": ("*",)}, "DNS rebinding"),
    ({"backend_store_uri": "sqlite:///x.db", "auth": True, "auth_db_uri": "sqlite:///x.db"}, "must differ"),
])
def test_settings_refuse_bad_options(kwargs, message):
    with pytest.raises(S.ServerConfigError, match=message):
        S.ServerSettings(**kwargs)


def test_bind_off_loopback_needs_auth_or_explicit_insecure(tmp_path):
    db = f"sqlite:///{tmp_path}/mlflow.db"
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        with pytest.raises(S.ServerConfigError, match=r"without --auth: anyone who can reach this machine could "
                                                      r"create, change and delete runs.*--auth.*--insecure-no-auth"):
            S.ServerSettings(db, host=host)
    assert S.ServerSettings(db, host="0.0.0.0", auth=True).host == "0.0.0.0"
    assert S.ServerSettings(db, host="0.0.0.0", insecure_no_auth=True).host == "0.0.0.0"
    assert S.ServerSettings(db, host="127.0.0.1").host == "127.0.0.1"
    assert S.ServerSettings(db, host="::1").host == "::1"


def test_settings_normalise_paths_hosts_and_the_users_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = ServerSettings("sqlite:///db/mlflow.db?timeout=30", allowed_hosts=(" mlflow ", "", "gpu-box.lab"), auth=True)
    assert s.backend_store_uri == f"sqlite:///{tmp_path}/db/mlflow.db?timeout=30"  # the server and its migrations agree
    assert s.artifacts_destination == str(tmp_path / "db" / "artifacts")
    assert s.auth_db_uri == f"sqlite:///{tmp_path}/db/basic_auth.db"  # beside the store, never the tracking database
    assert s.allowed_hosts == ("mlflow", "gpu-box.lab")
    assert ServerSettings("sqlite:///x.db", f"file://{tmp_path}/art/../art").artifacts_destination == str(tmp_path / "art")
    assert ServerSettings("postgresql+psycopg://u@db/mlflow", "s3://bucket/prefix").artifacts_destination == \
        "s3://bucket/prefix"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # validated once: the options cannot change afterwards


@pytest.mark.parametrize("host, port, url", [
    ("127.0.0.1", 5000, "http://127.0.0.1:5000"), ("0.0.0.0", 5001, "http://127.0.0.1:5001"),
    ("::1", 5002, "http://[::1]:5002"), ("localhost", 80, "http://localhost:80"),
])
def test_url_is_where_this_machine_reaches_the_server(host, port, url):
    assert ServerSettings("sqlite:///x.db", host=host, port=port, insecure_no_auth=True).url == url


def test_errors_never_show_the_password_and_refuse_booleans():
    with pytest.raises(S.ServerConfigError, match=r"--backend-store-uri http://boss:\*\*\*@h:5000: not a database URL") \
            as info:
        ServerSettings("http://boss:Db-Secret-99@h:5000")
    assert "Db-Secret-99" not in str(info.value)
    with pytest.raises(S.ServerConfigError, match=r"--auth-db-uri mysql2://u:\*\*\*@h/a: not a database URL"):
        ServerSettings("postgresql+psycopg://u@db/mlflow", "/a", auth=True, auth_db_uri="mysql2://u:Secret-77@h/a")
    with pytest.raises(S.ServerConfigError, match="--port True: must be an integer"):
        ServerSettings("sqlite:///x.db", port=True)


def test_default_backend_store_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_BACKEND_STORE_URI, raising=False)
    assert default_backend_store_uri() == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv(ENV_BACKEND_STORE_URI, "postgresql+psycopg://u@db/mlflow")
    assert default_backend_store_uri() == "postgresql+psycopg://u@db/mlflow"
    assert not (tmp_path / "mlruns").exists()  # naming the default creates nothing
