"""The ``ablate server`` command: its argument parser and what it runs (also ``python -m experiments.server``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from experiments.server.auth import ENV_ADMIN_USERNAME
from experiments.server.checks import DEFAULT_PORT, ENV_ADMIN_PASSWORD, ServerConfigError, ServerError
from experiments.server.settings import (
    DEFAULT_HOST,
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_WORKERS,
    ENV_ALLOWED_HOSTS,
    ENV_AUTH_DB_URI,
    default_backend_store_uri,
)
from experiments.server.supervisor import run_server


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_server_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ablate server`` to the CLI's subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "server", help="run the team MLflow tracking server (artifact proxying, optional basic auth)",
        description="Run `mlflow server` with safe defaults: loopback bind, allowed Host headers, proxied "
                    "artifacts, migrations before start, /health checked before reporting ready.")
    p.add_argument("--backend-store-uri", default=None, metavar="URI",
                   help="tracking database (default: $MLFLOW_BACKEND_STORE_URI, else sqlite:///mlruns/mlflow.db); "
                        "prefer the variable for a URL with a password, it stays out of `ps`")
    p.add_argument("--artifacts-destination", default=None, metavar="URI",
                   help="where proxied artifacts are stored: folder or s3://... (default: artifacts/ beside a "
                        "sqlite database; required for PostgreSQL)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="bind address (default 127.0.0.1: this machine only; 0.0.0.0 for a team server, which "
                        "needs --auth or --insecure-no-auth)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default 5000)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="uvicorn worker processes (default 4)")
    p.add_argument("--auth", action="store_true",
                   help=f"MLflow basic auth; the admin password comes from ${ENV_ADMIN_PASSWORD} (required), the "
                        f"username from ${ENV_ADMIN_USERNAME} (default admin)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow a --host off loopback without --auth: anyone who reaches the port can create, "
                        "change and delete runs and models (only on a network you trust)")
    p.add_argument("--auth-db-uri", default=None, metavar="URI",
                   help=f"database of the auth users (default: ${ENV_AUTH_DB_URI}, else basic_auth.db beside a "
                        "sqlite backend; required with PostgreSQL)")
    p.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help=f"comma-separated host names clients use to reach the server, besides loopback and --host "
                        f"(default: ${ENV_ALLOWED_HOSTS}); other Host headers are refused (DNS rebinding)")
    p.add_argument("--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT_S, metavar="SECONDS",
                   help="how long to wait for /health before giving up (default 120)")
    return p


def register(subparsers: Any, name: str, summary: str, common: argparse.ArgumentParser) -> None:
    """``ablate server`` (experiments/cli.py wires it): its own store option, ``--backend-store-uri``."""
    add_server_parser(subparsers).set_defaults(run=cmd_server)


def cmd_server(args: argparse.Namespace) -> int:
    """``ablate server``: 0 after a clean stop, 2 for bad options, 1 if the server failed."""
    hosts = args.allowed_hosts if args.allowed_hosts is not None else os.environ.get(ENV_ALLOWED_HOSTS, "")
    try:
        return run_server(args.backend_store_uri or default_backend_store_uri(), args.artifacts_destination,
                          args.host, args.port, args.auth, args.workers, _csv(hosts), args.auth_db_uri,
                          args.ready_timeout, insecure_no_auth=args.insecure_no_auth)
    except ServerConfigError as exc:
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # stopped while starting; start_server has already stopped the server
        print("ablate server: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.server ...`` — the same options as ``ablate server``."""
    parser = argparse.ArgumentParser(prog="ablate")
    sub = parser.add_subparsers(dest="command", required=True)
    add_server_parser(sub)
    return cmd_server(parser.parse_args(["server", *(argv if argv is not None else sys.argv[1:])]))
