"""Tests for trainers.detection: config validation, norm swap, box heads, lr groups, backbone
loading, COCO evaluation against hand-computed APs, and a tiny end-to-end run on the sample data."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from trainers.checkpoints import export_backbone, load_checkpoint, sha256_file
from trainers.common import NonFiniteLossError, config_from_dict, config_to_dict
from trainers.data import CocoDetection, detection_collate
from trainers.detection import (
    DETECTOR_CONFIG, DETECTOR_FORMAT, DETECTOR_WEIGHTS, FIGURE_FILE, METRIC_NAMES, PER_CLASS_FILE, SUMMARY_FILE,
    BackboneLoadError, C4Backbone, DetectionConfig, EpochFlips, Res5FPNHead, Res5ROIHead, assemble_detector,
    build_box_head, build_detector, coco_eval, convert_norm, detect, draw_detections, evaluate, export_detector,
    flip_decisions, load_detector, lr_factor, param_groups, read_detector_config, scratch_warnings, train,
    train_loader, train_one_epoch,
)
from trainers.reporting import InMemoryReporter
from trainers.resnet import build_trunk
from tests.trainers.cuda import cuda_only

# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------

# Small enough for a 2-core CPU: 128 px images, few proposals and RoIs.
TINY = dict(
    min_size=128, max_size=128, batch_size=2, workers=0, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, warmup_iters=1,
)


def data_paths(sample: Any) -> dict[str, str]:
    return {
        "train_images": str(sample.train_images), "train_annotations": str(sample.train_annotations),
        "val_images": str(sample.val_images), "val_annotations": str(sample.val_annotations),
    }


def tiny_config(sample: Any, **overrides: Any) -> DetectionConfig:
    # frozen_bn (the default norm) for a pretrained backbone; a scratch trunk cannot take it.
    norm = "bn" if overrides.get("backbone", "scratch") == "scratch" else "frozen_bn"
    values = {"arch": "resnet18", "norm": norm, "head": "mlp", "lr_scheme": "357", **TINY, **data_paths(sample)}
    values.update(overrides)
    return DetectionConfig(**values)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exported resnet18 backbones (BN and GN, random weights and statistics) and a mislabelled one."""
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(1)
    bn = build_trunk("resnet18", "bn")
    with torch.no_grad():  # non-trivial statistics, so "preserved" means something
        for m in bn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    gn = build_trunk("resnet18", "gn")
    return {
        "bn": export_backbone(root / "r18_bn", bn.state_dict(), {"arch": "resnet18", "norm": "bn"}),
        "gn": export_backbone(root / "r18_gn", gn.state_dict(), {"arch": "resnet18", "norm": "gn"}),
        # resnet18 weights whose backbone.json claims resnet34: loading must fail clearly.
        "mislabelled": export_backbone(root / "claims_r34", bn.state_dict(), {"arch": "resnet34", "norm": "bn"}),
    }


def make_ground_truth(images: list[tuple[int, int, int]], annotations: list[dict[str, Any]],
                      categories: list[tuple[int, str]]) -> SimpleNamespace:
    """A minimal stand-in for CocoDetection: ``coco``, ``label_to_cat_id``, ``class_names``, ``image_ids``."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in images],
        "annotations": [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(annotations)],
        "categories": [{"id": c, "name": name} for c, name in categories],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    cat_ids = sorted(c for c, _ in categories)
    names = dict(categories)
    return SimpleNamespace(coco=coco, label_to_cat_id={i + 1: c for i, c in enumerate(cat_ids)},
                           class_names=[names[c] for c in cat_ids], image_ids=sorted(i for i, _, _ in images))


def box(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y + h]


def prediction(image_id: int, boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, Any]:
    return {"image_id": image_id, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.int64)}


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def test_config_resolves_arch_and_multipliers(sample_data: Any, backbones: dict[str, Path]) -> None:
    scratch = DetectionConfig(norm="bn", **data_paths(sample_data))
    assert scratch.arch == "resnet50" and scratch.lr_scheme == "357"
    assert scratch.lr_multipliers == {"detector": 1e-3, "late_backbone": 1e-5, "early_backbone": 1e-7}
    # The default base_lr makes the 357 detector rate a working SGD rate.
    assert scratch.group_lr("detector") == pytest.approx(0.02)

    pretrained = DetectionConfig(backbone=str(backbones["bn"]), **data_paths(sample_data))
    assert pretrained.arch == "resnet18"
    uniform = DetectionConfig(lr_scheme="uniform", norm="bn", lr_multipliers={"detector": 5e-4}, **data_paths(sample_data))
    assert uniform.lr_multipliers == {"detector": 5e-4}
    # YAML reads `lr_scheme: 357` as an integer.
    assert DetectionConfig(lr_scheme=357, norm="bn", **data_paths(sample_data)).lr_scheme == "357"
    # The resolved config round-trips through its dict form unchanged.
    assert config_from_dict(DetectionConfig, config_to_dict(pretrained)) == pretrained


@pytest.mark.parametrize("overrides, message", [
    ({"norm": "frozen"}, "norm='frozen' is invalid"),
    ({"head": "res4"}, "head='res4'"),
    ({"lr_scheme": "358"}, "lr_scheme='358'"),
    ({"lr_multipliers": {"detectr": 1e-3}}, "did you mean 'detector'"),
    ({"lr_scheme": "uniform", "lr_multipliers": {"late_backbone": 1e-3}}, "lr_multipliers.late_backbone"),
    ({"base_lr": 0.0}, "base_lr=0.0"),
    ({"epochs": 0}, "epochs=0"),
    ({"max_size": 64, "min_size": 128}, "max_size=64"),
    ({"lr_steps": [0.9, 0.5]}, "lr_steps"),
    ({"backbone": "/no/such/backbone"}, "backbone='/no/such/backbone'"),
    ({"train_images": "/no/such/images"}, "train_images='/no/such/images'"),
    ({"val_annotations": "/no/such/val.json"}, "val_annotations='/no/such/val.json'"),
    ({"train_annotations": ""}, "train_annotations='' is invalid: required"),
    ({"norm": "frozen_bn"}, "norm='frozen_bn' is invalid with backbone='scratch'"),
    ({"head": "res6"}, "head='res6'"),
])
def test_config_rejects_bad_values(sample_data: Any, overrides: dict[str, Any], message: str) -> None:
    values = {"norm": "bn", **data_paths(sample_data), **overrides}  # the default norm, frozen_bn, needs a backbone
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DetectionConfig(**values)


def test_config_norm_must_match_backbone(sample_data: Any, backbones: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"norm='gn' needs a GroupNorm-pretrained backbone.*norm='bn'"):
        DetectionConfig(backbone=str(backbones["bn"]), norm="gn", **data_paths(sample_data))
    for norm in ("bn", "frozen_bn", "frozen_affine"):
        with pytest.raises(ValueError, match=rf"norm='{norm}' needs a BatchNorm-pretrained backbone.*norm='gn'"):
            DetectionConfig(backbone=str(backbones["gn"]), norm=norm, **data_paths(sample_data))
    with pytest.raises(ValueError, match=r"arch='resnet50' conflicts with backbone=.*resnet18"):
        DetectionConfig(backbone=str(backbones["bn"]), arch="resnet50", **data_paths(sample_data))


def test_scratch_trunk_refuses_frozen_bn_and_warns_about_untrained_choices(sample_data: Any,
                                                                          backbones: dict[str, Path]) -> None:
    # FrozenBatchNorm2d on a random trunk is the identity: refused, naming field, value and the fix.
    with pytest.raises(ValueError) as info:
        DetectionConfig(**data_paths(sample_data))  # scratch with the default norm
    message = str(info.value)
    assert "norm='frozen_bn'" in message and "backbone='scratch'" in message
    assert "norm: bn (or gn) with lr_scheme: uniform" in message
    # The same norm on a pretrained backbone is unchanged (the default there).
    assert DetectionConfig(backbone=str(backbones["bn"]), **data_paths(sample_data)).norm == "frozen_bn"
    for norm in ("bn", "frozen_affine", "gn"):
        DetectionConfig(norm=norm, **data_paths(sample_data))
    # The ordinary scratch recipe warns about nothing; each near-untrained choice is named.
    assert scratch_warnings("bn", "uniform") == [] and scratch_warnings("gn", "uniform") == []
    assert [len(scratch_warnings(n, s)) for n, s in [("frozen_affine", "uniform"), ("bn", "frozen"), ("bn", 357),
                                                       ("frozen_affine", "357")]] == [1, 1, 1, 2]
    assert "frozen_affine" in scratch_warnings("frozen_affine", "uniform")[0]
    assert "lr_scheme: frozen" in scratch_warnings("gn", "frozen")[0]
    assert all("lr_scheme: uniform" in w for w in scratch_warnings("frozen_affine", "357"))


def test_config_rejects_folder_without_backbone(sample_data: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"backbone=.*not an exported backbone"):
        DetectionConfig(backbone=str(tmp_path), **data_paths(sample_data))


# ---------------------------------------------------------------------------
# Norm swap
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Box heads
# ---------------------------------------------------------------------------


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


@pytest.mark.parametrize("head", ["res5", "res5_fpn"])
def test_res5_heads_train_export_and_reload(sample_data: Any, backbones: dict[str, Path], tmp_path: Path,
                                            head: str) -> None:
    config = tiny_config(sample_data, backbone=str(backbones["bn"]), arch=None, head=head, min_size=64, max_size=64,
                         rpn_pre_nms_top_n_train=30, rpn_post_nms_top_n_train=15, rpn_pre_nms_top_n_test=30,
                         rpn_post_nms_top_n_test=15, box_batch_size_per_image=16)
    torch.manual_seed(0)
    model = build_detector(config, 3)
    optimizer = torch.optim.SGD(param_groups(model, config), lr=0.01, momentum=0.9)
    head_before = model.roi_heads.box_head.norm.weight.clone()
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 80)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}]
    losses = model(images, targets)
    loss = sum(losses.values())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    optimizer.step()
    assert not torch.equal(model.roi_heads.box_head.norm.weight, head_before)  # the head trained

    export_detector(tmp_path / "det", model, config, ["disc", "square", "triangle"], {1: 1, 2: 3, 3: 7})
    record = read_detector_config(tmp_path / "det")
    assert record["format"] == DETECTOR_FORMAT and record["head"] == record["model"]["head"] == head
    if head == "res5_fpn":  # written as a v1 export, whose "res5" was this FPN head: it loads as res5_fpn
        meta = json.loads((tmp_path / "det" / DETECTOR_CONFIG).read_text())
        meta.update(format="ablate-faster-rcnn-fpn/v1", head="res5")
        meta["model"]["head"] = meta["config"]["head"] = "res5"
        (tmp_path / "det" / DETECTOR_CONFIG).write_text(json.dumps(meta))
        assert read_detector_config(tmp_path / "det")["model"]["head"] == "res5_fpn"
    loaded = load_detector(tmp_path / "det")
    assert isinstance(loaded.roi_heads.box_head, Res5ROIHead if head == "res5" else Res5FPNHead)
    model.eval()
    for m in (model, loaded):
        m.roi_heads.score_thresh = 0.0
    val = CocoDetection(sample_data.val_images, sample_data.val_annotations)
    image = val[0][0].float() / 255
    with torch.no_grad():
        got, want = loaded([image])[0], model([image])[0]
    assert len(want["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[key], want[key])
    if head == "res5":  # evaluate() runs on the reloaded C4 detector
        assert set(evaluate(loaded, val, batch_size=4)) == set(METRIC_NAMES)


def test_mlp_ln_normalises_fc7_input() -> None:
    _, head, _ = build_box_head("mlp_ln", "resnet18", 3)
    seen: list[torch.Tensor] = []
    head.fc7.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    head(torch.randn(4, 256, 7, 7) * 5)
    fc7_in = seen[0]
    torch.testing.assert_close(fc7_in.mean(dim=1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(fc7_in.std(dim=1, unbiased=False), torch.ones(4), atol=1e-2, rtol=0)


# ---------------------------------------------------------------------------
# Learning-rate groups and schedule
# ---------------------------------------------------------------------------


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


def test_lr_factor_warmup_step_and_cosine(sample_data: Any) -> None:
    step = tiny_config(sample_data, warmup_iters=10, lr_steps=(0.5, 0.75), lr_gamma=0.1)
    assert lr_factor(0, 100, step) == pytest.approx(1e-3)
    assert lr_factor(5, 100, step) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert lr_factor(10, 100, step) == 1.0 and lr_factor(49, 100, step) == 1.0
    assert lr_factor(50, 100, step) == pytest.approx(0.1) and lr_factor(75, 100, step) == pytest.approx(0.01)
    cosine = dataclasses.replace(step, lr_schedule="cosine")
    assert lr_factor(10, 100, cosine) == pytest.approx(1.0)
    assert lr_factor(55, 100, cosine) == pytest.approx(0.5)
    assert lr_factor(100, 100, cosine) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------
# Backbone loading
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# COCO evaluation
# ---------------------------------------------------------------------------


def test_predictions_equal_to_ground_truth_score_one(sample_data: Any) -> None:
    val = CocoDetection(sample_data.val_images, sample_data.val_annotations)
    predictions = []
    for image_id in val.image_ids:
        anns = val.coco.imgToAnns[image_id]
        predictions.append(prediction(image_id, [box(*a["bbox"]) for a in anns], [0.9] * len(anns),
                                      [val.cat_id_to_label[a["category_id"]] for a in anns]))
    result = coco_eval(predictions, val)
    for name in METRIC_NAMES:  # the sample's val split has every class in every area range
        assert result.metrics[name] == pytest.approx(1.0), name
    assert all(r["ap50"] == pytest.approx(1.0) for r in result.per_class)
    assert {r["category_id"] for r in result.per_class} == {1, 3, 7}  # non-contiguous ids mapped back
    assert "Average Precision" in result.summary


def test_hand_computed_average_precision() -> None:
    # One image, one class, three medium (50x50) ground-truth boxes A, B, C. Detections by score:
    #   d1 0.9 = A (TP), d2 0.8 far from everything (FP), d3 0.7 = B (TP); C is never found (FN).
    # Precision/recall after each: (1, 1/3), (1/2, 1/3), (2/3, 2/3). COCO's interpolated
    # precision (max precision at recall >= r) is 1 for r <= 1/3 and 2/3 for 1/3 < r <= 2/3, 0
    # beyond. Of the 101 recall points 0.00..1.00, 34 (0.00..0.33) get 1 and 33 (0.34..0.66) get
    # 2/3, so AP = (34 + 33 * 2/3) / 101 = 56/101 at every IoU threshold (the TPs are exact).
    gt = make_ground_truth(
        [(1, 300, 300)],
        [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 50, 50], "area": 2500.0},
         {"image_id": 1, "category_id": 5, "bbox": [100, 0, 50, 50], "area": 2500.0},
         {"image_id": 1, "category_id": 5, "bbox": [200, 0, 50, 50], "area": 2500.0}],
        [(5, "thing")],
    )
    preds = [prediction(1, [box(0, 0, 50, 50), box(0, 200, 50, 50), box(100, 0, 50, 50)], [0.9, 0.8, 0.7], [1, 1, 1])]
    metrics = coco_eval(preds, gt).metrics
    for name in ("det/AP", "det/AP50", "det/AP75", "det/AP_medium"):
        assert metrics[name] == pytest.approx(56 / 101), name
    # No small or large ground truth: NaN, not COCOeval's -1.
    assert math.isnan(metrics["det/AP_small"]) and math.isnan(metrics["det/AP_large"])


def test_area_ranges_use_the_original_area_field() -> None:
    # The box is 50x50 (medium by its size) but the annotation's area says 100 (small): COCO
    # ranges go by the recorded area, as for a segmentation smaller than its box.
    gt = make_ground_truth([(1, 200, 200)], [{"image_id": 1, "category_id": 2, "bbox": [10, 10, 50, 50], "area": 100.0}],
                           [(2, "blob")])
    metrics = coco_eval([prediction(1, [box(10, 10, 50, 50)], [0.99], [1])], gt).metrics
    assert metrics["det/AP_small"] == pytest.approx(1.0)
    assert math.isnan(metrics["det/AP_medium"]) and math.isnan(metrics["det/AP_large"])


def test_no_predictions_give_zero_and_per_class_json(tmp_path: Path) -> None:
    gt = make_ground_truth(
        [(1, 200, 200), (2, 200, 200)],
        [{"image_id": 1, "category_id": 4, "bbox": [10, 10, 50, 50], "area": 2500.0}],
        [(4, "a"), (9, "b")],
    )
    result = coco_eval([prediction(1, [], [], []), prediction(2, [], [], [])], gt)
    assert result.metrics["det/AP"] == 0.0 and result.metrics["det/AP50"] == 0.0 and result.metrics["det/AP_medium"] == 0.0
    assert math.isnan(result.metrics["det/AP_small"])
    assert result.per_class[0]["ap50"] == 0.0 and math.isnan(result.per_class[1]["ap50"])  # "b" has no ground truth
    from trainers.detection import write_per_class

    payload = json.loads(write_per_class(tmp_path / "pc.json", result).read_text())
    assert payload["per_class_ap50"][1] == {"label": 2, "category_id": 9, "name": "b", "ap50": None}
    with pytest.raises(ValueError, match="image ids"):
        coco_eval([prediction(3, [box(0, 0, 5, 5)], [0.5], [1])], gt)
    with pytest.raises(ValueError, match="label 7"):
        coco_eval([prediction(1, [box(0, 0, 5, 5)], [0.5], [7])], gt)


def test_draw_detections_writes_png(tmp_path: Path) -> None:
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    path = draw_detections(
        [image, image], [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1]), "image_id": 1},
                         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 2}],
        [prediction(1, [box(6, 6, 20, 20), box(40, 10, 10, 10)], [0.9, 0.1], [1, 2]), prediction(2, [], [], [])],
        ["cat", "dog"], tmp_path / "fig.png", score_threshold=0.5, title="test",
    )
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1]


def test_non_finite_loss_names_epoch_and_step(sample_data: Any) -> None:
    class NaNDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, images: list, targets: list) -> dict[str, torch.Tensor]:
            return {"loss": self.w.sum() * float("nan")}

    config = tiny_config(sample_data)
    model = NaNDetector()
    optimizer = torch.optim.SGD([{"name": "detector", "params": [model.w], "lr": 0.1, "peak_lr": 0.1}], lr=0.1)
    data = CocoDetection(sample_data.train_images, sample_data.train_annotations)
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=detection_collate)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(NonFiniteLossError, match="epoch 3, step 1"):
        train_one_epoch(model, optimizer, scaler, loader, torch.device("cpu"), 3, 0, 10, config)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Augmentation randomness
# ---------------------------------------------------------------------------


class IndexImages(torch.utils.data.Dataset):
    """Un-augmented items whose image says its index and is left-right asymmetric (so a flip is visible)."""

    train = False

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image = torch.zeros(3, 2, 4, dtype=torch.uint8)
        image[0, 0, 0] = index + 1  # top-left pixel holds the index; after a flip it is top-right
        return image, {"boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]]), "labels": torch.tensor([1]), "image_id": index}


def _seen_flips(workers: int, epoch: int) -> dict[int, bool]:
    config = SimpleNamespace(seed=3, batch_size=2, workers=workers)
    seen = {}
    for images, targets in train_loader(IndexImages(), config, epoch):  # type: ignore[arg-type]
        for image, target in zip(images, targets):
            flipped = bool(image[0, 0, -1] > 0)
            assert int(image[0, 0, -1 if flipped else 0]) == target["image_id"] + 1
            assert target["boxes"].tolist() == ([[3.0, 0.0, 4.0, 2.0]] if flipped else [[0.0, 0.0, 1.0, 2.0]])
            seen[target["image_id"]] = flipped
    return seen


def test_flips_depend_on_seed_epoch_and_index_not_on_workers() -> None:
    flips = flip_decisions(3, 1, 12)
    assert flips.dtype == torch.bool and torch.equal(flips, flip_decisions(3, 1, 12))
    assert torch.equal(flip_decisions(3, 1, 6), flips[:6])  # per index: the length does not reshuffle them
    assert not torch.equal(flip_decisions(3, 2, 64), flip_decisions(3, 1, 64))  # a new draw each epoch
    assert not torch.equal(flip_decisions(4, 1, 64), flip_decisions(3, 1, 64))
    assert 0.3 < flip_decisions(0, 1, 1000).float().mean() < 0.7
    # Through the DataLoader: every image of the epoch, the same flips in-process and in 2 workers.
    in_process = _seen_flips(0, epoch=1)
    assert sorted(in_process) == list(range(12))
    assert in_process == {i: bool(f) for i, f in enumerate(flips)}
    torch.manual_seed(123)  # the global RNG plays no part either
    assert _seen_flips(2, epoch=1) == in_process
    # A data set that flips by itself (CocoDetection(train=True)) is refused rather than flipped twice.
    flipping = IndexImages()
    flipping.train = True  # type: ignore[misc]
    with pytest.raises(ValueError, match="train=False"):
        train_loader(flipping, SimpleNamespace(seed=0, batch_size=1, workers=0), 1)  # type: ignore[arg-type]
    assert len(EpochFlips(IndexImages(), 0, 1)) == 12


# ---------------------------------------------------------------------------
# End to end on the sample data
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_train_evaluate_export_and_reload(sample_data: Any, backbones: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    backbone = tmp_path / "backbone"
    shutil.copytree(backbones["bn"], backbone)
    config = tiny_config(sample_data, backbone=str(backbone), arch=None, epochs=1, max_iters_per_epoch=2, figure_images=2)
    reporter = InMemoryReporter(root=tmp_path / "run")
    final = train(config, reporter, progress=True)

    assert len(reporter.reports) == 1
    report = reporter.reports[0]
    assert report.step == 1
    for name in METRIC_NAMES:
        value = report.metrics[name]
        assert math.isnan(value) or 0.0 <= value <= 1.0, (name, value)
    assert math.isfinite(report.metrics["det/loss"]) and report.metrics["det/images_per_s"] > 0
    assert report.metrics["lr"] > 0
    assert final == {**report.metrics}
    artifacts = {p.name: p for p in report.artifacts}
    assert set(artifacts) == {PER_CLASS_FILE, FIGURE_FILE, SUMMARY_FILE}
    per_class = json.loads(artifacts[PER_CLASS_FILE].read_text())["per_class_ap50"]
    assert [r["name"] for r in per_class] == ["disc", "square", "triangle"]
    with Image.open(artifacts[FIGURE_FILE]) as png:
        assert png.format == "PNG"

    checkpoint = reporter.last_checkpoint
    assert checkpoint is not None
    state = load_checkpoint(checkpoint)
    assert state["epoch"] == 1 and state["iteration"] == 2 and state["config"] == config_to_dict(config)
    assert isinstance(state["git_sha"], str) and state["git_sha"]
    record = read_detector_config(checkpoint)
    assert record["num_classes"] == 3 and record["class_names"] == ["disc", "square", "triangle"]
    assert record["label_to_cat_id"] == {1: 1, 2: 3, 3: 7}
    assert (record["arch"], record["norm"], record["head"]) == ("resnet18", "frozen_bn", "mlp")
    assert record["sha256"] == sha256_file(checkpoint / DETECTOR_WEIGHTS)
    assert record["metrics"]["det/loss"] == pytest.approx(report.metrics["det/loss"])
    assert (checkpoint / DETECTOR_CONFIG).is_file()

    # The export needs neither the backbone folder nor anything else from the training config.
    shutil.rmtree(backbone)
    loaded = load_detector(checkpoint)
    assert not loaded.training
    reference = assemble_detector(3, **config.model_options())  # rebuilt without the backbone folder
    reference.load_state_dict(state["model"])
    reference.eval()
    for model in (loaded, reference):
        model.roi_heads.score_thresh = 0.0  # keep every box, so the comparison is not of two empty sets
    val = CocoDetection(sample_data.val_images, sample_data.val_annotations)
    image = val[0][0].float() / 255
    with torch.no_grad():
        got, want = loaded([image])[0], reference([image])[0]
    assert len(want["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[key], want[key])
    # evaluate() on the reloaded model runs and writes its files.
    metrics = evaluate(loaded, val, out_dir=tmp_path / "eval", figure_images=1)
    assert set(metrics) == set(METRIC_NAMES)
    assert (tmp_path / "eval" / PER_CLASS_FILE).is_file() and (tmp_path / "eval" / FIGURE_FILE).is_file()

    # detect(): the same boxes as plain records, best first, named by the detector's class table.
    records = detect(loaded, val[0][0], record["class_names"], record["label_to_cat_id"])
    torch.testing.assert_close(torch.tensor([r["score"] for r in records]), want["scores"])
    torch.testing.assert_close(torch.tensor([[r["x_min"], r["y_min"], r["x_max"], r["y_max"]] for r in records]),
                               want["boxes"])
    for r in records:
        assert r["category_id"] == record["label_to_cat_id"][r["label"]]
        assert r["category_name"] == record["class_names"][r["label"] - 1]
    top = records[0]["score"]
    assert all(r["score"] >= top for r in detect(loaded, val[0][0], record["class_names"], record["label_to_cat_id"],
                                                  score_threshold=top))

    # `ablate detect` on the export: boxes printed, the figure drawn; bad input is exit code 2 naming it.
    from experiments.cli import main

    image_path = sorted(Path(sample_data.val_images).glob("*.jpg"))[0]
    assert main(["detect", str(checkpoint), str(image_path), "--threshold", "0", "--out", str(tmp_path / "d.png")]) == 0
    with Image.open(tmp_path / "d.png") as png:
        assert png.format == "PNG"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    for args, needle in [([str(checkpoint), str(broken)], str(broken)),
                         ([str(tmp_path), str(image_path)], str(tmp_path)),
                         ([str(checkpoint), str(image_path), "--threshold", "2"], "--threshold")]:
        capsys.readouterr()
        assert main(["detect", *args]) == 2
        assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(sample_data: Any, tmp_path: Path) -> None:
    config = tiny_config(sample_data, norm="frozen_affine", epochs=2, max_iters_per_epoch=1, eval_every=2,
                         figure_images=0, warmup_iters=1)
    straight = InMemoryReporter(root=tmp_path / "straight")
    train(config, straight)
    first = InMemoryReporter(root=tmp_path / "first", stop_after=1)
    train(config, first)
    assert len(first.reports) == 1  # should_stop honoured
    resumed = InMemoryReporter(root=tmp_path / "resumed", resume_from=first.last_checkpoint)
    final = train(config, resumed)
    assert [r.step for r in resumed.reports] == [2]
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert a["iteration"] == b["iteration"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert resumed.reports[0].metrics["det/loss"] == straight.reports[1].metrics["det/loss"]
    assert final["det/AP50"] == straight.reports[1].metrics["det/AP50"] or math.isnan(final["det/AP50"])


@cuda_only
def test_detector_trains_with_fp16_and_evaluates_on_cuda(sample_data, tmp_path: Path) -> None:
    config = tiny_config(sample_data, epochs=1, max_iters_per_epoch=2, amp=True, figure_images=0)
    reporter = InMemoryReporter(root=tmp_path / "cuda")
    metrics = train(config, reporter)
    assert math.isfinite(metrics["det/loss"]) and 0.0 <= metrics["det/AP50"] <= 1.0
    state = load_checkpoint(reporter.last_checkpoint)
    assert state["scaler"]  # float16 on CUDA trains with the loss scaler
