"""experiments/store/redaction.py: credentials blanked in free text, params and tags; the ones in an ``http(s)://``
tracking URI moved into MLflow's variables; a password-bearing Optuna URL kept out of pickles."""

from __future__ import annotations

import pytest

from experiments.store import redaction as R


@pytest.mark.parametrize("text, secret", [
    ("postgresql+psycopg://mlflow:Sup3r-S3cret@db:5432/mlflow", "Sup3r-S3cret"),
    ("http://admin:p%40ss-word-1@127.0.0.1:5000", "p%40ss-word-1"),
    ("http://admin:p@ss-word-1@127.0.0.1:5000/api", "p@ss-word-1"),
    ("ABLATE_ADMIN_PASSWORD=hunter2-hunter2", "hunter2-hunter2"),
    ('{"client_secret": "abc-123-xyz"}', "abc-123-xyz"),
    ("aws_secret_access_key: AKIAEXAMPLE", "AKIAEXAMPLE"),
    ("mlflow server --password topsecretvalue", "topsecretvalue"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30", "eyJhbGciOiJIUzI1NiJ9.e30"),
    ("Authorization: Basic YWRtaW46c2VjcmV0cGFzcw==", "YWRtaW46c2VjcmV0cGFzcw=="),
    ("s3://bucket/x?X-Amz-Security-Token=FwoGZXIvYXdzEBYaDH", "FwoGZXIvYXdzEBYaDH"),
])
def test_redact_blanks_credentials(text, secret):
    out = R.redact(text, use_env=False)
    assert secret not in out and R.REDACTED in out


@pytest.mark.parametrize("text", [
    "sqlite:////home/me/mlruns/mlflow.db", "http://127.0.0.1:5000", "postgresql+psycopg://postgres@db:5432/x",
    "swav/loss 8.006 at epoch 3", "max_tokens=5", "wrong password for user admin", "s3://bucket/prefix",
])
def test_redact_leaves_harmless_text(text):
    assert R.redact(text, use_env=False) == text


def test_redact_blanks_secret_env_values_anywhere(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "Zq9-env-secret")
    monkeypatch.setenv("HOME_DIR_NAME", "Zq9-not-a-secret")  # not secret-looking: kept
    text = "Traceback ... ConnectionError('auth failed for Zq9-env-secret'), url-encoded Zq9-env-secret; Zq9-not-a-secret"
    out = R.redact(text)
    assert "Zq9-env-secret" not in out and "Zq9-not-a-secret" in out
    assert R.redact("x Zq9-literal-1 y", extra_secrets=["Zq9-literal-1"], use_env=False) == "x *** y"


def test_scrub_mapping():
    params = {"pretrain.arch": "resnet18", "pretrain.epochs": 3, "db_password": "pw-123456", "api_token": "",
              "storage_path": "s3://key:s3cr3t-val@bucket/x", "nested": {"token": "tok-123456", "ok": ["a", 1]},
              "swav/max_tokens": "7", "lr": 0.1}
    out = R.scrub_mapping(params)
    assert out["pretrain.arch"] == "resnet18" and out["pretrain.epochs"] == 3 and out["lr"] == 0.1
    assert out["db_password"] == R.REDACTED and out["api_token"] == ""  # an empty secret stays visibly empty
    assert out["storage_path"] == "s3://key:***@bucket/x"
    assert out["nested"] == {"token": R.REDACTED, "ok": ["a", 1]}
    assert out["swav/max_tokens"] == "7"
    assert params["db_password"] == "pw-123456"  # the input is not modified


@pytest.mark.parametrize("key, secret", [
    ("MLFLOW_TRACKING_PASSWORD", True), ("db.password", True), ("client_secret", True), ("AWS_SECRET_ACCESS_KEY", True),
    ("api-key", True), ("Authorization", True), ("max_tokens", False), ("passwordless", False), ("pretrain.arch", False),
])
def test_is_secret_key(key, secret):
    assert R.is_secret_key(key) is secret


def test_secret_values_from_env_skips_short_and_harmless_values():
    env = {"DB_PASSWORD": "short", "API_TOKEN": "tok-123456", "MY_SECRET": "a-much-longer-secret", "HOME": "/home/me-long"}
    assert R.secret_values_from_env(env) == ["a-much-longer-secret", "tok-123456"]  # longest first; "short" < 6


@pytest.mark.parametrize("uri, expected", [
    ("http://admin:p%40ss-word@127.0.0.1:5000/api", ("http://127.0.0.1:5000/api", "admin", "p@ss-word")),
    ("https://lab@mlflow.example", ("https://mlflow.example", "lab", None)),
    ("http://127.0.0.1:5000", ("http://127.0.0.1:5000", None, None)),
    ("postgresql+psycopg://u:pw@db/mlflow", ("postgresql+psycopg://u:pw@db/mlflow", None, None)),  # SQLAlchemy's own
])
def test_split_uri_credentials(uri, expected):
    assert R.split_uri_credentials(uri) == expected


def test_use_uri_credentials_moves_them_into_mlflows_variables():
    env = {"MLFLOW_TRACKING_USERNAME": "old", "MLFLOW_TRACKING_PASSWORD": "old-password"}
    assert R.use_uri_credentials("http://boss:Typed-Pass-1@gpu-box.lab:5000", env) == "http://gpu-box.lab:5000"
    assert env == {"MLFLOW_TRACKING_USERNAME": "boss", "MLFLOW_TRACKING_PASSWORD": "Typed-Pass-1"}  # the URI wins
    untouched = {"MLFLOW_TRACKING_PASSWORD": "kept-password"}
    assert R.use_uri_credentials("sqlite:///mlruns/mlflow.db", untouched) == "sqlite:///mlruns/mlflow.db"
    assert untouched == {"MLFLOW_TRACKING_PASSWORD": "kept-password"}


def test_a_url_with_a_password_never_reaches_a_pickle(monkeypatch):
    monkeypatch.setenv(R.OPTUNA_STORAGE_ENV, "")  # restored (unset) afterwards
    plain = "postgresql+psycopg://postgres@db:5432/optuna"
    assert R.picklable_url(plain) == plain and R.url_from_state(plain) == plain
    secret = "postgresql+psycopg://optuna:Db-Pass-123@db:5432/optuna"
    assert R.picklable_url(secret) is None  # what is pickled: nothing of the URL
    assert R.url_from_state(None) == secret  # read back from the variable by the process that unpickles
    assert R.picklable_url(None) is None
