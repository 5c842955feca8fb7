"""Faster R-CNN fine-tuning (FPN, or the paper's C4 for the res5 head) on a SwAV-pretrained (or scratch) ResNet trunk.

Public names, importable from ``trainers.detection``:

* :class:`DetectionConfig` — the run's frozen, validated config; :func:`scratch_warnings` — what a
  scratch trunk's norm / lr scheme leave untrained (``config.py``).
* :func:`flip_decisions`, :class:`EpochFlips` — augmentation drawn per (seed, epoch, index) (``augment.py``).
* :func:`build_detector`, :func:`convert_norm`, :func:`build_box_head`, :func:`param_groups`
  — the network, the norm swap, the RoI box heads and the lr-scheme groups (``model.py``).
* :func:`train`, :func:`train_one_epoch`, :func:`lr_factor` — the loop (``engine.py``).
* :func:`evaluate`, :func:`predict`, :func:`coco_eval`, :func:`draw_detections` — COCO evaluation, the detection
  figure, and :class:`EvaluationHook`, the loop's evaluation (``evaluation.py``); :class:`Checkpoints` the loop's
  checkpoints (``checkpoint.py``).
* :func:`export_detector`, :func:`load_detector`, :func:`read_detector_config` — the exported
  detector (``export.py``).
"""

from trainers.lazy import lazy_exports

# name -> the module it lives in: imported on first use (trainers/lazy.py), so a light name never loads torch
_EXPORTS = {
    **dict.fromkeys(["EpochFlips", "flip_decisions"], "trainers.detection.augment"),
    **dict.fromkeys([
        "DEFAULT_MULTIPLIERS", "GROUP_NAMES", "HEADS", "LR_SCHEDULES", "LR_SCHEMES", "NORMS", "PRETRAINED_NORM",
        "SCRATCH", "DetectionConfig", "scratch_warnings"
    ], "trainers.detection.config"),
    **dict.fromkeys([
        "iters_per_epoch", "lr_factor", "train", "train_loader", "train_one_epoch"
    ], "trainers.detection.engine"),
    **dict.fromkeys([
        "FIGURE_FILE", "METRIC_NAMES", "PER_CLASS_FILE", "SUMMARY_FILE", "CocoEvaluation", "EvaluationHook", "coco_eval",
        "draw_detections", "draw_found", "evaluate", "predict", "to_coco_results", "write_per_class"
    ], "trainers.detection.evaluation"),
    **dict.fromkeys(["DETECTOR_CONFIG", "DETECTOR_FORMAT", "DETECTOR_WEIGHTS", "read_detector_config"],
                    "trainers.detection.record"),
    **dict.fromkeys(["detect", "export_detector", "load_detector"], "trainers.detection.export"),
    **dict.fromkeys(["Checkpoints"], "trainers.detection.checkpoint"),
    **dict.fromkeys([
        "BackboneLoadError", "C4Backbone", "Res5FPNHead", "Res5ROIHead", "TwoMLPLayerNormHead", "assemble_detector",
        "build_box_head", "build_detector", "convert_norm", "detection_trunk", "infer_arch", "load_backbone",
        "param_groups", "parameter_stage"
    ], "trainers.detection.model"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DEFAULT_MULTIPLIERS", "GROUP_NAMES", "HEADS", "LR_SCHEDULES", "LR_SCHEMES", "NORMS", "PRETRAINED_NORM", "SCRATCH", "DetectionConfig",
    "scratch_warnings", "EpochFlips", "flip_decisions", "iters_per_epoch", "lr_factor", "train",
    "train_loader", "train_one_epoch", "FIGURE_FILE", "METRIC_NAMES",
    "PER_CLASS_FILE", "SUMMARY_FILE", "CocoEvaluation", "EvaluationHook", "coco_eval", "draw_detections", "draw_found", "evaluate", "predict",
    "to_coco_results", "write_per_class", "DETECTOR_CONFIG", "DETECTOR_FORMAT", "DETECTOR_WEIGHTS", "detect",
    "export_detector", "load_detector", "read_detector_config", "BackboneLoadError", "C4Backbone", "Res5FPNHead",
    "Res5ROIHead", "TwoMLPLayerNormHead", "assemble_detector", "build_box_head", "build_detector", "convert_norm",
    "detection_trunk", "infer_arch", "load_backbone", "param_groups", "parameter_stage", "Checkpoints",
]
