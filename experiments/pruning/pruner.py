"""Optuna collapse pruner for SwAV pretraining, and the pruning settings of a search space.

SwAV can collapse: the encoder maps every image to one point, Sinkhorn returns uniform
codes and the loss sits at ln K for good (8.006 for K = 3000). A healthy run can touch
ln K *temporarily* (a queue switched on too early pushes the loss back up, then it falls
again), so the pruner waits for a streak of collapsed epochs and any decrease of the loss
below the band resets the streak.

Pieces, each usable alone:

- :class:`CollapsePruner`: an ``optuna.pruners.BasePruner`` (one decision method,
  :meth:`CollapsePruner.decide`; ``prune`` and ``explain`` read it).
- :func:`report_signals`: what a trial calls once per epoch: ``trial.report`` of one
  metric plus the collapse signals of that epoch as one user attribute.
- :func:`validate_pruning_settings` / :func:`make_pruner`: the ``pruning:`` section of a
  search space and the pruner of each stage.

This module imports Optuna but no Ray, so validating a space (``ablate launch --dry-run``)
never loads Ray. The Ray Tune scheduler that consults these pruners on the driver,
``OptunaPruningScheduler``, lives in :mod:`experiments.pruning.scheduler`.

How several signals travel through Optuna
-----------------------------------------
``Trial.report(value, step)`` stores one float per step, but collapse shows in several
signals. Each epoch therefore writes

- the intermediate value (``trial.report``): ``swav/loss_over_ln_k`` by default, so
  Optuna's own tools (plots, ``MedianPruner``, the ``PRUNED`` trial's value) see a number
  comparable across K;
- one user attribute ``ablate.signals@<step>`` holding a dict ``{metric name: value}`` of
  the collapse signals of that step (``swav/loss``, ``swav/loss_over_ln_k``,
  ``swav/embedding_std``, ``swav/prototypes_used``, ...).

One attribute per step (rather than one growing history per signal) is an append-only
write, like ``report``, so a replayed epoch after a restore overwrites itself and nothing
is read-modified-written. :class:`CollapsePruner` reads only the signal attributes and the
trial's params, never the intermediate values: Ray's ``OptunaSearch`` also writes
intermediate values on a shared trial, and the pruner must not depend on who wrote last.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner, PercentilePruner
from optuna.trial import FrozenTrial

from experiments.pruning.settings import (COLLAPSE_DEFAULTS, COLLAPSE_KEYS, PRUNING_DEFAULTS, check_collapse_settings,
                                          validate_pruning_settings)
from experiments.store.redaction import OPTUNA_STORAGE_ENV, picklable_url, url_from_state
from trainers.swav.collapse import collapse_label
from trainers.vocabulary import (
    ATTR_SIGNALS_PREFIX,
    STAGE_PRETRAIN,
    STAGE_RECORDS,
    SWAV_ASSIGNMENT_ENTROPY,
    SWAV_COLLAPSED,
    SWAV_EMBEDDING_STD,
    SWAV_KNN_TOP1,
    SWAV_KNN_TOP1_RANDOM,
    SWAV_LOSS,
    SWAV_LOSS_OVER_LN_K,
    SWAV_PROTOTYPES_USED,
    SWAV_PROTOTYPE_SPAN,
    SWAV_SCORE_STD,
    SWAV_TRUNK_RANK,
    SWAV_TRUNK_RANK_RANDOM,
)

if not os.environ.get("ABLATE_VERBOSE"):  # no "[I ...] A new study created in RDB" lines (`ablate --verbose`: back)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC_KEY = STAGE_RECORDS[STAGE_PRETRAIN].key_metric
"""The intermediate value reported to Optuna for pretraining trials (``swav/loss_over_ln_k``)."""

SIGNAL_KEYS: tuple[str, ...] = (
    SWAV_LOSS,
    SWAV_LOSS_OVER_LN_K,
    SWAV_EMBEDDING_STD,
    SWAV_PROTOTYPES_USED,
    SWAV_ASSIGNMENT_ENTROPY,
    SWAV_KNN_TOP1,
    SWAV_KNN_TOP1_RANDOM,
    SWAV_SCORE_STD,
    SWAV_PROTOTYPE_SPAN,
    SWAV_TRUNK_RANK,
    SWAV_TRUNK_RANK_RANDOM,
    SWAV_COLLAPSED,
)
"""Metrics stored per step for the collapse pruner (assignment entropy only for the record; the kNN
figures are judged only when ``knn_margin`` is set; ``swav/collapsed``, the trainer's own label from the
signals of :mod:`trainers.swav.collapse`, counts as a collapse signal with its reasons)."""


class EnvRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose pickled state never holds a password of its URL (see :func:`picklable_url`)."""

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = picklable_url(state["url"])
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        url = url_from_state(state["url"])
        if url is None:
            raise RuntimeError(f"the Optuna storage URL holds a password and is kept out of pickles: set "
                               f"${OPTUNA_STORAGE_ENV} to it in the process that restores this state")
        super().__setstate__({**state, "url": url})


# The pruner's inputs among a trial's params (OptunaPruningScheduler records them under these names
# from the trial's ``pretrain`` config; a plain Optuna objective suggests them under the same names).
PROTOTYPE_PARAM = "prototypes"
FEAT_DIM_PARAM = "feat_dim"
_DEFAULT_FEAT_DIM = 128  # SwAV's projection head output (2048 -> 128)


# ---------------------------------------------------------------------------
# Signals in and out of a trial
# ---------------------------------------------------------------------------


def signals_attr_key(step: int) -> str:
    """The user-attribute key that holds the collapse signals of ``step``."""
    return f"{ATTR_SIGNALS_PREFIX}{int(step)}"


def report_signals(
    trial: optuna.trial.Trial,
    metrics: Mapping[str, Any],
    step: int,
    metric_key: str = METRIC_KEY,
    signal_keys: Sequence[str] = SIGNAL_KEYS,
) -> dict[str, float]:
    """Report one epoch of a trial to Optuna: the intermediate value plus the collapse signals.

    Use it in a plain Optuna objective the same way the scheduler does::

        report_signals(trial, metrics, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    Args:
        trial: The running Optuna trial.
        metrics: One epoch's metrics as the trainer reports them.
        step: The epoch (1-based).
        metric_key: The metric reported with ``trial.report``; skipped when absent (the
            detection trainer reports ``det/AP50`` only at eval epochs).
        signal_keys: Metrics stored in the ``ablate.signals@<step>`` user attribute.

    Returns:
        The signals stored for this step (empty if none of ``signal_keys`` was present).

    Raises:
        ValueError: If ``step`` is negative or a reported metric is not a number.
    """
    if int(step) < 0:
        raise ValueError(f"step={step!r} is invalid: the epoch must be >= 0")
    signals = {key: _as_float(key, metrics[key]) for key in signal_keys if key in metrics}
    if signals:
        # Write the signals before the intermediate value: a pruner reading the trial after
        # report() must find both for this step.
        trial.set_user_attr(signals_attr_key(step), signals)
    if metric_key in metrics:
        trial.report(_as_float(metric_key, metrics[metric_key]), int(step))
    return signals


def signals_by_step(trial: FrozenTrial) -> dict[int, dict[str, float]]:
    """The collapse signals a trial recorded, keyed by step, in step order."""
    out: dict[int, dict[str, float]] = {}
    for key, value in trial.user_attrs.items():
        if not key.startswith(ATTR_SIGNALS_PREFIX) or not isinstance(value, Mapping):
            continue
        try:
            step = int(key[len(ATTR_SIGNALS_PREFIX):])
        except ValueError:
            continue
        out[step] = {str(k): float(v) for k, v in value.items()}
    return dict(sorted(out.items()))


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metric {key}={value!r} is not a number") from None


def _trial_param(trial: FrozenTrial, name: str) -> float | None:
    """The trial's numeric param ``name``, else its user attr of that name."""
    for source in (trial.params, trial.user_attrs):
        value = source.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


# ---------------------------------------------------------------------------
# The pruner
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CollapseDecision:
    """What :meth:`CollapsePruner.decide` concluded from a trial's history.

    Attributes:
        prune: Whether the trial should be pruned now.
        step: The latest step judged (None before the first report).
        reason: A one-line human-readable explanation (the ``ablate.prune_reason`` tag).
        streak: The collapsed steps ending at ``step`` that count toward ``patience``.
        values: The signals at ``step`` (``loss/ln K`` included when known).
    """

    prune: bool
    step: int | None
    reason: str
    streak: tuple[int, ...] = ()
    values: dict[str, float] = dataclasses.field(default_factory=dict)


class CollapsePruner(BasePruner):
    """Prune SwAV trials whose training has collapsed.

    After ``warmup_epochs``, a report *shows collapse* if any of these holds:

    - ``1 - delta <= loss / ln K <= 1 + delta``: the loss sits in the band at ln K, where
      uniform predictions put it whatever the codes. The band is two-sided: with collapsed
      embeddings Sinkhorn's codes are uniform, the cross-entropy is minimised by uniform
      predictions and the loss converges to ln K; a loss well *above* ln K means confident
      (if still wrong) predictions, which is a young or slow run, not a collapsed one (on the
      sample data healthy tiny runs sit at 1.05-1.10 for many epochs). The ratio is the
      trainer's own ``swav/loss_over_ln_k`` (computed with the K it trained). An objective
      that reports only the raw ``swav/loss`` gets it from the trial's ``prototypes`` param,
      so the same absolute loss 6.9 is collapse for K = 1000 (ln K = 6.908) and healthy for
      K = 3000 (ln K = 8.006);
    - ``swav/embedding_std < std_floor / sqrt(feat_dim)`` (``feat_dim`` from the params,
      default 128): every image maps to (nearly) one point;
    - ``swav/prototypes_used <= min_prototypes_used``: every image picks the same prototype.

    The trial is pruned when the last ``patience`` reports all show collapse. A report
    whose loss is below the band *and* lower than the previous report's resets the streak
    whatever the other signals say: a falling loss means the run is learning (this is how
    the queue transient survives). So does a drop of more than ``delta`` (in units of ln K)
    within the band or above it: a new run starts above ln K (confident, wrong predictions)
    and descends through the band, while a collapsed one sits flat at ln K. A non-finite signal prunes at once, warmup or not:
    the run cannot recover, and the trainer would fail on it anyway.

    Defaults, and why:

    - ``warmup_epochs=2``: a freshly initialised SwAV starts at loss ~ ln K (near-uniform
      predictions) and the prototypes are frozen for the first iterations (about one
      epoch in the reference setup), so healthy runs sit in the band at first.
    - ``patience=4``: one epoch longer than a 3-epoch queue transient, so a run that climbs
      back to ln K for 2-3 epochs and then falls again survives. The earliest prune is at
      epoch ``warmup_epochs + patience`` = 6, 3 % of a 200-epoch budget. Raise it if your
      queue transients last longer.
    - ``delta=0.01``: collapse pins the loss to ln K up to batch noise; 1 % of ln K
      (0.08 nats for K = 3000) is well above that noise and well below where a learning
      run sits.
    - ``std_floor=0.1``: L2-normalised embeddings spread over the sphere have a
      per-dimension std of about ``1 / sqrt(feat_dim)`` (0.088 for 128); collapse drives
      it to ~0. A tenth of the spread value (0.0088) is far from both.
    - ``min_prototypes_used=1``: one prototype winning every image is collapse of the
      prototype layer even before the loss settles.

    ``std_floor=0`` and ``min_prototypes_used=0`` switch those signals off.

    A further signal, off by default (``knn_margin=None``): with ``knn_margin=m``, a report
    *shows collapse* when the latest ``swav/knn_top1`` (the kNN monitor's figure, carried
    forward between the epochs it runs) is at most ``swav/knn_top1_random + m``: after warm-up
    the features still classify the labeled objects no better than the run's random trunk. A
    kNN figure higher than the previous one resets the streak like a falling loss: a run whose
    kNN improves is never pruned. It is off by default because on easy objects a random trunk
    already scores near 100 % (the shapes sample: nothing left to beat), and because the
    monitor's accuracy on a few hundred objects moves by a few points from noise alone.

    Args:
        warmup_epochs: Reports at steps <= this are not judged (except for non-finite values).
        patience: Consecutive collapsed reports needed to prune (>= 1).
        delta: Width of the band below ln K, as a fraction of ln K (0 <= delta < 1).
        std_floor: Embedding-std floor in units of ``1 / sqrt(feat_dim)`` (>= 0).
        min_prototypes_used: Prune signal when at most this many prototypes are used (>= 0).
        knn_margin: Prune signal when kNN top-1 <= the random trunk's + this (0 <= m < 1); None: off.

    Raises:
        ValueError: On an invalid argument, naming it.
    """

    def __init__(
        self,
        warmup_epochs: int = COLLAPSE_DEFAULTS["warmup_epochs"],
        patience: int = COLLAPSE_DEFAULTS["patience"],
        delta: float = COLLAPSE_DEFAULTS["delta"],
        std_floor: float = COLLAPSE_DEFAULTS["std_floor"],
        min_prototypes_used: int = COLLAPSE_DEFAULTS["min_prototypes_used"],
        knn_margin: float | None = COLLAPSE_DEFAULTS["knn_margin"],
    ) -> None:
        check_collapse_settings(warmup_epochs, patience, delta, std_floor, min_prototypes_used, knn_margin)
        self._warmup_epochs = int(warmup_epochs)
        self._patience = int(patience)
        self._delta = float(delta)
        self._std_floor = float(std_floor)
        self._min_prototypes_used = int(min_prototypes_used)
        self._knn_margin = None if knn_margin is None else float(knn_margin)

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        """Optuna's hook (called by ``trial.should_prune()``): whether ``trial`` collapsed."""
        return self.decide(trial).prune

    def explain(self, trial: FrozenTrial) -> str:
        """The human-readable reason for the current decision on ``trial``.

        For example ``"collapse for 4 consecutive epochs (epochs 3-6): loss/ln K = 0.998 within 1 ± 0.01;
        embedding_std 0.0001 < 0.0088"``, or ``"no prune at epoch 9: loss/ln K = 0.850 < 0.99"``.
        The scheduler stores it as the ``ablate.prune_reason`` tag.
        """
        return self.decide(trial).reason

    def decide(self, trial: FrozenTrial) -> CollapseDecision:
        """Judge a trial from its recorded signals (see the class docstring for the rule)."""
        history = signals_by_step(trial)
        if not history:
            return CollapseDecision(False, None, "no collapse signals reported yet")
        k = _trial_param(trial, PROTOTYPE_PARAM)
        ln_k = math.log(k) if k is not None and k >= 2 else None
        feat_dim = _trial_param(trial, FEAT_DIM_PARAM) or float(_DEFAULT_FEAT_DIM)
        band = 1.0 - self._delta
        std_min = self._std_floor / math.sqrt(feat_dim)

        streak: list[int] = []
        previous_ratio: float | None = None
        knn: float | None = None  # the latest kNN figure, carried forward between the epochs it runs
        step, values, fired = 0, {}, []
        for step, signals in history.items():
            values = dict(signals)
            ratio = self._ratio(signals, ln_k)
            if ratio is not None:
                values["loss/ln K"] = ratio
            bad = [name for name, v in values.items() if not math.isfinite(v)]
            if bad:
                reason = f"non-finite {', '.join(f'{n} = {values[n]}' for n in bad)} at epoch {step}"
                return CollapseDecision(True, step, reason, (step,), values)

            fired = []
            if ratio is not None and band <= ratio <= 1.0 + self._delta:
                fired.append(f"loss/ln K = {ratio:.3f} within 1 ± {self._delta:g}")
            std = signals.get(SWAV_EMBEDDING_STD)
            if std is not None and std < std_min:
                fired.append(f"embedding_std {std:.2g} < {std_min:.2g}")
            used = signals.get(SWAV_PROTOTYPES_USED)
            if used is not None and used <= self._min_prototypes_used:
                fired.append(f"prototypes_used {used:g} <= {self._min_prototypes_used}")
            if signals.get(SWAV_COLLAPSED, 0.0) >= 0.5:  # the trainer's label (span, score std, trunk rank, rebound)
                fired.append(collapse_label(signals, int(feat_dim)) or "collapsed")
            knn_improved = False
            if self._knn_margin is not None:
                new_knn = signals.get(SWAV_KNN_TOP1)
                if new_knn is not None:
                    knn_improved = knn is not None and new_knn > knn
                    knn = new_knn
                random_knn = signals.get(SWAV_KNN_TOP1_RANDOM)
                if knn is not None and random_knn is not None and knn <= random_knn + self._knn_margin:
                    fired.append(f"kNN top-1 {knn:.3f} <= random trunk {random_knn:.3f} + {self._knn_margin:g}")
            # Progress beats every other signal: a loss falling below the band is learning, and so
            # is one still far above ln K that drops by more than the band's width in an epoch
            # (a fresh run descending from confident-but-wrong predictions, not one pinned at ln K).
            falling = knn_improved or ratio is not None and previous_ratio is not None and (
                (ratio < band and ratio < previous_ratio) or previous_ratio - ratio > self._delta)
            if ratio is not None:
                previous_ratio = ratio
            if step <= self._warmup_epochs:
                continue
            streak = streak + [step] if fired and not falling else []

        epochs = f"epoch {streak[0]}" if len(streak) == 1 else f"epochs {streak[0]}-{streak[-1]}" if streak else ""
        if len(streak) >= self._patience:
            reason = f"collapse for {len(streak)} consecutive epochs ({epochs}): {'; '.join(fired)}"
            return CollapseDecision(True, step, reason, tuple(streak), values)
        if step <= self._warmup_epochs:
            reason = f"no prune at epoch {step}: warmup ({self._warmup_epochs} epochs)"
        elif streak:
            reason = (
                f"no prune at epoch {step}: collapse signals for {len(streak)}/{self._patience} epochs "
                f"({epochs}): {'; '.join(fired)}"
            )
        else:
            ratio = values.get("loss/ln K")
            shown = f"loss/ln K = {ratio:.3f} < {band:.3g}" if ratio is not None else "no collapse signal"
            reason = f"no prune at epoch {step}: {shown}"
        return CollapseDecision(False, step, reason, tuple(streak), values)

    @staticmethod
    def _ratio(signals: Mapping[str, float], ln_k: float | None) -> float | None:
        # The trainer's own loss / ln K (SwAVEngine reports it each epoch with the K it trained);
        # recomputed from the trial's ``prototypes`` only for an objective that reports the raw loss.
        if SWAV_LOSS_OVER_LN_K in signals:
            return signals[SWAV_LOSS_OVER_LN_K]
        if ln_k is not None and SWAV_LOSS in signals:
            return signals[SWAV_LOSS] / ln_k
        return None


def make_pruner(stage: str, settings: Mapping[str, Any] | None = None) -> BasePruner:
    """The Optuna pruner for one stage of a launch.

    Args:
        stage: ``"pretrain"`` (collapse pruning) or ``"finetune"`` (optional median /
            percentile pruning on ``det/AP50``; off by default).
        settings: The search space's ``pruning:`` section (validated here).

    Returns:
        A :class:`CollapsePruner`, ``MedianPruner``, ``PercentilePruner`` or, when the
        stage's pruning is off, ``NopPruner``.

    Raises:
        ValueError: On an unknown stage or invalid settings.
    """
    if stage not in STAGE_RECORDS:
        raise ValueError(f"stage={stage!r} is invalid: choose one of {', '.join(STAGE_RECORDS)}")
    s = validate_pruning_settings(settings)
    if not s["enabled"]:
        return NopPruner()
    if stage == STAGE_PRETRAIN:
        return CollapsePruner(**{k: s[k] for k in COLLAPSE_KEYS})
    ft = s["finetune"]
    if ft["kind"] == "median":
        return MedianPruner(n_startup_trials=ft["n_startup_trials"], n_warmup_steps=ft["n_warmup_steps"])
    if ft["kind"] == "percentile":
        return PercentilePruner(
            float(ft["percentile"]), n_startup_trials=ft["n_startup_trials"], n_warmup_steps=ft["n_warmup_steps"]
        )
    return NopPruner()
