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
        embeddings = F.normalize(self.projection_head(trunk_features(self.trunk, crops)), dim=1, p=2)
        return embeddings, self.prototypes(embeddings)


def trunk_features(trunk: nn.Module, crops: Sequence[Tensor] | Tensor) -> Tensor:
    """Pooled trunk features of every crop, crop-major; consecutive crops of one resolution go through the trunk in
    one pass (as the reference: ``torch.unique_consecutive`` on the crop sizes)."""
    if isinstance(crops, Tensor):
        crops = [crops]
    features, start = [], 0
    sizes = torch.tensor([c.shape[-1] for c in crops])
    for count in torch.unique_consecutive(sizes, return_counts=True)[1].tolist():
        features.append(trunk(torch.cat(list(crops[start : start + count]))))
        start += count
    return torch.cat(features)


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


__all__ = ["SwAVModel", "load_backbone", "normalize_prototypes", "trunk_features"]


TRUNK_PREFIX = "trunk."  # the trunk's keys in a SwAVModel state dict (and so in a SwAV checkpoint's "model")


def export_trunk(directory: str | Path, trunk_state: dict[str, Tensor], config: dict, git_sha: str,
                 metrics: dict[str, float], epochs_trained: int, method: str = "swav") -> Path:
    """Export a SwAV trunk with what it was trained by: the resolved config, the git sha, the last metrics.

    ``epochs_trained`` below ``config["epochs"]`` marks a run stopped early (a wall budget, ``ablate stop``): the
    export says so in ``epochs_trained`` and ``stopped_early``, and fine-tuning on it is a different study.
    """
    from trainers.checkpoints import export_backbone

    return export_backbone(directory, trunk_state, {
        **config, "arch": config["arch"], "norm": config["norm"], "git_sha": git_sha, "metrics": metrics,
        "trainer": method, "epochs_trained": int(epochs_trained),
        "stopped_early": int(epochs_trained) < int(config["epochs"]),
    })


def export_from_checkpoint(checkpoint_dir: str | Path, out: str | Path | None = None) -> Path:
    """Export the trunk of a SwAV checkpoint (any epoch: a run a wall budget stopped has no export of its own).

    Args:
        checkpoint_dir: a folder ``trainers.swav.train`` reported as a checkpoint.
        out: where to write ``backbone.safetensors`` + ``.json`` (default: into ``checkpoint_dir``).
    """
    from trainers.checkpoints import CheckpointError, load_checkpoint

    state = load_checkpoint(checkpoint_dir)
    trunk = {k[len(TRUNK_PREFIX):]: v for k, v in state.get("model", {}).items() if k.startswith(TRUNK_PREFIX)}
    if not trunk or "config" not in state:
        raise CheckpointError(f"{checkpoint_dir}: not a SwAV checkpoint (no trunk weights or config in it)")
    return export_trunk(out or checkpoint_dir, trunk, state["config"], str(state.get("git_sha", "")),
                        dict(state.get("metrics", {})), int(state["epoch"]), state["config"].get("method", "swav"))
