"""experiments.launch.progress: the status line, the summary at the end of a launch, a failed trial's error text."""

from __future__ import annotations

import math
from types import SimpleNamespace

from experiments.launch.progress import format_summary, status_line, trial_error
from trainers.vocabulary import STAGE_FINETUNE, STAGE_PRETRAIN


def test_status_line_counts_pending_and_eta():
    from experiments.launch.progress import status_line

    line = status_line("pretrain", ["running", "done", "pruned"], total=5, remaining_epochs=6, per_epoch_s=20.0,
                       max_concurrent=2)
    assert line == "pretrain status  running 1  pending 2  done 1  pruned 1  failed 0  of 5  ETA 1.0 min"
    assert status_line("finetune", [], 1, 2, math.nan, 1).endswith("of 1  ETA ?")


def test_summary_shows_each_stage_s_key_metric_and_the_saved_epochs():
    from experiments.launch import TrialOutcome
    from experiments.launch.progress import format_summary

    outcomes = [TrialOutcome(STAGE_FINETUNE, "ft", "h2", "r2", "done", {"det/AP50": 0.4}, 1, 1),
                TrialOutcome(STAGE_PRETRAIN, "pre", "h1", "r1", "pruned", {"swav/loss_over_ln_k": 1.0}, 6, 7,
                             "collapse")]
    counts = {"launch/trials_planned": 2, "launch/trials_run": 2, "launch/trials_reused": 0,
              "launch/trials_pruned": 1, "launch/trials_failed": 0, "launch/finetune_skipped": 1,
              "launch/pruned_epochs_budgeted": 7, "launch/pruned_epochs_saved": 1, "launch/pruned_fraction_saved": 1 / 7}
    lines = format_summary(outcomes, counts, ["a warning"]).splitlines()
    rows = [line for line in lines if line.startswith("  pretrain") or line.startswith("  finetune")]
    assert "loss_over_ln_k 1.0000" in rows[0] and "6/7" in rows[0] and "(collapse)" in rows[0]
    assert "AP@0.5 0.4000" in rows[1]  # the label the report and the headline use
    assert "  pruning saved 1 of 7 budgeted epochs (14%) and 1 fine-tuning trials" in lines
    assert lines[-1] == "  warning: a warning"

    # A pretraining run that ended collapsed says so, with the reasons, and its kNN beside its references.
    monitor = {"swav/collapsed": 1.0, "swav/prototype_span": 0.4, "swav/knn_top1": 0.2, "swav/knn_top1_random": 0.3,
               "swav/knn_top1_random_std": 0.02, "swav/knn_top1_pixels": 0.7, "swav/loss_over_ln_k": 1.0}
    outcomes = [TrialOutcome(STAGE_PRETRAIN, "pre", "h1", "r1", "done", monitor, 7, 7)]
    [row] = [line for line in format_summary(outcomes, counts, [], {"h1": 32}).splitlines()
             if line.startswith("  pretrain")]
    assert "COLLAPSED: embeddings outside the prototypes' span (0.40" in row
    assert row.endswith("kNN 0.200 (random 0.300 ± 0.020, pixels 0.700)")


def test_the_status_line_names_stopped_trials_and_divides_the_eta_by_the_trials_that_can_still_run():
    line = status_line("finetune", ["running", "stopped", "failed"], total=3, remaining_epochs=10, per_epoch_s=60.0,
                       max_concurrent=4)
    # one trial left to run: 10 epochs of 60 s, at one at a time whatever max_concurrent says
    assert line == "finetune status  running 1  pending 0  done 0  pruned 0  failed 1  stopped 1  of 3  ETA 10.0 min"


def test_the_summary_says_which_trials_the_same_command_resumes():
    from experiments.launch import TrialOutcome

    outcomes = [TrialOutcome(STAGE_PRETRAIN, "b", "h2", "r2", "stopped", {}, 2, 7, "stopped by `ablate stop`"),
                TrialOutcome(STAGE_PRETRAIN, "a", "h1", "r1", "done", {"swav/loss_over_ln_k": math.nan}, 7, 7, "ok")]
    counts = {"launch/trials_planned": 2, "launch/trials_run": 1, "launch/trials_reused": 0, "launch/trials_pruned": 0,
              "launch/trials_failed": 0, "launch/finetune_skipped": 0, "launch/trials_stopped": 1}
    lines = format_summary(outcomes, counts).splitlines()
    rows = [line for line in lines if line.startswith("  pretrain")]
    assert rows[0].split() == ["pretrain", "done", "7/7", "-", "a"]  # a NaN metric shows as "-", a done trial no reason
    assert rows[1].endswith("b  (stopped by `ablate stop`)")
    assert lines[-1] == ("  trials planned 2, run 1, reused 0, pruned 0, failed 0, fine-tunes skipped 0, stopped 1 "
                         "(the same launch command resumes them)")
    assert not any("pruning saved" in line for line in lines)  # nothing budgeted, nothing to say


def test_a_failed_trials_error_is_its_message_else_its_error_file(tmp_path):
    assert trial_error(SimpleNamespace(error_msg="RuntimeError: boom")) == "RuntimeError: boom"
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback ...\nValueError: bad config\n")
    assert trial_error(SimpleNamespace(error_msg="", error_file=str(error_file))) == error_file.read_text()
    metadata = SimpleNamespace(error_filename=str(error_file))
    assert trial_error(SimpleNamespace(run_metadata=metadata)).endswith("ValueError: bad config\n")
    assert trial_error(SimpleNamespace(error_file=str(tmp_path / "gone.txt"))) == \
        "trial failed (no error text recorded by Ray)"
