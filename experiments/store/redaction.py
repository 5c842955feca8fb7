"""Keeping credentials out of what the service records and prints.

:func:`redact` blanks credentials in free text (URI passwords, ``password=...``, auth headers,
values of secret-looking environment variables); :func:`scrub_mapping` does the same for params
and tags; :func:`use_uri_credentials` moves ``user:password@`` out of a tracking URI into
MLflow's own environment variables before the URI is used anywhere.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit

# ---------------------------------------------------------------------------
# Secrets: redaction of free text and of params / tags mappings
# ---------------------------------------------------------------------------

_SECRET_WORDS = r"(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|authorization)"
# A key is secret-looking when one of the words ends it or is followed by a non-letter:
# `MLFLOW_TRACKING_PASSWORD`, `db.password`, `client_secret`, `AWS_SECRET_ACCESS_KEY` — but not
# `max_tokens` or `passwordless`.
SECRET_KEY_RE = re.compile(rf"{_SECRET_WORDS}(?![a-z])", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:***@host. Userinfo runs to the last '@' before the
# path, so an unencoded '@' inside the password is blanked too.
_URI_CREDENTIALS_RE = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*):(?P<pw>[^\s/]+)@")
# KEY=VALUE, KEY: VALUE, "KEY": "VALUE" and --KEY VALUE where KEY looks secret. Plain prose
# ("wrong password for user") is left alone: only a flag takes a whitespace separator.
_KEY_VALUE_RE = re.compile(
    rf"(?P<key>[\w.\-]*{_SECRET_WORDS}(?![a-z])[\w.\-]*)(?P<sep>[\"']?\s*[=:]\s*[\"']?)(?P<value>[^\s\"',;&}}\]]+)",
    re.IGNORECASE,
)
_FLAG_VALUE_RE = re.compile(
    rf"(?P<key>--[\w\-]*{_SECRET_WORDS}(?![a-z])[\w\-]*)(?P<sep>\s+)(?P<value>[^\s\-\"'][^\s\"']*)",
    re.IGNORECASE,
)
_AUTH_HEADER_RE = re.compile(r"\b(?P<kind>Basic|Bearer)\s+(?P<value>[A-Za-z0-9+/=._~\-]{8,})")
REDACTED = "***"
_MIN_SECRET_LENGTH = 6  # shorter env values ("1", "true") would blank unrelated text


def is_secret_key(key: str) -> bool:
    """Whether a param / tag / env name looks like it holds a credential (``password``, ``token``, ...)."""
    return bool(SECRET_KEY_RE.search(key))


def secret_values_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (e.g. ``MLFLOW_TRACKING_PASSWORD``), longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_key(k) and v and len(v) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra_secrets: Iterable[str] = (), use_env: bool = True) -> str:
    """``text`` with credentials blanked as ``***``.

    Blanks URI passwords (``postgresql://u:pw@h`` -> ``postgresql://u:***@h``), values of
    secret-looking keys (``password=...``, ``"token": "..."``, ``--password ...``), HTTP
    ``Basic`` / ``Bearer`` credentials, and every literal occurrence (plain or URL-encoded) of
    ``extra_secrets`` and — with ``use_env`` — of secret-looking environment variables, which
    catches a password echoed inside an error message or a traceback.

    Args:
        text: any text (a log line, a traceback, a YAML file).
        extra_secrets: further literal values to blank.
        use_env: also blank the values of this process's secret-looking environment variables.
    """
    if not text:
        return text
    literals = [s for s in extra_secrets if s and len(s) >= _MIN_SECRET_LENGTH]
    if use_env:
        literals += secret_values_from_env()
    for value in sorted(set(literals), key=len, reverse=True):
        for form in {value, quote(value, safe="")}:
            text = text.replace(form, REDACTED)
    text = _URI_CREDENTIALS_RE.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _AUTH_HEADER_RE.sub(lambda m: f"{m['kind']} {REDACTED}", text)

    def _kv(m: re.Match[str]) -> str:
        if m["value"] == REDACTED or m["value"].lower() in ("basic", "bearer"):
            return m[0]  # already blank, or the scheme word of an Authorization header blanked above
        return f"{m['key']}{m['sep']}{REDACTED}"

    text = _KEY_VALUE_RE.sub(_kv, text)
    return _FLAG_VALUE_RE.sub(_kv, text)


def scrub_mapping(mapping: Mapping[str, Any], extra_secrets: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of ``mapping`` that is safe to log as MLflow params or tags.

    Values under secret-looking keys become ``***`` (empty values stay empty, so "no password
    set" remains visible); every other string goes through :func:`redact`; nested mappings and
    lists are scrubbed recursively; numbers and booleans are kept.
    """
    extra = tuple(extra_secrets)

    def _value(value: Any) -> Any:
        if isinstance(value, Mapping):
            return scrub_mapping(value, extra)
        if isinstance(value, (list, tuple)):
            return type(value)(_value(v) for v in value)
        if isinstance(value, str):
            return redact(value, extra)
        return value

    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if is_secret_key(str(key)) and value not in (None, ""):
            out[key] = REDACTED
        else:
            out[key] = _value(value)
    return out




def split_uri_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:pw@host:5000`` -> (``http://host:5000``, ``user``, ``pw``), percent-decoded.

    Only ``http(s)://`` tracking URIs are split; database URLs keep their credentials (SQLAlchemy
    needs them in the URL). A URI without userinfo comes back unchanged with (None, None).
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, hostport = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = parts._replace(netloc=hostport).geturl()
    return clean, unquote(user) or None, unquote(password) if password else None


def use_uri_credentials(uri: str, environ: dict[str, str] | None = None) -> str:
    """Move credentials out of an ``http(s)://user:pw@host`` tracking URI into MLflow's variables.

    Sets ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (the URI wins over values
    already there: it is what the user typed for this command) and returns the URI without them.
    Call it before the URI is used anywhere: MLflow prints "View run ... at: <tracking URI>" for
    every finished run and would print the password with it; with the clean URI nothing that
    records or prints the URI can leak it, and the client still authenticates.
    """
    env = os.environ if environ is None else environ
    clean, user, password = split_uri_credentials(uri)
    if user is not None:
        env["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        env["MLFLOW_TRACKING_PASSWORD"] = password
    return clean


# ---------------------------------------------------------------------------
# Pickles: what Ray writes to the storage path never holds a database password
# ---------------------------------------------------------------------------

OPTUNA_STORAGE_ENV = "ABLATE_OPTUNA_STORAGE"
"""Environment variable holding the Optuna storage URL; pickles refer to it instead of a URL with a password."""


def picklable_url(url: str | None) -> str | None:
    """``url`` as it may be written into a pickle (Ray's ``tuner.pkl``, searcher state).

    A URL without credentials comes back unchanged. One with a password comes back as None, and
    ``$ABLATE_OPTUNA_STORAGE`` is made to hold it: the process that unpickles (this driver, or one
    it started) reads it back from there with :func:`url_from_state`, so the password is never
    written to the storage path.
    """
    if url is None or redact(url, use_env=False) == url:
        return url
    os.environ[OPTUNA_STORAGE_ENV] = url
    return None


def url_from_state(url: str | None) -> str | None:
    """The inverse of :func:`picklable_url`: the URL, or ``$ABLATE_OPTUNA_STORAGE`` when it was kept out."""
    return url if url is not None else os.environ.get(OPTUNA_STORAGE_ENV)

