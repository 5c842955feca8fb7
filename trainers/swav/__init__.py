"""SwAV pretraining (Caron et al. 2020), faithful to facebookresearch/swav ``main_swav.py``.

Public names live here; the package splits them by concern: ``config`` (SwAVConfig,
CropGroup), ``augment`` (multi-crop), ``model`` (network, backbone loading), ``loss``
(Sinkhorn, swapped prediction, queue, collapse statistics), ``optim`` (SGD/LARS, lr
schedule scaled to the global batch, prototype freezing), ``stats`` (per-epoch statistics), ``engine`` (``train`` and ``train_one_epoch``) and
``supervised`` (``method: supervised``, the positive control the same ``train`` runs). Mixed precision (float16
autocast with loss scaling, or bfloat16) is both trainers': :mod:`trainers.common.precision`.
"""

from trainers.lazy import lazy_exports

# name -> the module it lives in: imported on first use (trainers/lazy.py), so a light name never loads torch
_EXPORTS = {
    **dict.fromkeys(["IMAGENET_MEAN", "IMAGENET_STD", "MultiCropAugment"], "trainers.swav.augment"),
    **dict.fromkeys(["DEFAULT_CROPS", "CropGroup", "SwAVConfig"], "trainers.swav.config"),
    **dict.fromkeys([
        "EmbeddingQueue", "assignment_entropy", "embedding_std", "prototype_counts", "queue_rows_per_process",
        "sinkhorn", "swapped_prediction", "swav_loss"
    ], "trainers.swav.loss"),
    **dict.fromkeys([
        "SwAVModel", "export_from_checkpoint", "load_backbone", "normalize_prototypes"
    ], "trainers.swav.model"),
    **dict.fromkeys([
        "LARS", "build_optimizer", "frozen_prototype_iterations", "learning_rate", "scaled_lr"
    ], "trainers.swav.optim"),
    **dict.fromkeys(["backward_and_step", "grad_scaler"], "trainers.common.precision"),
    **dict.fromkeys([
        "METRIC_NAMES", "derive_seed", "epoch_indices", "train", "train_one_epoch"
    ], "trainers.swav.engine"),
    **dict.fromkeys(["EpochStats"], "trainers.swav.stats"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
