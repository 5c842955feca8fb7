"""experiments.launch.estimate: the dry run's duration, from the seconds per epoch of the store's finished runs of the
same stage, architecture, input size and images per epoch."""

from __future__ import annotations

from types import SimpleNamespace

from experiments.launch.estimate import estimate_lines, measured_rates
from trainers.vocabulary import STAGE_FINETUNE, STAGE_PRETRAIN, TAG_PRUNED, TAG_STAGE

PRE = {"arch": "resnet18", "crops": [{"count": 2, "size": 32}], "batch_size": 8, "max_images": 16}
FT = {"arch": "resnet18", "min_size": 128, "max_size": 128, "batch_size": 2, "max_iters_per_epoch": 2}


def _params(stage: str, config: dict, epochs: int) -> dict[str, str]:
    from experiments.store.tracking import flatten_params

    return flatten_params(stage, {**config, "epochs": epochs})


def _run(stage: str, config: dict, epochs: int, seconds: float, pruned: bool = False, ended: bool = True):
    return SimpleNamespace(
        info=SimpleNamespace(start_time=1_000_000, end_time=1_000_000 + int(seconds * 1000) if ended else None,
                             status="FINISHED"),
        data=SimpleNamespace(params=_params(stage, config, epochs), tags={TAG_STAGE: stage,
                                                                          TAG_PRUNED: str(pruned).lower()}))


class _Client:
    """The two reads measured_rates makes of a store: its experiments, and one stage's finished runs."""

    def __init__(self, runs: list) -> None:
        self.runs = runs
        self.filters: list[str] = []

    def search_experiments(self):
        return [SimpleNamespace(experiment_id="1"), SimpleNamespace(experiment_id="2")] if self.runs else []

    def search_runs(self, experiment_ids, filter_string, run_view_type, max_results):
        self.filters.append(filter_string)
        return [r for r in self.runs if f"= '{r.data.tags[TAG_STAGE]}'" in filter_string]


def test_the_rate_is_the_median_seconds_per_epoch_of_finished_unpruned_runs_of_the_same_shape():
    runs = [_run(STAGE_PRETRAIN, PRE, 2, 20.0), _run(STAGE_PRETRAIN, PRE, 4, 60.0), _run(STAGE_PRETRAIN, PRE, 1, 30.0),
            _run(STAGE_PRETRAIN, PRE, 2, 500.0, pruned=True),  # pruned: its epochs say nothing of a full run's
            _run(STAGE_PRETRAIN, PRE, 2, 500.0, ended=False),
            _run(STAGE_PRETRAIN, {**PRE, "batch_size": 16}, 2, 8.0),  # another shape
            _run(STAGE_FINETUNE, FT, 1, 7.0)]
    client = _Client(runs)
    rates = measured_rates(client)
    pre_key = (STAGE_PRETRAIN, ("resnet18", '[{"count":2,"size":32}]', "8", "16"))
    assert rates == {pre_key: 15.0, (STAGE_PRETRAIN, pre_key[1][:2] + ("16", "16")): 4.0,
                     (STAGE_FINETUNE, ("resnet18", "128", "128", "2", "2")): 7.0}
    assert all("attributes.status = 'FINISHED'" in f for f in client.filters)
    assert measured_rates(_Client([])) == {}  # an empty store: no experiment, nothing measured


def _plan() -> SimpleNamespace:
    pre = [SimpleNamespace(config_hash=f"p{i}", config={**PRE, "epochs": 10}) for i in range(2)]
    ft = [SimpleNamespace(config_hash="f0", config={**FT, "epochs": 3}),
          SimpleNamespace(config_hash="f1", config={**FT, "arch": "resnet50", "epochs": 3})]
    return SimpleNamespace(pretrain=pre, finetune=ft)


def test_a_stage_takes_its_trials_epochs_times_the_rate_over_the_trials_at_once():
    rates = measured_rates(_Client([_run(STAGE_PRETRAIN, PRE, 2, 36.0), _run(STAGE_FINETUNE, FT, 1, 10.0)]))
    # pretraining: 2 trials x 10 epochs x 18 s / 2 at once = 180 s; fine-tuning 3 x 10 s / 2 = 15 s
    assert estimate_lines(_plan(), ["p0", "p1", "f0", "f1"], rates, max_concurrent=2) == [
        "estimate: ~3 min (pretraining ~3 min, fine-tuning ~15 s), from the seconds per epoch of finished runs in "
        "this store; 1 trial(s) have no such run and are not counted"]
    assert estimate_lines(_plan(), ["f0"], rates, 1) == [
        "estimate: ~30 s (fine-tuning ~30 s), from the seconds per epoch of finished runs in this store"]


def test_nothing_to_train_or_nothing_measured_says_so():
    assert estimate_lines(_plan(), [], {}, 1) == [
        "estimate: nothing to train (every trial of the plan finished in an earlier launch)"]
    assert estimate_lines(_plan(), ["p0", "f1"], {}, 1)[0].startswith(
        "estimate: no estimate yet (no finished run in this store trained the same architecture and input size")
