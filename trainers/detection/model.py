"""Faster R-CNN + FPN on an explicitly built ResNet trunk: norm swap, box heads, lr groups.

The trunk comes from :func:`trainers.resnet.build_trunk` rather than torchvision's
``resnet_fpn_backbone``, which silently replaces the norm layers and freezes stages when it
is given no weights. The FPN (torchvision ``BackboneWithFPN``) reads layer1..layer4, has 256
channels and a max-pooled extra level; RPN and RoI heads are torchvision's.

Box heads (``head``), all fed by ``MultiScaleRoIAlign`` over the four FPN levels:

* ``mlp``: torchvision's ``TwoMLPHead`` (7x7x256 -> 1024 -> 1024).
* ``mlp_ln``: the same with a LayerNorm between the FCs: fc6 -> ReLU -> LayerNorm -> fc7 -> ReLU.
  The norm sits after the ReLU so that fc6's output means what it does in ``mlp`` (the only
  change is that fc7 sees normalised inputs, the pre-norm placement of transformer blocks),
  and fc7's output stays a ReLU feature like ``mlp``'s, which the predictor expects.
* ``res5``: a ResNet stage 5 on the RoI features, as in the C4 detectors, wired to the
  256-channel FPN: RoIs are pooled to 14x14 (the stage's stride 2 brings them to 7x7, as in
  Detectron's C4 head); the first block reads the 256 channels directly, its 3x3 (BasicBlock)
  or 1x1 (Bottleneck) conv takes 256 inputs and its downsample shortcut is a strided 1x1
  projection 256 -> the stage's output width (2048 for resnet50's Bottlenecks, 512 for the
  BasicBlocks of resnet18/34); block counts follow the arch (3, 3, 2 for 50, 34, 18). Then the
  extra BatchNorm2d, global average pooling, flatten and ``FastRCNNPredictor``.
  Initialisation: from scratch (Kaiming, as torchvision's ResNet), not copied from the trunk's
  layer4. Its input is the FPN's output, itself newly initialised, so pretrained layer4
  weights would see features unlike those they were trained on, and for resnet50 the first
  block's shapes do not even match (the trunk's layer4 reads 1024 channels); a scratch head
  also keeps the head ablation about architecture, not about extra pretrained parameters.
  The head's own norms are ordinary BatchNorm2d for every ``norm``: the RoI batch (hundreds of
  RoIs) gives well-defined statistics, and ``norm`` is an ablation of the *backbone*.

Learning-rate groups (see :mod:`trainers.detection.config` for the multipliers): the
"detector" is everything outside the trunk (FPN, RPN, RoI heads); the "early backbone" is the
stem (conv1, bn1) and layer1, the "late backbone" layer2..layer4 — the paper's x1e-7 for "the
stem and first stage" and x1e-5 for the rest of the backbone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from trainers.checkpoints import load_backbone_weights
from trainers.detection.config import HEADS, NORMS, SCRATCH, DetectionConfig
from trainers.resnet import ARCHS, GN_GROUPS, build_trunk

FPN_CHANNELS = 256  # FPN width of torchvision's (and Detectron's) Faster R-CNN
REPRESENTATION_SIZE = 1024  # width of the MLP heads, as in TwoMLPHead's use in torchvision
ROI_SIZE = {"mlp": 7, "mlp_ln": 7, "res5": 14}  # res5 halves 14x14 to 7x7 with its stride
RES5_BLOCKS = {"resnet18": 2, "resnet34": 3, "resnet50": 3}  # layer4 depth of each arch
# torchvision's value for COCO evaluation: keep low-scoring boxes, AP integrates over scores.
BOX_SCORE_THRESH = 0.05
# Input channels of layer1..layer4 outputs, which the FPN reads.
STAGE_CHANNELS = {"resnet18": [64, 128, 256, 512], "resnet34": [64, 128, 256, 512], "resnet50": [256, 512, 1024, 2048]}
EARLY_STAGES = ("conv1", "bn1", "layer1")
TRUNK_PREFIX = "backbone.body."


class BackboneLoadError(ValueError):
    """An exported backbone whose weights do not fit the trunk the config asks for."""


# ---------------------------------------------------------------------------
# Norm swap
# ---------------------------------------------------------------------------


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """A copy of ``module`` with its normalisation layers set up for ``norm``; ``module`` is untouched.

    * ``bn``: unchanged copy (trainable BatchNorm2d).
    * ``frozen_bn``: every BatchNorm2d becomes a ``FrozenBatchNorm2d`` carrying its weight,
      bias, running mean and variance (affine and statistics fixed).
    * ``frozen_affine``: BatchNorm2d kept, weight and bias get ``requires_grad=False``; in train
      mode the running statistics still adapt (and batch statistics normalise).
    * ``gn``: GroupNorm. GroupNorm layers are kept; a BatchNorm2d is replaced by a
      ``GroupNorm(32, C)`` taking over its affine weight and bias (batch statistics have no
      GroupNorm counterpart) — a GN-pretrained trunk, the intended input, has none.

    Raises:
        ValueError: unknown ``norm``, or ``frozen_bn``/``frozen_affine`` asked of a module whose
            trunk norm is GroupNorm (there are no statistics to freeze).
    """
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is invalid: choose one of {', '.join(NORMS)}")
    converted = copy.deepcopy(module)
    if norm in ("frozen_bn", "frozen_affine") and any(isinstance(m, nn.GroupNorm) for m in converted.modules()):
        raise ValueError(f"norm={norm!r} needs BatchNorm layers, but the module uses GroupNorm; use norm='gn'")
    if norm == "bn":
        return converted
    if norm == "frozen_affine":
        for m in converted.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
        return converted
    return _replace_batchnorm(converted, norm)


def _replace_batchnorm(module: nn.Module, norm: str) -> nn.Module:
    """Replace BatchNorm2d layers (recursively, in place) with their ``norm`` counterpart."""
    if isinstance(module, nn.BatchNorm2d):
        return _counterpart(module, norm)
    for name, child in module.named_children():
        replacement = _replace_batchnorm(child, norm)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def _counterpart(bn: nn.BatchNorm2d, norm: str) -> nn.Module:
    channels = bn.num_features
    if norm == "frozen_bn":
        frozen = FrozenBatchNorm2d(channels, eps=bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats and bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        tensors = list(bn.parameters()) + list(bn.buffers())
        return frozen.to(tensors[0].device) if tensors else frozen
    gn = nn.GroupNorm(GN_GROUPS if channels % GN_GROUPS == 0 else 1, channels, eps=bn.eps)
    if bn.affine:
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
    return gn


# ---------------------------------------------------------------------------
# Box heads
# ---------------------------------------------------------------------------


class TwoMLPLayerNormHead(nn.Module):
    """TwoMLPHead with a LayerNorm on fc7's input: fc6 -> ReLU -> LayerNorm -> fc7 -> ReLU."""

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.norm = nn.LayerNorm(representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc6(x.flatten(start_dim=1)))
        return torch.relu(self.fc7(self.norm(x)))


class Res5Head(nn.Module):
    """A ResNet stage 5 (scratch-initialised) on 256-channel RoI features, then BatchNorm and pooling.

    See the module docstring for the wiring. Input ``[R, 256, 14, 14]``, output ``[R, out_channels]``.
    """

    def __init__(self, arch: str, in_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch={arch!r} is invalid: choose one of {', '.join(ARCHS)}")
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if arch == "resnet50" else BasicBlock
        planes = 512  # stage 5's width in every torchvision ResNet
        self.out_channels = planes * block.expansion
        downsample = nn.Sequential(conv1x1(in_channels, self.out_channels, stride=2), nn.BatchNorm2d(self.out_channels))
        blocks: list[nn.Module] = [block(in_channels, planes, stride=2, downsample=downsample)]
        blocks += [block(self.out_channels, planes) for _ in range(RES5_BLOCKS[arch] - 1)]
        self.stage = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(self.out_channels)  # the "extra BatchNorm" of the paper's res5 head
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():  # torchvision ResNet's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.norm(self.stage(x))).flatten(start_dim=1)


def build_box_head(head: str, arch: str, num_classes: int) -> tuple[MultiScaleRoIAlign, nn.Module, FastRCNNPredictor]:
    """RoI pooler, box head and predictor for ``head``.

    Args:
        head: mlp | mlp_ln | res5.
        arch: the trunk's arch (decides res5's block type and depth).
        num_classes: foreground classes; the predictor has ``num_classes + 1`` outputs (background 0).

    Returns:
        ``(roi_pool, box_head, box_predictor)``; the head maps pooled ``[R, 256, S, S]`` features
        (S = 7, or 14 for res5) to ``[R, D]``, the predictor to scores ``[R, C+1]`` and boxes ``[R, 4(C+1)]``.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r} is invalid: choose one of {', '.join(HEADS)}")
    size = ROI_SIZE[head]
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=size, sampling_ratio=2)
    box_head: nn.Module
    if head == "mlp":
        box_head, width = TwoMLPHead(FPN_CHANNELS * size * size, REPRESENTATION_SIZE), REPRESENTATION_SIZE
    elif head == "mlp_ln":
        box_head, width = TwoMLPLayerNormHead(FPN_CHANNELS * size * size, REPRESENTATION_SIZE), REPRESENTATION_SIZE
    else:
        box_head = Res5Head(arch)
        width = box_head.out_channels
    return roi_pool, box_head, FastRCNNPredictor(width, num_classes + 1)


# ---------------------------------------------------------------------------
# Trunk and detector
# ---------------------------------------------------------------------------


def infer_arch(state: Mapping[str, torch.Tensor]) -> str:
    """Which ResNet a trunk state dict belongs to, from its keys (for error messages)."""
    if any(k.startswith("layer4.0.conv3.") for k in state):
        return "resnet50" if any(k.startswith("layer3.5.") for k in state) else "an unknown Bottleneck ResNet"
    if any(k.startswith("layer3.5.") for k in state):
        return "resnet34"
    if any(k.startswith("layer3.1.") for k in state) and not any(k.startswith("layer3.2.") for k in state):
        return "resnet18"
    return "not a known ResNet trunk"


def load_backbone(trunk: nn.Module, folder: str | Path, arch: str) -> nn.Module:
    """Load an exported SwAV backbone into ``trunk`` with ``strict=True``.

    Raises:
        BackboneLoadError: missing/unexpected keys or shape mismatches, naming the folder, the
            expected arch and the arch the weights look like.
    """
    state, meta = load_backbone_weights(folder)
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()
        raise BackboneLoadError(
            f"backbone {folder}: weights do not fit arch={arch!r} (backbone.json says arch={meta.get('arch')!r}; "
            f"the weights look like {infer_arch(state)}). Re-export the backbone or fix its backbone.json. "
            f"First mismatch: {' '.join(detail[1:3]).strip() or detail[0]}"
        ) from exc
    return trunk


def detection_trunk(arch: str, norm: str, backbone: str | Path | None = None) -> nn.Module:
    """The ResNet trunk for ``norm``: built with BN (or GN), optionally loaded from ``backbone``, converted."""
    trunk = build_trunk(arch, "gn" if norm == "gn" else "bn")
    if backbone is not None:
        load_backbone(trunk, backbone, arch)
    return convert_norm(trunk, norm)


def assemble_detector(
    num_classes: int,
    trunk: nn.Module | None = None,
    *,
    arch: str,
    norm: str,
    head: str,
    min_size: int,
    max_size: int,
    rpn_pre_nms_top_n_train: int,
    rpn_pre_nms_top_n_test: int,
    rpn_post_nms_top_n_train: int,
    rpn_post_nms_top_n_test: int,
    box_batch_size_per_image: int,
    detections_per_img: int,
) -> FasterRCNN:
    """Faster R-CNN + FPN from the network-shape options (``DetectionConfig.model_options()``).

    Args:
        num_classes: foreground classes.
        trunk: the ResNet trunk; a scratch one for ``arch``/``norm`` when None (what
            :func:`load_detector` uses before loading the whole state dict).
    """
    if trunk is None:
        trunk = detection_trunk(arch, norm)
    return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    backbone = BackboneWithFPN(
        trunk, return_layers=return_layers, in_channels_list=STAGE_CHANNELS[arch],
        out_channels=FPN_CHANNELS, extra_blocks=LastLevelMaxPool(),
    )
    roi_pool, box_head, box_predictor = build_box_head(head, arch, num_classes)
    # Anchors: torchvision's FPN default (one size per level, 32..512, ratios 0.5/1/2).
    return FasterRCNN(
        backbone,
        num_classes=None,  # the predictor is given
        min_size=min_size,
        max_size=max_size,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=box_predictor,
        box_score_thresh=BOX_SCORE_THRESH,
        box_detections_per_img=detections_per_img,
        box_batch_size_per_image=box_batch_size_per_image,
    )


def build_detector(config: DetectionConfig, num_classes: int) -> FasterRCNN:
    """Faster R-CNN + FPN for ``config``: trunk (loaded from ``config.backbone`` unless scratch),
    norm swap, box head; under ``lr_scheme='frozen'`` the trunk's parameters get ``requires_grad=False``.

    Raises:
        BackboneLoadError: the backbone's weights do not fit ``config.arch``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} is invalid: the data set needs at least one category")
    backbone = None if config.backbone == SCRATCH else config.backbone
    trunk = detection_trunk(config.arch or "", config.norm, backbone)  # arch is resolved by the config
    model = assemble_detector(num_classes, trunk, **config.model_options())
    if config.lr_scheme == "frozen":
        for p in model.backbone.body.parameters():
            p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------
# Learning-rate groups
# ---------------------------------------------------------------------------


def parameter_stage(name: str) -> str:
    """'detector', 'late_backbone' or 'early_backbone' for a FasterRCNN parameter name."""
    if not name.startswith(TRUNK_PREFIX):
        return "detector"
    return "early_backbone" if name[len(TRUNK_PREFIX):].split(".")[0] in EARLY_STAGES else "late_backbone"


def param_groups(model: FasterRCNN, config: DetectionConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``config.lr_scheme``; every trainable parameter in exactly one.

    Each group: ``name``, ``params``, ``lr`` and ``peak_lr`` (both ``base_lr x multiplier``; the
    schedule scales ``lr`` from ``peak_lr`` each step) and ``weight_decay``.

    * ``frozen``: one group ``detector``; trunk parameters are left out (build_detector has set
      ``requires_grad=False`` on them, so they also get no gradient).
    * ``357``: ``detector``, ``late_backbone``, ``early_backbone``.
    * ``uniform``: one group ``all`` at the detector's rate.

    Parameters with ``requires_grad=False`` (frozen_affine's BatchNorm affine) are left out.
    Empty groups are omitted.
    """
    buckets: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        stage = parameter_stage(name)
        if config.lr_scheme == "frozen":
            if stage != "detector":
                continue
            group = "detector"
        elif config.lr_scheme == "uniform":
            group = "all"
        else:
            group = stage
        buckets.setdefault(group, []).append(param)
    groups = []
    for group, params in buckets.items():
        lr = config.group_lr("detector" if group == "all" else group)
        groups.append({"name": group, "params": params, "lr": lr, "peak_lr": lr, "weight_decay": config.weight_decay})
    return groups


def trunk_parameters(model: FasterRCNN) -> list[tuple[str, nn.Parameter]]:
    """The trunk's named parameters (``backbone.body.*``)."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith(TRUNK_PREFIX)]
