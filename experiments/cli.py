"""The ``ablate`` command.

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

Bad input exits with code 2 and one line naming the file, the field and the fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from experiments.trial import AP50

EXIT_USAGE = 2


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description="Ablation service for SwAV-pretrained object detection.")
    parser.add_argument("--version", action="version", version=f"ablate {_version()}", help="print the version and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="every library's own log lines too (Ray, Optuna, MLflow, the UI server's access log)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate sample data and run search_spaces/smoke.yaml end to end")
    p.add_argument("--space", default=None, help="space file to run (default: the shipped smoke.yaml)")
    _add_tracking(p)

    p = sub.add_parser("data", help="data set tools")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser("sample", help="write the deterministic sample data set (COCO format + unlabeled folder)")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="generator seed (same seed -> identical files)")
    s.add_argument("--size", default="small", choices=["small", "medium", "large"],
                   help="small: tests; medium: the demo; large (digits only): 16,384 unlabeled images, for GPU runs")
    s.add_argument("--kind", default="shapes", choices=["shapes", "digits"],
                   help="shapes: coloured shapes on clutter; digits: real handwritten digits on real photographs")

    for stage in ("pretrain", "finetune"):
        what = "SwAV pretraining" if stage == "pretrain" else "Faster R-CNN fine-tuning"
        p = sub.add_parser(stage, help=f"run one {what} without Ray or MLflow")
        p.add_argument("config", type=Path, help="YAML file of config fields")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field (value read as YAML); repeatable")
        p.add_argument("--out", type=Path, default=None,
                       help=f"folder for checkpoints and the exported {'backbone' if stage == 'pretrain' else 'detector'}")
        p.add_argument("--resume", type=Path, default=None, help="checkpoint folder to resume from")

    p = sub.add_parser("launch", help="run an ablation grid (Ray Tune stages, MLflow tracking, Optuna pruning)")
    p.add_argument("space", type=Path, help="search space YAML (see search_spaces/README.md)")
    _add_tracking(p)
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

    p = sub.add_parser("status", help="running launches and their trials (state, epoch, key metric, ETA), headline")
    p.add_argument("study", nargs="?", default=None,
                   help="study name: its newest launch, running or not (default: every running launch)")
    p.add_argument("--watch", action="store_true", help="redraw the table in place until Ctrl-C (or the launch ends)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between redraws with --watch (default 5)")
    p.add_argument("--format", default="table", choices=["table", "json"], help="table (terminal) or json (scripts)")
    _add_tracking(p)

    p = sub.add_parser("stop", help="ask a running launch, or one of its trials, to stop after the current epoch "
                                    "(checkpointed; the same launch command resumes it)")
    p.add_argument("study", help="study name")
    p.add_argument("--trial", default=None, metavar="NAME",
                   help="stop this trial only (its name as `ablate status` lists it, or the start of its run id)")
    _add_tracking(p)

    p = sub.add_parser("gc", help="delete training states no launch of a study can resume from (never registered models)")
    p.add_argument("study", help="study name")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted and how much it frees")
    p.add_argument("--storage-path", default=None,
                   help="Ray storage of launches that recorded none (default: $ABLATE_STORAGE_PATH or mlruns/ray)")
    _add_tracking(p)

    p = sub.add_parser("report", help="ablation tables (the paper's Table 1 layout + one per axis) and plots")
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
    _add_tracking(p)

    p = sub.add_parser("register", help="register the study's best fine-tuning run (and its backbone)")
    p.add_argument("study", help="study name")
    p.add_argument("--metric", default=AP50, help="what 'best' means (ties broken by det/AP)")
    _add_tracking(p)

    p = sub.add_parser("models", help="registered models, versions, aliases and their metrics")
    _add_tracking(p)

    p = sub.add_parser("pull", help="download a registered model: weights, config, model card")
    p.add_argument("name", help="NAME@ALIAS or NAME/VERSION, e.g. smoke-detector@champion")
    p.add_argument("--dest", type=Path, required=True,
                   help="folder for the model: new or empty (with --overwrite: an earlier pull)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --dest only if it holds an earlier pull and nothing else (MODEL_CARD.md plus "
                        "config.json, config.yaml and the detector/backbone .safetensors and .json files); a folder "
                        "with any other content, the current, home or root folder, and a folder containing the "
                        "working directory or the local store are never replaced")
    _add_tracking(p)

    p = sub.add_parser("detect", help="run a pulled detector on images: print its boxes, optionally draw them")
    p.add_argument("model", type=Path, help="folder from `ablate pull STUDY-detector@champion --dest DIR`")
    p.add_argument("images", type=Path, nargs="+", help="PNG/JPEG files")
    p.add_argument("--threshold", type=float, default=0.5, help="lowest score to show (default 0.5)")
    p.add_argument("--out", type=Path, default=None, help="PNG to write with the images and their boxes")

    p = sub.add_parser("ui", help="start the MLflow UI on the local store (127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="TCP port (default 5000; 0: any free port, printed)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1: this machine only); the UI has no auth, so an address off "
                        "loopback needs --insecure-no-auth (a team server: `ablate server --auth`)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --host off loopback: anyone who reaches the port can create, change and delete runs "
                        "and models (only on a network you trust)")
    p.add_argument("--open", action="store_true",
                   help="open the newest study's leaderboard in the default web browser once the UI answers")
    _add_tracking(p)

    from experiments.server import add_server_parser

    add_server_parser(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ablate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _fail(msg: str) -> int:
    print(f"ablate: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def cmd_data_sample(args: argparse.Namespace) -> int:
    from trainers.data import generate_sample

    paths = generate_sample(args.out, seed=args.seed, size=args.size, kind=args.kind)
    print(f"sample data ({args.kind}, {args.size}, seed {args.seed}) in {paths.root}")
    names = ["unlabeled", "train_images", "train_annotations", "val_images", "val_annotations"]
    if paths.monitor() is not None:
        names += ["monitor_bank_images", "monitor_bank_annotations", "monitor_query_images", "monitor_query_annotations"]
    for name in names:
        print(f"  {name:25} {getattr(paths, name)}")
    return 0


def cmd_single(args: argparse.Namespace, stage: str) -> int:
    import json
    import shutil

    from trainers.common import load_config_file
    from trainers.reporting import InMemoryReporter

    from experiments.trial import TRAINERS

    train, cls = TRAINERS[stage].load()
    export = TRAINERS[stage].export
    config = load_config_file(cls, args.config, args.overrides)
    out = args.out or Path(f"{stage}_out")
    reporter = InMemoryReporter(root=out, resume_from=args.resume, echo=sys.stdout)
    result = train(config, reporter, progress=True)
    last = reporter.last_checkpoint
    if last is not None and any(last.glob(f"{export}.*")):
        dest = out / export
        dest.mkdir(parents=True, exist_ok=True)
        for f in last.glob(f"{export}.*"):
            shutil.copy2(f, dest / f.name)
        print(f"exported {export}: {dest}")
    if stage == "finetune":
        summaries = sorted(out.glob("artifacts/step_*/coco_summary.txt"))
        if summaries:
            print(summaries[-1].read_text())
        print(format_ap_table(result))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def format_ap_table(metrics: dict[str, float]) -> str:
    """The COCO numbers a researcher reads first, one per line (NaN: no ground truth in that size range)."""
    from experiments.trial import METRIC_LABELS

    keys = (AP50, "det/AP", "det/AP75", "det/AP_small", "det/AP_medium", "det/AP_large")
    return "\n".join(f"{METRIC_LABELS[key]:18} {metrics.get(key, float('nan')):.4f}" for key in keys)


def cmd_launch(args: argparse.Namespace) -> int:
    from experiments.launch import LaunchOptions, launch

    if args.max_concurrent is not None and args.max_concurrent < 1:
        return _fail(f"--max-concurrent {args.max_concurrent}: must be >= 1")
    if args.num_gpus is not None and not args.num_gpus >= 0:
        return _fail(f"--num-gpus {args.num_gpus:g}: must be >= 0 (the GPUs this machine's Ray node declares)")
    result = launch(args.space, LaunchOptions(
        tracking_uri=args.tracking_uri, storage_path=args.storage_path, name=args.name, dry_run=args.dry_run,
        resume=args.resume, max_concurrent=args.max_concurrent, address=args.address,
        optuna_storage=args.optuna_storage, register=not args.no_register, keep_checkpoints=args.keep_checkpoints,
        notify=args.notify, quiet=args.quiet, num_gpus=args.num_gpus))
    return result.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    from experiments import status

    if args.watch and args.format == "json":
        return _fail("--watch redraws a terminal table; for scripts, run `ablate status --format json` at each poll")
    if args.interval <= 0:
        return _fail(f"--interval {args.interval}: must be > 0 seconds")
    if args.watch:
        return status.watch(tracking_uri_of(args), args.study, every_s=args.interval)
    print(status.status(tracking_uri_of(args), args.study, fmt=args.format))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from experiments.control import request_stop

    print(request_stop(tracking_uri_of(args), args.study, args.trial))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from experiments.gc import gc
    from experiments.tracking import DEFAULT_STORE_DIR

    storage = str(args.storage_path or os.environ.get("ABLATE_STORAGE_PATH") or DEFAULT_STORE_DIR / "ray")
    print(gc(tracking_uri_of(args), args.study, storage if "://" in storage else Path(storage).resolve(),
             dry_run=args.dry_run))
    return 0


def default_space(name: str) -> Path:
    """A shipped space file: ./search_spaces/NAME if present, else the one beside the package."""
    local = Path("search_spaces") / name
    if local.is_file():
        return local
    return Path(__file__).resolve().parent.parent / "search_spaces" / name


def cmd_demo(args: argparse.Namespace) -> int:
    from experiments.launch import LaunchOptions, launch
    from experiments.redaction import redact
    from experiments.tracking import default_tracking_uri

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
    from trainers.data import find_images

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

    The paper's effect is claimed for long SwAV pretraining and judged over seeds; the demo pretrains
    for minutes and runs one seed per cell. The direction counts as shown only when the best pretrained
    cell beats the baseline beyond the seeds' spread *and* its backbone's kNN monitor is clearly above
    the random initialisations' mean by 10 points and two of their std (the fidelity benchmark's bar); otherwise the lines say which part is missing.
    """
    from experiments.headline import study_headline
    from experiments.sqlite_reader import read_client

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
    from trainers.swav.references import learned as above_random, monitor_text

    knn = [o for o in result.outcomes if o.stage == "pretrain" and "swav/knn_top1" in o.metrics]
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
    from experiments.sqlite_reader import read_client
    from experiments.ui import DEFAULT_UI_URL, links

    if not _store_may_exist(uri):
        return []
    exp = read_client(uri).get_experiment_by_name(study)
    if exp is None:
        return []
    found = links(DEFAULT_UI_URL, exp.experiment_id, study, exp.tags)
    return [f"leaderboard: {found.leaderboard}", *([f"cells:       {found.cells}"] if found.cells else []),
            f"compare:     {found.compare}"]


def tracking_uri_of(args: argparse.Namespace) -> str:
    """--tracking-uri, $MLFLOW_TRACKING_URI or the local store; never creates a folder (read-only commands)."""
    from experiments.tracking import default_tracking_uri

    return args.tracking_uri or default_tracking_uri(create=False)


def cmd_results(args: argparse.Namespace) -> int:
    """report / register / models / pull: the ways results leave the service."""
    uri = tracking_uri_of(args)
    if args.command == "report":
        from experiments.report import report, runs_table

        if args.runs:
            print(runs_table(uri, args.study, fmt=args.format), end="")
            return 0
        print(report(uri, args.study, fmt=args.format, out_dir=args.out, log_to_parent=args.log and not args.no_log,
                     say=lambda line: print(line, file=sys.stderr)), end="")
        return 0
    from experiments import registry
    from experiments.pull import pull

    if args.command == "register":
        print(registry.register_best(uri, args.study, metric=args.metric))
    elif args.command == "models":
        print(registry.list_models(uri))
    else:
        dest = pull(args.name, args.dest, uri, overwrite=args.overwrite)
        print(f"pulled {args.name} into {dest}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    """Load a pulled detector (safetensors only), print each image's boxes, draw them with --out."""
    import torch

    from trainers.data import decode_rgb
    from trainers.detection import detect, draw_detections, load_detector, read_detector_config

    if not 0.0 <= args.threshold <= 1.0:
        return _fail(f"--threshold {args.threshold}: expected a score between 0 and 1")
    model = load_detector(args.model)
    record = read_detector_config(args.model)
    images, found = [], []
    for path in args.images:
        try:
            image = decode_rgb(path)
        except (OSError, RuntimeError) as exc:
            return _fail(f"{path}: not a readable PNG/JPEG image ({exc})")
        boxes = detect(model, image, record["class_names"], record["label_to_cat_id"], score_threshold=args.threshold)
        images.append(image)
        found.append(boxes)
        print(f"{path}: {len(boxes)} object{'s' if len(boxes) != 1 else ''} scoring >= {args.threshold:g}")
        for b in boxes:
            print(f"  {b['category_name']:10} {b['score']:.2f}  "
                  f"[{b['x_min']:.0f}, {b['y_min']:.0f}, {b['x_max']:.0f}, {b['y_max']:.0f}]")
    if args.out is not None:
        empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
        preds = [{"boxes": torch.tensor([[b["x_min"], b["y_min"], b["x_max"], b["y_max"]] for b in boxes]).reshape(-1, 4),
                  "scores": torch.tensor([b["score"] for b in boxes]),
                  "labels": torch.tensor([b["label"] for b in boxes], dtype=torch.int64),
                  "image_id": path.name} for path, boxes in zip(args.images, found)]
        draw_detections(images, [empty] * len(images), preds, record["class_names"], args.out,
                        score_threshold=args.threshold, title=f"detector {args.model}")
        print(f"drawn: {args.out}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """``ablate ui``: run ``mlflow ui`` on the local store, after the checks it cannot do itself.

    Refused with exit 2 before anything starts: an ``http(s)://`` store (already a server), a
    sqlite store that does not exist, a bind off loopback without ``--insecure-no-auth`` (the UI
    has no auth), a port outside 0..65535, a port in use. ``--port 0`` picks a free port. Once
    the server answers, it says so and prints each study's leaderboard and compare links
    (:func:`experiments.ui.serve`); ``--open`` opens the newest one.
    """
    from experiments.redaction import redact
    from experiments.server import ServerConfigError, check_bind, check_port
    from experiments.store import check_store
    from experiments.tracking import artifact_root_for, default_tracking_uri
    from experiments.ui import serve

    uri = args.tracking_uri or default_tracking_uri(create=False)
    if uri.startswith("http"):
        return _fail(f"--tracking-uri {redact(uri)} is already a server: open it in a browser")
    check_store(uri, ValueError)  # a missing sqlite store: one line, no empty mlruns/ made
    try:
        check_bind(args.host, auth=False, insecure_no_auth=args.insecure_no_auth, command="ablate ui")
        bind = args.host if args.host.strip() not in ("", "::", "[::]") else "0.0.0.0"
        port = check_port(bind, args.port, allow_any=True)
    except ServerConfigError as exc:
        return _fail(str(exc))
    # one worker (a UI for one person starts in seconds, not four), the app that keeps the assistant panel closed on
    # a first visit (experiments/ui_app.py)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(port),
           "--workers", "1", "--app-name", "ablate-ui"]
    root = artifact_root_for(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    log = ui_log_path(uri, port)
    print(f"starting the MLflow UI on http://{args.host}:{port} (store {redact(uri)}; its own log: {log})", flush=True)
    return serve(cmd, uri, args.host, port, open_browser=args.open, log=None if args.verbose else log)


def ui_log_path(uri: str, port: int) -> Path:
    """Where `ablate ui` writes the server's own output (notices, access log): beside a sqlite store, else in the
    temporary folder."""
    import tempfile

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent / "ui.log"
    return Path(tempfile.gettempdir()) / f"ablate-ui-{port}.log"


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
    from experiments.redaction import use_uri_credentials

    if getattr(args, "tracking_uri", None):
        args.tracking_uri = use_uri_credentials(args.tracking_uri)
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = use_uri_credentials(os.environ["MLFLOW_TRACKING_URI"])


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    keep_credentials_out_of_uris(args)
    try:
        if args.command == "data":
            return cmd_data_sample(args)
        if args.command in ("pretrain", "finetune"):
            return cmd_single(args, args.command)
        if args.command == "launch":
            return cmd_launch(args)
        if args.command == "gc":
            return cmd_gc(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "stop":
            return cmd_stop(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "ui":
            return cmd_ui(args)
        if args.command == "detect":
            return cmd_detect(args)
        if args.command in ("report", "register", "models", "pull"):
            return cmd_results(args)
        if args.command == "server":
            from experiments.server import cmd_server

            return cmd_server(args)
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
        return _fail(str(exc))
    except Exception as exc:
        # a tracking store that refuses a write or cannot be reached: one line, not MLflow's traceback
        from experiments.store import failure_text, store_failure

        cause = store_failure(exc)
        if cause is None:
            raise
        print(f"ablate: error: the tracking store failed ({failure_text(cause)}); check "
              "that it is writable and reachable, then run the same command again", file=sys.stderr)
        return 1
    return _fail(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
