"""``DetectionConfig``: every choice of a Faster R-CNN fine-tuning run, validated up front.

Learning rates follow the paper's "3-5-7" notation: ``base_lr`` is a *reference* rate and
every optimizer group trains at ``base_lr x multiplier``. The paper's 3-5-7 scheme gives the
detector ``x 1e-3``, the late backbone ``x 1e-5`` and the stem plus first stage ``x 1e-7``.
``base_lr`` is therefore *not* an SGD rate by itself: taken literally, a reference rate of 1
would leave the detector at 1e-3, too small to train it in a 1x schedule. The default
``base_lr = 20`` puts the detector at 0.02, the rate of torchvision's and Detectron's Faster
R-CNN recipes (used there with 16 images per step: if training diverges at a small
``batch_size``, lower ``base_lr`` by the linear scaling rule), the late backbone at 2e-4 and
the early backbone at 2e-6. The other schemes keep the detector at the same
``base_lr x 1e-3``, so one ``base_lr`` serves a whole ``lr_scheme`` grid:

* ``frozen``  — trunk frozen (no gradient); FPN + RPN + RoI heads at ``base_lr x detector``.
  Only parameters are frozen: what the trunk's norm layers do with statistics is the ``norm``
  axis's business (``bn`` still updates running statistics in train mode), so the two axes
  stay independent in an ablation grid.
* ``357``     — three groups: detector, late backbone (layer2-4), early backbone (stem + layer1).
* ``uniform`` — everything at one rate, ``base_lr x detector`` (0.02 by default).

Under ``head: res5`` (the paper's C4 detector) the pretrained stage 5 is the RoI box head, not
part of the trunk: it trains at the detector's rate under every scheme, as Detectron2 and
MoCo/SwAV train their ``Res5ROIHeads`` (``FREEZE_AT`` only ever freezes backbone stages), so the
late backbone is layer2-3 there and ``frozen`` freezes stem..layer3 only.

A scratch trunk (``backbone: scratch``) is the no-pretraining baseline, which the paper and
torchvision's references train the ordinary way: trainable ``bn`` (or ``gn``) and one rate for all
(``lr_scheme: uniform``). ``frozen_bn`` is refused there (on random init FrozenBatchNorm2d is the
identity: no normalisation at all); :func:`scratch_warnings` names the other choices that leave a
random trunk nearly untrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from trainers.checkpoints import CheckpointError, read_backbone_config
from trainers.common.validation import (
    ConfigError, is_int, is_number, require, require_bool, require_choice, require_int, require_number,
)
from trainers.pairing import NORMS, PRETRAINED_NORM, SCRATCH
from trainers.resnet import ARCHS

# mlp, mlp_ln and res5_fpn read the FPN; res5 is the paper's C4 detector (see model.py).
HEADS = ("mlp", "mlp_ln", "res5", "res5_fpn")
LR_SCHEMES = ("frozen", "357", "uniform")
LR_SCHEDULES = ("step", "cosine")
GROUP_NAMES = ("detector", "late_backbone", "early_backbone")
DEFAULT_SCRATCH_ARCH = "resnet50"  # the paper's architecture

# Multipliers of base_lr per scheme (see the module docstring). Under ``frozen`` the trunk has
# no group at all; under ``uniform`` every parameter shares the detector's rate.
DEFAULT_MULTIPLIERS: dict[str, dict[str, float]] = {
    "357": {"detector": 1e-3, "late_backbone": 1e-5, "early_backbone": 1e-7},
    "uniform": {"detector": 1e-3},
    "frozen": {"detector": 1e-3},
}

# Fields that decide the network's shape; they are stored in detector.json so that a detector
# can be rebuilt without the backbone folder or the data.
MODEL_FIELDS = (
    "arch", "norm", "head", "min_size", "max_size", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "box_batch_size_per_image", "detections_per_img",
)


def scratch_warnings(norm: str, lr_scheme: str) -> list[str]:
    """Warnings for fine-tuning a randomly initialised (``backbone: scratch``) trunk with ``norm`` and ``lr_scheme``.

    ``frozen_bn`` is not here: :class:`DetectionConfig` refuses it outright. What is here is allowed
    but leaves a random trunk nearly untrained, so a launch's dry run should show it:

    * ``norm: frozen_affine`` — the random trunk's BatchNorm affine weights (1 and 0) never train;
    * ``lr_scheme: frozen`` — the random trunk gets no gradient at all (a detector on random features);
    * ``lr_scheme: 357`` — the trunk trains at ``x 1e-5`` / ``x 1e-7`` of the reference rate, which
      barely moves random weights in a fine-tuning schedule.

    The no-pretraining baseline the paper compares against is ``norm: bn`` (or ``gn``) with
    ``lr_scheme: uniform``, as torchvision's references train a detector from scratch.

    Returns:
        One sentence per problem (empty when the combination is the ordinary scratch recipe).
    """
    lr_scheme = str(lr_scheme)  # YAML reads 357 as an integer
    fix = "for the no-pretraining baseline use norm: bn (or gn) with lr_scheme: uniform"
    out = []
    if norm == "frozen_affine":
        out.append(f"backbone: scratch with norm: frozen_affine keeps the random trunk's BatchNorm weights at 1 and "
                   f"biases at 0 for the whole run; {fix}")
    if lr_scheme == "frozen":
        out.append(f"backbone: scratch with lr_scheme: frozen never trains the random trunk (the detector learns on "
                   f"random features); {fix}")
    elif lr_scheme == "357":
        out.append(f"backbone: scratch with lr_scheme: 357 trains the random trunk at the backbone rates (x1e-5 / x1e-7 "
                   f"of the reference rate by default), which leave it nearly untrained; {fix}")
    return out


@dataclass(frozen=True)
class DetectionConfig:
    """One Faster R-CNN fine-tuning run (FPN, or the paper's C4 for ``head: res5``), validated on construction.

    After construction ``arch`` holds the backbone's architecture and ``lr_multipliers`` the
    complete mapping for the chosen scheme, so :func:`trainers.common.configs.config_to_dict` gives the
    resolved config that checkpoints and MLflow record.

    The comment beside each default names the setting it follows: the paper this project
    reproduces (the SwAV -> Faster R-CNN study: 3-5-7 rates, FBN/LN/res5 ablations), the SwAV
    paper's detection protocol (Detectron2 R50-C4 with MoCo's ``Res5ROIHeadsExtraNorm``), Detectron2's
    defaults (``Base-RCNN-*.yaml``, the 1x schedule) or torchvision's ``references/detection``.
    """

    # Exported SwAV backbone folder (backbone.safetensors + backbone.json), or "scratch" for the
    # no-pretraining baseline (random Kaiming init; the paper's "without SwAV" row, AP50 0.22).
    backbone: str = SCRATCH
    # Taken from backbone.json when a backbone is given (an explicit different value is an error);
    # resnet50 for scratch unless set (the paper's and the SwAV paper's R50).
    arch: str | None = None
    # Trunk normalisation: bn (trainable BatchNorm), frozen_bn (FrozenBatchNorm2d: affine and stats
    # fixed), frozen_affine (BatchNorm2d, affine fixed, stats adapt; the paper's "FBN"), gn (GroupNorm;
    # GN backbone only). Default: Detectron2's RESNETS.NORM "FrozenBN" and torchvision's FrozenBatchNorm2d
    # for a pretrained trunk with a few images per GPU. Refused with backbone: scratch (identity there).
    norm: str = "frozen_bn"
    # RoI box head: mlp (torchvision's TwoMLPHead, Detectron2's 2fc FPN head), mlp_ln (LayerNorm between
    # the FCs, the paper's variant), res5 (the paper's and the SwAV paper's C4 head: pretrained stage 5 +
    # extra BN, Detectron2 R50-C4 / MoCo Res5ROIHeadsExtraNorm), res5_fpn (a scratch stage 5 on FPN RoIs).
    head: str = "mlp"
    lr_scheme: str = "357"  # the paper's 3-5-7 scheme; see the module docstring
    # {detector, late_backbone, early_backbone} -> multiplier of base_lr; missing keys take the
    # scheme's defaults (DEFAULT_MULTIPLIERS: the paper's 1e-3 / 1e-5 / 1e-7). Only `detector`
    # applies to frozen and uniform.
    lr_multipliers: Mapping[str, float] | None = None
    # Reference rate: detector lr = 20 x 1e-3 = 0.02, Detectron2's and torchvision's BASE_LR for 16
    # images per step (see the module docstring).
    base_lr: float = 20.0
    momentum: float = 0.9  # Detectron2 and torchvision references
    weight_decay: float = 1e-4  # Detectron2 and torchvision references
    # Linear warmup from 0.1% of the rate (both references' factor); 100 iterations instead of their
    # 1000 because the labeled sets here are small.
    warmup_iters: int = 100
    lr_schedule: str = "step"  # step: x lr_gamma at each of lr_steps (both references); cosine: to 0 at the end
    lr_steps: tuple[float, ...] = (0.67, 0.89)  # Detectron2's 1x: steps at 60k and 80k of 90k iterations
    lr_gamma: float = 0.1  # Detectron2 and torchvision references
    epochs: int = 12  # Detectron2's "1x" (90k x 16 images, about 12 COCO epochs)
    batch_size: int = 2  # images per step: both references' images per GPU (16 over 8 GPUs there)
    min_size: int = 800  # shorter side after resizing: Detectron2's INPUT.MIN_SIZE_TEST and torchvision's default
    max_size: int = 1333  # longer side cap: Detectron2 and torchvision
    amp: bool = False  # fp16 on CUDA / bf16 on CPU; off by default as torchvision's --amp
    seed: int = 0  # decides init of the new layers, batch order and flips (see engine.train_loader)
    eval_every: int = 1  # epochs between COCO evaluations (torchvision evaluates every epoch); the last always
    train_images: str = ""  # folder of training images
    train_annotations: str = ""  # COCO instances JSON for train_images
    val_images: str = ""  # folder of validation images
    val_annotations: str = ""  # COCO instances JSON for val_images
    # DataLoader worker processes (0 = load in the training process). Changes speed only: batch order
    # and flips depend on seed, epoch and image index, never on the worker count.
    workers: int = 2
    # RPN proposals kept per feature level before NMS and in total after NMS: torchvision's FasterRCNN
    # values (Detectron2's FPN: 2000/1000 pre-NMS per level too). The C4 detector (head res5) has one
    # level; Detectron2's R50-C4 keeps 12000/6000 there, set the pre-NMS values to match it if wanted.
    # Small values (e.g. 100 / 50) make CPU smoke runs fast.
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the box loss: Detectron2 and torchvision
    detections_per_img: int = 100  # COCO evaluates up to 100 detections per image (both references)
    score_threshold: float = 0.5  # predictions drawn in the evaluation figure (Detectron2 demo's; not AP)
    figure_images: int = 4  # validation images drawn per evaluation (0 = no figure); ours
    # Optional cap on steps per epoch for smoke runs and debugging; None = one pass over the data.
    max_iters_per_epoch: int | None = None
    # Gradient-norm clip (0 = off, as in both references). On by default: a briefly pretrained trunk
    # under frozen statistics feeds the new FPN activations in the hundreds, and at the reference rate
    # the first steps overflow to NaN without it (measured on the sample data).
    clip_grad_norm: float = 10.0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)

        # YAML reads `lr_scheme: 357` as an integer; accept it as the scheme's name.
        if is_int(self.lr_scheme):
            set_("lr_scheme", str(self.lr_scheme))
        require_choice("norm", self.norm, NORMS)
        require_choice("head", self.head, HEADS)
        require_choice("lr_scheme", self.lr_scheme, LR_SCHEMES)
        require_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.arch is not None:
            require_choice("arch", self.arch, tuple(ARCHS))

        self._resolve_backbone(set_)
        self._resolve_multipliers(set_)

        require_number("base_lr", self.base_lr, 0.0, low_open=True)
        require_number("momentum", self.momentum, 0.0, 1.0)
        require(self.momentum < 1.0, "momentum", self.momentum, "a number in [0, 1)")
        require_number("weight_decay", self.weight_decay, 0.0)
        require_int("warmup_iters", self.warmup_iters, 0)
        steps = tuple(self.lr_steps) if isinstance(self.lr_steps, (list, tuple)) else self.lr_steps
        ok = isinstance(steps, tuple) and all(is_number(s) and 0.0 < s < 1.0 for s in steps)
        ok = ok and list(steps) == sorted(steps)
        require(ok, "lr_steps", self.lr_steps, "increasing fractions of training in (0, 1), e.g. [0.67, 0.89]")
        set_("lr_steps", tuple(float(s) for s in steps))
        require_number("lr_gamma", self.lr_gamma, 0.0, 1.0, low_open=True)
        require_int("epochs", self.epochs, 1)
        require_int("batch_size", self.batch_size, 1)
        require_int("min_size", self.min_size, 32)
        require_int("max_size", self.max_size, 32)
        require(self.max_size >= self.min_size, "max_size", self.max_size, f"at least min_size ({self.min_size})")
        require_bool("amp", self.amp)
        require_int("seed", self.seed, 0)
        require_int("eval_every", self.eval_every, 1)
        require_int("workers", self.workers, 0)
        for name in ("rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                     "rpn_post_nms_top_n_test", "box_batch_size_per_image", "detections_per_img"):
            require_int(name, getattr(self, name), 1)
        require_number("score_threshold", self.score_threshold, 0.0, 1.0)
        require_int("figure_images", self.figure_images, 0)
        if self.max_iters_per_epoch is not None:
            require_int("max_iters_per_epoch", self.max_iters_per_epoch, 1)
        require_number("clip_grad_norm", self.clip_grad_norm, 0.0)

        for name, kind in (("train_images", "dir"), ("train_annotations", "file"),
                           ("val_images", "dir"), ("val_annotations", "file")):
            value = getattr(self, name)
            require(isinstance(value, (str, Path)) and str(value) != "", name, value,
                    "required: the path of a " + ("folder of images" if kind == "dir" else "COCO instances JSON file"))
            path = Path(value)
            exists = path.is_dir() if kind == "dir" else path.is_file()
            require(exists, name, str(value), f"no such {'folder' if kind == 'dir' else 'file'} {path}")
            set_(name, str(value))

    def _resolve_backbone(self, set_: Any) -> None:
        """Check the backbone folder, take ``arch`` from it and check ``norm`` against its norm."""
        require(isinstance(self.backbone, (str, Path)) and str(self.backbone) != "", "backbone", self.backbone,
                f"the path of an exported SwAV backbone folder, or '{SCRATCH}'")
        set_("backbone", str(self.backbone))
        if self.backbone == SCRATCH:
            if self.norm == "frozen_bn":
                raise ConfigError(
                    "norm='frozen_bn' is invalid with backbone='scratch' (frozen_bn is also the default norm): "
                    "FrozenBatchNorm2d on a random trunk is the identity (mean 0, var 1, weight 1, bias 0), so the "
                    "network would have no normalisation at all; train the no-pretraining baseline the ordinary "
                    "way: norm: bn (or gn) with lr_scheme: uniform", "norm", self.norm)
            if self.arch is None:
                set_("arch", DEFAULT_SCRATCH_ARCH)
            return
        folder = Path(self.backbone)
        require(folder.is_dir(), "backbone", self.backbone,
                f"no such folder {folder} (give an exported SwAV backbone folder or '{SCRATCH}')")
        try:
            meta = read_backbone_config(folder)
        except CheckpointError as exc:
            raise ConfigError(f"backbone={self.backbone!r} is invalid: {exc}", "backbone", self.backbone) from exc
        found_arch, found_norm = meta.get("arch"), meta.get("norm")
        require(found_arch in ARCHS, "backbone", self.backbone,
                f"its backbone.json names arch={found_arch!r}, not one of {', '.join(ARCHS)}")
        if self.arch is not None and self.arch != found_arch:
            raise ConfigError(f"arch={self.arch!r} conflicts with backbone={self.backbone!r}, which is a {found_arch}; "
                              "leave arch unset to take it from the backbone", "arch", self.arch)
        set_("arch", found_arch)
        if found_norm == PRETRAINED_NORM[self.norm]:
            return
        if self.norm == "gn":
            raise ConfigError(f"norm='gn' needs a GroupNorm-pretrained backbone, but backbone={self.backbone!r} was "
                              f"pretrained with norm={found_norm!r}; choose bn, frozen_bn or frozen_affine, "
                              "or pretrain with norm=gn", "norm", self.norm)
        raise ConfigError(f"norm={self.norm!r} needs a BatchNorm-pretrained backbone, but backbone={self.backbone!r} "
                          f"was pretrained with norm={found_norm!r}; use norm=gn with this backbone", "norm", self.norm)

    def _resolve_multipliers(self, set_: Any) -> None:
        """Fill ``lr_multipliers`` from the scheme's defaults; reject keys the scheme cannot use."""
        given = self.lr_multipliers if self.lr_multipliers is not None else {}
        require(isinstance(given, Mapping), "lr_multipliers", given,
                "a mapping such as {detector: 1.0e-3, late_backbone: 1.0e-5, early_backbone: 1.0e-7}")
        defaults = DEFAULT_MULTIPLIERS[self.lr_scheme]
        for key, value in given.items():
            require_choice("lr_multipliers key", key, GROUP_NAMES)
            require(key in defaults, f"lr_multipliers.{key}", value, f"lr_scheme={self.lr_scheme!r} has no {key} "
                    f"group (only {', '.join(defaults)}); use lr_scheme='357' for per-stage rates")
            require_number(f"lr_multipliers.{key}", value, 0.0, low_open=True)
        set_("lr_multipliers", {key: float(given.get(key, default)) for key, default in defaults.items()})

    def model_options(self) -> dict[str, Any]:
        """The fields that decide the network's shape (what :func:`assemble_detector` takes)."""
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    def group_lr(self, group: str) -> float:
        """The peak learning rate of an optimizer group: ``base_lr x lr_multipliers[group]``."""
        return self.base_lr * self.lr_multipliers[group]  # type: ignore[index]


__all__ = ["DetectionConfig", "scratch_warnings", "SCRATCH", "NORMS", "PRETRAINED_NORM", "HEADS", "LR_SCHEMES",
           "LR_SCHEDULES", "GROUP_NAMES", "DEFAULT_MULTIPLIERS", "MODEL_FIELDS"]
