"""Checks of the server's network options and database URIs: hosts, ``--allowed-hosts``, CORS, ports.

Also the two errors every part of :mod:`experiments.server` raises: :class:`ServerConfigError`
(bad options, nothing started) and :class:`ServerError` (started, but not healthy).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlsplit

# Here, not in settings / auth, because the messages of check_bind / check_port name them.
ENV_ADMIN_PASSWORD = "ABLATE_ADMIN_PASSWORD"
DEFAULT_PORT = 5000
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
UNSPECIFIED_HOSTS = ("0.0.0.0", "::", "[::]", "")
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class ServerConfigError(ValueError):
    """Bad server options (missing password, no artifact destination, port taken); nothing was started."""


class ServerError(RuntimeError):
    """The server was started but did not become healthy, or it died."""


# ---------------------------------------------------------------------------
# Database and artifact URIs
# ---------------------------------------------------------------------------


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def is_sql_uri(uri: str) -> bool:
    """An SQLAlchemy URL of a database MLflow can use (``sqlite:///``, ``postgresql+psycopg://``, ...)."""
    return _scheme(uri) in SQL_SCHEMES


def _sqlite_path(uri: str) -> Path | None:
    if _scheme(uri) != "sqlite":
        return None
    rest = uri.split("://", 1)[1]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(unquote(rest[1:].split("?", 1)[0]))


def normalize_backend_uri(uri: str) -> str:
    """A sqlite URI made absolute (the server and its migrations must agree on the file)."""
    path = _sqlite_path(uri)
    if path is None:
        return uri
    query = "?" + uri.split("?", 1)[1] if "?" in uri else ""
    return f"sqlite:///{path.resolve()}{query}"


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)


# ---------------------------------------------------------------------------
# Hosts, allowed hosts, CORS origins, bind and port
# ---------------------------------------------------------------------------


def _host_names(host: str, port: int, extra: Sequence[str]) -> list[str]:
    """Host-header values the server accepts: each name bare (behind a proxy on :80/:443) and with the port."""
    names: list[str] = list(LOOPBACK_NAMES)
    bind = host.strip()
    if bind not in UNSPECIFIED_HOSTS:
        names.append(_bracket_ipv6(bind))
    names += [n.strip() for n in extra if n.strip()]
    out: list[str] = []
    for name in names:
        forms = [name] if "*" in name or _has_port(name) else [name, f"{name}:{port}"]
        out += [f for f in forms if f not in out]
    return out


def _bracket_ipv6(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _has_port(name: str) -> bool:
    if name.startswith("["):
        return "]:" in name
    return name.count(":") == 1


def allowed_hosts_for(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``--allowed-hosts`` list: loopback names, the bind host and ``extra``, bare and with ``:port``."""
    return _host_names(host, port, extra)


def cors_origins_for(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """Browser origins of the UI for the non-loopback names (loopback origins MLflow allows already)."""
    origins: list[str] = []
    for name in _host_names(host, port, extra):
        if "*" in name or _has_port(name) or name in LOOPBACK_NAMES:
            continue
        for origin in (f"http://{name}:{port}", f"https://{name}"):
            if origin not in origins:
                origins.append(origin)
    return origins


def _connect_host(host: str) -> str:
    """Where this machine reaches a server bound to ``host`` (an unspecified bind -> loopback)."""
    if host in UNSPECIFIED_HOSTS:
        return "127.0.0.1"
    return _bracket_ipv6(host)


def is_loopback_host(host: str) -> bool:
    """Whether a bind to ``host`` is reachable from this machine only: 127.0.0.0/8, ``::1`` or ``localhost``.

    Anything else counts as open to the network: ``0.0.0.0`` / ``::`` (every interface), a LAN
    address, or a host name (it may resolve to any interface; only ``localhost`` is trusted).
    """
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def check_bind(host: str, auth: bool, insecure_no_auth: bool, command: str = "ablate server") -> None:
    """Refuse to open an unauthenticated tracking server or UI to the network.

    Anyone who reaches an MLflow server without auth can create, change and delete runs,
    experiments and registered models. A loopback bind (:func:`is_loopback_host`) is always
    allowed; any other needs ``auth`` or the explicit ``insecure_no_auth``. Shared by
    ``ablate server`` and ``ablate ui`` (which has no auth).

    Raises:
        ServerConfigError: ``host`` is off loopback, without auth and without ``insecure_no_auth``.
    """
    if auth or insecure_no_auth or is_loopback_host(host):
        return
    shown = host if host.strip() else "''"
    risk = "anyone who can reach this machine could create, change and delete runs, experiments and models"
    if command == "ablate server":
        raise ServerConfigError(f"{command} --host {shown} without --auth: {risk}; add --auth (admin password in "
                                f"${ENV_ADMIN_PASSWORD}), bind --host 127.0.0.1, or pass --insecure-no-auth on a "
                                "network you trust")
    raise ServerConfigError(f"{command} --host {shown}: {command} has no auth, so {risk}; keep --host 127.0.0.1 "
                            "(reach it from elsewhere through an SSH tunnel), run `ablate server --auth` for a team, "
                            "or pass --insecure-no-auth on a network you trust")


def _bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound right now (None when it can); an unspecified host binds every interface."""
    name = host.strip().strip("[]")
    family = socket.AF_INET6 if ":" in name else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
            s.bind((name or "0.0.0.0", port))
    except OSError as exc:  # socket.gaierror (an unknown host name) included
        return exc
    return None


def _port_free(host: str, port: int) -> bool:
    return _bind_error(host, port) is None


def check_port(host: str, port: int, allow_any: bool = False) -> int:
    """The port a server on ``host`` will listen on, checked free now; ``0`` (with ``allow_any``) picks a free one.

    Raises:
        ServerConfigError: ``port`` outside 1..65535 (0..65535 with ``allow_any``), already in
            use, or ``host`` not an address of this machine.
    """
    lowest = 0 if allow_any else 1
    if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port <= 65535:
        hint = " (0: any free port)" if allow_any else ""
        raise ServerConfigError(f"--port {port}: must be an integer in {lowest}..65535{hint}; e.g. --port {DEFAULT_PORT}")
    name = host.strip().strip("[]")
    if port == 0:
        family = socket.AF_INET6 if ":" in name else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((name or "0.0.0.0", 0))
                return int(s.getsockname()[1])
        except OSError as exc:
            raise ServerConfigError(f"--host {host}: cannot bind it ({exc.strerror or exc}); use an address of this "
                                    "machine, e.g. --host 127.0.0.1") from exc
    error = _bind_error(host, port)
    if error is None:
        return port
    if error.errno in (errno.EADDRINUSE, errno.EACCES):
        what = "is in use (another server?)" if error.errno == errno.EADDRINUSE else "needs root (ports below 1024)"
        any_port = " (--port 0: any free port)" if allow_any else ""
        raise ServerConfigError(f"port {port} on {host or '0.0.0.0'} {what}; pick another with --port N{any_port} "
                                "or stop the other process")
    raise ServerConfigError(f"--host {host}: cannot bind {host}:{port} ({error.strerror or error}); use an address of "
                            "this machine, e.g. --host 127.0.0.1")
