"""``ablate report STUDY``: its arguments and what it runs (experiments/cli.py wires it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any, name: str, summary: str, common: argparse.ArgumentParser) -> None:
    """Add ``ablate report`` to the CLI's subparsers."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("study", help="study name (= MLflow experiment)")
    p.add_argument("--format", default="table", choices=["table", "md", "csv", "json"],
                   help="output format (default: table, aligned text)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder to write the plots and report.{txt,md,csv,json} into (default: none)")
    p.add_argument("--log", action="store_true",
                   help="also log the tables and plots to the study's newest launch run (under report/); without it "
                        "the report only reads the store")
    p.add_argument("--no-log", action="store_true", help=argparse.SUPPRESS)  # the default now; still accepted
    p.add_argument("--runs", action="store_true",
                   help="instead of the tables: every trial run with all its params and final metrics, one line "
                        "per run (--format csv or json); writes nothing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The tables (or, with ``--runs``, every trial run) on stdout; progress of ``--log`` on stderr."""
    from experiments.results.report import report, runs_table
    from experiments.store.tracking import uri_to_read

    uri = uri_to_read(args.tracking_uri)
    if args.runs:
        print(runs_table(uri, args.study, fmt=args.format), end="")
        return 0
    print(report(uri, args.study, fmt=args.format, out_dir=args.out, log_to_parent=args.log and not args.no_log,
                 say=lambda line: print(line, file=sys.stderr)), end="")
    return 0
