"""Helpers of the report tests (tests/experiments/results/report/): the fabricated study's values and how its
fine-tuning runs are written (conftest.py's ``study`` builds it; tests/experiments/results/test_verdict.py reuses
:func:`finetune`)."""

from __future__ import annotations

from experiments.store.tracking import Tracker
from trainers.vocabulary import TAG_HASH, TAG_NAME, TAG_PRUNED, TAG_SEED, TAG_STAGE, TAG_UPSTREAM

STUDY = "repstudy"
NAN = float("nan")
# (backbone key, norm, seed) -> final det/AP50, det/AP, det/AP_small, det/AP_medium, det/AP_large
FINETUNE = {
    ("p30", "frozen_bn", 0): (0.30, 0.12, 0.05, 0.20, 0.40),
    ("p30", "frozen_bn", 1): (0.34, 0.14, NAN, 0.22, 0.42),  # no small objects: NaN stays out of the mean
    ("p30", "frozen_bn", 2): (0.35, 0.15, 0.07, 0.25, 0.41),
    ("p100", "frozen_bn", 0): (0.40, 0.18, 0.08, 0.30, 0.50),
    ("p100", "frozen_bn", 1): (0.44, 0.19, 0.09, 0.31, 0.52),
    ("p100", "frozen_bn", 2): (0.41, 0.17, 0.10, 0.29, 0.49),
    ("p30", "bn", 0): (0.25, 0.10, 0.04, 0.15, 0.30),
    ("p30", "bn", 1): (0.27, 0.11, 0.05, 0.16, 0.33),
    ("scratch", "frozen_bn", 0): (0.20, 0.08, 0.01, 0.10, 0.25),
    ("scratch", "frozen_bn", 1): (0.22, 0.09, 0.02, 0.11, 0.27),
    ("scratch", "frozen_bn", 2): (0.21, 0.07, 0.03, 0.12, 0.26),
}
KEYS = ("det/AP50", "det/AP", "det/AP_small", "det/AP_medium", "det/AP_large")
BACKBONES = {"p30": "res18_ep3_p30", "p100": "res18_ep3_p100", "p300": "res18_ep3_p300", "scratch": "scratch_res18"}


def finetune(tracker: Tracker, parent: str, pre: dict[str, str], bb: str, norm: str, seed: int,
            values: tuple[float, ...], status: str = "FINISHED", tags: dict[str, str] | None = None) -> str:
    """A fine-tuning run of backbone ``bb`` (a key of :data:`BACKBONES`; its pretraining run in ``pre``, else scratch)
    with two epochs of ``values`` (:data:`KEYS`, the second final), finished with ``status``."""
    name = f"{BACKBONES[bb]} · {norm} · mlp · 357 · seed{seed}"
    run_id = tracker.create_run(name, {
        TAG_STAGE: "finetune", TAG_NAME: name, TAG_HASH: f"ft-{bb}-{norm}-{seed}", TAG_SEED: str(seed),
        TAG_UPSTREAM: pre[bb] if bb in pre else "scratch", TAG_PRUNED: "false", **(tags or {})}, parent_run_id=parent)
    params = {"finetune.norm": norm, "finetune.head": "mlp", "finetune.lr_scheme": "357", "finetune.seed": str(seed),
              "finetune.arch": "resnet18", "finetune.epochs": "2", "finetune.workers": "0",
              "finetune.train_images": f"/data/{seed}/train"}  # a path differs per run: never a setting
    if bb in pre:
        params.update({"pretrain.prototypes": bb[1:], "pretrain.arch": "resnet18", "pretrain.epochs": "3"})
    tracker.log_params_tags(run_id, params=params)
    for epoch in (1, 2):
        tracker.log_metrics(run_id, {k: v * epoch / 2 for k, v in zip(KEYS, values)}, step=epoch)
    tracker.finish(run_id, status)
    return run_id
