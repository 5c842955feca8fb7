"""``ablate launch SPACE`` and ``ablate demo``: their arguments and what they run (experiments/cli.py wires them)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from trainers.vocabulary import STAGE_PRETRAIN, SWAV_KNN_TOP1


def register(subparsers: Any, name: str, summary: str, common: argparse.ArgumentParser) -> None:
    """Add ``ablate launch`` to the CLI's subparsers."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("space", type=Path, help="search space YAML (see search_spaces/README.md)")
    p.add_argument("--storage-path", default=None,
                   help="Ray storage for checkpoints: a folder (shared on a cluster) or s3://BUCKET/PREFIX, keys from "
                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, endpoint from AWS_ENDPOINT_URL (default: the "
                        "space's storage_path, $ABLATE_STORAGE_PATH, mlruns/ray)")
    p.add_argument("--name", default=None, help="study name (default: the space's `name`)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded plan and exit")
    p.add_argument("--resume", action="store_true", help="continue the study's last unfinished launch")
    p.add_argument("--max-concurrent", type=int, default=None, help="override max_concurrent of the space")
    p.add_argument("--address", default=None, help="Ray cluster address, e.g. ray://HOST:10001 (default: $RAY_ADDRESS or local)")
    p.add_argument("--optuna-storage", default=None,
                   help="SQLAlchemy URL of the Optuna study (default: $ABLATE_OPTUNA_STORAGE or sqlite:///mlruns/optuna.db)")
    p.add_argument("--no-register", action="store_true", help="do not register the best model at the end")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep finished trials' training states (model + optimizer) on the storage path; by default a "
                        "finished trial keeps only its exported model, in the tracking store")
    p.add_argument("--notify", default=None, metavar="CMD",
                   help="shell command run when the launch finishes, fails or is stopped, and when a trial fails; it "
                        "gets ABLATE_EVENT, ABLATE_STUDY, ABLATE_HEADLINE, ABLATE_MESSAGE, ABLATE_SLACK_JSON (and more, "
                        "see README) and the message on stdin. Keep secrets (webhook URLs) in environment variables")
    p.add_argument("--quiet", action="store_true", help="print only the summary at the end, no progress lines")
    p.add_argument("--num-gpus", type=float, default=None, metavar="N",
                   help="GPUs the local Ray node declares (default: those torch sees); ignored with --address")
    p.set_defaults(run=run_launch)


def run_launch(args: argparse.Namespace) -> int:
    """``ablate launch``: the launch's exit code (0 done, 1 failed, 2 bad input, 130 stopped)."""
    from experiments.launch import LaunchOptions, launch  # the package's names, as a test's stand-in replaces them

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ValueError(f"--max-concurrent {args.max_concurrent}: must be >= 1")
    if args.num_gpus is not None and not args.num_gpus >= 0:
        raise ValueError(f"--num-gpus {args.num_gpus:g}: must be >= 0 (the GPUs this machine's Ray node declares)")
    result = launch(args.space, LaunchOptions(
        tracking_uri=args.tracking_uri, storage_path=args.storage_path, name=args.name, dry_run=args.dry_run,
        resume=args.resume, max_concurrent=args.max_concurrent, address=args.address,
        optuna_storage=args.optuna_storage, register=not args.no_register, keep_checkpoints=args.keep_checkpoints,
        notify=args.notify, quiet=args.quiet, num_gpus=args.num_gpus))
    return result.exit_code


def register_demo(subparsers: Any, name: str, summary: str, common: argparse.ArgumentParser) -> None:
    """Add ``ablate demo`` to the CLI's subparsers."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("--space", default=None, help="space file to run (default: the shipped smoke.yaml)")
    p.set_defaults(run=run_demo)


def default_space(name: str) -> Path:
    """A shipped space file: ./search_spaces/NAME if present, else the one beside the package."""
    local = Path("search_spaces") / name
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[2] / "search_spaces" / name


def run_demo(args: argparse.Namespace) -> int:
    """``ablate demo``: the smoke study launched, what it shows, and the commands to look closer."""
    from experiments.launch import LaunchOptions, launch
    from experiments.store.redaction import redact
    from experiments.store.tracking import default_tracking_uri
    from trainers.data import find_images

    space = Path(args.space) if args.space else default_space("smoke.yaml")
    uri = args.tracking_uri or default_tracking_uri()
    print(f"ablate demo: launching {space} (tracking store {redact(uri)})", flush=True)
    result = launch(space, LaunchOptions(tracking_uri=uri))
    verdict = demo_verdict(result, uri)
    if verdict:
        print()
        print("what this demo shows:")
        for line in verdict:
            print(f"  {line}")
    exe = Path(sys.executable).with_name("ablate")
    cmd = os.path.relpath(exe) if exe.is_file() and not os.path.relpath(exe).startswith("..") else "ablate"
    print()
    print("next steps:")
    print(f"  {cmd} ui                                   # the MLflow UI; it prints the links below once it answers")
    for line in _demo_links(uri, result.study):
        print(f"      {line}")
    print(f"  {cmd} report {result.study}")
    print(f"  {cmd} pull {result.study}-detector@champion --dest pulled_model")
    val = find_images(result.data["val_images"])[:2] if result.data else []
    if val:
        images = " ".join(os.path.relpath(v) for v in val)
        print(f"  {cmd} detect pulled_model {images} --out detections.png")
    return result.exit_code


def _store_may_exist(uri: str) -> bool:
    """False for a sqlite store whose file is missing (nothing was launched): opening it would create it."""
    return not (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file())


def demo_verdict(result: Any, uri: str) -> list[str]:
    """Whether the demo's launch shows the paper's direction (pretrained > scratch), and honestly why not.

    The headline's verdict (experiments.results.verdict, the one judge) says whether the best pretrained cell beats the
    baseline, decided over seeds; the demo runs minutes of SwAV and one seed per cell. The direction counts as
    shown only when that verdict is *decided* and every backbone's kNN monitor is clearly above the random
    initialisations' mean (10 points and two of their std: the fidelity benchmark's bar); otherwise the lines say
    which part is missing.
    """
    from experiments.results.headline import study_headline
    from experiments.store.sqlite_reader import read_client
    from trainers.swav.references import learned as above_random, monitor_text

    if result.parent_run_id is None or not _store_may_exist(uri):
        return []
    client = read_client(uri)
    exp = client.get_experiment_by_name(result.study)
    if exp is None:
        return []
    headline = study_headline(client, exp.experiment_id)
    if headline.best is None or headline.baseline is None:
        return []
    b = headline.baseline
    pretrained_wins = headline.pretrained_wins
    knn = [o for o in result.outcomes if o.stage == STAGE_PRETRAIN and SWAV_KNN_TOP1 in o.metrics]
    learned = bool(knn) and all(above_random(o.metrics) for o in knn)
    monitor = ", ".join(f"{o.name} {monitor_text(o.metrics, digits=2)}" for o in knn) or "not reported"
    lines = [f"{'pretrained' if pretrained_wins else 'the no-pretraining baseline'} leads: {b.text('AP@0.5')}",
             f"backbones' kNN top-1 on the labeled objects: {monitor}"]
    if pretrained_wins and b.decided and learned:
        lines.append("this is the paper's direction: pretraining helps, decided (its 95 % interval excludes 0)")
        return lines
    why = []
    if not b.decided:
        why.append("one seed per cell cannot separate the rows from seed noise" if b.state == "no spread"
                   else f"the difference is {b.state}: its interval includes 0")
    if not learned:
        why.append("minutes of SwAV leave the backbones' features no better than random trunks' (kNN within "
                   "10 points, or two std, of the random initialisations' mean), so a pretrained row here is close "
                   "to a random-trunk detector")
    lines.append("not evidence about pretraining at this budget: " + "; ".join(why) + ". "
                 "`python -m bench fidelity` measures pretrained vs the fair baseline over 3 seeds (BENCHMARKS.md)")
    return lines


def _demo_links(uri: str, study: str) -> list[str]:
    """The study's leaderboard, cells and compare links on `ablate ui`'s default address."""
    from experiments.store.sqlite_reader import read_client
    from experiments.results.ui import DEFAULT_UI_URL, links

    if not _store_may_exist(uri):
        return []
    exp = read_client(uri).get_experiment_by_name(study)
    if exp is None:
        return []
    found = links(DEFAULT_UI_URL, exp.experiment_id, study, exp.tags)
    return [f"leaderboard: {found.leaderboard}", *([f"cells:       {found.cells}"] if found.cells else []),
            f"compare:     {found.compare}"]
