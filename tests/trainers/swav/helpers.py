"""Helpers of the SwAV tests (tests/trainers/swav/): tiny configs and crops, unit vectors, the kNN paths of the sample
data, a free TCP port for the two-process tests."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from trainers.swav.config import SwAVConfig


TINY_CROPS = ({"count": 2, "size": 32, "min_scale": 0.14, "max_scale": 1.0},
              {"count": 2, "size": 16, "min_scale": 0.05, "max_scale": 0.14})


TINY = dict(
    arch="resnet18", prototypes=16, feat_dim=16, hidden_dim=32, batch_size=4, workers=0, amp=False, seed=0,
    crops=[{"count": 2, "size": 32, "min_scale": 0.14, "max_scale": 1.0},
           {"count": 2, "size": 16, "min_scale": 0.05, "max_scale": 0.14}],
)


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def tiny_config(**overrides) -> SwAVConfig:
    values = dict(arch="resnet18", prototypes=16, feat_dim=16, hidden_dim=32, crops=TINY_CROPS, epochs=2,
                  batch_size=4, workers=0, amp=False, seed=0, data="unused")
    values.update(overrides)
    return SwAVConfig(**values)


def knn_paths(sample) -> dict[str, str]:
    return {"knn_train_images": str(sample.train_images), "knn_train_annotations": str(sample.train_annotations),
            "knn_val_images": str(sample.val_images), "knn_val_annotations": str(sample.val_annotations)}

