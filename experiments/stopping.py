"""The driver's side of ``ablate stop``: a Ray Tune stopper that acts on stop requests in the tracking store.

Ray consults a ``tune.Stopper`` on every result a trial reports (once per epoch here) before the
scheduler: :class:`StopRequestStopper` answers True for a trial whose run, or whose launch run,
carries ``ablate.stop_requested`` (:mod:`experiments.control`). That result's checkpoint is kept,
Ray ends the trial as TERMINATED and the launch records it as ``stopped``. ``stop_all`` ends the
stage once a launch-wide request is in and no trial is running any more, so no pending trial
starts; Ray calls it on every step of its event loop, so it is also where the driver's heartbeat
is refreshed while epochs are long. This module imports Ray; the launch imports it only when a
stage runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray import tune

if TYPE_CHECKING:
    from experiments.launch import Launcher


class StopRequestStopper(tune.Stopper):
    """Stops trials (and the stage) that ``ablate stop`` asked to stop.

    Args:
        launcher: the launch whose stage this is; it reads the requests and records the outcome.
        stage: ``pretrain`` or ``finetune``.
    """

    def __init__(self, launcher: Launcher, stage: str) -> None:
        self.launcher: Launcher | None = launcher
        self.stage = stage

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the run config (stopper included) into tuner.pkl; the launcher stays out of it
        return {**self.__dict__, "launcher": None}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.launcher is not None and self.launcher.stop_due(trial_id, int(result.get("epoch", 0) or 0))

    def stop_all(self) -> bool:
        return self.launcher is not None and self.launcher.stage_stop_due()
