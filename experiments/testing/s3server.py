"""A local S3-compatible server for the tests and benchmarks: moto's standalone server on 127.0.0.1.

The code under test talks HTTP to it exactly as to S3 or MinIO (boto3 in MLflow and in ``ablate``,
pyarrow in Ray Tune); nothing is mocked inside the process. The server keeps its objects in memory
and is stopped with its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Iterator, Mapping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(buckets: tuple[str, ...] = ("team",), extra_env: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Start moto's S3 server on a free loopback port, create ``buckets``, yield the client variables.

    The variables are the standard ones (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ...); the secret key is fresh per server, so a test can search for it.
    ``extra_env`` goes to the server's process (e.g. moto's ``INITIAL_NO_AUTH_ACTION_COUNT``, which
    makes it check credentials after that many requests).
    """
    import boto3

    port = free_port()
    server_env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"moto's S3 server did not start on port {port}")
            time.sleep(0.2)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "ablate-test-key",
               "AWS_SECRET_ACCESS_KEY": "S3SECRET-" + uuid.uuid4().hex, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        stop_group(proc, 20)


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def objects(env: Mapping[str, str], bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object of ``bucket`` under ``prefix``: key -> body.

    Empty "folder" markers (keys ending in ``/``, which pyarrow leaves for a parent whose contents it
    deleted) are no data and are left out.
    """
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/") and not item.get("Size"):
                continue
            out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out
