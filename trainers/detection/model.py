"""Faster R-CNN on an explicitly built ResNet trunk: norm swap, box heads, lr groups.

The trunk comes from :func:`trainers.resnet.build_trunk` rather than torchvision's
``resnet_fpn_backbone``, which silently replaces the norm layers and freezes stages when it
is given no weights. Every detector is torchvision's ``FasterRCNN`` (its RPN, RoI heads and
transform); only the backbone, RoI pooler, box head and predictor handed to it differ by ``head``.

Two detector layouts:

* **FPN** (``mlp``, ``mlp_ln``, ``res5_fpn``): torchvision's ``BackboneWithFPN`` reads
  layer1..layer4, has 256 channels and a max-pooled extra level; ``MultiScaleRoIAlign`` pools
  RoIs over the four FPN levels; anchors are torchvision's FPN default (one size per level).
* **C4** (``res5``): the paper's res5 head, which is the SwAV paper's detection setup
  (Detectron2's R50-C4 with MoCo/SwAV's ``Res5ROIHeadsExtraNorm``). The trunk stops at stage 4
  (stem..layer3, stride 16); the RPN runs on that single C4 map with Detectron2's C4 anchors
  (sizes 32..512 x ratios 0.5/1/2, 15 per location); RoIs are pooled from C4 to 14x14
  (``MultiScaleRoIAlign(["0"], 14, 2)``; 1024 channels for resnet50, 256 for resnet18/34); the
  box head is the *pretrained* stage 5 (the trunk's own ``layer4``, loaded from the SwAV backbone,
  its stride 2 taking 14x14 to 7x7), then an extra trainable BatchNorm2d, global average pooling
  and flatten, feeding ``FastRCNNPredictor`` on 2048 (resnet50) / 512 (resnet18/34) features.
  The ``norm`` choice applies to that layer4 as to the rest of the trunk (Detectron2 builds res5
  with ``RESNETS.NORM`` as well); the extra BatchNorm is always a trainable BatchNorm2d, as in
  ``Res5ROIHeadsExtraNorm``.

Box heads (``head``):

* ``mlp``: torchvision's ``TwoMLPHead`` (7x7x256 -> 1024 -> 1024).
* ``mlp_ln``: the same with a LayerNorm between the FCs: fc6 -> ReLU -> LayerNorm -> fc7 -> ReLU.
  The norm sits after the ReLU so that fc6's output means what it does in ``mlp`` (the only
  change is that fc7 sees normalised inputs, the pre-norm placement of transformer blocks),
  and fc7's output stays a ReLU feature like ``mlp``'s, which the predictor expects.
* ``res5``: the paper's C4 head described above (:class:`Res5ROIHead`).
* ``res5_fpn``: not the paper's design — a ResNet stage 5 *initialised from scratch* on the
  256-channel FPN RoIs (:class:`Res5FPNHead`; this project's earlier ``res5``). RoIs are pooled
  to 14x14 over the FPN levels (the stage's stride 2 brings them to 7x7); the first block reads
  the 256 channels directly, its downsample shortcut a strided 1x1 projection 256 -> the stage's
  output width (2048 for resnet50's Bottlenecks, 512 for resnet18/34's BasicBlocks); block
  counts follow the arch (3, 3, 2 for 50, 34, 18). Then the extra BatchNorm2d, global average
  pooling, flatten and ``FastRCNNPredictor``. Kaiming init as torchvision's ResNet; its norms are
  ordinary BatchNorm2d for every ``norm``. Pretrained layer4 weights cannot serve here: they
  read 1024 (resnet50) channels of C4, not 256 of a new FPN.

Learning-rate groups (see :mod:`trainers.detection.config` for the multipliers): the
"detector" is everything outside the trunk (FPN, RPN, RoI heads); the "early backbone" is the
stem (conv1, bn1) and layer1, the "late backbone" layer2..layer4 — the paper's x1e-7 for "the
stem and first stage" and x1e-5 for the rest of the backbone. In the C4 detector layer4 is the
RoI box head (``roi_heads.box_head.layer4``), so it is in the detector group and the late
backbone is layer2..layer3: Detectron2 and MoCo/SwAV train ``Res5ROIHeads`` at the detector's
rate, and ``FREEZE_AT`` (our ``lr_scheme: frozen``) never freezes it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from trainers.checkpoints import load_backbone_weights
from trainers.detection.config import HEADS, SCRATCH, DetectionConfig
from trainers.pairing import pretrained_norm
from trainers.resnet import ARCHS, GN_GROUPS, build_trunk

FPN_CHANNELS = 256  # FPN width of torchvision's (and Detectron's) Faster R-CNN
REPRESENTATION_SIZE = 1024  # width of the MLP heads, as in TwoMLPHead's use in torchvision
# res5 and res5_fpn halve 14x14 to 7x7 with their stride (Detectron2 C4's POOLER_RESOLUTION 14).
ROI_SIZE = {"mlp": 7, "mlp_ln": 7, "res5": 14, "res5_fpn": 14}
RES5_BLOCKS = {"resnet18": 2, "resnet34": 3, "resnet50": 3}  # layer4 depth of each arch
# The C4 detector's anchors on its one stride-16 map: Detectron2's R50-C4 (ANCHOR_GENERATOR.SIZES
# [[32, 64, 128, 256, 512]], ASPECT_RATIOS [[0.5, 1.0, 2.0]]).
C4_ANCHOR_SIZES = (32, 64, 128, 256, 512)
C4_ASPECT_RATIOS = (0.5, 1.0, 2.0)
C4_HEADS = ("res5",)  # heads whose detector is the C4 layout (the others read the FPN)
# torchvision's value for COCO evaluation: keep low-scoring boxes, AP integrates over scores.
BOX_SCORE_THRESH = 0.05
# Input channels of layer1..layer4 outputs, which the FPN reads.
STAGE_CHANNELS = {"resnet18": [64, 128, 256, 512], "resnet34": [64, 128, 256, 512], "resnet50": [256, 512, 1024, 2048]}
# Channels of C4 (layer3's output), which the C4 detector's RPN and RoI pooler read.
C4_CHANNELS = {arch: channels[2] for arch, channels in STAGE_CHANNELS.items()}
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
    pretrained_norm(norm)  # refuses an unknown norm
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


class Res5FPNHead(nn.Module):
    """Not the paper's res5 head: a ResNet stage 5 *from scratch* on 256-channel FPN RoIs, then BatchNorm and pooling.

    ``head: res5_fpn`` (see the module docstring; the paper's head is :class:`Res5ROIHead`).
    Input ``[R, 256, 14, 14]``, output ``[R, out_channels]``.
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
        self.norm = nn.BatchNorm2d(self.out_channels)  # the extra BatchNorm, as in the C4 head
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():  # torchvision ResNet's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.norm(self.stage(x))).flatten(start_dim=1)


class Res5ROIHead(nn.Module):
    """The paper's res5 box head (the C4 design): the trunk's pretrained stage 5, an extra BatchNorm, pooling.

    As Detectron2's ``Res5ROIHeads`` with MoCo/SwAV's ``Res5ROIHeadsExtraNorm``: ``layer4`` is the
    trunk's own stage 5 (loaded from the SwAV backbone, its norms converted like the trunk's), then
    a trainable ``BatchNorm2d`` on its output, then global average pooling and flatten.
    Input ``[R, C4, 14, 14]`` (C4 = 1024 for resnet50, 256 for resnet18/34), output ``[R, out_channels]``.

    Args:
        layer4: the stage 5 to use (a torchvision ResNet ``layer4``).
    """

    def __init__(self, layer4: nn.Sequential) -> None:
        super().__init__()
        self.layer4 = layer4
        last = layer4[-1]
        self.out_channels = (last.conv3 if isinstance(last, Bottleneck) else last.conv2).out_channels
        self.norm = nn.BatchNorm2d(self.out_channels)  # Res5ROIHeadsExtraNorm's extra norm (weight 1, bias 0)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.norm(self.layer4(x))).flatten(start_dim=1)


def build_box_head(
    head: str, arch: str, num_classes: int, layer4: nn.Sequential | None = None,
) -> tuple[MultiScaleRoIAlign, nn.Module, FastRCNNPredictor]:
    """RoI pooler, box head and predictor for ``head``.

    Args:
        head: mlp | mlp_ln | res5 | res5_fpn.
        arch: the trunk's arch (decides res5_fpn's block type and depth).
        num_classes: foreground classes; the predictor has ``num_classes + 1`` outputs (background 0).
        layer4: for ``res5`` only, the trunk's stage 5 that becomes the head (required there).

    Returns:
        ``(roi_pool, box_head, box_predictor)``; the head maps pooled ``[R, C, S, S]`` features to
        ``[R, D]``, the predictor to scores ``[R, C+1]`` and boxes ``[R, 4(C+1)]``. C is 256 (FPN)
        for every head but ``res5``, which pools the single C4 map (``"0"``); S is 7, or 14 for
        res5 and res5_fpn.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r} is invalid: choose one of {', '.join(HEADS)}")
    size = ROI_SIZE[head]
    levels = ["0"] if head in C4_HEADS else ["0", "1", "2", "3"]
    roi_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=size, sampling_ratio=2)
    box_head: nn.Module
    if head == "mlp":
        box_head, width = TwoMLPHead(FPN_CHANNELS * size * size, REPRESENTATION_SIZE), REPRESENTATION_SIZE
    elif head == "mlp_ln":
        box_head, width = TwoMLPLayerNormHead(FPN_CHANNELS * size * size, REPRESENTATION_SIZE), REPRESENTATION_SIZE
    elif head == "res5_fpn":
        box_head = Res5FPNHead(arch)
        width = box_head.out_channels
    else:
        if layer4 is None:
            raise ValueError("head='res5' takes the trunk's stage 5 as its box head: pass layer4 (build_detector does)")
        box_head = Res5ROIHead(layer4)
        width = box_head.out_channels
    return roi_pool, box_head, FastRCNNPredictor(width, num_classes + 1)


class C4Backbone(nn.Module):
    """The C4 detector's backbone: the trunk's stem..layer3 as ``body``, returning ``{"0": C4}``.

    ``out_channels`` is C4's width, what torchvision's ``FasterRCNN`` reads to build the RPN head.
    Parameter names stay ``body.conv1.*`` .. ``body.layer3.*``, as in the FPN layout.
    """

    def __init__(self, trunk: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(trunk, return_layers={"layer3": "0"})
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body(x)


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
    trunk = build_trunk(arch, pretrained_norm(norm))
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
    """torchvision's Faster R-CNN from the network-shape options (``DetectionConfig.model_options()``).

    FPN layout for mlp / mlp_ln / res5_fpn, C4 layout for res5 (see the module docstring): there the
    trunk's stem..layer3 is the backbone and its ``layer4`` moves into the box head.

    Args:
        num_classes: foreground classes.
        trunk: the ResNet trunk; a scratch one for ``arch``/``norm`` when None (what
            :func:`load_detector` uses before loading the whole state dict).
    """
    if trunk is None:
        trunk = detection_trunk(arch, norm)
    backbone: nn.Module
    anchors: AnchorGenerator | None = None  # None: torchvision's FPN default (one size per level, 32..512)
    if head in C4_HEADS:
        backbone = C4Backbone(trunk, C4_CHANNELS[arch])
        anchors = AnchorGenerator(sizes=(C4_ANCHOR_SIZES,), aspect_ratios=(C4_ASPECT_RATIOS,))
        roi_pool, box_head, box_predictor = build_box_head(head, arch, num_classes, layer4=trunk.layer4)
    else:
        return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        backbone = BackboneWithFPN(
            trunk, return_layers=return_layers, in_channels_list=STAGE_CHANNELS[arch],
            out_channels=FPN_CHANNELS, extra_blocks=LastLevelMaxPool(),
        )
        roi_pool, box_head, box_predictor = build_box_head(head, arch, num_classes)
    return FasterRCNN(
        backbone,
        num_classes=None,  # the predictor is given
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,  # FasterRCNN sizes its RPNHead from the anchors per location
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
    """Faster R-CNN for ``config``: trunk (loaded from ``config.backbone`` unless scratch), norm swap,
    FPN or C4 layout and box head; under ``lr_scheme='frozen'`` the trunk's parameters in the
    backbone (``backbone.body``) get ``requires_grad=False`` — for ``head='res5'`` that is stem..layer3,
    the pretrained layer4 being the RoI head, which trains at the detector's rate.

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

    The C4 detector's box head, pretrained layer4 included (``roi_heads.box_head.layer4.*``), is in
    ``detector`` under every scheme (see the module docstring). Parameters with
    ``requires_grad=False`` (frozen_affine's BatchNorm affine) are left out. Empty groups are omitted.
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
    """The trunk's named parameters (``backbone.body.*``; for ``head='res5'`` stem..layer3, layer4 being the head)."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith(TRUNK_PREFIX)]
