"""The vocabulary (trainers/vocabulary.py): one spelling of every stored name, and none written anywhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import trainers.vocabulary as vocabulary
from trainers.stages import TRAINERS
from trainers.vocabulary import LEADERBOARD_METRICS, METRIC_LABELS, REPORT_METRICS, STAGE_RECORDS

ROOT = Path(__file__).resolve().parents[2]
KEY = re.compile(r"^(ablate\.|det/|swav/|sup/|launch/)")  # how every stored tag and metric key begins

# The names as users' stores hold them (run and experiment tags, model-version tags, Optuna attributes, metric
# keys). A change here is a change to their data: it needs a period in which the readers take both spellings.
STORED = {
    "ATTR_PRUNE_REASON": "ablate.prune_reason",
    "ATTR_RAY_TRIAL": "ablate.ray_trial_id",
    "ATTR_SIGNALS_PREFIX": "ablate.signals@",
    "DET_AP": "det/AP",
    "DET_AP50": "det/AP50",
    "DET_AP75": "det/AP75",
    "DET_AP_LARGE": "det/AP_large",
    "DET_AP_MEDIUM": "det/AP_medium",
    "DET_AP_SMALL": "det/AP_small",
    "DET_IMAGES_PER_S": "det/images_per_s",
    "DET_ITERATIONS": "det/iterations",
    "DET_LOSS": "det/loss",
    "LAUNCH_BEST_AP50": "launch/best_AP50",
    "LAUNCH_FINETUNE_PLANNED": "launch/finetune_planned",
    "LAUNCH_FINETUNE_SKIPPED": "launch/finetune_skipped",
    "LAUNCH_PRETRAIN_PLANNED": "launch/pretrain_planned",
    "LAUNCH_PRUNED_EPOCHS_BUDGETED": "launch/pruned_epochs_budgeted",
    "LAUNCH_PRUNED_EPOCHS_SAVED": "launch/pruned_epochs_saved",
    "LAUNCH_PRUNED_FRACTION_SAVED": "launch/pruned_fraction_saved",
    "LAUNCH_TRIALS_FAILED": "launch/trials_failed",
    "LAUNCH_TRIALS_PLANNED": "launch/trials_planned",
    "LAUNCH_TRIALS_PRUNED": "launch/trials_pruned",
    "LAUNCH_TRIALS_REUSED": "launch/trials_reused",
    "LAUNCH_TRIALS_RUN": "launch/trials_run",
    "LAUNCH_TRIALS_RUNNING": "launch/trials_running",
    "LAUNCH_TRIALS_STOPPED": "launch/trials_stopped",
    "SUPERVISED_KEY_METRIC": "sup/loss_over_ln_c",
    "SUP_AMP_SKIPPED_STEPS": "sup/amp_skipped_steps",
    "SUP_CLASSES": "sup/classes",
    "SUP_IMAGES_PER_S": "sup/images_per_s",
    "SUP_LOSS": "sup/loss",
    "SUP_LOSS_OVER_LN_C": "sup/loss_over_ln_c",
    "SUP_TOP1": "sup/top1",
    "SWAV_AMP_SKIPPED_STEPS": "swav/amp_skipped_steps",
    "SWAV_ASSIGNMENT_ENTROPY": "swav/assignment_entropy",
    "SWAV_COLLAPSED": "swav/collapsed",
    "SWAV_EMBEDDING_STD": "swav/embedding_std",
    "SWAV_EPOCHS_AT_LN_K": "swav/epochs_at_ln_k",
    "SWAV_IMAGES_PER_S": "swav/images_per_s",
    "SWAV_KNN_TOP1": "swav/knn_top1",
    "SWAV_KNN_TOP1_RANDOM": "swav/knn_top1_random",
    "SWAV_KNN_TOP1_RANDOM_STD": "swav/knn_top1_random_std",
    "SWAV_KNN_Z_TOP1": "swav/knn_z_top1",
    "SWAV_LN_K": "swav/ln_k",
    "SWAV_LOSS": "swav/loss",
    "SWAV_LOSS_OVER_LN_K": "swav/loss_over_ln_k",
    "SWAV_LOSS_OVER_LN_K_MIN": "swav/loss_over_ln_k_min",
    "SWAV_PROBE_TOP1": "swav/probe_top1",
    "SWAV_PROTOTYPES_USED": "swav/prototypes_used",
    "SWAV_PROTOTYPE_SPAN": "swav/prototype_span",
    "SWAV_SCORE_STD": "swav/score_std",
    "SWAV_TRUNK_RANK": "swav/trunk_rank",
    "SWAV_TRUNK_RANK_RANDOM": "swav/trunk_rank_random",
    "TAG_AXES": "ablate.axes",
    "TAG_BEST_RUN": "ablate.best_run_id",
    "TAG_CELL": "ablate.cell",
    "TAG_CELL_SEEDS": "ablate.cell_seeds",
    "TAG_CHECKPOINT": "ablate.checkpoint",
    "TAG_DEVICE": "ablate.device",
    "TAG_DRIVER": "ablate.driver",
    "TAG_ERROR": "ablate.error",
    "TAG_GIT": "ablate.git_sha",
    "TAG_GPUS": "ablate.gpus",
    "TAG_HASH": "ablate.config_hash",
    "TAG_HEADLINE": "ablate.headline",
    "TAG_HEARTBEAT": "ablate.heartbeat",
    "TAG_KIND": "ablate.kind",
    "TAG_LAUNCH": "ablate.launch_id",
    "TAG_NAME": "ablate.name",
    "TAG_PRETRAIN_SEEDS": "ablate.pretrain_seeds",
    "TAG_PREVIOUS_PARENT": "ablate.previous_parent_run_id",
    "TAG_PRUNED": "ablate.pruned",
    "TAG_PRUNE_REASON": "ablate.prune_reason",
    "TAG_RESUMED_FROM": "ablate.resumed_from",
    "TAG_RUN": "ablate.run_id",
    "TAG_SEED": "ablate.seed",
    "TAG_SEEDS": "ablate.seeds",
    "TAG_SEEDS_STOP": "ablate.seeds_stop",
    "TAG_STAGE": "ablate.stage",
    "TAG_STARTED": "ablate.started",
    "TAG_STATE": "ablate.state",
    "TAG_STOP_REQUESTED": "ablate.stop_requested",
    "TAG_STUDY": "ablate.study",
    "TAG_SUPERSEDED_BY": "ablate.superseded_by",
    "TAG_TRIAL": "ablate.trial_id",
    "TAG_UPSTREAM": "ablate.upstream_run_id",
    "TAG_WEIGHTS_FILE": "ablate.weights_file",
    "TAG_WEIGHTS_SHA": "ablate.weights_sha256",
}


def bare_keys(path: Path) -> list[str]:
    """String constants in ``path`` that begin like a stored key (docstrings aside): ``file:line: "key"``."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and KEY.match(node.value)]


def test_no_module_writes_a_stored_key_as_a_bare_string() -> None:
    found = [hit for folder in ("experiments", "trainers", "bench") for path in sorted((ROOT / folder).rglob("*.py"))
             if path != ROOT / "trainers" / "vocabulary.py" for hit in bare_keys(path)]
    assert not found, "import these from trainers.vocabulary:\n" + "\n".join(found)


def test_the_check_finds_a_planted_key_and_leaves_prose_alone(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text('"""Reports ``swav/loss`` per epoch."""\n\nKEY = "swav/loss"\nTAG = f"ablate.{1}"\n'
                       'TEXT = "the det/AP50 of a run"\n')
    assert [hit.split(": ", 1)[1] for hit in bare_keys(planted)] == ["'swav/loss'", "'ablate.'"]


def test_stored_names_keep_the_spelling_users_stores_hold() -> None:
    assert {name: getattr(vocabulary, name) for name in STORED} == STORED
    declared = {name for name in dir(vocabulary) if name.isupper() and isinstance(getattr(vocabulary, name), str)}
    stored = {n for n in declared if n.startswith(("TAG_", "ATTR_")) or re.fullmatch(r"\w+/\w+", getattr(vocabulary, n))}
    unpinned = stored - set(STORED)
    assert not unpinned, f"new stored names: pin them in STORED: {sorted(unpinned)}"


def test_every_stage_record_names_a_trainer_a_declared_key_metric_and_a_direction() -> None:
    metric_keys = {v for n, v in vars(vocabulary).items() if n.isupper() and isinstance(v, str) and "/" in v}
    for name, stage in STAGE_RECORDS.items():
        assert stage.name == name and stage.key_metric in metric_keys and stage.direction in ("minimize", "maximize")
        assert TRAINERS[name].config_class().__name__ == stage.trainer.split(":")[1]  # no torch: a lazy package
    # what the leaderboard and the report show carries a label
    assert set(LEADERBOARD_METRICS) <= set(REPORT_METRICS) <= set(METRIC_LABELS)
