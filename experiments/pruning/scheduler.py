"""The Ray Tune scheduler that consults an Optuna pruner on the driver, and the compute pruning saved.

:class:`OptunaPruningScheduler` feeds every Ray trial's results to an Optuna study in an SQL
database (:func:`experiments.pruning.pruner.report_signals`) and stops the trial when
``trial.should_prune()`` says so; :func:`saved_compute` counts the epochs the pruned trials
did not run. The pruners themselves (:mod:`experiments.pruning.pruner`) import no Ray.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState
from ray.tune.experiment import Trial as RayTrial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from experiments.pruning.pruner import (
    FEAT_DIM_PARAM, METRIC_KEY, PROTOTYPE_PARAM, SIGNAL_KEYS, CollapsePruner, EnvRDBStorage,
    report_signals, signals_by_step,
)
from experiments.store.redaction import OPTUNA_STORAGE_ENV, picklable_url, redact, url_from_state
from trainers.vocabulary import ATTR_PRUNE_REASON, ATTR_RAY_TRIAL, STAGE_RECORDS



@dataclasses.dataclass(frozen=True)
class PruneRecord:
    """One pruned Ray trial, for the ``ablate.pruned`` / ``ablate.prune_reason`` MLflow tags.

    Attributes:
        trial_id: The Ray trial id.
        epoch: The step (epoch) at which it was stopped: its last reported epoch.
        reason: Why (from :meth:`CollapsePruner.explain`, or a generic line for other pruners).
        values: The monitored metrics at that epoch.
    """

    trial_id: str
    epoch: int
    reason: str
    values: dict[str, float]


class OptunaPruningScheduler(FIFOScheduler):
    """A Ray Tune scheduler whose stop decisions are Optuna's ``trial.should_prune()``.

    Runs on the driver. On a Ray trial's first result it attaches an Optuna trial of the
    study ``study_name`` in the SQL database ``storage_url`` (sqlite file by default,
    PostgreSQL in team mode); on each result it calls :func:`report_signals` and
    ``should_prune()``; a pruned trial is told ``PRUNED`` in Optuna, gets a
    :class:`PruneRecord` in :attr:`pruned`, and the scheduler returns ``STOP``. A
    finished trial is told ``COMPLETE`` (value: the last ``metric_key``; ``FAIL`` when
    that is missing or not finite); an errored one ``FAIL``.

    The Optuna trial records, as params, the pruner's inputs found in the Ray config
    (``prototypes`` and ``feat_dim``, read once as ``param_prefix + name`` in the config
    flattened with dots: ``trial.config.prototypes`` for a launch's trial payload). The
    pruner takes ``swav/loss_over_ln_k`` from the trainer's own report; ``prototypes`` is
    its input only for an objective that reports the raw loss. They are recorded with
    ``trial.suggest_int(name, v, v)``: a single-choice ``suggest_categorical`` would be the
    obvious way, but Optuna refuses a categorical parameter whose choices differ between
    trials of one study ("CategoricalDistribution does not support dynamic value space"),
    and K does differ. The Ray trial id is stored as user attr ``ablate.ray_trial_id``, so a
    driver restarted with ``Tuner.restore`` re-attaches to the still-running Optuna trial
    instead of opening a second one.

    Pickling: Ray pickles the ``TuneConfig`` (scheduler included) into ``tuner.pkl`` when
    the ``Tuner`` is built, so ``Tuner.restore`` can rebuild it; during ``fit`` it uses the
    object it was given (so :attr:`pruned` can be read afterwards), and the controller's
    experiment checkpoints leave the scheduler out. The Optuna study, storage and trial
    handles are opened lazily and dropped from the pickled state; only plain ids, values
    and records travel.

    Shared-trial (``tpe``) mode, ``share_optuna_search=True``: Ray's ``OptunaSearch``
    already opened an Optuna trial for each Ray trial in ``suggest`` (read with
    :func:`optuna_trial_of`). The scheduler finds the searcher through
    ``tune_controller.search_alg`` (:func:`find_optuna_search`), takes that trial's number, and opens the *same* trial of the same
    study through its own study handle, whose pruner is ours (the searcher's study runs
    ``NopPruner``). For that the searcher must use the same database and study name
    (``OptunaSearch(storage=optuna.storages.RDBStorage(storage_url), study_name=...)``) and the
    same ``metric`` as ``metric_key`` (it reports its metric at ``training_iteration`` on the
    same trial right after this scheduler). Both are checked on the first result. In this
    mode the searcher owns the trial's end: it tells ``COMPLETE`` / ``FAIL`` itself; the
    scheduler tells only ``PRUNED``, which the searcher cannot know about (its own later
    ``tell`` on the pruned trial fails and it logs a warning, which is expected).

    The Ray hooks and the Optuna side share the per-trial maps (Ray trial id -> Optuna trial, last
    step, handle), so they stay one class (its size is budgeted in tests/test_architecture.py). What
    needs none of them is in module functions (:func:`find_optuna_search`, :func:`optuna_trial_of`,
    :func:`saved_compute`).

    Args:
        storage_url: SQLAlchemy URL of the Optuna database (``sqlite:///mlruns/optuna.db``,
            ``postgresql+psycopg://...``).
        study_name: The Optuna study; created if missing (not in shared-trial mode).
        pruner: The Optuna pruner that decides (:func:`make_pruner`).
        metric_key: The metric reported as Optuna's intermediate value; results without it
            are passed through (``CONTINUE``).
        extra_signal_keys: Further metrics stored per step for the pruner (the
            ``ablate.signals@<step>`` user attr).
        param_prefix: Prefix of the pruner's inputs in the Ray config (``"pretrain."``).
        direction: The study's direction; None takes it from the stage records (:data:`trainers.vocabulary.STAGE_RECORDS`)
            (``"minimize"`` for ``swav/loss_over_ln_k``, ``"maximize"`` for ``det/AP50``)
            and refuses other metrics, since a wrong direction turns a median rule upside down.
        step_key: The result key used as the step; ``training_iteration`` equals the epoch
            when the trainer reports once per epoch.
        share_optuna_search: Shared-trial mode (see above).

    Raises:
        ValueError: On an invalid argument, naming it.
    """

    _supports_buffered_results = False  # decide on every epoch, not on a late batch of them

    def __init__(
        self,
        storage_url: str,
        study_name: str,
        pruner: BasePruner,
        metric_key: str = METRIC_KEY,
        extra_signal_keys: Sequence[str] = tuple(k for k in SIGNAL_KEYS if k != METRIC_KEY),
        param_prefix: str = "",
        direction: str | None = None,
        step_key: str = "training_iteration",
        share_optuna_search: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("storage_url", storage_url), ("study_name", study_name), ("metric_key", metric_key),
                            ("step_key", step_key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}={value!r} is invalid: a non-empty string")
        if not isinstance(pruner, BasePruner):
            raise ValueError(f"pruner={pruner!r} is invalid: an optuna.pruners.BasePruner (see make_pruner)")
        if isinstance(extra_signal_keys, str) or not all(isinstance(k, str) for k in extra_signal_keys):
            raise ValueError(f"extra_signal_keys={extra_signal_keys!r} is invalid: a sequence of metric names")
        if not isinstance(param_prefix, str):
            raise ValueError(f"param_prefix={param_prefix!r} is invalid: a string such as 'pretrain.'")
        if direction is None:
            # Known metrics only: a wrong guess would make MedianPruner prune the best trials.
            direction = {s.key_metric: s.direction for s in STAGE_RECORDS.values()}.get(metric_key)
            if direction is None:
                raise ValueError(
                    f"direction=None is invalid for metric_key={metric_key!r}: pass 'minimize' or 'maximize'"
                )
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction={direction!r} is invalid: choose one of minimize, maximize")
        if share_optuna_search and step_key != "training_iteration":
            raise ValueError(
                f"step_key={step_key!r} is invalid with share_optuna_search=True: OptunaSearch reports at "
                "'training_iteration', so the scheduler must too"
            )
        self.storage_url = storage_url
        self.study_name = study_name
        self.pruner = pruner
        self.metric_key = metric_key
        self.signal_keys = tuple(dict.fromkeys((metric_key, *extra_signal_keys)))
        self.param_prefix = param_prefix
        self.direction = direction
        self.step_key = step_key
        self.share_optuna_search = bool(share_optuna_search)
        self.pruned: dict[str, PruneRecord] = {}
        """Pruned Ray trials by Ray trial id."""
        self.optuna_numbers: dict[str, int] = {}
        """The Optuna trial number attached to each Ray trial id."""
        self._trial_ids: dict[str, int] = {}  # Ray trial id -> Optuna storage trial id
        self._last_step: dict[str, int] = {}
        self._last_value: dict[str, float] = {}
        self._finished: set[str] = set()
        self._storage: optuna.storages.BaseStorage | None = None
        self._study: optuna.Study | None = None
        self._handles: dict[str, optuna.trial.Trial] = {}

    # -- pickling: no database handles in the state --------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_storage=None, _study=None, _handles={}, storage_url=picklable_url(self.storage_url))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.storage_url = url_from_state(self.storage_url)

    # -- Optuna side ------------------------------------------------------------------------

    @property
    def study(self) -> optuna.Study:
        """The Optuna study, opened on first use (with this scheduler's pruner)."""
        if self._study is None:
            if self.storage_url is None:
                raise RuntimeError(f"the Optuna storage URL holds a password and is kept out of pickles: set "
                                   f"${OPTUNA_STORAGE_ENV} to it in the process that restores this scheduler")
            self._storage = EnvRDBStorage(self.storage_url)
            # The sampler is never asked for a real value (the only params are fixed ones),
            # so the cheapest one avoids TPE's per-trial search-space bookkeeping.
            sampler = optuna.samplers.RandomSampler(seed=0)
            if self.share_optuna_search:
                try:
                    self._study = optuna.load_study(
                        study_name=self.study_name, storage=self._storage, sampler=sampler, pruner=self.pruner
                    )
                except KeyError:
                    raise RuntimeError(
                        f"no Optuna study {self.study_name!r} in {redact(self.storage_url)}: with share_optuna_search=True, "
                        f"give OptunaSearch study_name={self.study_name!r} and "
                        f"storage=optuna.storages.RDBStorage({redact(self.storage_url)!r})"
                    ) from None
            else:
                self._study = optuna.create_study(
                    storage=self._storage,
                    study_name=self.study_name,
                    direction=self.direction,
                    sampler=sampler,
                    pruner=self.pruner,
                    load_if_exists=True,
                )
        return self._study

    def _handle(self, ray_trial_id: str) -> optuna.trial.Trial:
        handle = self._handles.get(ray_trial_id)
        if handle is None:
            # A trial this study handle did not create itself (OptunaSearch's, a restored
            # driver's, or after unpickling): Optuna's storage cache only accepts params for
            # trials it has seen, and reading the study's trials is how it sees them.
            self.study.get_trials(deepcopy=False)
            handle = optuna.trial.Trial(self.study, self._trial_ids[ray_trial_id])
            self._handles[ray_trial_id] = handle
        return handle

    @property
    def _rdb(self) -> optuna.storages.BaseStorage:
        """The storage itself, for lookups by id (the study wraps it in Optuna's cache)."""
        study = self.study
        if self._storage is None:  # unreachable: opening the study sets it
            raise RuntimeError(f"Optuna storage for study {study.study_name!r} is not open")
        return self._storage

    def _storage_trial_id(self, number: int) -> int:
        study_id = self._rdb.get_study_id_from_name(self.study_name)
        return self._rdb.get_trial_id_from_study_id_trial_number(study_id, number)

    def _attach(self, tune_controller: Any, trial: RayTrial) -> optuna.trial.Trial:
        """Find or create the Optuna trial of a Ray trial on its first result."""
        ray_id = trial.trial_id
        if self.share_optuna_search:
            number = self._optuna_search_number(tune_controller, ray_id)
            self._trial_ids[ray_id] = self._storage_trial_id(number)
            handle = self._handle(ray_id)
        else:
            running = [
                t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get(ATTR_RAY_TRIAL) == ray_id
            ]
            if running:  # a restored driver: keep reporting into the trial it opened before
                self._trial_ids[ray_id] = self._storage_trial_id(running[0].number)
                handle = self._handle(ray_id)
            else:
                handle = self.study.ask()
                self._handles[ray_id] = handle
                self._trial_ids[ray_id] = self._storage_trial_id(handle.number)
        # Steps already in the trial (a restored driver or trial) are replays, not news.
        frozen = self._rdb.get_trial(self._trial_ids[ray_id])
        self._last_step[ray_id] = max((*frozen.intermediate_values, *signals_by_step(frozen)), default=-1)
        handle.set_user_attr(ATTR_RAY_TRIAL, ray_id)
        self._record_params(handle, trial.config)
        self.optuna_numbers[ray_id] = handle.number
        return handle

    def _record_params(self, handle: optuna.trial.Trial, config: Mapping[str, Any]) -> None:
        flat = _flatten(config)
        for name in (PROTOTYPE_PARAM, FEAT_DIM_PARAM):
            if name in handle.params:
                continue  # the searcher already has it as a real param
            value = flat.get(self.param_prefix + name)
            if isinstance(value, int) and not isinstance(value, bool):
                handle.suggest_int(name, value, value)

    def _optuna_search_number(self, tune_controller: Any, ray_trial_id: str) -> int:
        searcher = find_optuna_search(tune_controller)
        if searcher.metric != self.metric_key:
            raise RuntimeError(
                f"OptunaSearch metric {searcher.metric!r} differs from the scheduler's metric_key {self.metric_key!r}: "
                "both write the shared trial's intermediate value at each step, so they must report the same metric"
            )
        ot_trial = optuna_trial_of(searcher, ray_trial_id)
        searcher_study = ot_trial.study.study_name
        if searcher_study != self.study_name:
            raise RuntimeError(
                f"OptunaSearch uses study {searcher_study!r} but the scheduler study_name is {self.study_name!r}"
            )
        try:
            stored = self._rdb.get_trial_params(self._storage_trial_id(ot_trial.number))
        except KeyError:
            stored = None
        # The stored trial may hold more params (the ones this scheduler records), never others.
        if stored is None or any(stored.get(k, object()) != v for k, v in ot_trial.params.items()):
            raise RuntimeError(
                f"Optuna trial {ot_trial.number} of study {self.study_name!r} is not the one OptunaSearch opened: "
                f"give OptunaSearch storage=optuna.storages.RDBStorage({redact(self.storage_url)!r})"
            )
        return ot_trial.number

    # -- Ray side ---------------------------------------------------------------------------

    def on_trial_result(self, tune_controller: Any, trial: RayTrial, result: dict) -> str:
        """Report the epoch to Optuna and return ``STOP`` if its pruner says so."""
        ray_id = trial.trial_id
        if ray_id in self.pruned:
            return TrialScheduler.STOP
        if not any(k in result for k in self.signal_keys):
            return TrialScheduler.CONTINUE
        if self.step_key not in result:
            raise ValueError(f"OptunaPruningScheduler: result of trial {ray_id} has no step key {self.step_key!r}")
        step = int(result[self.step_key])
        if ray_id not in self._trial_ids:
            self._attach(tune_controller, trial)
        if step <= self._last_step.get(ray_id, -1):
            # A restored trial replays epochs it already reported; the decision then was CONTINUE.
            return TrialScheduler.CONTINUE
        handle = self._handle(ray_id)
        report_signals(handle, result, step, self.metric_key, self.signal_keys)
        self._last_step[ray_id] = step
        if self.metric_key in result:
            self._last_value[ray_id] = float(result[self.metric_key])
        if not handle.should_prune():
            return TrialScheduler.CONTINUE

        frozen = self._rdb.get_trial(self._trial_ids[ray_id])
        values = {k: float(result[k]) for k in self.signal_keys if k in result}
        if isinstance(self.pruner, CollapsePruner):
            reason = self.pruner.explain(frozen)
        else:
            shown = f"{self.metric_key} = {self._last_value[ray_id]:.4g}" if ray_id in self._last_value else "no value"
            reason = f"{type(self.pruner).__name__} at epoch {step}: {shown}"
        handle.set_user_attr(ATTR_PRUNE_REASON, reason)
        self.study.tell(handle, state=TrialState.PRUNED)
        self.pruned[ray_id] = PruneRecord(trial_id=ray_id, epoch=step, reason=reason, values=values)
        self._finished.add(ray_id)
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: RayTrial, result: dict) -> None:
        """Tell Optuna ``COMPLETE`` with the last metric (``FAIL`` if there is none)."""
        ray_id = trial.trial_id
        if ray_id not in self._trial_ids or ray_id in self._finished:
            return
        self._finished.add(ray_id)
        if self.share_optuna_search:
            return  # OptunaSearch tells COMPLETE / FAIL for its own trials
        value = result.get(self.metric_key, self._last_value.get(ray_id)) if result else self._last_value.get(ray_id)
        if value is not None and math.isfinite(float(value)):
            self.study.tell(self._handle(ray_id), float(value), state=TrialState.COMPLETE)
        else:
            self.study.tell(self._handle(ray_id), state=TrialState.FAIL)
        self._handles.pop(ray_id, None)

    def on_trial_error(self, tune_controller: Any, trial: RayTrial) -> None:
        """Tell Optuna ``FAIL`` for a trial that raised (one with no result has no Optuna trial)."""
        self._fail(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: RayTrial) -> None:
        """A paused or pending trial removed before finishing counts as failed in Optuna."""
        self._fail(trial.trial_id)

    def _fail(self, ray_id: str) -> None:
        if ray_id not in self._trial_ids or ray_id in self._finished:
            return
        self._finished.add(ray_id)
        if not self.share_optuna_search:
            self.study.tell(self._handle(ray_id), state=TrialState.FAIL)
        self._handles.pop(ray_id, None)

    def debug_string(self) -> str:
        """One line for Ray's progress output."""
        return (
            f"OptunaPruningScheduler: study {self.study_name!r}, pruner {type(self.pruner).__name__}, "
            f"{len(self.pruned)} pruned of {len(self._trial_ids)} trials"
        )


def find_optuna_search(tune_controller: Any) -> Any:
    """The ``OptunaSearch`` behind a controller's ``search_alg`` (unwrapping ``SearchGenerator``, ``ConcurrencyLimiter``).

    Raises:
        RuntimeError: there is none.
    """
    from ray.tune.search.optuna import OptunaSearch

    searcher = getattr(tune_controller, "search_alg", None)
    while searcher is not None and not isinstance(searcher, OptunaSearch):
        searcher = getattr(searcher, "searcher", None)
    if searcher is None:
        raise RuntimeError(
            "OptunaPruningScheduler(share_optuna_search=True) needs tune.TuneConfig(search_alg=OptunaSearch(...)); "
            "no OptunaSearch was found behind the controller's search_alg"
        )
    return searcher


def optuna_trial_of(searcher: Any, ray_trial_id: str) -> optuna.trial.Trial:
    """The Optuna trial ``OptunaSearch`` opened for a Ray trial in ``suggest``.

    Ray offers no public way to this: Ray 2.60 keeps the trials in the private dict
    ``OptunaSearch._ot_trials`` (Ray trial id -> ``optuna.trial.Trial``). This is the one place
    that reads it; tests/experiments/pruning/test_scheduler.py fails when a Ray release changes it.

    Raises:
        RuntimeError: the searcher has no such dict (a changed Ray) or no trial for ``ray_trial_id``.
    """
    trials = getattr(searcher, "_ot_trials", None)
    if not isinstance(trials, Mapping):
        import ray

        raise RuntimeError(f"OptunaSearch of Ray {ray.__version__} keeps no `_ot_trials` dict: the scheduler's "
                           "shared-trial mode needs updating to this Ray release (experiments/pruning/scheduler.py)")
    ot_trial = trials.get(ray_trial_id)
    if ot_trial is None:
        raise RuntimeError(f"OptunaSearch has no Optuna trial for Ray trial {ray_trial_id}")
    return ot_trial


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` flattened with dots; a dataclass value (a launch's ``TrialPayload``) counts as a mapping of its fields."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------


def saved_compute(
    records: Mapping[str, PruneRecord] | Iterable[PruneRecord], budgets: Mapping[str, int]
) -> dict[str, float]:
    """How much training the pruned trials did not run.

    Args:
        records: The scheduler's :attr:`OptunaPruningScheduler.pruned` (or its values).
        budgets: Each pruned trial's budget in epochs, by Ray trial id.

    Returns:
        ``{"epochs_budgeted", "epochs_run", "epochs_saved", "fraction_saved"}`` over the
        pruned trials; ``fraction_saved`` is 0.0 when nothing was pruned.

    Raises:
        ValueError: If a pruned trial has no budget, or stopped after its budget.
    """
    items = list(records.values()) if isinstance(records, Mapping) else list(records)
    budgeted = run = 0
    for record in items:
        if record.trial_id not in budgets:
            raise ValueError(f"saved_compute: no budget for pruned trial {record.trial_id}")
        budget = int(budgets[record.trial_id])
        if not 0 <= record.epoch <= budget:
            raise ValueError(
                f"saved_compute: trial {record.trial_id} stopped at epoch {record.epoch}, "
                f"outside its budget of {budget}"
            )
        budgeted += budget
        run += record.epoch
    saved = budgeted - run
    return {
        "epochs_budgeted": budgeted,
        "epochs_run": run,
        "epochs_saved": saved,
        "fraction_saved": saved / budgeted if budgeted else 0.0,
    }
