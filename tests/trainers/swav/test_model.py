"""trainers/swav/model.py: the SwAV network's outputs and heads, and loading an exported trunk."""

from __future__ import annotations

import pytest
import torch

from trainers.checkpoints import CheckpointError
from trainers.swav.model import SwAVModel, load_backbone


def test_model_embeds_every_crop_with_normalised_outputs() -> None:
    model = SwAVModel("resnet18", "gn", prototypes=7, feat_dim=16, hidden_dim=32)
    crops = [torch.randn(3, 3, 32, 32)] * 2 + [torch.randn(3, 3, 16, 16)] * 2
    embeddings, scores = model(crops)
    assert embeddings.shape == (12, 16) and scores.shape == (12, 7)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(12))
    assert isinstance(model.trunk.bn1, torch.nn.GroupNorm)
    assert isinstance(model.projection_head[1], torch.nn.BatchNorm1d)


def test_linear_projection_head_when_hidden_dim_is_zero() -> None:
    model = SwAVModel("resnet18", "bn", prototypes=5, feat_dim=8, hidden_dim=0)
    assert isinstance(model.projection_head, torch.nn.Linear)
    embeddings, scores = model([torch.randn(2, 3, 32, 32)] * 2)
    assert embeddings.shape == (4, 8) and scores.shape == (4, 5)


def test_load_backbone_refuses_a_folder_without_an_export(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not an exported backbone"):
        load_backbone(tmp_path)
