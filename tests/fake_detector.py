"""A stand-in fine-tuning trainer for launch tests that need known results.

``ABLATE_TRAINER_FINETUNE=tests.fake_detector`` makes a launch fine-tune with it
(:data:`trainers.stages.TRAINERS`). It trains nothing: every epoch it reports
``det/AP50`` = 0.30 + the cell's effects + seed noise N(0, :data:`NOISE`) drawn from a generator
seeded by the cell's head, norm and seed, so every launch of a cell's seed sees the same result.
``head: res5`` is 0.06 below ``mlp`` (clear at two seeds), ``norm: gn`` 0.004 below ``bn``
(close: open at six seeds). :func:`ap50` is that value, for the tests to predict a launch.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

from trainers.detection import DetectionConfig

__all__ = ["DetectionConfig", "EFFECTS", "NOISE", "ap50", "train"]

EFFECTS = {"head": {"mlp": 0.0, "res5": -0.06}, "norm": {"bn": 0.0, "gn": -0.004}}
NOISE = 0.01


def ap50(head: str, norm: str, seed: int) -> float:
    rng = random.Random(f"{head}|{norm}|{seed}")
    return 0.30 + EFFECTS["head"].get(head, 0.0) + EFFECTS["norm"].get(norm, 0.0) + rng.gauss(0.0, NOISE)


def train(config: DetectionConfig, reporter: Any) -> dict[str, float]:
    """Report the cell's value every epoch, each with a checkpoint (a launch keeps the last one, as for any trial)."""
    value = ap50(config.head, config.norm, config.seed)
    metrics = {"det/AP50": value, "det/AP": value / 2, "det/loss": 1.0}
    for epoch in range(1, config.epochs + 1):
        if reporter.should_stop():
            break
        with tempfile.TemporaryDirectory(prefix="fake-detector-") as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"epoch": epoch, **metrics}))
            reporter.report(metrics, step=epoch, checkpoint_dir=Path(folder))
    return metrics
