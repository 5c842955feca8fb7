"""SwAV pretraining (Caron et al. 2020), faithful to facebookresearch/swav ``main_swav.py``.

Public names live here; the package splits them by concern: ``config`` (SwAVConfig,
CropGroup), ``augment`` (multi-crop), ``model`` (network, backbone loading), ``loss``
(Sinkhorn, swapped prediction, queue, collapse statistics), ``optim`` (SGD/LARS, lr
schedule scaled to the global batch, prototype freezing), ``precision`` (float16 autocast with
loss scaling, or bfloat16) and ``engine`` (``train`` and ``train_one_epoch``).
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
from trainers.swav.model import SwAVModel, export_from_checkpoint, load_backbone, normalize_prototypes
from trainers.swav.optim import LARS, build_optimizer, frozen_prototype_iterations, learning_rate, scaled_lr
from trainers.swav.precision import backward_and_step, grad_scaler
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
    "backward_and_step",
    "build_optimizer",
    "derive_seed",
    "embedding_std",
    "epoch_indices",
    "export_from_checkpoint",
    "frozen_prototype_iterations",
    "grad_scaler",
    "learning_rate",
    "load_backbone",
    "normalize_prototypes",
    "prototype_counts",
    "queue_rows_per_process",
    "scaled_lr",
    "sinkhorn",
    "swapped_prediction",
    "swav_loss",
    "train",
    "train_one_epoch",
]
