"""The kNN monitor: how well a trunk's pooled features separate the study's labeled objects.

A SwAV loss that falls does not say the features are useful for detection. The monitor that
self-supervised libraries give their users (solo-learn's ``WeightedKNNClassifier``, lightly's
``knn_predict``, DINO's ``eval_knn.py``) answers that cheaply, during pretraining: embed labeled
images with the frozen trunk and classify each query by a weighted vote of its nearest
neighbours in a bank of labeled embeddings. Here the labeled images are the *objects* of the
study's own detection set:

- the bank: crops of the training boxes; the queries: crops of the validation boxes; the label:
  each box's COCO category (crowd boxes are left out);
- each crop is the box resized to ``crop_size`` x ``crop_size`` px (``roi_align``, bilinear,
  adaptive sampling: no aliasing when shrinking) and normalised with the ImageNet statistics
  that SwAV's augmentation uses;
- features: the trunk's global-average-pooled output, L2-normalised, the trunk in eval mode, with
  BatchNorm statistics re-estimated on the bank's crops (a copy of the trunk; training is
  untouched). The references' kNN evaluations (DINO, solo-learn) use the running statistics,
  which there come from crops like the evaluated images. Here they would not: a trained trunk's
  running statistics last saw the smallest multi-crop views (16-48 px), a random trunk's are the
  identity of its initialisation, and the two figures would differ by their statistics rather
  than by their weights (measured on the fidelity study's trunks: the same random trunk scores
  0.39 with its initial statistics and 0.22 with statistics of 32 px crops). Re-estimating them on
  the kNN crops for both ("precise BN", Wu & Johnson 2021) compares weights with weights, at the
  cost of one more forward pass over the bank (in place; the trunk's own statistics are put back);
- the vote: the ``k`` most cosine-similar bank entries, each weighted by ``exp(sim / T)``; the
  class with the largest summed weight wins (Wu et al. 2018, "Unsupervised Feature Learning via
  Non-Parametric Instance Discrimination", with their k = 20 neighbours and DINO's T = 0.07).

The figure is the top-1 accuracy over the queries. It is read against the same figure for a
randomly initialised trunk of the same architecture (``swav/knn_top1_random``): a random
convolutional trunk already separates colour and shape somewhat, so chance level (1 / number of
categories) is the wrong reference.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from trainers.swav.augment import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

KNN_K = 20  # neighbours: Wu et al. 2018, solo-learn and DINO's default
KNN_TEMPERATURE = 0.07  # vote weight exp(sim / T): DINO eval_knn.py, solo-learn's default
EMBED_BATCH = 256  # crops per forward pass


@dataclass(frozen=True)
class ObjectCrops:
    """Crops of labeled boxes: ``images`` (N, 3, S, S) uint8 and ``labels`` (N,) int64 category indices."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())


def object_crops(
    images_dir: str | Path,
    annotation_file: str | Path,
    size: int,
    max_objects: int,
    seed: int,
    category_index: dict[int, int] | None = None,
) -> tuple[ObjectCrops, dict[int, int]]:
    """Crop every (or, above ``max_objects``, a seeded random subset of the) non-crowd boxes of a COCO set.

    Args:
        images_dir: the folder that the annotation's ``file_name`` entries are relative to.
        annotation_file: the COCO instances JSON (validated like the detection trainer's input).
        size: the side of the square crops, in px.
        max_objects: keep at most this many boxes (drawn with ``seed``, independent of global RNG).
        seed: the subset's seed.
        category_index: COCO category id -> label index; extended with this set's categories
            (pass the bank's mapping when loading the queries so both share one labelling).

    Returns:
        The crops and the (extended) category mapping.
    """
    from torchvision.ops import roi_align

    from trainers.data import CocoDetection

    dataset = CocoDetection(images_dir, annotation_file)
    index = dict(category_index or {})
    for cat in sorted(dataset.coco.cats):
        index.setdefault(int(cat), len(index))
    # (dataset position, annotation) for every box the detector trains on.
    position = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    boxes = [(position[a["image_id"]], a) for a in sorted(dataset.coco.anns.values(), key=lambda a: a["id"])
             if not a.get("iscrowd", 0) and a["image_id"] in position]
    if len(boxes) > max_objects:
        generator = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(len(boxes), generator=generator)[:max_objects].sort().values.tolist()
        boxes = [boxes[i] for i in keep]
    crops = torch.empty((len(boxes), 3, size, size), dtype=torch.uint8)
    labels = torch.empty(len(boxes), dtype=torch.int64)
    by_image: dict[int, list[int]] = {}
    for row, (pos, _) in enumerate(boxes):
        by_image.setdefault(pos, []).append(row)
    for pos, rows in by_image.items():
        image, _ = dataset[pos]
        rois = torch.tensor([[0.0, a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in (boxes[r][1] for r in rows)], dtype=torch.float32)
        pooled = roi_align(image.unsqueeze(0).float(), rois, output_size=size, spatial_scale=1.0,
                           sampling_ratio=-1, aligned=True)
        crops[rows] = pooled.round().clamp(0, 255).to(torch.uint8)
        labels[rows] = torch.tensor([index[int(boxes[r][1]["category_id"])] for r in rows])
    return ObjectCrops(crops, labels), index


def weighted_knn_top1(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy of the weighted kNN vote (module docstring) for L2-normalised features.

    Args:
        bank: (N, D) normalised bank features; bank_labels: (N,) their labels.
        queries: (M, D) normalised query features; query_labels: (M,) their labels.
        num_classes: labels are in ``0 .. num_classes - 1``.
        k: neighbours per query (at most N are used).
        temperature: the vote weight is ``exp(similarity / temperature)``.
        chunk: queries per similarity block (bounds memory at ``chunk x N``).
    """
    if len(bank) == 0 or len(queries) == 0:
        raise ValueError("the kNN monitor needs at least one bank and one query object")
    neighbours = min(int(k), len(bank))
    correct = 0
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        similarity = block @ bank.T
        top, where = similarity.topk(neighbours, dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(len(block), num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, bank_labels[where], weights)
        correct += int((votes.argmax(dim=1) == query_labels[start:start + chunk]).sum())
    return correct / len(queries)


@torch.no_grad()
def embed(trunk: nn.Module, crops: Tensor, device: torch.device, batch_size: int = EMBED_BATCH) -> Tensor:
    """L2-normalised pooled features (N, D) float32 of uint8 crops; the trunk runs in eval mode, then is put back."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    was_training = trunk.training
    trunk.eval()
    try:
        parts = []
        for start in range(0, len(crops), batch_size):
            x = crops[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
            features = trunk((x - mean) / std).float().flatten(1)
            parts.append(nn.functional.normalize(features, dim=1))
        return torch.cat(parts)
    finally:
        trunk.train(was_training)


def _plain_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every SyncBatchNorm replaced by a BatchNorm2d (the monitor runs on one process only)."""
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        plain.load_state_dict(module.state_dict())
        return plain.to(next(module.buffers()).device)
    for name, child in module.named_children():
        setattr(module, name, _plain_batchnorm(child))
    return module


@contextlib.contextmanager
def recalibrated(trunk: nn.Module, crops: Tensor, device: torch.device,
                 batch_size: int = EMBED_BATCH) -> Iterator[nn.Module]:
    """The trunk in eval mode with BatchNorm statistics that are the exact mean and variance over ``crops``.

    The weights are the trunk's; only the running statistics change (cumulative average over the
    batches, ``momentum=None``), and only inside the ``with`` block: on leaving it the trunk's own
    statistics, momentum and train/eval mode are back, bit for bit. The global RNG is not used. A
    trunk with SyncBatchNorm (DDP) is copied with plain BatchNorm instead, since only one process
    runs the monitor.
    """
    if any(isinstance(m, nn.SyncBatchNorm) for m in trunk.modules()):
        import copy

        target = _plain_batchnorm(copy.deepcopy(trunk))
    else:
        target = trunk
    norms = [m for m in target.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in norms]
    was_training = trunk.training
    try:
        with torch.no_grad():
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
            target.train()
            mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
            for start in range(0, len(crops), batch_size):
                x = crops[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
                if len(x) > 1:  # BatchNorm needs two values per channel in training mode
                    target((x - mean) / std)
        target.eval()
        yield target
    finally:
        with torch.no_grad():
            for m, (running_mean, running_var, tracked, momentum) in zip(norms, saved):
                m.running_mean.copy_(running_mean)
                m.running_var.copy_(running_var)
                m.num_batches_tracked.copy_(tracked)
                m.momentum = momentum
        trunk.train(was_training)


class KnnMonitor:
    """Scores a trunk by the weighted kNN top-1 on the labeled objects (see the module docstring).

    Build it once per run (the crops are cut once); call it with a trunk at each monitored epoch.
    The cost is two forward passes over the bank (statistics, then features) and one over the
    queries, all of ``crop_size`` px.
    """

    def __init__(self, bank: ObjectCrops, queries: ObjectCrops, num_classes: int, device: torch.device,
                 k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> None:
        self.bank, self.queries = bank, queries
        self.num_classes, self.device = num_classes, device
        self.k, self.temperature = k, temperature
        self._bank_labels = bank.labels.to(device)
        self._query_labels = queries.labels.to(device)

    @classmethod
    def from_coco(cls, train: Sequence[str | Path], val: Sequence[str | Path], crop_size: int, max_objects: int,
                  seed: int, device: torch.device, k: int = KNN_K,
                  temperature: float = KNN_TEMPERATURE) -> "KnnMonitor":
        """Cut the bank from ``train = (images_dir, annotations)`` and the queries from ``val``."""
        bank, index = object_crops(train[0], train[1], crop_size, max_objects, seed)
        queries, index = object_crops(val[0], val[1], crop_size, max_objects, seed + 1, index)
        return cls(bank, queries, len(index), device, k, temperature)

    @property
    def chance(self) -> float:
        """The accuracy of always answering the most frequent query category."""
        counts = torch.bincount(self.queries.labels, minlength=self.num_classes)
        return float(counts.max()) / max(1, len(self.queries))

    def __call__(self, trunk: nn.Module) -> float:
        """Top-1 accuracy of ``trunk``'s features (a fraction in [0, 1]), its BatchNorm statistics re-estimated."""
        with recalibrated(trunk, self.bank.images, self.device) as calibrated:
            bank = embed(calibrated, self.bank.images, self.device)
            queries = embed(calibrated, self.queries.images, self.device)
        accuracy = weighted_knn_top1(bank, self._bank_labels, queries, self._query_labels, self.num_classes,
                                     self.k, self.temperature)
        if not math.isfinite(accuracy):  # pragma: no cover - a ratio of counts
            raise ValueError(f"kNN accuracy is {accuracy}")
        return accuracy


__all__ = ["KNN_K", "KNN_TEMPERATURE", "KnnMonitor", "ObjectCrops", "embed", "object_crops", "recalibrated",
           "weighted_knn_top1"]
