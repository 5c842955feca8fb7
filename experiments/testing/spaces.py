"""Tiny search spaces shared by the tests and the benchmarks (``bench/`` imports this module).

* :func:`tiny_space`: a study small enough to launch in seconds on a CPU, as a mapping;
  :func:`write_space` writes it as YAML; :func:`tiny_space_file` does both, the tests' usual way.
* The planted collapse (:func:`planted_collapse_space`): two tiny pretraining trials that differ
  only in the swapped-prediction temperature, :data:`HEALTHY` (the paper's) and :data:`COLLAPSED`
  (every prediction flattened to uniform: the loss sits at ln K from the first step and the encoder
  gets no training signal, the dead run the pruner is for), each followed by one tiny fine-tuning
  trial. ``bench.pruning_saved`` launches it with pruning on and off;
  tests/e2e/test_launch.py checks what the launch records.

Test data, not product code: it lives in :mod:`experiments.testing` so that ``bench/`` need not import ``tests/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

HEALTHY, COLLAPSED = 0.1, 100.0  # temperatures
# A slower rate than the tiny test spaces' 0.05: at 0.05 on 16 images the temperature-0.1 run
# itself collapses after about ten epochs (embedding std under the pruner's floor, loss into the
# ln K band; measured while sizing this benchmark) and is rightly pruned. At 0.01 it stays out of
# the band and above the floor for the whole 16-epoch budget, so it is a healthy control.
CONTROL_LR = {"base_lr": 0.32, "final_lr": 0.0032}  # per global batch of 256: 0.01 at the tiny batch of 8


def tiny_space(
    name: str,
    pretrain_epochs: int = 2,
    pretrain_grid: Mapping[str, Sequence[Any]] | None = None,
    pretrain_cases: Sequence[Mapping[str, Any]] | None = None,
    finetune_cases: Sequence[Mapping[str, Any]] | None = None,
    pruning: Mapping[str, Any] | None = None,
    pretrain_fixed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A study small enough to launch in seconds on a CPU: the `small` sample set, 32/16 px crops.

    Args:
        name: the study (MLflow experiment) name.
        pretrain_epochs: SwAV epochs per pretraining trial.
        pretrain_grid: ``pretrain.grid`` axes (e.g. ``{"prototypes": [20, 30]}``).
        pretrain_cases: ``pretrain.cases`` cells.
        finetune_cases: ``finetune.cases`` cells (default: one cell per backbone).
        pruning: the ``pruning:`` section (default: off).
        pretrain_fixed: values that replace or add to the fixed pretraining fields.

    Returns:
        The space as a mapping, ready for :func:`write_space`.
    """
    pre_fixed: dict[str, Any] = {
        "arch": "resnet18", "epochs": pretrain_epochs, "batch_size": 8, "max_images": 16,
        "crops": [{"count": 2, "size": 32, "min_scale": 0.14, "max_scale": 1.0},
                  {"count": 2, "size": 16, "min_scale": 0.05, "max_scale": 0.14}],
        "feat_dim": 16, "hidden_dim": 32, "prototypes": 20, "optimizer": "sgd", "base_lr": 1.6,
        "final_lr": 0.016, "freeze_prototypes_epochs": 0.5, "amp": False, "workers": 0,
        **(pretrain_fixed or {}),
    }
    pretrain: dict[str, Any] = {"fixed": pre_fixed, "resources": {"cpu": 2}}
    if pretrain_grid:
        pretrain["grid"] = {k: list(v) for k, v in pretrain_grid.items()}
        for key in pretrain_grid:
            pre_fixed.pop(key, None)
    if pretrain_cases:
        pretrain["cases"] = [dict(c) for c in pretrain_cases]
    finetune: dict[str, Any] = {
        "fixed": {"epochs": 1, "batch_size": 2, "max_iters_per_epoch": 2, "warmup_iters": 1, "min_size": 128,
                  "max_size": 128, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                  "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 25, "box_batch_size_per_image": 32,
                  "workers": 0, "figure_images": 2},
        "resources": {"cpu": 2},
    }
    if finetune_cases:
        finetune["cases"] = [dict(c) for c in finetune_cases]
    return {
        "name": name,
        "data": {"sample": {"size": "small", "seed": 0}},
        "seeds": [0],
        "max_concurrent": 1,  # one trial at a time, as the baseline runs them
        "pretrain": pretrain,
        "finetune": finetune,
        "pruning": dict(pruning) if pruning is not None else {"enabled": False},
    }


def write_space(folder: Path, space: Mapping[str, Any]) -> Path:
    """Write ``space`` as ``<folder>/<name>.yaml`` and return the path."""
    path = Path(folder) / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(dict(space), sort_keys=False))
    return path


def tiny_space_file(folder: Path, name: str, pretrain_epochs: int = 2, processes: int = 1, **pre_fixed: Any) -> Path:
    """A study small enough for a test (the benchmarks' tiny grid: the `small` sample set, 32/16 px
    crops, one 2-step fine-tuning epoch), written to ``folder``; ``processes`` > 1 makes the pretraining
    trial a DDP job of that many one-CPU processes."""
    space = tiny_space(name, pretrain_epochs=pretrain_epochs, pretrain_fixed=pre_fixed)
    space["pretrain"]["resources"] = {"cpu": 1 if processes > 1 else 2, "processes": processes}
    return write_space(folder, space)


def planted_collapse_space(name: str, epochs: int, pruning: bool) -> dict[str, Any]:
    """The planted-collapse grid (see the module docstring), ``epochs`` per pretraining trial, pruning on or off."""
    return tiny_space(name, pretrain_epochs=epochs,
                      pretrain_cases=[{"temperature": HEALTHY}, {"temperature": COLLAPSED}],
                      pruning={"enabled": pruning}, pretrain_fixed=CONTROL_LR)
