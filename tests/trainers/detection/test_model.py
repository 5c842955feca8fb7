"""trainers/detection/model.py: the norm swap, the box heads (MLP, LayerNorm MLP, the C4 res5 heads), the lr-scheme
parameter groups and loading an exported backbone into the trunk."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from trainers.detection.model import (
    BackboneLoadError, C4Backbone, Res5ROIHead, build_box_head, build_detector, convert_norm, param_groups,
)
from trainers.resnet import build_trunk
from tests.trainers.detection.helpers import tiny_config


def test_frozen_bn_replaces_every_batchnorm_and_keeps_statistics() -> None:
    torch.manual_seed(0)
    trunk = build_trunk("resnet18", "bn")
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    originals = {n: m for n, m in trunk.named_modules() if isinstance(m, nn.BatchNorm2d)}
    frozen = convert_norm(trunk, "frozen_bn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    converted = dict(frozen.named_modules())
    assert len(originals) == 20
    for name, bn in originals.items():
        fbn = converted[name]
        assert isinstance(fbn, FrozenBatchNorm2d)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(fbn, attr), getattr(bn, attr)), (name, attr)
    # Pure: the input module is unchanged, and the frozen copy has no norm parameters to train.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trunk.modules()) == 20
    x = torch.randn(2, 3, 64, 64)
    trunk.eval()
    frozen.train()  # FrozenBatchNorm2d ignores the mode: same function as the BN trunk in eval mode
    torch.testing.assert_close(frozen(x), trunk(x), rtol=1e-4, atol=1e-4)


def test_frozen_affine_adapts_statistics_but_not_affine() -> None:
    torch.manual_seed(0)
    trunk = convert_norm(build_trunk("resnet18", "bn"), "frozen_affine")
    bns = [m for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20 and all(not m.weight.requires_grad and not m.bias.requires_grad for m in bns)
    before = [(m.weight.clone(), m.bias.clone(), m.running_mean.clone(), m.running_var.clone()) for m in bns]
    conv_before = trunk.conv1.weight.clone()
    optimizer = torch.optim.SGD([p for p in trunk.parameters() if p.requires_grad], lr=0.1)
    trunk.train()
    trunk(torch.randn(2, 3, 64, 64) * 3 + 1).square().mean().backward()
    optimizer.step()
    for m, (w, b, mean, var) in zip(bns, before):
        assert torch.equal(m.weight, w) and torch.equal(m.bias, b)
        assert m.weight.grad is None
    assert any(not torch.equal(m.running_mean, mean) for m, (_, _, mean, _) in zip(bns, before))
    assert any(not torch.equal(m.running_var, var) for m, (_, _, _, var) in zip(bns, before))
    assert not torch.equal(trunk.conv1.weight, conv_before)  # the convs do train


def test_gn_norm_and_mismatches(sample_data: Any, backbones: dict[str, Path]) -> None:
    model = build_detector(tiny_config(sample_data, backbone=str(backbones["gn"]), norm="gn", arch=None), 3)
    trunk_modules = list(model.backbone.body.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in trunk_modules)
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in trunk_modules)
    # BN -> GN keeps the affine parameters (statistics have no GN counterpart).
    bn_trunk = build_trunk("resnet18", "bn")
    with torch.no_grad():
        bn_trunk.bn1.weight.fill_(0.5)
    gn_trunk = convert_norm(bn_trunk, "gn")
    assert isinstance(gn_trunk.bn1, nn.GroupNorm) and torch.all(gn_trunk.bn1.weight == 0.5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn_trunk.modules())
    # Nothing to freeze in a GroupNorm trunk.
    with pytest.raises(ValueError, match="needs BatchNorm layers"):
        convert_norm(build_trunk("resnet18", "gn"), "frozen_bn")
    with pytest.raises(ValueError, match="norm='batch'"):
        convert_norm(bn_trunk, "batch")


@pytest.mark.parametrize("arch, width", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("head", ["mlp", "mlp_ln", "res5", "res5_fpn"])
def test_box_head_shapes(head: str, arch: str, width: int) -> None:
    num_classes, rois = 3, 5
    layer4 = build_trunk(arch, "bn").layer4 if head == "res5" else None
    roi_pool, box_head, predictor = build_box_head(head, arch, num_classes, layer4=layer4)
    size = roi_pool.output_size[0]
    assert size == (14 if head.startswith("res5") else 7)
    assert roi_pool.featmap_names == (["0"] if head == "res5" else ["0", "1", "2", "3"])
    channels = {"resnet18": 256, "resnet34": 256, "resnet50": 1024}[arch] if head == "res5" else 256  # C4 or FPN
    features = box_head.eval()(torch.randn(rois, channels, size, size))
    assert features.shape == (rois, width if head.startswith("res5") else 1024)
    scores, deltas = predictor(features)
    assert scores.shape == (rois, num_classes + 1) and deltas.shape == (rois, 4 * (num_classes + 1))
    if head == "res5":
        assert box_head.layer4 is layer4 and isinstance(box_head.norm, nn.BatchNorm2d)
    if head == "res5_fpn":
        block = box_head.stage[0]
        assert block.downsample[0].in_channels == 256 and block.downsample[0].out_channels == width
        assert isinstance(box_head.norm, nn.BatchNorm2d)
        assert len(box_head.stage) == {"resnet18": 2, "resnet34": 3, "resnet50": 3}[arch]


def test_res5_needs_the_trunk_stage() -> None:
    with pytest.raises(ValueError, match="pass layer4"):
        build_box_head("res5", "resnet18", 3)


def test_res5_is_the_c4_detector_with_the_pretrained_stage5(sample_data: Any, backbones: dict[str, Path]) -> None:
    from trainers.checkpoints import load_backbone_weights

    weights, _ = load_backbone_weights(backbones["bn"])
    config = tiny_config(sample_data, backbone=str(backbones["bn"]), arch=None, norm="bn", head="res5")
    model = build_detector(config, 3)
    # Trunk to stage 4: the backbone is stem..layer3 and yields the single C4 map.
    assert isinstance(model.backbone, C4Backbone) and model.backbone.out_channels == 256
    assert list(model.backbone.body) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]  # 5 sizes x 3 ratios on one map
    assert model.roi_heads.box_roi_pool.featmap_names == ["0"] and model.roi_heads.box_roi_pool.output_size == (14, 14)
    head = model.roi_heads.box_head
    assert isinstance(head, Res5ROIHead) and model.roi_heads.box_predictor.cls_score.in_features == 512
    # The head's stage 5 is the backbone's layer4, loaded (not random); the extra BN is new and trainable.
    loaded = {k[len("layer4."):]: v for k, v in weights.items() if k.startswith("layer4.")}
    assert loaded and head.layer4.state_dict().keys() == loaded.keys()
    for key, value in head.layer4.state_dict().items():
        assert torch.equal(value, loaded[key]), key
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert isinstance(head.norm, nn.BatchNorm2d) and head.norm.weight.requires_grad
    # The norm choice reaches the head's layer4 as the trunk's: frozen_bn freezes both, with the exported stats.
    frozen = build_detector(dataclasses.replace(config, norm="frozen_bn"), 3).roi_heads.box_head
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.layer4.modules())
    assert torch.equal(frozen.layer4[0].bn1.running_var, weights["layer4.0.bn1.running_var"])
    assert isinstance(frozen.norm, nn.BatchNorm2d)  # the extra BN stays trainable BatchNorm
    # lr groups: layer4-as-head trains at the detector rate, under 357 and even under frozen.
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(model, config)}
    assert any(n.startswith("roi_heads.box_head.layer4.") for n in groups["detector"])
    assert {n.split(".")[2] for n in groups["late_backbone"]} == {"layer2", "layer3"}
    fmodel = build_detector(tiny_config(sample_data, backbone=str(backbones["bn"]), arch=None, norm="bn", head="res5",
                                        lr_scheme="frozen"), 3)
    assert not any(p.requires_grad for p in fmodel.backbone.body.parameters())
    assert all(p.requires_grad for p in fmodel.roi_heads.box_head.parameters())
    with torch.no_grad():
        assert list(model.eval().backbone(torch.rand(1, 3, 64, 64))) == ["0"]


def test_mlp_ln_normalises_fc7_input() -> None:
    _, head, _ = build_box_head("mlp_ln", "resnet18", 3)
    seen: list[torch.Tensor] = []
    head.fc7.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    head(torch.randn(4, 256, 7, 7) * 5)
    fc7_in = seen[0]
    torch.testing.assert_close(fc7_in.mean(dim=1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(fc7_in.std(dim=1, unbiased=False), torch.ones(4), atol=1e-2, rtol=0)


@pytest.mark.parametrize("scheme, expected", [
    ("357", {"detector": 0.02, "late_backbone": 2e-4, "early_backbone": 2e-6}),
    ("uniform", {"all": 0.02}),
    ("frozen", {"detector": 0.02}),
])
def test_param_groups_cover_each_trainable_parameter_once(sample_data: Any, scheme: str, expected: dict) -> None:
    config = tiny_config(sample_data, lr_scheme=scheme, norm="bn")
    model = build_detector(config, 3)
    groups = param_groups(model, config)
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx(expected)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)) and set(grouped) == set(trainable)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        group_names = [names[id(p)] for p in group["params"]]
        if group["name"] == "early_backbone":
            assert all(n.split(".")[2] in ("conv1", "bn1", "layer1") for n in group_names)
        if group["name"] == "late_backbone":
            assert {n.split(".")[2] for n in group_names} == {"layer2", "layer3", "layer4"}
        if group["name"] == "detector":
            assert not any(n.startswith("backbone.body.") for n in group_names)
    if scheme == "frozen":
        assert not any(p.requires_grad for p in model.backbone.body.parameters())


def test_param_groups_skip_frozen_affine_norms(sample_data: Any) -> None:
    config = tiny_config(sample_data, norm="frozen_affine", lr_multipliers={"late_backbone": 1e-4})
    model = build_detector(config, 3)
    groups = {g["name"]: g for g in param_groups(model, config)}
    assert groups["late_backbone"]["lr"] == pytest.approx(20 * 1e-4)
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    bn_params = {id(p) for m in model.backbone.body.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert bn_params and not grouped & bn_params


def test_frozen_scheme_trunk_gets_no_gradient(sample_data: Any) -> None:
    config = tiny_config(sample_data, lr_scheme="frozen", norm="bn", min_size=64, max_size=64)
    torch.manual_seed(0)
    model = build_detector(config, 3)
    optimizer = torch.optim.SGD(param_groups(model, config), lr=0.01, momentum=0.9)
    trunk_before = {n: p.clone() for n, p in model.backbone.body.named_parameters()}
    model.train()
    image = torch.rand(3, 64, 64)
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([2])}
    loss = sum(model([image], [target]).values())
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.backbone.body.parameters())
    assert all(torch.equal(p, trunk_before[n]) for n, p in model.backbone.body.named_parameters())
    assert model.backbone.fpn.inner_blocks[0][0].weight.grad is not None
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None


def test_exported_backbone_loads_into_the_trunk(sample_data: Any, backbones: dict[str, Path]) -> None:
    from trainers.checkpoints import load_backbone_weights

    weights, _ = load_backbone_weights(backbones["bn"])
    model = build_detector(tiny_config(sample_data, backbone=str(backbones["bn"]), arch=None, norm="bn"), 3)
    trunk_state = model.backbone.body.state_dict()
    for key, value in trunk_state.items():
        assert torch.equal(value, weights[key]), key
    # Under frozen_bn the frozen layers carry the exported statistics.
    frozen = build_detector(tiny_config(sample_data, backbone=str(backbones["bn"]), arch=None), 3)
    assert isinstance(frozen.backbone.body.bn1, FrozenBatchNorm2d)
    assert torch.equal(frozen.backbone.body.bn1.running_var, weights["bn1.running_var"])
    assert torch.equal(frozen.backbone.body.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])


def test_wrong_arch_backbone_is_a_clear_error(sample_data: Any, backbones: dict[str, Path]) -> None:
    folder = backbones["mislabelled"]
    config = tiny_config(sample_data, backbone=str(folder), arch=None)
    assert config.arch == "resnet34"
    with pytest.raises(BackboneLoadError) as info:
        build_detector(config, 3)
    message = str(info.value)
    assert str(folder) in message and "arch='resnet34'" in message and "look like resnet18" in message
