"""``python -m bench device [--out DIR] [--tiny]``: everything a GPU machine should measure, in one command.

Made for one call on a lent GPU machine (one H200, 16 cores; torch 2.11 and no mlflow, ray or optuna there),
so nothing here or below it imports mlflow, ray or optuna, and the whole plan fits nine minutes. Three phases,
each a child process with its own time box; each writes its results as it goes, so a phase that runs out of
time still hands back what it measured, and the next phase still runs:

1. ``tests``: the CUDA-only tests of ``tests/trainers`` (``pytest -m cuda``; skipped, and said so, on a CPU).
2. ``throughput``: ``bench gpu --quick``: SwAV ResNet-50 (2 x 224 + 6 x 96, batch 64) on synthetic crops and
   end to end from image files, one epoch of ``trainers.swav.train``, Faster R-CNN R50-FPN in fp32 and bf16.
3. ``fidelity``: the GPU profile of the fidelity study (``search_spaces/fidelity_gpu.yaml``) without the
   launch: the same configs ``ablate launch`` would plan (``experiments.spaces.expand``), the data generated
   on every core, SwAV for a wall budget with its trunk exported even when the budget stops it, then every
   fine-tuning arm x seed at once on the one GPU (spawned processes), checkpoints in RAM (``/dev/shm``) with
   one copy kept per run. Reported as the fidelity benchmark reports: AP50 mean ± std over seeds per arm,
   the backbone's kNN against the random initialisations' spread and the raw pixels, the collapse label.

``--tiny`` runs every phase end to end on a CPU (tiny networks, the small sample sets; about a minute on an idle
2-core machine) with no time box: it checks that every phase runs to completion and writes its results, and it
fails on errors, never on the wall clock of a busy machine (``--budget PHASE=SECONDS`` still boxes a phase).
``tests/test_bench.py`` runs it with mlflow, ray and optuna made unimportable. Without ``--tiny`` and
without CUDA the throughput and fidelity phases say they were skipped.

Under ``--out`` (at most four files, the device tool's limit being eight): ``device.json`` (every result),
``device.md`` (the BENCHMARKS.md sections), ``device.log`` (everything printed) and ``device-curves.tar.gz``
(per-run histories, the fidelity figure and its JSON, the tests' JUnit XML). ``python -m bench device --record
DIR`` writes ``DIR/device.md``'s sections into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

from bench.device_host import die_with_parent, own_entries, preflight, remove_new_entries, work_root
from trainers.vocabulary import (
    DET_AP,
    DET_AP50,
    DET_ITERATIONS,
    SUP_IMAGES_PER_S,
    SWAV_IMAGES_PER_S,
    SWAV_KNN_TOP1,
    SWAV_KNN_Z_TOP1,
    SWAV_PROBE_TOP1,
)

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("tests", "throughput", "fidelity")
# Seconds per phase. The full plan fits one nine-minute call with ~20 s for start-up and bundling.
BUDGETS = {"tests": 60, "throughput": 150, "fidelity": 310}
# --tiny: no time box (None). Measured on an idle 2-core machine: ~10, ~15 and ~30 s; under load ~6 the fidelity phase
# took past 80 s, so a wall-clock box made a busy CI host refuse a good submission.
TINY_BUDGETS: dict[str, float | None] = dict.fromkeys(PHASES)
CALL_LIMIT_S = 540
SWAV_SHARE = 0.40  # of the fidelity phase: the pretraining runs' wall budget, shared (data first, fine-tunes after)
MARGIN_S = 12  # fidelity: the fine-tunes' deadline this long before the phase's, for their last epoch and the report
OUT_FILES = ("device.json", "device.md", "device.log", "device-curves.tar.gz")
CUDA_MARK = "cuda"
# --tiny: the tiny test spaces' fields (experiments/testing/spaces.py) on top of the GPU profile's.
TINY_PRETRAIN = {"queue_length": 0, "knn_every": 1, "knn_max_objects": 16}
TINY_DATA = ("small", 0, "digits", 2)


def _tiny_fields() -> tuple[dict[str, Any], dict[str, Any]]:
    from experiments.testing.spaces import tiny_space

    space = tiny_space("tiny")
    pre = {**space["pretrain"]["fixed"], **TINY_PRETRAIN}
    fine = {**space["finetune"]["fixed"], "eval_every": 1, "figure_images": 0}
    return pre, fine


def save(work: Path, name: str, data: dict[str, Any]) -> None:
    """Write ``work/<name>.json`` whole or not at all (a phase killed mid-write leaves the previous version)."""
    tmp = work / f".{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(work / f"{name}.json")


def load(work: Path, name: str) -> dict[str, Any]:
    path = work / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def machine() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpus": os.cpu_count(),
            "arch": platform.machine(), "python": platform.python_version()}


# ---------------------------------------------------------------------------
# Phase 1: the CUDA-only tests
# ---------------------------------------------------------------------------


def phase_tests(work: Path, tiny: bool) -> dict[str, Any]:
    """``pytest -m cuda tests/trainers``; the outcome of every selected test from its JUnit XML."""
    xml = work / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/trainers", "-m", CUDA_MARK, "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    print(proc.stdout[-4000:] + proc.stderr[-2000:], flush=True)
    tests = []
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    message = (child.get("message") or child.text or "")[:400]
            tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                          "message": message})
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")}
    result = {"exit_code": proc.returncode, "wall_s": time.monotonic() - started, "counts": counts, "tests": tests}
    save(work, "tests", result)
    if proc.returncode != 0 or not tests:
        raise SystemExit(f"pytest exited with {proc.returncode} ({counts})" if tests else
                         f"pytest exited with {proc.returncode} and ran no test marked {CUDA_MARK!r}")
    return result


# ---------------------------------------------------------------------------
# Phase 2: throughput
# ---------------------------------------------------------------------------


def phase_throughput(work: Path, tiny: bool) -> dict[str, Any]:
    """``bench gpu --quick`` (``--tiny``: ResNet-18, small crops and images, one step each, on any device)."""
    import torch

    from bench import gpu
    from trainers.data import generate_sample

    cuda = torch.cuda.is_available()
    if not cuda and not tiny:
        result = {"skipped": "no CUDA device (`torch.cuda.is_available()` is False)"}
        save(work, "throughput", result)
        return result
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    if tiny:
        crops = (gpu.CropGroup(2, 32, 0.14, 1.0), gpu.CropGroup(2, 16, 0.05, 0.14))
        swav = gpu.SwAVSetup(arch="resnet18", crops=crops, batch=8, prototypes=30, feat_dim=16, hidden_dim=64)
        det = gpu.DetectionSetup(arch="resnet18", batch=1, image_hw=(96, 128), min_size=96, max_size=128, boxes=2,
                                 classes=3)
        timing, workers, size = gpu.Timing(1, 1, 1), 0, "small"
    else:
        swav, det, timing, size = gpu.SwAVSetup(), gpu.DetectionSetup(), gpu.QUICK, "medium"
        workers = max(1, min(10, (os.cpu_count() or 2) - 2))  # the reference uses 10 per GPU
    result: dict[str, Any] = {"device": str(device), "timing": dataclasses.asdict(timing), "workers": workers,
                              "labels": gpu.describe(swav, det), "rates": {}, "tiny": tiny}
    save(work, "throughput", result)
    paths = generate_sample(work / "throughput-data", seed=0, size=size)

    def record(key: str, rates: list[float]) -> None:
        result["rates"][key] = rates
        print(f"throughput: {key} {statistics.median(rates):.1f} images/s", flush=True)
        save(work, "throughput", result)

    gpu.measure(device, swav, det, paths.unlabeled, workers, timing, record)
    return result


def throughput_section(result: dict[str, Any], meta: dict[str, Any], command: str) -> str:
    from bench import gpu

    if "skipped" in result or "labels" not in result:
        return gpu.skipped_section(result.get("skipped", "the phase did not start"))
    where = (f"{meta['gpu']}, {meta['cpus']} CPUs" if result["device"].startswith("cuda")
             else f"{meta['cpus']} CPUs ({meta['arch']}), no GPU: tiny networks, a pipeline check only")
    return gpu.section(result["rates"], result["labels"], where, command, gpu.Timing(**result["timing"]),
                       result["workers"], goals=not result.get("tiny"))


# ---------------------------------------------------------------------------
# Phase 3: the GPU fidelity profile
# ---------------------------------------------------------------------------


def _finetune(name: str, config: dict[str, Any], root: str, deadline: float, threads: int) -> dict[str, Any]:
    """One fine-tuning run in a spawned worker: trained to its epochs or its deadline; its reports back."""
    import torch

    from trainers.common.configs import config_from_dict
    from trainers.detection import DetectionConfig, train
    from trainers.reporting import InMemoryReporter

    torch.set_num_threads(threads)
    folder = Path(root) / name
    reporter = InMemoryReporter(root=folder, keep_checkpoints=1, deadline=deadline)
    started = time.monotonic()
    train(config_from_dict(DetectionConfig, config), reporter)
    shutil.rmtree(folder, ignore_errors=True)  # the checkpoints lived only while the run did
    return {"name": name, "wall_s": time.monotonic() - started, "epochs": int(config["epochs"]),
            "history": [{"epoch": r.step, **r.metrics} for r in reporter.reports]}


def _pretrain(trial: Any, config: dict[str, Any], root: Path, deadline: float) -> dict[str, Any]:
    """SwAV (or the supervised control) to its epochs or its deadline; the trunk exported from the last checkpoint
    either way."""
    from trainers.common.configs import config_from_dict
    from trainers.reporting import InMemoryReporter
    from trainers.swav import SwAVConfig, export_from_checkpoint, train

    reporter = InMemoryReporter(root=root / trial.name, keep_checkpoints=1, deadline=deadline)
    started = time.monotonic()
    train(config_from_dict(SwAVConfig, config), reporter)
    wall = time.monotonic() - started
    last = reporter.last_checkpoint
    if last is None:
        raise RuntimeError(f"{config.get('method', 'swav')} {trial.name}: no epoch finished before its deadline")
    backbone = last / "backbone"
    export_from_checkpoint(last, backbone)  # the same trunk whether the budget or the schedule ended it
    history = [{"epoch": r.step, **r.metrics} for r in reporter.reports]
    rate = SUP_IMAGES_PER_S if config.get("method") == "supervised" else SWAV_IMAGES_PER_S
    rates = [h[rate] for h in history if rate in h]
    return {"name": trial.name, "hash": trial.config_hash, "method": config.get("method", "swav"), "backbone": str(backbone), "wall_s": wall,
            "epochs": int(config["epochs"]), "epochs_done": len(history), "feat_dim": int(config["feat_dim"]),
            "images_per_s": statistics.fmean(rates) if rates else math.nan, "history": history}


def phase_fidelity(work: Path, tiny: bool, budget: float | None) -> dict[str, Any]:
    """The GPU fidelity profile: data, SwAV within its wall budget, then every fine-tune at once.

    ``budget=None`` (``--tiny``'s default): no deadlines, every run goes to its last epoch."""
    import torch

    from bench.fidelity import GPU_SPACE
    from experiments.spaces import expand, load_space, resolve_data

    started = time.monotonic()
    cuda = torch.cuda.is_available()
    result: dict[str, Any] = {"space": str(GPU_SPACE.relative_to(ROOT)), "tiny": tiny, "budget_s": budget}
    if not cuda and not tiny:
        result["skipped"] = "no CUDA device: the profile is sized for one H200"
        save(work, "fidelity", result)
        return result
    spec = load_space(GPU_SPACE)
    pre_fields, fine_fields = _tiny_fields() if tiny else ({}, {})
    if tiny:
        spec = dataclasses.replace(spec, seeds=spec.seeds[:1], data=dataclasses.replace(spec.data, sample=TINY_DATA))
    root = work_root() / f"ablate-fidelity-{os.getpid()}"
    try:
        paths, fingerprint = resolve_data(spec, work / "fidelity-data")
        result["data_s"] = time.monotonic() - started
        plan = expand(spec, fingerprint, paths)
        print(f"fidelity: data in {result['data_s']:.0f} s; {len(plan.pretrain)} pretraining run(s), "
              f"{len(plan.finetune)} fine-tunes", flush=True)
        save(work, "fidelity", result)
        backbones, result["pretrain"] = {}, []
        window = _deadline(started, budget, SWAV_SHARE)  # the pretraining runs share it equally, one after another
        for done, trial in enumerate(plan.pretrain):
            now = time.monotonic()
            swav = _pretrain(trial, {**trial.config, **pre_fields}, root,
                             now + (window - now) / (len(plan.pretrain) - done))
            backbones[trial.config_hash] = swav["backbone"]
            result["pretrain"].append(swav)
            print(f"fidelity: {swav['method']} {trial.name} {swav['epochs_done']}/{swav['epochs']} epochs in "
                  f"{swav['wall_s']:.0f} s, {swav['images_per_s']:.0f} images/s", flush=True)
            save(work, "fidelity", result)
        jobs = []
        for ft in plan.finetune:
            config = {**ft.config, **fine_fields, "backbone": backbones[ft.upstream_hash] if ft.upstream_hash
                      else "scratch"}
            jobs.append((ft, config))
        concurrent = max(1, min(len(jobs), 2 if tiny else spec.max_concurrent))
        threads = max(1, (os.cpu_count() or 1) // concurrent)
        deadline = _deadline(started, budget, 1.0, MARGIN_S)
        result.update(finetune=[], concurrent=concurrent)
        ft_started = time.monotonic()
        with ProcessPoolExecutor(max_workers=concurrent, mp_context=_spawn()) as pool:
            futures = {pool.submit(_finetune, ft.name, config, str(root), deadline, threads): (ft, config)
                       for ft, config in jobs}
            for future in as_completed(futures):
                ft, config = futures[future]
                record = {"name": ft.name, "backbone": ft.backbone_name, "upstream": ft.upstream_hash,
                          "seed": ft.seed, "arch": config["arch"], "norm": config["norm"],
                          "lr_scheme": config["lr_scheme"]}
                try:
                    record.update(future.result())
                except Exception as exc:  # noqa: BLE001 - one failed fine-tune is reported, the rest still count
                    record["error"] = f"{type(exc).__name__}: {exc}"
                result["finetune"].append(record)
                print(f"fidelity: fine-tune {ft.name} "
                      + (f"failed: {record['error']}" if "error" in record else
                         f"{len(record['history'])}/{record['epochs']} epochs, AP50 {last_ap50(record):.3f}"),
                      flush=True)
                result["finetune_s"] = time.monotonic() - ft_started
                save(work, "fidelity", result)
        fidelity_figure(result, work / "curves")
        save(work, "fidelity", result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _deadline(started: float, budget: float | None, share: float, margin: float = 0.0) -> float:
    """A monotonic deadline at ``share`` of the budget less ``margin``; never, without a budget."""
    return math.inf if budget is None else started + share * budget - margin


def _spawn() -> Any:
    import multiprocessing

    return multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children


def last_ap50(record: dict[str, Any], key: str = DET_AP50) -> float:
    """The run's latest evaluated figure (NaN before its first evaluation)."""
    values = [h[key] for h in record.get("history", []) if key in h]
    return values[-1] if values else math.nan


def fidelity_groups(result: dict[str, Any]) -> list[Any]:
    """bench.fidelity's groups (one per arm, one value per seed) from the phase's records."""
    from bench.fidelity import BASELINE, CONTROL, CURVE_KEYS, MONITOR_KEYS, POSITIVE, PRETRAINED, Group, arm

    swav = {s["hash"]: s for s in result.get("pretrain", [])}
    groups: dict[str, Group] = {}
    for r in sorted(result.get("finetune", []), key=lambda r: r["name"]):
        if "error" in r or math.isnan(last_ap50(r)):
            continue
        backbone = swav.get(r["upstream"]) if r["upstream"] else None
        name, role = arm(r["backbone"] if r["upstream"] else None, r["arch"], r["norm"], r["lr_scheme"],
                         backbone.get("method", "swav") if backbone else "swav")
        group = groups.setdefault(f"{r['upstream']}:{r['norm']}:{r['lr_scheme']}", Group(name, role))
        group.ap50.append(last_ap50(r))
        group.ap.append(last_ap50(r, DET_AP))
        group.curves.append([(h.get(DET_ITERATIONS, math.nan), h[DET_AP50]) for h in r["history"]
                             if DET_AP50 in h])
        if backbone is not None:
            final = backbone["history"][-1] if backbone["history"] else {}
            group.backbone, group.feat_dim = backbone["name"], backbone["feat_dim"]
            group.monitor = {k: final[k] for k in MONITOR_KEYS if k in final}
            group.signals = {k: [(h["epoch"], h[k]) for h in backbone["history"] if k in h] for k in CURVE_KEYS}
    order = {PRETRAINED: 0, POSITIVE: 1, BASELINE: 2, CONTROL: 3}
    return sorted(groups.values(), key=lambda g: (order[g.role], g.name))


def fidelity_figure(result: dict[str, Any], folder: Path) -> None:
    """The fidelity benchmark's figure (and its JSON, for ``bench.fidelity --redraw``) of the phase's runs."""
    from bench.fidelity import plot

    groups = fidelity_groups(result)
    if not groups:
        return
    folder.mkdir(parents=True, exist_ok=True)
    title = f"fidelity_gpu{' --tiny (pipeline check)' if result['tiny'] else ''}: digits, SwAV vs fair scratch"
    plot(groups, folder / "fidelity_gpu_curves.png", title,
         {"space": result["space"], "quick": result["tiny"], "wall_s": result.get("finetune_s", 0.0)})


def fidelity_section(result: dict[str, Any], meta: dict[str, Any], command: str) -> str:
    """The GPU fidelity section: SwAV's run, the arms' table and the verdict, as ``bench fidelity`` words them."""
    from bench.fidelity import judge, judgement, table
    from trainers.swav.references import monitor_text

    head = "## Fidelity on one GPU (search_spaces/fidelity_gpu.yaml)"
    if "skipped" in result or "pretrain" not in result:
        return f"{head}\n\n**Not measured: {result.get('skipped', 'the phase stopped before pretraining ran')}.**\n"
    groups = fidelity_groups(result)
    where = (f"{meta['gpu']}, {meta['cpus']} CPUs" if meta["cuda"]
             else f"{meta['cpus']} CPUs, no GPU: `--tiny` (tiny networks, the small set, one seed): a pipeline check, "
                  "not the claim")
    lines = [head, "", f"Command: `{command}` (the fidelity phase: the configs `ablate launch` plans for this space, "
             f"run without the launch). Machine: {where}. Data generated in {result.get('data_s', math.nan):.0f} s."]
    for s in result["pretrain"]:
        final = s["history"][-1] if s["history"] else {}
        budget = "" if s["epochs_done"] == s["epochs"] else " (stopped by its wall budget; the trunk exported there)"
        what = "Supervised (the positive control)" if s.get("method") == "supervised" else "SwAV"
        lines.append(f"{what} {s['name']}: {s['epochs_done']} of {s['epochs']} epochs in {s['wall_s']:.0f} s{budget}, "
                     f"{s['images_per_s']:.0f} images/s; kNN top-1 {monitor_text(final, SWAV_KNN_TOP1)} (standardised "
                     f"{monitor_text(final, SWAV_KNN_Z_TOP1)}); linear probe "
                     f"{monitor_text(final, SWAV_PROBE_TOP1)}.")
    runs = result.get("finetune", [])
    short = [r for r in runs if "error" not in r and len(r["history"]) < r["epochs"]]
    failed = [r for r in runs if "error" in r]
    lines.append(f"Fine-tuning: {len(runs)} runs, {result.get('concurrent', 0)} at once on the one device, in "
                 f"{result.get('finetune_s', math.nan):.0f} s; {len(short)} stopped by the phase's deadline before "
                 f"their last epoch (AP50 from their latest evaluation), {len(failed)} failed.")
    lines += [f"- failed: {r['name']}: {r['error']}" for r in failed]
    lines += ["", *table(groups), "", judgement(judge(groups)), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The driver: phases in child processes, each with its time box; the bundle under --out
# ---------------------------------------------------------------------------


def budget_text(budget: float | None) -> str:
    return "no time box" if budget is None else f"budget {budget:g} s"


def plan_text(phases: Sequence[str], budgets: dict[str, float | None]) -> str:
    """The plan's first line: each phase's time box, and the call's total when every phase has one."""
    parts = ", ".join(f"{p} {'unboxed' if budgets[p] is None else f'{budgets[p]:g} s'}" for p in phases)
    boxed = [budgets[p] for p in phases if budgets[p] is not None]
    if len(boxed) < len(phases):
        return (f"{parts}; phases without a time box run to completion (a pipeline check: it fails on errors, "
                "not on the wall clock)")
    return f"{parts}; {sum(boxed):g} s in all (one call: at most {CALL_LIMIT_S} s)"


def leaves_text(out: Path) -> str:
    """The plan's second line: the files the call leaves, and what it cleans up."""
    return (f"leaves: {', '.join(str(out / name) for name in OUT_FILES)}; its work folders ({work_root()}/ablate-*, "
            "the phases' checkpoints and data) are removed after each phase, a timed-out one's too")


def tests_line(result: dict[str, Any]) -> str:
    if not result:
        return "CUDA-only tests: not run."
    counts = result["counts"]
    failed = [t["name"] for t in result["tests"] if t["outcome"] in ("failed", "error")]
    return (f"CUDA-only tests (`pytest -m cuda tests/trainers`): {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['error']} errors, {counts['skipped']} skipped" + (f" ({', '.join(failed)})" if failed else "")
            + ".")


def bundle(out: Path, work: Path, status: dict[str, dict[str, Any]], tiny: bool, meta: dict[str, Any]) -> None:
    """(Re)write device.json, device.md and device-curves.tar.gz from what the phases saved so far."""
    command = f"python -m bench device{' --tiny' if tiny else ''}"
    results = {name: load(work, name) for name in PHASES}
    data = {"command": command, "machine": meta, "phases": status, "results": results}
    (out / "device.json").write_text(json.dumps(data, indent=1, default=str))
    phases = ", ".join(f"{name} {s['status']} ({s.get('wall_s', 0):.0f} s, {budget_text(s['budget_s'])})"
                       for name, s in status.items())
    md = [f"<!-- {command}: {phases} -->", "", throughput_section(results["throughput"], meta, command),
          tests_line(results["tests"]), "", fidelity_section(results["fidelity"], meta, command)]
    (out / "device.md").write_text("\n".join(md))
    with tarfile.open(out / "device-curves.tar.gz", "w:gz") as tar:
        for name in ("tests.xml", *(f"{p}.json" for p in PHASES)):
            if (work / name).is_file():
                tar.add(work / name, arcname=name)
        if (work / "curves").is_dir():
            tar.add(work / "curves", arcname="curves")


def _pump(stream: Any, log: Any) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
        log.flush()


def drive(out: Path, tiny: bool, only: Sequence[str] = (), budgets: dict[str, float | None] | None = None) -> int:
    """Run the phases, each in a child process with its time box; bundle after each one. 0 when all passed."""
    budgets = {**(TINY_BUDGETS if tiny else BUDGETS), **(budgets or {})}
    phases = [p for p in PHASES if not only or p in only]
    missing = preflight(tiny, phases)
    if missing:
        print(f"bench device: {missing}", file=sys.stderr, flush=True)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    meta = machine()
    work = Path(tempfile.mkdtemp(prefix="ablate-device-"))
    status: dict[str, dict[str, Any]] = {p: {"status": "pending", "budget_s": budgets[p]} for p in phases}
    with open(out / "device.log", "w") as log:
        plan = [f"bench device{' --tiny' if tiny else ''}: {plan_text(phases, budgets)}", leaves_text(out),
                f"machine: {json.dumps(meta)}"]
        for line in plan:
            print(line, flush=True)
            log.write(line + "\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(work_root())}
        try:
            for phase in phases:
                cmd = [sys.executable, "-m", "bench.device", "--phase", phase, "--work", str(work)]
                cmd += ([] if budgets[phase] is None else ["--budget", f"{phase}={budgets[phase]}"])
                cmd += ["--tiny"] if tiny else []
                started = time.monotonic()
                before = own_entries(work_root())
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, preexec_fn=die_with_parent)
                pump = threading.Thread(target=_pump, args=(proc.stdout, log), daemon=True)
                pump.start()
                try:
                    code = proc.wait(timeout=budgets[phase])  # None: no time box (--tiny)
                    state = "ok" if code == 0 else f"failed (exit {code})"
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the phase and its workers
                    proc.wait()
                    state = "timeout"
                pump.join(timeout=5)
                left = remove_new_entries(work_root(), before)  # a killed phase's checkpoints and temporary files
                status[phase].update(status=state, wall_s=round(time.monotonic() - started, 1))
                if left:
                    log.write(f"phase {phase}: removed what it left in {work_root()}: {', '.join(left)}\n")
                line = f"phase {phase}: {state} in {status[phase]['wall_s']:.0f} s ({budget_text(budgets[phase])})"
                print(line, flush=True)
                log.write(line + "\n")
                log.flush()
                bundle(out, work, status, tiny, meta)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["status"] == "ok" for s in status.values()) else 1


def record(folder: Path, doc: Path | None = None) -> str:
    """Write the sections of ``folder/device.md`` (a device run's output) into BENCHMARKS.md."""
    from bench import DOC, update_doc

    doc = doc or DOC
    text = (folder / "device.md").read_text()
    throughput = text[text.index("## GPU throughput"):text.index("CUDA-only tests")]
    rest = text[text.index("CUDA-only tests"):]
    updated = update_doc(doc.read_text(), "gpu", throughput.strip() + "\n\n" + rest[:rest.index("\n")].strip())
    updated = update_doc(updated, "fidelity_gpu", rest[rest.index("## Fidelity on one GPU"):])
    doc.write_text(updated)
    return f"wrote the gpu and fidelity_gpu sections of {doc}"


def _budget(value: str) -> tuple[str, float]:
    phase, _, seconds = value.partition("=")
    if phase not in PHASES or not seconds:
        raise argparse.ArgumentTypeError(f"{value!r}: expected PHASE=SECONDS with PHASE one of {', '.join(PHASES)}")
    return phase, float(seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench device", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("device-out"), help="where the result files go")
    parser.add_argument("--tiny", action="store_true", help="every phase with tiny networks and data (a CPU check)")
    parser.add_argument("--only", action="append", choices=PHASES, default=[], help="run only this phase (repeatable)")
    parser.add_argument("--budget", action="append", type=_budget, default=[], metavar="PHASE=SECONDS",
                        help="another time box for a phase")
    parser.add_argument("--record", type=Path, default=None, metavar="DIR",
                        help="write DIR/device.md (a run's output) into BENCHMARKS.md and exit")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # the driver's child processes
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:
        print(record(args.record))
        return 0
    budgets = dict(args.budget)
    if args.phase:
        import torch

        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
        if args.phase == "tests":
            phase_tests(args.work, args.tiny)
        elif args.phase == "throughput":
            phase_throughput(args.work, args.tiny)
        else:
            phase_fidelity(args.work, args.tiny, budgets.get("fidelity", (TINY_BUDGETS if args.tiny else BUDGETS)["fidelity"]))
        return 0
    return drive(args.out, args.tiny, args.only, budgets)


if __name__ == "__main__":
    sys.exit(main())
