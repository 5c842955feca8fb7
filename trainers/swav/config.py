"""SwAV configuration: one frozen dataclass, every ablation axis a field.

Defaults follow the paper (Caron et al. 2020, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments") and facebookresearch/swav ``main_swav.py``; where the
reference has several recipes, the batch-256 one (``swav_400ep_bs256_pretrain.sh``) is used
because a lab-sized run is closer to it than to the 4096-image batches of the headline runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainers.common.configs import config_from_dict
from trainers.common.validation import (
    ConfigError, is_int, require, require_bool, require_choice, require_int, require_number,
)
from trainers.resnet import ARCHS, TRUNK_NORMS

OPTIMIZERS = ("sgd", "lars")
METHODS = ("swav", "supervised")  # supervised: the positive control (trainers/swav/supervised.py)
AMP_DTYPES = ("float16", "bfloat16")  # float16 with loss scaling; bfloat16 without (see precision.py)
MIN_BATCH = 2  # images per batch: BatchNorm and the Sinkhorn equipartition need at least two


@dataclass(frozen=True)
class CropGroup:
    """``count`` random-resized crops of ``size`` x ``size`` px, each covering ``min_scale``-``max_scale`` of the image."""

    count: int
    size: int
    min_scale: float
    max_scale: float

    def __post_init__(self) -> None:
        self.validate("crop")

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where.<field>`` for the first invalid value."""
        require_int(f"{where}.count", self.count, 1)
        require_int(f"{where}.size", self.size, 1)
        for name in ("min_scale", "max_scale"):
            require_number(f"{where}.{name}", getattr(self, name), 0, 1, low_open=True, finite=False,
                           allowed="a fraction of the image area in (0, 1]")
        require(
            self.min_scale <= self.max_scale,
            f"{where}.min_scale",
            self.min_scale,
            f"at most max_scale ({self.max_scale})",
        )


# The paper's multi-crop: 2 global views of 224 px and 6 local views of 96 px.
DEFAULT_CROPS = (CropGroup(2, 224, 0.14, 1.0), CropGroup(6, 96, 0.05, 0.14))


def as_crop_group(value: Any, index: int) -> CropGroup:
    """A CropGroup from a CropGroup or a mapping (YAML gives lists of dicts)."""
    where = f"crops[{index}]"
    if isinstance(value, CropGroup):
        value.validate(where)
        return value
    if isinstance(value, Mapping):
        try:
            group = config_from_dict(CropGroup, value, where=where)
        except TypeError as exc:  # a missing key
            missing = [f.name for f in dataclasses.fields(CropGroup) if f.name not in value]
            raise ConfigError(f"{where}: missing key(s) {', '.join(missing)} (each crop group needs "
                              "count, size, min_scale, max_scale)", where, dict(value)) from exc
        except ConfigError as exc:
            # CropGroup.__post_init__ names the field 'crop.<name>'; point at the group instead.
            field = exc.field.replace("crop.", f"{where}.", 1)
            raise ConfigError(str(exc).replace("crop.", f"{where}.", 1), field, exc.value) from exc
        except ValueError as exc:  # an unknown key (config_from_dict names the group already)
            raise ConfigError(str(exc), where, dict(value)) from exc
        return group
    raise ConfigError(f"{where}={value!r} is invalid: a mapping with count, size, min_scale, max_scale", where, value)


@dataclass(frozen=True)
class SwAVConfig:
    """Everything one SwAV pretraining run depends on (the recipe: search_spaces/README.md)."""

    # Where a default comes from: "SwAV paper" = Caron et al. 2020; "reference" = facebookresearch/swav
    # main_swav.py (its argparse default, or its batch-256 recipe scripts/swav_400ep_bs256_pretrain.sh:
    # 4 GPUs x 64 images); "the study" = the paper this project reproduces (README.md).
    # 'swav', or 'supervised': the same trunk, crops, schedule and export trained with a linear classifier and
    # cross-entropy on the images' classes in `labels` (the positive-control row of SwAV's and MoCo's transfer tables)
    method: str = "swav"
    labels: str = ""  # supervised: a JSON or CSV file of image -> class (trainers/data/labels.py); "" = <data>/labels.json
    arch: str = "resnet50"  # the SwAV paper's and the reference's backbone; the study's AP50 0.444 run is res50
    norm: str = "bn"  # the reference trunk uses BatchNorm; 'gn' gives a GroupNorm backbone for GN detectors
    prototypes: int = 3000  # K: SwAV paper ImageNet setting, reference --nmb_prototypes; the study's 0.444 run
    feat_dim: int = 128  # projection output: SwAV paper, reference --feat_dim
    hidden_dim: int = 2048  # projection MLP width (0 = one linear layer): reference hidden_mlp for resnet50
    temperature: float = 0.1  # swapped-prediction softmax temperature: SwAV paper, reference --temperature
    epsilon: float = 0.05  # Sinkhorn entropy regularisation: SwAV paper, reference --epsilon
    sinkhorn_iterations: int = 3  # SwAV paper (3 suffice), reference --sinkhorn_iterations
    queue_length: int = 0  # reference default (no queue); its batch-256 recipe uses 3840
    queue_start_epoch: int = 15  # reference --epoch_queue_starts: let the features settle first
    # How long the prototypes stay frozen, in epochs of this run: x its real iterations per epoch, rounded up.
    # Reference: --freeze_prototypes_niters 5005 in the batch-256 recipe and 313 (its default) at batch
    # 4096 -- both about one ImageNet epoch (1.28M images), so 1.0 follows it at any batch and data size.
    freeze_prototypes_epochs: float = 1.0
    crops: tuple[CropGroup, ...] = DEFAULT_CROPS  # SwAV paper multi-crop 2x224 + 6x96, reference scales
    crops_for_assign: tuple[int, ...] = (0, 1)  # codes from the two global views: SwAV paper, reference default
    epochs: int = 100  # reference default --epochs (the study's AP50 0.444 run pretrains 200)
    batch_size: int = 64  # images per process: reference --batch_size (per GPU); the global batch is x processes
    optimizer: str = "lars"  # the reference wraps SGD in apex LARC
    # Learning rates are for a global batch of 256; train() scales the whole schedule linearly to the real
    # global batch (batch_size x processes; 64 x 1 process -> base_lr / 4) and reports that rate as `lr`.
    # Note the reference's batch-4096 recipe uses 4.8, half the linear rule's 9.6 (base_lr 0.3 here).
    base_lr: float = 0.6  # reference batch-256 recipe (its argparse default 4.8 is for batch 4096)
    final_lr: float = 0.0006  # base_lr / 1000, as that recipe
    warmup_epochs: int = 0  # that recipe has no warmup (the batch-4096 one, and the argparse default, use 10)
    start_warmup_lr: float = 0.0  # reference --start_warmup default
    weight_decay: float = 1e-6  # reference --wd
    amp: bool = True  # mixed precision: reference --use_fp16 true (apex O1); the study credits its loss scaling
    # 'float16': autocast with dynamic loss scaling (GradScaler: 2**16 start, halved and the step skipped on
    # overflow, as apex O1) on every device, CPU included -- the mechanism the study tests. 'bfloat16': no
    # scaler (float32's range needs none); much faster than float16 on CPUs. Ignored when amp is false.
    amp_dtype: str = "float16"
    seed: int = 31  # reference --seed default
    data: str = "data/sample/unlabeled"  # where `ablate data sample --out data/sample` puts the unlabeled images
    workers: int = 4  # decoding processes per training process (reference --workers 10; fewer suit a lab machine)
    sync_bn: bool = True  # reference --sync_bn pytorch; only used with several CUDA processes
    max_images: int | None = None  # cap on images per epoch (quick runs); None = the whole folder
    # The kNN monitor (knn.py): weighted kNN top-1 of the trunk's features on crops of the labeled boxes,
    # reported as swav/knn_top1 (the monitor of solo-learn and lightly), read against the same figure
    # for the run's randomly initialised trunk (swav/knn_top1_random). It never changes training.
    # knn_every: None = every epoch up to 20 epochs, else every epochs // 20 (5 of 100, 10 of 200); the
    # last epoch always; 0 = off. A launch fills the four paths from the space's labeled set; without
    # them the monitor is off and the run says so once.
    knn_every: int | None = None
    knn_k: int = 20  # neighbours: Wu et al. 2018 (InstDisc), solo-learn and DINO eval_knn default
    knn_temperature: float = 0.07  # vote weight exp(sim / T): DINO eval_knn, solo-learn default
    knn_crop_size: int | None = None  # object crops' side in px; None = the smallest crop group's, >= 32 (see knn_size)
    knn_max_objects: int = 1000  # boxes per set (bank: train, queries: val), a seeded subset above it
    knn_train_images: str = ""
    knn_train_annotations: str = ""
    knn_val_images: str = ""
    knn_val_annotations: str = ""

    def __post_init__(self) -> None:
        # Normalise YAML shapes (lists of dicts, lists, Paths) before validating.
        crops = self.crops
        if isinstance(crops, (Mapping, CropGroup)) or not isinstance(crops, Sequence) or isinstance(crops, str):
            raise ConfigError(f"crops={crops!r} is invalid: a list of groups {{count, size, min_scale, max_scale}}",
                              "crops", crops)
        object.__setattr__(self, "crops", tuple(as_crop_group(g, i) for i, g in enumerate(crops)))
        assign = self.crops_for_assign
        if isinstance(assign, Sequence) and not isinstance(assign, str):
            object.__setattr__(self, "crops_for_assign", tuple(assign))
        if isinstance(self.data, Path):
            object.__setattr__(self, "data", str(self.data))
        self._validate()

    @property
    def total_crops(self) -> int:
        """Number of views per image, over all crop groups."""
        return sum(g.count for g in self.crops)

    @property
    def knn_paths(self) -> tuple[str, str, str, str]:
        """The labeled set the kNN monitor scores against: train images, train JSON, val images, val JSON."""
        return (self.knn_train_images, self.knn_train_annotations, self.knn_val_images, self.knn_val_annotations)

    @property
    def knn_size(self) -> int:
        """The kNN monitor's crop side: ``knn_crop_size``, else the smallest crop group's size (the cheapest
        scale the trunk trains at) but at least 32 px, the trunk's total stride (a 16 px crop leaves it a 1x1 map
        from stage 3 on)."""
        return self.knn_crop_size or max(32, min(g.size for g in self.crops))

    def knn_due(self, epochs_done: int) -> bool:
        """Whether the kNN monitor runs after ``epochs_done`` epochs (see ``knn_every``)."""
        every = self.knn_every if self.knn_every is not None else max(1, self.epochs // 20)
        if every == 0 or not all(self.knn_paths):
            return False
        return epochs_done % every == 0 or epochs_done == self.epochs

    @property
    def crop_sizes(self) -> tuple[int, ...]:
        """The size of every view, in order (one entry per crop)."""
        return tuple(g.size for g in self.crops for _ in range(g.count))

    @property
    def labels_file(self) -> str:
        """The supervised method's labels: ``labels``, else ``labels.json`` in the image folder."""
        from trainers.data.labels import LABELS_FILE

        return self.labels or str(Path(self.data) / LABELS_FILE)

    @property
    def supervised(self) -> bool:
        return self.method == "supervised"

    def _validate(self) -> None:
        require_choice("method", self.method, METHODS)
        require(isinstance(self.labels, str), "labels", self.labels, "a path to a labels file (a string)")
        require_choice("arch", self.arch, tuple(ARCHS))
        require_choice("norm", self.norm, TRUNK_NORMS)
        require_choice("optimizer", self.optimizer, OPTIMIZERS)
        require_int("prototypes", self.prototypes, 1)
        require_int("feat_dim", self.feat_dim, 1)
        require_int("hidden_dim", self.hidden_dim, 0)
        # finite=False keeps what these fields have always accepted (infinity passes; detection refuses it).
        require_number("temperature", self.temperature, 0, low_open=True, finite=False)
        require_number("epsilon", self.epsilon, 0, low_open=True, finite=False)
        require_int("sinkhorn_iterations", self.sinkhorn_iterations, 1)
        require_int("epochs", self.epochs, 1)
        require_int("batch_size", self.batch_size, MIN_BATCH,
                    f"an integer >= {MIN_BATCH} (BatchNorm and the Sinkhorn equipartition need at least "
                    f"{MIN_BATCH} images per batch)")
        require_int("queue_length", self.queue_length, 0)
        require_int("queue_start_epoch", self.queue_start_epoch, 0)
        if self.queue_length > 0:
            require(self.queue_start_epoch <= self.epochs, "queue_start_epoch", self.queue_start_epoch,
                    f"at most epochs ({self.epochs}) when queue_length > 0 (or set queue_length=0)")
            require(self.queue_length >= self.batch_size, "queue_length", self.queue_length,
                    f"0 (no queue) or at least batch_size ({self.batch_size}); it is rounded down to a "
                    "multiple of the global batch size")
        require_number("freeze_prototypes_epochs", self.freeze_prototypes_epochs, 0, self.epochs, finite=False,
                       allowed=f"a number of epochs in [0, epochs={self.epochs}] (the reference freezes the "
                       "prototypes for about 1 epoch: 5005 iterations at batch 256, 313 at batch 4096)")
        require(len(self.crops) >= 1, "crops", self.crops, "at least one crop group")
        require(self.total_crops >= 2, "crops", [dataclasses.asdict(g) for g in self.crops],
                "at least 2 crops in total (the loss predicts one view's code from another)")
        assign = self.crops_for_assign
        require(isinstance(assign, tuple) and len(assign) >= 1, "crops_for_assign", assign,
                "a non-empty list of crop indices")
        for index in assign:
            require(is_int(index) and 0 <= index < self.total_crops, "crops_for_assign", assign,
                    f"crop indices in 0..{self.total_crops - 1} (there are {self.total_crops} crops)")
        require(len(set(assign)) == len(assign), "crops_for_assign", assign, "distinct crop indices")
        for name in ("base_lr", "final_lr", "start_warmup_lr", "weight_decay"):
            require_number(name, getattr(self, name), 0, finite=False)
        require_int("warmup_epochs", self.warmup_epochs, 0)
        require(self.warmup_epochs <= self.epochs, "warmup_epochs", self.warmup_epochs,
                f"at most epochs ({self.epochs})")
        require_bool("amp", self.amp)
        require_choice("amp_dtype", self.amp_dtype, AMP_DTYPES)
        require_bool("sync_bn", self.sync_bn)
        require_int("seed", self.seed)
        require(isinstance(self.data, str) and self.data != "", "data", self.data, "a folder of unlabeled images")
        require_int("workers", self.workers, 0)
        if self.max_images is not None:
            require_int("max_images", self.max_images, self.batch_size)
        if self.knn_every is not None:
            require_int("knn_every", self.knn_every, 0,
                        "an integer >= 0 (epochs between kNN evaluations; 0 = off) or null (automatic)")
        require_int("knn_k", self.knn_k, 1)
        require_number("knn_temperature", self.knn_temperature, 0, low_open=True)
        if self.knn_crop_size is not None:
            require_int("knn_crop_size", self.knn_crop_size, 1)
        require_int("knn_max_objects", self.knn_max_objects, 1)
        names = ("knn_train_images", "knn_train_annotations", "knn_val_images", "knn_val_annotations")
        for name, value in zip(names, self.knn_paths):
            require(isinstance(value, str), name, value, "a path (a string)")
        if any(self.knn_paths) and not all(self.knn_paths):
            missing = [n for n, v in zip(names, self.knn_paths) if not v]
            require(False, missing[0], "", f"set together with the other kNN paths ({', '.join(names)}), "
                    "or leave all four empty (the monitor is then off)")


__all__ = ["AMP_DTYPES", "CropGroup", "DEFAULT_CROPS", "METHODS", "MIN_BATCH", "OPTIMIZERS", "SwAVConfig"]
