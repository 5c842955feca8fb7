"""Each stage's trainer as a name to import (:class:`TrainerRef`), from its record in :mod:`trainers.vocabulary`;
``ABLATE_TRAINER_PRETRAIN`` / ``ABLATE_TRAINER_FINETUNE`` name another module (a trainer of one's own, or a test's
stand-in). Reading a space asks it for the config classes, the Ray worker for ``train``."""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Callable

from trainers.vocabulary import STAGE_RECORDS


@dataclasses.dataclass(frozen=True)
class TrainerRef:
    """Where a stage's trainer is (a name to import, not the trainer): its package and its config class."""

    module: str
    config: str

    def load(self) -> tuple[Callable[..., dict[str, float]], type]:
        """The trainer's ``train`` and its config class (imported now: torch and the trainer's packages)."""
        module = importlib.import_module(self.module)
        return module.train, getattr(module, self.config)

    def config_class(self) -> type:
        """The trainer's config class alone (a lazy trainer package loads only its config module: no torch)."""
        return getattr(importlib.import_module(self.module), self.config)


def _trainer_ref(stage: str) -> TrainerRef:
    """The stage record's trainer, or the module ``ABLATE_TRAINER_PRETRAIN`` / ``ABLATE_TRAINER_FINETUNE`` names
    (it has ``train(config, reporter)`` and the stage's config class): a trainer of one's own, or a test's
    stand-in."""
    module, config = STAGE_RECORDS[stage].trainer.split(":")
    return TrainerRef(os.environ.get(f"ABLATE_TRAINER_{stage.upper()}") or module, config)


TRAINERS = {stage: _trainer_ref(stage) for stage in STAGE_RECORDS}

__all__ = ["TRAINERS", "TrainerRef"]
