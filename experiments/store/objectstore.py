"""S3-compatible object storage: the checks before a server or a launch writes to a bucket, and its files.

A team without a shared disk keeps the tracking server's artifacts (``ablate server
--artifacts-destination s3://BUCKET/PREFIX``, MLflow's S3 artifact repository behind its proxied
artifact access) and Ray Tune's trial folders (``ablate launch --storage-path s3://BUCKET/PREFIX``,
pyarrow's S3 filesystem) in one bucket of S3 or of a compatible server (MinIO, Ceph, moto).
Endpoint and credentials come only from the standard variables, never from an option, so they are
in no command line, param, tag, artifact or ``tuner.pkl``:

* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE`` and its files);
* ``AWS_ENDPOINT_URL`` for a server other than AWS (boto3 and pyarrow both read it);
  ``MLFLOW_S3_ENDPOINT_URL``, MLflow's own name, is honoured by the tracking server and taken by
  these checks when ``AWS_ENDPOINT_URL`` is not set.

:func:`check_bucket` turns the three usual mistakes (no such bucket, credentials refused or missing,
an endpoint nobody answers on) into one line naming the variable to fix, before anything starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

ENV_ENDPOINT = "AWS_ENDPOINT_URL"
ENV_MLFLOW_ENDPOINT = "MLFLOW_S3_ENDPOINT_URL"
CREDENTIAL_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
_CHECK_TIMEOUT_S = 10


class ObjectStoreError(RuntimeError):
    """A bucket that cannot be used as given; the message is one line that says what to fix."""


def is_s3(uri: str | None) -> bool:
    """Whether ``uri`` names S3 storage (``s3://bucket/prefix``)."""
    return bool(uri) and str(uri).lower().startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise ObjectStoreError(f"{uri!r} is not an S3 URI: write s3://BUCKET/PREFIX")
    if "@" in parts.netloc:
        raise ObjectStoreError(f"{uri.split('@', 1)[-1]!r}: credentials do not belong in an S3 URI; {CREDENTIAL_HINT}")
    return parts.netloc, parts.path.strip("/")


def endpoint_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint these variables name (None: AWS itself)."""
    env = os.environ if environ is None else environ
    return env.get(ENV_ENDPOINT) or env.get(ENV_MLFLOW_ENDPOINT) or None


def pyarrow_env() -> dict[str, str]:
    """Variables to add to this process's environment so pyarrow (Ray's storage) reaches the same endpoint.

    pyarrow reads ``AWS_ENDPOINT_URL`` but not MLflow's ``MLFLOW_S3_ENDPOINT_URL``; a user who set only
    the latter gets it copied. Nothing else is copied: credentials stay where the user put them.
    """
    if os.environ.get(ENV_ENDPOINT) or not os.environ.get(ENV_MLFLOW_ENDPOINT):
        return {}
    return {ENV_ENDPOINT: os.environ[ENV_MLFLOW_ENDPOINT]}


def client(environ: Mapping[str, str] | None = None) -> Any:
    """A boto3 S3 client for the endpoint and credentials of ``environ`` (default: this process's)."""
    import boto3
    from botocore.config import Config

    env = os.environ if environ is None else environ
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"), aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"), profile_name=env.get("AWS_PROFILE"),
        region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1")
    config = Config(connect_timeout=_CHECK_TIMEOUT_S, read_timeout=_CHECK_TIMEOUT_S, retries={"max_attempts": 1})
    return session.client("s3", endpoint_url=endpoint_url(env), config=config)


def check_bucket(uri: str, what: str, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ObjectStoreError` unless the bucket of ``uri`` exists and the credentials may use it.

    Args:
        uri: ``s3://BUCKET/PREFIX``.
        what: the option that named it, for the message (``--storage-path``).
        environ: the variables to read (default: this process's environment).
    """
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    bucket, _ = split_s3(uri)
    where = endpoint_url(environ) or "AWS"
    try:
        client(environ).head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise ObjectStoreError(f"{what} {uri}: no S3 credentials found; {CREDENTIAL_HINT}") from None
    except EndpointConnectionError:
        raise ObjectStoreError(f"{what} {uri}: no S3 server answers at {where}; check {ENV_ENDPOINT} "
                               f"(or {ENV_MLFLOW_ENDPOINT}) and that the server runs") from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") or status == 404:
            raise ObjectStoreError(f"{what} {uri}: bucket {bucket!r} does not exist at {where}; create it first "
                                   f"(aws s3 mb s3://{bucket}, or the server's console)") from None
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") or status == 403:
            raise ObjectStoreError(f"{what} {uri}: {where} refused these credentials for bucket {bucket!r} "
                                   f"({code or status}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from None
        raise ObjectStoreError(f"{what} {uri}: {where} answered {code or status} for bucket {bucket!r}") from None
    except BotoCoreError as e:
        raise ObjectStoreError(f"{what} {uri}: cannot use {where}: {type(e).__name__}; check {ENV_ENDPOINT}") from None


def filesystem(location: str) -> tuple[Any, str]:
    """pyarrow's filesystem for a URI or a local path, and the path inside it (as Ray Tune resolves ``storage_path``)."""
    from pyarrow import fs

    if "://" not in location:
        return fs.LocalFileSystem(), str(location)
    return fs.FileSystem.from_uri(location)


def location_of(fs_: Any, path: str) -> str:
    """The one string naming ``path`` of pyarrow filesystem ``fs_`` from any machine: a local path, or ``s3://...``.

    Ray's ``Checkpoint.path`` has no scheme (``bucket/prefix/...`` on S3); a run's ``ablate.checkpoint``
    tag must say where the checkpoint lives, so a later launch (on another node too) can resume from it.
    """
    kind = getattr(fs_, "type_name", "local")
    return path if kind == "local" else f"{kind}://{path.lstrip('/')}"


KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def keys_to_private_file() -> Path | None:
    """Move S3 keys from this process's environment into a private credentials file; returns the file.

    Ray Tune copies ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / session tokens from the driver's
    environment into every trial's runtime environment, and Ray's runtime-env agent writes that into its
    log on every node. Read from ``AWS_SHARED_CREDENTIALS_FILE`` instead (a file only this user can read,
    deleted when the process exits), the keys still reach boto3 and pyarrow here and in a local Ray's
    workers, and no Ray log holds them. Nothing happens without keys in the environment (a profile, or
    the nodes' own variables, serve then).
    """
    import atexit
    import tempfile

    if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        return None
    keys = {k: os.environ.pop(k) for k in KEY_VARIABLES if k in os.environ}
    fd, name = tempfile.mkstemp(prefix="ablate-s3-", suffix=".ini")  # mode 0600
    lines = ["[default]", f"aws_access_key_id = {keys['AWS_ACCESS_KEY_ID']}",
             f"aws_secret_access_key = {keys['AWS_SECRET_ACCESS_KEY']}"]
    token = keys.get("AWS_SESSION_TOKEN") or keys.get("AWS_SECURITY_TOKEN")
    if token:
        lines.append(f"aws_session_token = {token}")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = name
    os.environ.pop("AWS_PROFILE", None)  # the file's [default] profile holds the keys that were in the environment
    return Path(name)
