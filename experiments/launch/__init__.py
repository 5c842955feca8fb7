"""The two-stage launch: unique SwAV pretraining runs, then fine-tuning on the survivors.

Data flow (docs/ARCHITECTURE.md)::

    space.yaml -> StudySpec -> pretrain configs (unique by config hash, minus those already
    FINISHED in MLflow) -> Ray Tune stage 1 -> per epoch: trainers.swav.train -> TuneReporter ->
    tune.report -> driver: MLflow log_batch + Optuna pruner -> survivors' backbones ->
    finetune configs x surviving backbones x seeds -> Ray Tune stage 2 -> trainers.detection.train
    -> COCO metrics -> MLflow -> best -> registry

Only the driver writes to MLflow; trials talk to it through ``tune.report``. Checkpoints go through
Ray's storage (``--storage-path``) and are tagged on the MLflow run, so a crashed trial resumes from its
last checkpoint within a launch (``FailureConfig``) and an interrupted launch resumes across launches
(same config hash -> same MLflow run).

The parts, each importing only those listed after it:

* :mod:`~experiments.launch.launcher`: :class:`Launcher`, the order of a launch (plan -> stages -> finish)
  and the trials' payloads;
* :mod:`~experiments.launch.ray_stage`: Ray start-up checks and one Ray Tune stage;
* :mod:`~experiments.launch.callbacks`: the Tune callback and stopper, talking to the ledger through the
  :class:`~experiments.launch.callbacks.TrialEvents` protocol (they import Ray: loaded only when a stage runs);
* :mod:`~experiments.launch.launch_run`: the launch's own run (takeover, heartbeat, counts, headline, notify);
* :mod:`~experiments.launch.ledger`: the trials' runs and states (the only writer of ``ablate.state``);
* :mod:`~experiments.launch.artifacts`: backbones fetched, training states deleted;
* :mod:`~experiments.launch.context`: options, results and the :class:`LaunchContext` passed down.

Inside a Ray worker, :mod:`experiments.launch.trial` runs the trainer. A dry run never loads Ray.
"""

from trainers.lazy import lazy_exports

# name -> its module, imported on first use (trainers/lazy.py): a Ray worker importing experiments.launch.trial, or
# `ablate stop` its control module, loads no launcher
_EXPORTS = {
    **dict.fromkeys(["delete_trial_checkpoints", "fetch_backbone", "record_checkpoint_epoch"],
                    "experiments.launch.artifacts"),
    **dict.fromkeys(["LaunchContext", "LaunchError", "LaunchOptions", "LaunchResult", "LaunchSetupError",
                     "TrialOutcome"], "experiments.launch.context"),
    **dict.fromkeys(["Launcher", "launch"], "experiments.launch.launcher"),
    **dict.fromkeys(["init_ray", "local_size", "loopback_only_ray", "oversized_requests", "tpe_search"],
                    "experiments.launch.ray_stage"),
    "resolve_data": "experiments.spaces",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["LaunchContext", "LaunchError", "LaunchOptions", "LaunchResult", "LaunchSetupError", "Launcher",
           "TrialOutcome", "delete_trial_checkpoints", "fetch_backbone", "init_ray", "launch", "local_size",
           "loopback_only_ray", "oversized_requests", "record_checkpoint_epoch", "resolve_data", "tpe_search"]
