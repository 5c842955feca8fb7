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

The figure is the top-1 accuracy over the queries. Beside it, on the same features:

- a linear probe (``swav/probe_top1``): multinomial logistic regression on the standardised bank
  features, L2-regularised as scikit-learn's ``LogisticRegression`` default (C = 1), fitted to
  convergence with L-BFGS and scored on the queries -- the linear evaluation of the SSL papers,
  run small;
- the effective rank of the bank features (``swav/trunk_rank``): ``exp`` of the entropy of the
  normalised singular values of the L2-normalised feature matrix, RankMe (Garrido et al. 2023,
  "RankMe: Assessing the downstream performance of pretrained self-supervised representations by
  their rank"), uncentred as there. A trunk that keeps a handful of directions (dimensional
  collapse) can sit under a SwAV head that looks healthy; its rank shows it.

Each figure is read against two references, never against chance (1 / number of categories):

- the spread over random initialisations (``RANDOM_TRUNKS`` trunks of the same architecture, the
  run's own initial trunk first): mean ``swav/*_random`` and std ``swav/*_random_std``. A random
  convolutional trunk already separates colour and shape somewhat, and one initialisation's figure
  moves by several points from the next (measured on the digits set: kNN 0.246 +- 0.037 over ten
  seeds on 82 queries), so a single random trunk is no reference;
- the raw pixels at the same crop size (``swav/*_pixels``): the ImageNet-normalised crop,
  flattened and L2-normalised. On small objects raw pixels are a strong line; features that
  cannot beat them have learned nothing a detector could not get from the image itself.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from trainers.common.provenance import derive_seed
from trainers.swav.augment import IMAGENET_MEAN, IMAGENET_STD
from trainers.swav.config import SwAVConfig
from trainers.swav.references import (  # noqa: F401 - the monitor's figures and their texts, importable from here too
    LEARNED_POINTS, RANDOM_TRUNKS, MonitorScores, learned, monitor_text, spread_metrics,
)
from trainers.vocabulary import MONITOR_METRICS, MONITOR_REFERENCES, PIXELS, reference_key

log = logging.getLogger(__name__)

KNN_K = 20  # neighbours: Wu et al. 2018, solo-learn and DINO's default
KNN_TEMPERATURE = 0.07  # vote weight exp(sim / T): DINO eval_knn.py, solo-learn's default
EMBED_BATCH = 256  # crops per forward pass
PROBE_C = 1.0  # inverse L2 strength of the linear probe: scikit-learn LogisticRegression's default
PROBE_ITERATIONS = 200  # L-BFGS iterations (the probe's loss is convex: this converges on the monitor's sets)


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


def linear_probe_top1(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int,
                      c: float = PROBE_C, iterations: int = PROBE_ITERATIONS) -> float:
    """Top-1 accuracy on the queries of a multinomial logistic regression fitted on the bank.

    Features are standardised with the bank's mean and std; the loss is the mean cross-entropy plus
    ``|W|^2 / (2 c N)`` (scikit-learn's ``LogisticRegression(C=c)`` objective divided by N, the
    intercept unpenalised), minimised from zero with L-BFGS: deterministic, no RNG.
    """
    if len(bank) == 0 or len(queries) == 0:
        raise ValueError("the linear probe needs at least one bank and one query object")
    x = bank.double()
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    q = (queries.double() - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
    penalty = 1.0 / (2.0 * c * len(x))
    labels = bank_labels.to(x.device)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight + bias, labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = (q @ weight + bias).argmax(dim=1)
    return float((predicted == query_labels.to(x.device)).double().mean())


def effective_rank(features: Tensor) -> float:
    """RankMe: ``exp`` of the entropy of the normalised singular values of ``features`` (N, D) (Garrido et al. 2023).

    Between 1 (every row on one line) and ``min(N, D)`` (all directions equally used).
    """
    values = torch.linalg.svdvals(features.double())
    p = values / values.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


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
        return self._knn(*self._features(trunk))

    def evaluate(self, trunk: nn.Module) -> MonitorScores:
        """kNN top-1, linear-probe top-1 and effective rank of ``trunk``'s features (statistics re-estimated)."""
        return self._scores(*self._features(trunk))

    def pixels(self) -> MonitorScores:
        """The same figures for the raw pixels of the crops (ImageNet-normalised, flattened, L2-normalised)."""
        def flat(crops: Tensor) -> Tensor:
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            x = (crops.float().div(255) - mean) / std
            return nn.functional.normalize(x.flatten(1), dim=1).to(self.device)

        return self._scores(flat(self.bank.images), flat(self.queries.images))

    def random_spread(self, arch: str, norm: str, seeds: Sequence[int]) -> list[MonitorScores]:
        """The figures of randomly initialised trunks, one per seed (built aside: the global RNG is untouched).

        ``torch.manual_seed(seed)`` then ``build_trunk`` reproduces the initial trunk of a SwAV run
        with that seed (``SwAVModel`` builds its trunk first, right after seeding).
        """
        from trainers.resnet import build_trunk

        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        scores = []
        for seed in seeds:
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(int(seed))
                trunk = build_trunk(arch, norm).to(self.device)
            scores.append(self.evaluate(trunk))
        return scores

    def _features(self, trunk: nn.Module) -> tuple[Tensor, Tensor]:
        with recalibrated(trunk, self.bank.images, self.device) as calibrated:
            return embed(calibrated, self.bank.images, self.device), embed(calibrated, self.queries.images, self.device)

    def _knn(self, bank: Tensor, queries: Tensor) -> float:
        accuracy = weighted_knn_top1(bank, self._bank_labels, queries, self._query_labels, self.num_classes,
                                     self.k, self.temperature)
        if not math.isfinite(accuracy):  # pragma: no cover - a ratio of counts
            raise ValueError(f"kNN accuracy is {accuracy}")
        return accuracy

    def _scores(self, bank: Tensor, queries: Tensor) -> MonitorScores:
        probe = linear_probe_top1(bank, self._bank_labels, queries, self._query_labels, self.num_classes)
        mean, std = bank.mean(dim=0), bank.std(dim=0, unbiased=False).clamp_min(1e-6)
        z_bank, z_queries = (nn.functional.normalize((x - mean) / std, dim=1) for x in (bank, queries))
        return MonitorScores(self._knn(bank, queries), probe, effective_rank(bank), self._knn(z_bank, z_queries))


# ---------------------------------------------------------------------------
# The monitor of one SwAV run
# ---------------------------------------------------------------------------

# The monitor's figures (trainers.vocabulary.MONITOR_METRICS) at monitored epochs; on every report their
# references, the mean and std over random initialisations and the raw pixels.
REFERENCE_NAMES = tuple(reference_key(name, ref) for name in MONITOR_METRICS for ref in MONITOR_REFERENCES)


def knn_monitor(config: SwAVConfig, device: torch.device) -> KnnMonitor | None:
    """The run's kNN monitor, or None (saying why once) when it is off or has no labeled set."""
    if config.knn_every == 0:
        return None
    if not all(config.knn_paths):
        log.warning("kNN monitor off: no labeled set to score against (set knn_train_images, "
                    "knn_train_annotations, knn_val_images and knn_val_annotations; a launch sets them from "
                    "the space's data); swav/knn_top1 is not reported")
        return None
    images, annotations, val_images, val_annotations = config.knn_paths
    size = config.knn_size
    monitor = KnnMonitor.from_coco((images, annotations), (val_images, val_annotations), size,
                                   config.knn_max_objects, config.seed, device, config.knn_k, config.knn_temperature)
    log.info("kNN monitor: %d bank and %d query objects of %d px, %d categories (majority class %.1f%%)",
             len(monitor.bank), len(monitor.queries), size, monitor.num_classes, 100 * monitor.chance)
    return monitor


def random_seeds(config: SwAVConfig) -> list[int]:
    """The seeds of the random trunks behind the monitor's ``*_random`` figures: the run's own first."""
    return [config.seed, *(derive_seed(config.seed, 7, i) for i in range(1, RANDOM_TRUNKS))]


def monitor_references(monitor: KnnMonitor, config: SwAVConfig) -> dict[str, float]:
    """The monitor's references (:data:`REFERENCE_NAMES`): the spread over random initialisations of the run's
    architecture (built aside from seeds, the global RNG untouched) and the raw pixels."""
    references = spread_metrics(monitor.random_spread(config.arch, config.norm, random_seeds(config)))
    references.update(monitor.pixels().metrics(PIXELS))
    return references



class MonitorHook:
    """The monitor of one run, as a hook of the training loop (rank 0; other processes hold an idle one): its
    references are scored once (random trunks built aside from their seeds, the run's own first) and carried
    through checkpoints in the metrics, so a resumed run restores them (a checkpoint without them, written before
    they existed, has them computed again); the latest monitored figures are carried between monitored epochs
    (the collapse label reads them)."""

    def __init__(self, config: Any, device: torch.device, rank: int, metrics: Mapping[str, float]) -> None:
        self.config = config
        self.monitor = knn_monitor(config, device) if rank == 0 else None
        self.references: dict[str, float] = {}
        if self.monitor is not None:
            self.references = {name: metrics[name] for name in REFERENCE_NAMES if name in metrics}
            if len(self.references) < len(REFERENCE_NAMES):
                self.references = monitor_references(self.monitor, config)
        self.latest = {name: metrics[name] for name in MONITOR_METRICS if name in metrics}

    def after_epoch(self, epoch: int, metrics: dict[str, float], trunk: nn.Module) -> None:
        """Add the references to epoch ``epoch``'s metrics and, when the monitor is due, the trunk's figures."""
        if self.monitor is None:
            return
        metrics.update(self.references)
        if self.config.knn_due(epoch + 1):
            self.latest = self.monitor.evaluate(trunk).metrics()
            metrics.update(self.latest)


__all__ = ["MonitorHook", "REFERENCE_NAMES", "knn_monitor", "monitor_references",
           "random_seeds", "KNN_K", "KNN_TEMPERATURE", "LEARNED_POINTS", "RANDOM_TRUNKS", "KnnMonitor", "MonitorScores", "ObjectCrops",
           "effective_rank", "embed", "learned", "linear_probe_top1", "monitor_text", "object_crops", "recalibrated",
           "spread_metrics", "weighted_knn_top1"]
