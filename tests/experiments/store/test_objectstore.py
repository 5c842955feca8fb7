"""experiments.store.objectstore without an S3 server: S3 URIs, the endpoint the variables name, the check that names
what to fix when nobody answers, where a checkpoint lives, and the keys moved out of the environment into a private
file (the bucket checks against a real S3 API are in tests/e2e/test_s3.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from pyarrow import fs

from experiments.store.objectstore import (
    ObjectStoreError,
    check_bucket,
    client,
    endpoint_url,
    filesystem,
    is_s3,
    keys_to_private_file,
    location_of,
    pyarrow_env,
    split_s3,
)
from experiments.testing.s3server import free_port


def test_s3_uris_are_split_and_refused_when_they_are_not_or_carry_keys():
    assert is_s3("s3://team/ray") and is_s3("S3://team") and not is_s3("/data/ray") and not is_s3(None)
    assert split_s3("s3://team/ray/study/") == ("team", "ray/study") and split_s3("s3://team") == ("team", "")
    with pytest.raises(ObjectStoreError, match=r"^'gs://team/ray' is not an S3 URI: write s3://BUCKET/PREFIX$"):
        split_s3("gs://team/ray")
    with pytest.raises(ObjectStoreError, match="is not an S3 URI"):
        split_s3("s3:///ray")
    with pytest.raises(ObjectStoreError) as info:
        split_s3("s3://AKIAKEY:topsecret@team/ray")
    assert str(info.value) == ("'team/ray': credentials do not belong in an S3 URI; set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")


def test_the_endpoint_is_aws_s_variable_else_mlflows(monkeypatch):
    assert endpoint_url({}) is None and endpoint_url({"AWS_ENDPOINT_URL": ""}) is None  # AWS itself
    assert endpoint_url({"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"}) == "http://minio:9000"
    assert endpoint_url({"AWS_ENDPOINT_URL": "http://a:1", "MLFLOW_S3_ENDPOINT_URL": "http://b:2"}) == "http://a:1"
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://minio:9000")
    assert pyarrow_env() == {"AWS_ENDPOINT_URL": "http://minio:9000"}  # pyarrow reads only AWS's name
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://a:1")
    assert pyarrow_env() == {}
    s3 = client({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                 "AWS_REGION": "eu-west-1"})
    assert (s3.meta.endpoint_url, s3.meta.region_name) == ("http://127.0.0.1:9", "eu-west-1")


def test_a_bucket_check_names_the_endpoint_nobody_answers_on():
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.raises(ObjectStoreError, match=r"^--artifacts-destination s3://team/mlflow: no S3 server answers at "
                                               r"http://127\.0\.0\.1:\d+; check AWS_ENDPOINT_URL \(or "
                                               r"MLFLOW_S3_ENDPOINT_URL\) and that the server runs$"):
        check_bucket("s3://team/mlflow", "--artifacts-destination", env)
    with pytest.raises(ObjectStoreError, match="is not an S3 URI"):
        check_bucket("team/mlflow", "--artifacts-destination", env)  # refused before any request


def test_a_checkpoint_is_named_so_that_any_machine_finds_it(tmp_path):
    local, path = filesystem(str(tmp_path))
    assert isinstance(local, fs.LocalFileSystem) and path == str(tmp_path)
    local, path = filesystem(tmp_path.as_uri())
    assert isinstance(local, fs.LocalFileSystem) and path == str(tmp_path)
    assert location_of(local, "/ray/study/checkpoint_000001") == "/ray/study/checkpoint_000001"
    s3 = SimpleNamespace(type_name="s3")  # Ray's checkpoint path on S3 has no scheme
    assert location_of(s3, "team/ray/checkpoint_000001") == "s3://team/ray/checkpoint_000001"
    assert location_of(s3, "/team/ray") == "s3://team/ray"


def test_keys_move_from_the_environment_into_a_private_file(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(key, "")  # so that the test's end puts every variable back as it was
        monkeypatch.delenv(key)
    assert keys_to_private_file() is None  # no keys here: a profile or the nodes' own variables serve
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "token-1")
    monkeypatch.setenv("AWS_PROFILE", "team")
    path = keys_to_private_file()
    try:
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_PROFILE"} & set(os.environ)
        assert os.environ["AWS_SHARED_CREDENTIALS_FILE"] == str(path) and path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().splitlines() == ["[default]", "aws_access_key_id = AKIAKEY",
                                                 "aws_secret_access_key = topsecret", "aws_session_token = token-1"]
    finally:
        path.unlink(missing_ok=True)
