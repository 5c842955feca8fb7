"""SwAV pretraining (Caron et al. 2020), faithful to facebookresearch/swav ``main_swav.py``.

Public names live here; the package splits them by concern: ``config`` (SwAVConfig,
CropGroup), ``augment`` (multi-crop), ``model`` (network, backbone loading), ``loss``
(Sinkhorn, swapped prediction, queue, collapse statistics), ``optim`` (SGD/LARS, lr
schedule) and ``engine`` (``train`` and ``train_one_epoch``).
"""

from trainers.swav.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugment
from trainers.swav.config import DEFAULT_CROPS, CropGroup, SwAVConfig
from trainers.swav.loss import (
    EmbeddingQueue,
    assignment_entropy,
    embedding_std,
    prototype_counts,
    queue_rows_per_process,
    sinkhorn,
    swapped_prediction,
    swav_loss,
)
from trainers.swav.model import SwAVModel, load_backbone, normalize_prototypes
from trainers.swav.optim import LARS, build_optimizer, learning_rate
from trainers.swav.engine import METRIC_NAMES, EpochStats, derive_seed, epoch_indices, train, train_one_epoch

__all__ = [
    "DEFAULT_CROPS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LARS",
    "METRIC_NAMES",
    "CropGroup",
    "EmbeddingQueue",
    "EpochStats",
    "MultiCropAugment",
    "SwAVConfig",
    "SwAVModel",
    "assignment_entropy",
    "build_optimizer",
    "derive_seed",
    "embedding_std",
    "epoch_indices",
    "learning_rate",
    "load_backbone",
    "normalize_prototypes",
    "prototype_counts",
    "queue_rows_per_process",
    "sinkhorn",
    "swapped_prediction",
    "swav_loss",
    "train",
    "train_one_epoch",
]
