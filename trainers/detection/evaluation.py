"""COCO box evaluation (pycocotools) and the detection figure.

``predict`` runs a detector over a data set; ``coco_eval`` scores a list of per-image
predictions against the data set's original COCO ground truth, so the test suite can feed it
hand-made predictions. Boxes are compared in original image coordinates (torchvision's
``GeneralizedRCNNTransform`` maps predictions back to the input size, and the data set yields
images at their original size), labels are mapped back to COCO category ids, and the
small/medium/large split uses the ground truth's ``area`` field as recorded in the annotation
file — not the area of a resized box.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from trainers.data import detection_collate
from trainers.vocabulary import DET_AP, DET_AP50, DET_AP75, DET_AP_LARGE, DET_AP_MEDIUM, DET_AP_SMALL

# COCOeval.stats[0..5], in order.
# The metric each of pycocotools' ``COCOeval.stats`` gives (its summarize() order), reported at every evaluation.
COCO_STATS: dict[str, int] = {DET_AP: 0, DET_AP50: 1, DET_AP75: 2, DET_AP_SMALL: 3, DET_AP_MEDIUM: 4, DET_AP_LARGE: 5}
METRIC_NAMES = tuple(COCO_STATS)
PER_CLASS_FILE = "per_class_ap50.json"
SUMMARY_FILE = "coco_summary.txt"
FIGURE_FILE = "detections.png"
GT_COLOUR, PRED_COLOUR = "lime", "red"


class GroundTruth(Protocol):
    """What evaluation needs from a data set (``trainers.data.CocoDetection`` provides it)."""

    coco: COCO
    label_to_cat_id: Mapping[int, int]
    class_names: Sequence[str]
    image_ids: Sequence[int]


@dataclass
class CocoEvaluation:
    """The outcome of :func:`coco_eval`.

    Attributes:
        metrics: ``det/AP`` ... ``det/AP_large``; NaN for an area range without ground truth.
        per_class: one record per class: label, category_id, name, ap50 (NaN without ground truth).
        summary: COCOeval's printed summary table (empty when there were no predictions).
    """

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    summary: str

    def per_class_ap50(self) -> dict[str, float]:
        """Class name -> AP50."""
        return {record["name"]: record["ap50"] for record in self.per_class}


def to_coco_results(predictions: Sequence[Mapping[str, Any]], label_to_cat_id: Mapping[int, int]) -> list[dict[str, Any]]:
    """Per-image predictions (``image_id``, ``boxes`` xyxy, ``scores``, ``labels``) as COCO result entries."""
    results = []
    for pred in predictions:
        image_id = int(pred["image_id"])
        boxes = torch.as_tensor(pred["boxes"], dtype=torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(pred["scores"], dtype=torch.float64).reshape(-1)
        labels = torch.as_tensor(pred["labels"]).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"prediction for image {image_id}: {len(boxes)} boxes, {len(scores)} scores, "
                             f"{len(labels)} labels; they must match")
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            if int(label) not in label_to_cat_id:
                raise ValueError(f"prediction for image {image_id}: label {label} is not one of the data set's "
                                 f"labels 1..{len(label_to_cat_id)}")
            x0, y0, x1, y1 = box
            results.append({"image_id": image_id, "category_id": int(label_to_cat_id[int(label)]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    return results


def _empty_results(gt: COCO) -> COCO:
    """A result set with no detections (``COCO.loadRes`` rejects an empty list)."""
    res = COCO()
    res.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                   "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def _nan_if_missing(value: float) -> float:
    # COCOeval writes -1 where there is nothing to average (no ground truth in that range).
    return math.nan if value < 0 else float(value)


def coco_eval(predictions: Sequence[Mapping[str, Any]], dataset: GroundTruth) -> CocoEvaluation:
    """Score per-image predictions with pycocotools' COCOeval (bbox) against ``dataset.coco``.

    Args:
        predictions: one mapping per image: ``image_id``, ``boxes`` ([N, 4] xyxy, original image
            pixels), ``scores`` [N], ``labels`` [N] (contiguous 1..C). Images without an entry
            count as having no detections.
        dataset: the ground truth (``coco``, ``label_to_cat_id``, ``class_names``, ``image_ids``).

    Returns:
        Metrics (NaN for a range without ground truth; 0.0 everywhere there is ground truth when
        there are no predictions at all), per-class AP50 and the summary table.
    """
    gt = dataset.coco
    results = to_coco_results(predictions, dataset.label_to_cat_id)
    unknown = sorted({r["image_id"] for r in results} - set(gt.getImgIds()))
    if unknown:
        raise ValueError(f"predictions name image ids {unknown[:10]} that are not in {getattr(dataset, 'path', 'the data set')}")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):  # pycocotools prints progress lines
        dt = gt.loadRes(results) if results else _empty_results(gt)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.imgIds = list(dataset.image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        evaluator.summarize()
    metrics = {name: _nan_if_missing(evaluator.stats[i]) for name, i in COCO_STATS.items()}

    # precision: [IoU thresholds, recall thresholds, categories, area ranges, max dets].
    precision = evaluator.eval["precision"]
    t50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    cat_index = {cat: k for k, cat in enumerate(evaluator.params.catIds)}
    per_class = []
    for label in sorted(dataset.label_to_cat_id):
        cat = dataset.label_to_cat_id[label]
        curve = precision[t50, :, cat_index[cat], 0, -1] if cat in cat_index else np.array([-1.0])
        valid = curve[curve > -1]
        ap50 = float(valid.mean()) if valid.size else math.nan
        per_class.append({"label": int(label), "category_id": int(cat), "name": dataset.class_names[label - 1], "ap50": ap50})
    return CocoEvaluation(metrics=metrics, per_class=per_class, summary=table.getvalue())


def write_per_class(path: str | Path, evaluation: CocoEvaluation) -> Path:
    """The per-class AP50 (and the overall metrics) as JSON; NaN is written as null."""
    def number(v: float) -> float | None:
        return v if math.isfinite(v) else None

    payload = {
        "per_class_ap50": [dict(record, ap50=number(record["ap50"])) for record in evaluation.per_class],
        "metrics": {k: number(v) for k, v in evaluation.metrics.items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | str | None = None,
    batch_size: int = 2,
    workers: int = 0,
    indices: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Run the detector (eval mode) over ``dataset`` (or the ``indices`` subset).

    Returns:
        One dict per image: ``image_id``, ``boxes`` (xyxy, original pixels), ``scores``, ``labels`` (CPU).
    """
    device = torch.device(device) if device is not None else _device_of(model)
    model.to(device)
    was_training = model.training
    model.eval()
    data = Subset(dataset, list(indices)) if indices is not None else dataset
    # Own generator: evaluation must not draw from the global RNG, or how often a run
    # evaluates would change its training randomness.
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=detection_collate, generator=torch.Generator())
    out: list[dict[str, Any]] = []
    try:
        for images, targets in loader:
            batch = [image.to(device, non_blocking=True).float().div_(255.0) for image in images]
            for target, det in zip(targets, model(batch)):
                out.append({"image_id": int(target["image_id"]), "boxes": det["boxes"].float().cpu(),
                            "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
    finally:
        model.train(was_training)
    return out


def evaluate(
    model: nn.Module,
    dataset: Any,
    device: torch.device | str | None = None,
    batch_size: int = 2,
    out_dir: str | Path | None = None,
    workers: int = 0,
    figure_images: int = 0,
    score_threshold: float = 0.5,
) -> dict[str, float]:
    """COCO-evaluate ``model`` on ``dataset`` (a ``CocoDetection``).

    Args:
        model: a torchvision detector; put in eval mode for the pass, its mode restored after.
        dataset: validation data with ``coco``, ``label_to_cat_id``, ``class_names``, ``image_ids``.
        device: where to run; the model's device when None.
        batch_size: images per forward pass.
        out_dir: when given, receives ``per_class_ap50.json``, ``coco_summary.txt`` and, with
            ``figure_images > 0``, ``detections.png``.
        workers: DataLoader workers.
        figure_images: how many validation images (the first ones) the figure shows.
        score_threshold: predictions drawn in the figure.

    Returns:
        ``det/AP``, ``det/AP50``, ``det/AP75``, ``det/AP_small``, ``det/AP_medium``, ``det/AP_large``.
    """
    predictions = predict(model, dataset, device=device, batch_size=batch_size, workers=workers)
    result = coco_eval(predictions, dataset)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_per_class(out_dir / PER_CLASS_FILE, result)
        (out_dir / SUMMARY_FILE).write_text(result.summary)
        count = min(figure_images, len(dataset))
        if count > 0:
            samples = [dataset[i] for i in range(count)]
            draw_detections(
                [image for image, _ in samples], [target for _, target in samples], predictions[:count],
                dataset.class_names, out_dir / FIGURE_FILE, score_threshold=score_threshold,
                title=f"AP50 {result.metrics[DET_AP50]:.3f} | AP {result.metrics[DET_AP]:.3f}",
            )
    return result.metrics


class EvaluationHook:
    """The fine-tuning loop's evaluation, as a hook that owns its state: after every ``eval_every``-th epoch and
    the last, it COCO-evaluates the model on the validation set and keeps the result as :attr:`latest`, which the
    epochs in between carry (and the checkpoint stores, so a resumed run reports the same)."""

    def __init__(self, config: Any, dataset: Any, device: torch.device, state: Mapping[str, Any] | None = None) -> None:
        self.config, self.dataset, self.device = config, dataset, device
        self.latest: dict[str, float] = {}
        self.load_state_dict(state or {})

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (from 0) ends with an evaluation: every ``eval_every`` epochs done, and the last."""
        done = epoch + 1
        return done % self.config.eval_every == 0 or done == self.config.epochs

    def after_epoch(self, epoch: int, model: nn.Module, out_dir: Path) -> tuple[dict[str, float], list[Path]]:
        """Evaluate when :meth:`due`: the metrics (empty otherwise) and the files written into ``out_dir``."""
        if not self.due(epoch):
            return {}, []
        config = self.config
        self.latest = evaluate(model, self.dataset, device=self.device, batch_size=config.batch_size, out_dir=out_dir,
                               workers=config.workers, figure_images=config.figure_images,
                               score_threshold=config.score_threshold)
        files = [out_dir / name for name in (PER_CLASS_FILE, FIGURE_FILE, SUMMARY_FILE)]
        return dict(self.latest), [p for p in files if p.is_file()]

    def state_dict(self) -> dict[str, Any]:
        return {"latest": {k: float(v) for k, v in self.latest.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.latest = {k: float(v) for k, v in dict(state.get("latest", {})).items()}


def draw_detections(
    images: Sequence[torch.Tensor],
    targets: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    path: str | Path,
    score_threshold: float = 0.5,
    title: str | None = None,
) -> Path:
    """Save a PNG of ``images`` with ground truth (green) and predictions >= ``score_threshold`` (red).

    Args:
        images: uint8 3xHxW tensors.
        targets: per image, ``boxes`` (xyxy) and ``labels`` (1..C), optionally ``image_id``.
        predictions: per image, ``boxes``, ``scores``, ``labels``.
        class_names: index ``label - 1``.
        path: the PNG to write.
        score_threshold: predictions below it are not drawn.
        title: figure title.
    """
    if not len(images) == len(targets) == len(predictions):
        raise ValueError(f"draw_detections: {len(images)} images, {len(targets)} targets, {len(predictions)} predictions")
    n = max(1, len(images))
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    # Figure without pyplot: no global backend switch, safe in worker processes and threads.
    fig = Figure(figsize=(4.0 * cols, 4.3 * rows), dpi=100)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]

    def name(label: Any) -> str:
        index = int(label) - 1
        return class_names[index] if 0 <= index < len(class_names) else f"label {int(label)}"

    has_truth = any(len(target["boxes"]) for target in targets)
    for ax, image, target, pred in zip(axes, images, targets, predictions):
        ax.imshow(image.permute(1, 2, 0).cpu().numpy())
        for box, label in zip(torch.as_tensor(target["boxes"]).tolist(), torch.as_tensor(target["labels"]).tolist()):
            ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                   edgecolor=GT_COLOUR, linewidth=1.5))
            ax.text(box[0], box[3], name(label), color="black", fontsize=7, va="top",
                    bbox={"facecolor": GT_COLOUR, "alpha": 0.7, "pad": 1, "linewidth": 0})
        keep = torch.as_tensor(pred["scores"]) >= score_threshold
        shown = 0
        for box, label, score in zip(torch.as_tensor(pred["boxes"])[keep].tolist(),
                                     torch.as_tensor(pred["labels"])[keep].tolist(),
                                     torch.as_tensor(pred["scores"])[keep].tolist()):
            shown += 1
            ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                   edgecolor=PRED_COLOUR, linewidth=1.5))
            ax.text(box[0], box[1], f"{name(label)} {score:.2f}", color="white", fontsize=7, va="bottom",
                    bbox={"facecolor": PRED_COLOUR, "alpha": 0.7, "pad": 1, "linewidth": 0})
        image_id = target.get("image_id", pred.get("image_id", "?"))
        truth = f"{len(target['boxes'])} GT, " if has_truth else ""
        ax.set_title(f"image {image_id}: {truth}{shown} pred >= {score_threshold:g}", fontsize=9)
        ax.axis("off")
    legend = "green: ground truth, red: predictions" if has_truth else "red: predictions"
    fig.suptitle(f"{title} ({legend})" if title else legend, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path



def draw_found(images: Sequence[torch.Tensor], found: Sequence[Sequence[Mapping[str, Any]]], names: Sequence[str],
               class_names: Sequence[str], path: str | Path, score_threshold: float = 0.5,
               title: str | None = None) -> Path:
    """:func:`draw_detections` of what :func:`~trainers.detection.export.detect` found (its plain records per image,
    no ground truth); ``names``: each image's caption."""
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    predictions = [{"boxes": torch.tensor([[b["x_min"], b["y_min"], b["x_max"], b["y_max"]] for b in boxes]).reshape(-1, 4),
                    "scores": torch.tensor([float(b["score"]) for b in boxes]),
                    "labels": torch.tensor([int(b["label"]) for b in boxes], dtype=torch.int64),
                    "image_id": name} for name, boxes in zip(names, found)]
    return draw_detections(images, [empty] * len(images), predictions, class_names, path,
                           score_threshold=score_threshold, title=title)