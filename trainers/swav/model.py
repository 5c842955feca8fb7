"""SwAV network: ResNet trunk, projection head, prototypes; and loading an exported trunk.

As the reference ``src/resnet50.py``: the projection head is Linear-BatchNorm1d-ReLU-Linear
(BatchNorm1d also when the trunk uses GroupNorm: the head is dropped after pretraining, and
the export holds only the trunk), its output is L2-normalised, and the prototypes are a
bias-free linear layer whose rows are re-normalised before every step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.checkpoints import load_backbone_weights
from trainers.resnet import TRUNK_CHANNELS, build_trunk


class SwAVModel(nn.Module):
    """Trunk + projection head + prototypes.

    Args:
        arch: resnet18 | resnet34 | resnet50.
        norm: bn | gn (the trunk's normalisation).
        prototypes: number of prototypes K.
        feat_dim: embedding dimension.
        hidden_dim: projection MLP width; 0 means a single linear projection.
    """

    def __init__(self, arch: str, norm: str, prototypes: int, feat_dim: int = 128, hidden_dim: int = 2048) -> None:
        super().__init__()
        self.trunk = build_trunk(arch, norm)
        width = TRUNK_CHANNELS[arch]
        if hidden_dim > 0:
            self.projection_head: nn.Module = nn.Sequential(
                nn.Linear(width, hidden_dim),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, feat_dim),
            )
        else:
            self.projection_head = nn.Linear(width, feat_dim)
        self.prototypes = nn.Linear(feat_dim, prototypes, bias=False)

    def forward(self, crops: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
        """Embed every crop and score it against the prototypes.

        Crops of the same resolution that are consecutive go through the trunk in one pass
        (as the reference: ``torch.unique_consecutive`` on the crop sizes).

        Args:
            crops: one ``B x 3 x s x s`` tensor per view (or a single tensor).

        Returns:
            ``(embeddings, scores)``: ``(n_crops * B, feat_dim)`` L2-normalised embeddings and
            their ``(n_crops * B, K)`` prototype scores, crop-major (view ``v`` is rows
            ``v * B`` to ``(v + 1) * B``).
        """
        if isinstance(crops, Tensor):
            crops = [crops]
        sizes = torch.tensor([c.shape[-1] for c in crops])
        counts = torch.unique_consecutive(sizes, return_counts=True)[1].tolist()
        features = []
        start = 0
        for count in counts:
            features.append(self.trunk(torch.cat(list(crops[start : start + count]))))
            start += count
        embeddings = F.normalize(self.projection_head(torch.cat(features)), dim=1, p=2)
        return embeddings, self.prototypes(embeddings)


@torch.no_grad()
def normalize_prototypes(model: SwAVModel) -> None:
    """L2-normalise each prototype in place (done before every forward, as the reference)."""
    weight = model.prototypes.weight
    weight.copy_(F.normalize(weight.data, dim=1, p=2))


def load_backbone(path: str | Path) -> nn.Module:
    """The ready ResNet trunk (``fc = Identity``) of an exported backbone folder.

    Reads ``backbone.safetensors`` + ``backbone.json`` (checks the recorded sha256); never
    unpickles. The trunk is a plain torchvision ResNet with the exported norm layers.

    Args:
        path: a folder written by ``export_backbone`` (the final checkpoint of a SwAV run).
    """
    weights, config = load_backbone_weights(path)
    trunk = build_trunk(str(config["arch"]), str(config["norm"]))
    trunk.load_state_dict(weights, strict=True)
    return trunk


__all__ = ["SwAVModel", "load_backbone", "normalize_prototypes"]
