"""The ``ablate`` command: it only wires the commands, each defined beside the feature it drives.

    ablate demo                                   the whole flow on generated sample data
    ablate data sample --out DIR [--kind digits]  write the sample data set
    ablate pretrain CONFIG.yaml [--set k=v]       one SwAV pretraining, no Ray / MLflow
    ablate finetune CONFIG.yaml [--set k=v]       one Faster R-CNN fine-tuning, no Ray / MLflow
    ablate launch SPACE.yaml [--dry-run]          an ablation grid through Ray Tune + MLflow
    ablate status [STUDY] [--watch]               running launches and their trials, from the tracking store
    ablate stop STUDY [--trial NAME]              ask a running launch (or one trial) to stop, resumably
    ablate ui [--open]                            the MLflow UI on the local store; prints each study's leaderboard link
    ablate report STUDY                           ablation tables and plots
    ablate register STUDY / models / pull NAME@champion --dest DIR
    ablate gc STUDY [--dry-run]                   delete training states no launch can resume from
    ablate server [--auth]                        the team's MLflow tracking server

Each entry of :data:`COMMANDS` names the function that adds the command's parser and its handler
(``register(subparsers, name, summary, common)``, the handler as the parser's ``run`` default). Only the
command being run is imported, so a read-only command loads none of the others. Bad input exits with code 2
and one line naming the file, the field and the fix.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

EXIT_USAGE = 2
COMMANDS = {  # name: (module:function adding its parser, its one-line help)
    "demo": ("experiments.launch.command:register_demo",
             "generate sample data and run search_spaces/smoke.yaml end to end"),
    "data": ("experiments.launch.trial:register_data", "data set tools"),
    "pretrain": ("experiments.launch.trial:register_single", "run one SwAV pretraining without Ray or MLflow"),
    "finetune": ("experiments.launch.trial:register_single", "run one Faster R-CNN fine-tuning without Ray or MLflow"),
    "launch": ("experiments.launch.command:register",
               "run an ablation grid (Ray Tune stages, MLflow tracking, Optuna pruning)"),
    "status": ("experiments.results.status:register",
               "running launches and their trials (state, epoch, key metric, ETA), headline"),
    "stop": ("experiments.launch.control:register", "ask a running launch, or one of its trials, to stop after the current "
                                             "epoch (checkpointed; the same launch command resumes it)"),
    "gc": ("experiments.results.gc:register",
           "delete training states no launch of a study can resume from (never registered models)"),
    "report": ("experiments.results.report.command:register",
               "ablation tables (the paper's Table 1 layout + one per axis) and plots"),
    "register": ("experiments.results.registry:register", "register the study's best fine-tuning run (and its backbone)"),
    "models": ("experiments.results.registry:register_models", "registered models, versions, aliases and their metrics"),
    "pull": ("experiments.results.pull:register", "download a registered model: weights, config, model card"),
    "detect": ("experiments.results.pull:register_detect",
               "run a pulled detector on images: print its boxes, optionally draw them"),
    "ui": ("experiments.results.ui:register", "start the MLflow UI on the local store (127.0.0.1)"),
    "server": ("experiments.server.command:register",
               "run the team MLflow tracking server (artifact proxying, optional basic auth)"),
}


def get_args_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``ablate`` parser: every command's arguments, or with ``only`` that command's (the others by name)."""
    parser = argparse.ArgumentParser(prog="ablate", description="Ablation service for SwAV-pretrained object detection.")
    parser.add_argument("--version", action="version", version=f"ablate {_version()}", help="print the version and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="every library's own log lines too (Ray, Optuna, MLflow, the UI server's access log)")
    common = argparse.ArgumentParser(add_help=False)  # the options the store's commands share
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (target, summary) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=summary)
            continue
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(sub, name, summary, common)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ablate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def quiet_libraries(verbose: bool = False) -> None:
    """Keep the terminal for our progress lines: no artifact progress bars, no per-snapshot Ray warnings, no Ray
    token notice, no Optuna info lines (``ablate --verbose``: all of them)."""
    import logging

    if verbose:
        os.environ["ABLATE_VERBOSE"] = "1"  # read by the launch's Optuna set-up and `ablate ui`
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run at <URI>" lines
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # MLflow logs each SQL error with its traceback and then raises it; main() reports it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # "Token authentication is enabled for this Ray cluster...": the launch's own Ray, loopback only, keeps token auth
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def keep_credentials_out_of_uris(args: argparse.Namespace) -> None:
    """``http://user:pw@host`` -> MLflow's username/password variables + a clean URI, before any use of it."""
    from experiments.store.redaction import use_uri_credentials

    if getattr(args, "tracking_uri", None):
        args.tracking_uri = use_uri_credentials(args.tracking_uri)
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = use_uri_credentials(os.environ["MLFLOW_TRACKING_URI"])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    # only the command being run is imported; `ablate --help` and a mistyped command list the names alone
    args = get_args_parser(command if command in COMMANDS else "").parse_args(argv)
    quiet_libraries(args.verbose)
    keep_credentials_out_of_uris(args)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("\nablate: interrupted; run the same command again (or `ablate launch --resume`) to continue", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        from experiments.launch import LaunchError

        if not isinstance(exc, LaunchError):
            raise
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # config, space and data errors name the file, the field and the fix
        print(f"ablate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        # a tracking store that refuses a write or cannot be reached: one line, not MLflow's traceback
        from experiments.store.checks import failure_text, store_failure

        cause = store_failure(exc)
        if cause is None:
            raise
        print(f"ablate: error: the tracking store failed ({failure_text(cause)}); check "
              "that it is writable and reachable, then run the same command again", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
