"""experiments/testing/s3server.py: moto's S3 server on a free loopback port serves the buckets it was asked for with
fresh credentials, lists objects without pyarrow's folder markers, and is gone afterwards; a server that cannot start
is reported; a process group that ignores SIGTERM is killed."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys

import boto3
import pytest

from experiments.testing import s3server
from experiments.testing.s3server import free_port, objects, s3_server, stop_group


def test_the_server_serves_its_buckets_and_stops() -> None:
    with s3_server(("team", "other")) as env:
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("S3SECRET-") and env["AWS_ENDPOINT_URL"].startswith("http://127.")
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        assert sorted(b["Name"] for b in client.list_buckets()["Buckets"]) == ["other", "team"]
        client.put_object(Bucket="team", Key="ray/ckpt/state.bin", Body=b"\x00\x01")
        client.put_object(Bucket="team", Key="ray/emptied/", Body=b"")  # what pyarrow leaves of a deleted folder
        client.put_object(Bucket="team", Key="mlflow/run.txt", Body=b"run")
        assert objects(env, "team") == {"ray/ckpt/state.bin": b"\x00\x01", "mlflow/run.txt": b"run"}
        assert objects(env, "team", "ray/") == {"ray/ckpt/state.bin": b"\x00\x01"} and objects(env, "other") == {}
        port = int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # stopped with its process group


def test_a_server_that_cannot_start_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3server.sys, "executable", shutil.which("false"))  # the "server" exits at once
    with pytest.raises(RuntimeError, match=r"moto's S3 server did not start on port \d+"):
        with s3_server():
            pass


def test_stop_group_terminates_then_kills() -> None:
    polite = subprocess.Popen(["sleep", "30"], start_new_session=True)
    stop_group(polite, timeout=10)
    assert polite.returncode == -signal.SIGTERM
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    stubborn = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert stubborn.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
    stop_group(stubborn, timeout=0.3)
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    stubborn.stdout.close()


def test_free_port_is_free() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing holds it
    assert 0 < port < 65536
