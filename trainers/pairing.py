"""Which trunk a detector starts from: a pretrained backbone of the matching norm, or scratch.

Plain names and one function, no torch: ``experiments/spaces/`` pairs fine-tuning cells with
pretraining runs before anything runs, and imports these without loading the detection package
(torchvision, matplotlib, pycocotools). :class:`trainers.detection.DetectionConfig` checks a
backbone folder against the same table, and the detection model builds its trunk from it.
"""

from __future__ import annotations

# `backbone: scratch`: a randomly initialised trunk, the no-pretraining baseline.
SCRATCH = "scratch"

# Detection norm -> the norm its trunk is built with, and so the pretrained backbone it can load:
# GroupNorm weights need GroupNorm layers; BatchNorm statistics and affine weights need BatchNorm.
PRETRAINED_NORM: dict[str, str] = {"bn": "bn", "frozen_bn": "bn", "frozen_affine": "bn", "gn": "gn"}
NORMS = tuple(PRETRAINED_NORM)  # the detection `norm` choices


def pretrained_norm(norm: str) -> str:
    """The trunk norm (``bn`` or ``gn``) that detection ``norm`` builds on and needs a backbone pretrained with.

    Raises:
        ValueError: ``norm`` is not one of :data:`NORMS`.
    """
    if norm not in PRETRAINED_NORM:
        raise ValueError(f"norm={norm!r} is invalid: choose one of {', '.join(NORMS)}")
    return PRETRAINED_NORM[norm]


__all__ = ["NORMS", "PRETRAINED_NORM", "SCRATCH", "pretrained_norm"]
