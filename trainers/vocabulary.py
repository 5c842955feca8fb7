"""The project's vocabulary: the stages, every metric key a trainer reports (with its label), and every ``ablate.*``
tag and attribute name the service writes to a tracking store. Names only.

It imports nothing, so it sits at the bottom of the layers (docs/ARCHITECTURE.md): the trainers, which report the
metrics, and ``experiments/``, which records, judges, ranks and shows them, share one spelling. No other module
writes one of these keys as a bare string (``tests/trainers/test_vocabulary.py`` fails on one).

Adding a metric to the leaderboard and the report: one :func:`_metric` line here (its key, its label,
``leaderboard=True, report=True``), plus the trainer that reports it. Stored names are users' data (tags, metric
keys and version tags in their stores): one changes only with a period in which the readers take both spellings.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

METRIC_LABELS: dict[str, str] = {}  # one label per metric wherever a table, plot or headline names it
LEADERBOARD_METRICS: list[str] = []  # the MLflow leaderboard's metric columns, in order (experiments/results/ui.py)
REPORT_METRICS: list[str] = []  # the columns of `ablate report`'s AP tables, in order (experiments/results/report)


def _metric(key: str, label: str = "", leaderboard: bool = False, report: bool = False) -> str:
    """Declare a metric key: its label (COCO's names, as pycocotools prints them) and where it is shown."""
    if label:
        METRIC_LABELS[key] = label
    if leaderboard:
        LEADERBOARD_METRICS.append(key)
    if report:
        REPORT_METRICS.append(key)
    return key


LR = "lr"  # every trainer: the learning rate of the epoch's last step

# Detection (trainers/detection): COCO evaluation by pycocotools (evaluation.COCO_STATS: which of its stats each
# is), then the training loop's.
DET_AP50 = _metric("det/AP50", "AP@0.5", leaderboard=True, report=True)  # ranks detectors; the champion
DET_AP = _metric("det/AP", "AP@[.5:.95]", leaderboard=True, report=True)
DET_AP75 = _metric("det/AP75", "AP@0.75")
DET_AP_SMALL = _metric("det/AP_small", "AP[small]", report=True)
DET_AP_MEDIUM = _metric("det/AP_medium", "AP[medium]", report=True)
DET_AP_LARGE = _metric("det/AP_large", "AP[large]", report=True)
DET_LOSS = _metric("det/loss")
DET_IMAGES_PER_S = _metric("det/images_per_s")
DET_ITERATIONS = _metric("det/iterations")  # optimizer steps so far: the x of fine-tuning curves
DET_PREFIX = "det/"

# SwAV (trainers/swav): per-epoch statistics.
SWAV_PREFIX = "swav/"
SWAV_LOSS = _metric("swav/loss")
SWAV_LN_K = _metric("swav/ln_k")
SWAV_LOSS_OVER_LN_K = _metric("swav/loss_over_ln_k")  # 1.0 when SwAV has collapsed, comparable across K
SWAV_EMBEDDING_STD = _metric("swav/embedding_std")
SWAV_SCORE_STD = _metric("swav/score_std")
SWAV_PROTOTYPE_SPAN = _metric("swav/prototype_span")
SWAV_ASSIGNMENT_ENTROPY = _metric("swav/assignment_entropy")
SWAV_PROTOTYPES_USED = _metric("swav/prototypes_used")
SWAV_AMP_SKIPPED_STEPS = _metric("swav/amp_skipped_steps")
SWAV_IMAGES_PER_S = _metric("swav/images_per_s")
SWAV_LOSS_OVER_LN_K_MIN = _metric("swav/loss_over_ln_k_min")
SWAV_EPOCHS_AT_LN_K = _metric("swav/epochs_at_ln_k")
SWAV_COLLAPSED = _metric("swav/collapsed")  # 1.0 while the collapse rule holds (trainers/swav/collapse.py)
# The monitor (trainers/swav/knn.py): at monitored epochs the trunk's figures; on every report their references.
SWAV_KNN_TOP1 = _metric("swav/knn_top1", "kNN top-1")
SWAV_KNN_Z_TOP1 = _metric("swav/knn_z_top1", "kNN top-1 (standardised)")
SWAV_PROBE_TOP1 = _metric("swav/probe_top1", "linear probe top-1")
SWAV_TRUNK_RANK = _metric("swav/trunk_rank", "trunk rank")
MONITOR_METRICS = (SWAV_KNN_TOP1, SWAV_KNN_Z_TOP1, SWAV_PROBE_TOP1, SWAV_TRUNK_RANK)
RANDOM_MEAN, RANDOM_STD, PIXELS = "_random", "_random_std", "_pixels"  # a monitor figure's references
MONITOR_REFERENCES = (RANDOM_MEAN, RANDOM_STD, PIXELS)


def reference_key(metric: str, reference: str) -> str:
    """A monitor figure's reference: ``swav/knn_top1`` + ``_random`` -> ``swav/knn_top1_random``."""
    return metric + reference


SWAV_KNN_TOP1_RANDOM = _metric(reference_key(SWAV_KNN_TOP1, RANDOM_MEAN), "kNN top-1 (random inits, mean)")
SWAV_KNN_TOP1_RANDOM_STD = reference_key(SWAV_KNN_TOP1, RANDOM_STD)
SWAV_TRUNK_RANK_RANDOM = reference_key(SWAV_TRUNK_RANK, RANDOM_MEAN)

# Supervised pretraining (trainers/swav/supervised.py, the positive control).
SUP_LOSS = _metric("sup/loss")
SUP_LOSS_OVER_LN_C = _metric("sup/loss_over_ln_c")  # cross-entropy / ln(classes): stands in for loss / ln K
SUP_TOP1 = _metric("sup/top1")
SUP_CLASSES = _metric("sup/classes")
SUP_AMP_SKIPPED_STEPS = _metric("sup/amp_skipped_steps")
SUP_IMAGES_PER_S = _metric("sup/images_per_s")

# The launch's own run (experiments/launch/launch_run.py): its live counts, one step further at each update.
LAUNCH_PREFIX = "launch/"
LAUNCH_PRETRAIN_PLANNED = _metric("launch/pretrain_planned")
LAUNCH_FINETUNE_PLANNED = _metric("launch/finetune_planned")
LAUNCH_TRIALS_PLANNED = _metric("launch/trials_planned")
LAUNCH_TRIALS_RUNNING = _metric("launch/trials_running")
LAUNCH_TRIALS_RUN = _metric("launch/trials_run")
LAUNCH_TRIALS_REUSED = _metric("launch/trials_reused")
LAUNCH_TRIALS_PRUNED = _metric("launch/trials_pruned")
LAUNCH_TRIALS_FAILED = _metric("launch/trials_failed")
LAUNCH_TRIALS_STOPPED = _metric("launch/trials_stopped")
LAUNCH_FINETUNE_SKIPPED = _metric("launch/finetune_skipped")
LAUNCH_PRUNED_EPOCHS_BUDGETED = _metric("launch/pruned_epochs_budgeted")
LAUNCH_PRUNED_EPOCHS_SAVED = _metric("launch/pruned_epochs_saved")
LAUNCH_PRUNED_FRACTION_SAVED = _metric("launch/pruned_fraction_saved")
LAUNCH_BEST_AP50 = _metric("launch/best_AP50")

# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------

STAGE_PRETRAIN, STAGE_FINETUNE = "pretrain", "finetune"
STAGE_LAUNCH = "launch"  # the launch's own run (its ``ablate.stage``)
STAGES = (STAGE_PRETRAIN, STAGE_FINETUNE)


@dataclass(frozen=True)
class Stage:
    """One stage of a study, everything the project names about it.

    Attributes:
        name: the space's section and the runs' ``ablate.stage``.
        label: in sentences.
        trainer: the trainer package (``train(config, reporter)``) and its config class, ``package:Class``.
        export: the folder of a run's artifacts that holds the trained model, and the registered model's kind.
        export_required: a trial that ends without its export failed (a backbone feeds the next stage).
        key_metric: shown in progress lines and summaries; Optuna's intermediate value.
        direction: Optuna's study direction on ``key_metric``.
    """

    name: str
    label: str
    trainer: str
    export: str
    export_required: bool
    key_metric: str
    direction: str


STAGE_RECORDS = {
    STAGE_PRETRAIN: Stage(STAGE_PRETRAIN, "pretraining", "trainers.swav:SwAVConfig", "backbone", True,
                          SWAV_LOSS_OVER_LN_K, "minimize"),
    STAGE_FINETUNE: Stage(STAGE_FINETUNE, "fine-tuning", "trainers.detection:DetectionConfig", "detector", False,
                          DET_AP50, "maximize"),
}
# A supervised pretraining run has no SwAV loss: its cross-entropy / ln(classes) stands in for the key metric.
SUPERVISED_KEY_METRIC = SUP_LOSS_OVER_LN_C
# Beside the key metric in progress lines: each stage's training loss.
LOSS_METRICS = {SWAV_LOSS_OVER_LN_K: SWAV_LOSS, SUP_LOSS_OVER_LN_C: SUP_LOSS, DET_AP50: DET_LOSS}

# Report keys that are not metrics: where a trial ran (no "/": never logged as metrics; recorded as run tags).
DEVICE_KEY, GPUS_KEY = "ablate_device", "ablate_gpus"

# ---------------------------------------------------------------------------
# Tags and attributes
# ---------------------------------------------------------------------------

# Runs (experiments/store/tracking.py writes them).
TAG_STAGE = "ablate.stage"
TAG_HASH = "ablate.config_hash"
TAG_CELL = "ablate.cell"  # fine-tuning runs: name and config hash without the seed (MLflow's "Group by" averages seeds)
TAG_SEED = "ablate.seed"
TAG_CELL_SEEDS = "ablate.cell_seeds"  # adaptive seeds: how many seeds the run's cell got
TAG_SEEDS_STOP = "ablate.seeds_stop"  # adaptive seeds: why the cell got no more (decided, max, budget)
TAG_TRIAL = "ablate.trial_id"
TAG_UPSTREAM = "ablate.upstream_run_id"
TAG_PRUNED = "ablate.pruned"
TAG_PRUNE_REASON = "ablate.prune_reason"
TAG_ERROR = "ablate.error"
TAG_CHECKPOINT = "ablate.checkpoint"
TAG_LAUNCH = "ablate.launch_id"
TAG_GIT = "ablate.git_sha"
TAG_NAME = "ablate.name"
TAG_DRIVER = "ablate.driver"  # host:pid of the launch driver (launch runs)
TAG_HEARTBEAT = "ablate.heartbeat"  # unix seconds, refreshed by a running driver (launch runs)
TAG_SUPERSEDED_BY = "ablate.superseded_by"  # a dead launch run -> the launch run that took over
TAG_RESUMED_FROM = "ablate.resumed_from"  # a launch run -> the dead launch runs whose trials it continued
TAG_PREVIOUS_PARENT = "ablate.previous_parent_run_id"  # a trial run moved under the launch that resumed it
TAG_STATE = "ablate.state"  # a trial run's state, one of TRIAL_STATES, updated as it moves
TAG_DEVICE = "ablate.device"  # the device a trial trained on (``cuda:0 (NVIDIA H200)``, ``cpu``, ...)
TAG_GPUS = "ablate.gpus"  # the GPU ids Ray assigned the trial (its CUDA_VISIBLE_DEVICES); empty: none
TAG_STARTED = "ablate.started"  # unix seconds when Ray last started the trial (its run exists from planning on)
TAG_STOP_REQUESTED = "ablate.stop_requested"  # `ablate stop`: "<unix seconds> <host:pid>" on a launch or trial run
TAG_HEADLINE = "ablate.headline"  # a launch run's current best, one line, updated at every trial's end
TAG_BEST_RUN = "ablate.best_run_id"  # the run behind the headline

# Experiments (experiments/results/ui.py writes them).
TAG_AXES = "ablate.axes"  # the ablated params, comma-separated, in leaderboard order
TAG_SEEDS = "ablate.seeds"  # an adaptive-seeds study: initial=2,max=8[,budget_trials=N]
TAG_PRETRAIN_SEEDS = "ablate.pretrain_seeds"  # the pretraining seeds (pretrain: {seeds: [0, 1]})

# Registered model versions (experiments/results/registry.py writes them).
TAG_KIND = "ablate.kind"
TAG_STUDY = "ablate.study"
TAG_RUN = "ablate.run_id"
TAG_WEIGHTS_SHA = "ablate.weights_sha256"
TAG_WEIGHTS_FILE = "ablate.weights_file"

# Optuna trials' user attributes (experiments/pruning/scheduler.py, experiments/pruning/pruner.py).
ATTR_RAY_TRIAL = "ablate.ray_trial_id"
ATTR_PRUNE_REASON = "ablate.prune_reason"
ATTR_SIGNALS_PREFIX = "ablate.signals@"  # + the step: the collapse signals the pruner judged there

# Params the launch adds to a fine-tuning run beside its config.
BACKBONE_PARAM = "finetune.backbone"
NONE_VALUE = "none"  # a pretraining field of a run with no pretraining (the scratch baseline)
