"""experiments.launch.waves: the waves of adaptive fine-tuning seeds. Which cells take part, which trials each wave
trains, what the judge is shown (only the seeds run so far), when the waves end, and the tags every cell's runs get.

The judge (experiments.launch.adaptive.next_wave, tested in test_adaptive.py) is replaced by a script of its answers.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from experiments.launch import waves as W
from experiments.launch.adaptive import Wave
from experiments.launch.ledger import trial_cell
from experiments.spaces import AdaptiveSeeds, FinetuneTrial, Resources
from trainers.vocabulary import DET_AP50, STAGE_FINETUNE, TAG_AXES, TAG_CELL_SEEDS, TAG_SEEDS_STOP


def _trial(head: str, seed: int, upstream: str | None = None) -> FinetuneTrial:
    return FinetuneTrial({"head": head, "seed": seed}, upstream, seed, f"{head}{seed}", f"scratch · {head} · seed{seed}",
                         "scratch")


class _Tracker:
    """The tracker's reads and writes SeedWaves makes: every planned trial has a run."""

    def __init__(self, hashes: list[str]) -> None:
        self.runs = {h: SimpleNamespace(info=SimpleNamespace(run_id=f"run-{h}")) for h in hashes}
        self.tags: dict[str, dict[str, str]] = {}
        self.experiment_id = "1"
        self.client = SimpleNamespace(get_experiment=lambda eid: SimpleNamespace(tags={TAG_AXES: "finetune.head,"}))

    def runs_by_hash(self, stage: str) -> dict:
        assert stage == STAGE_FINETUNE
        return dict(self.runs)

    def set_tags(self, run_id: str, tags: dict) -> None:
        self.tags[run_id] = dict(tags)


@pytest.fixture
def study(monkeypatch):
    """Two cells of 4 seeds (2 initial) and a third on a backbone that did not survive; the judge's script."""
    trials = [_trial(h, s) for h in ("mlp", "res5") for s in range(4)] + [_trial("fpn", s, "dead") for s in range(4)]
    plan = SimpleNamespace(finetune=[t for t in trials if t.seed < 2], reserve=[t for t in trials if t.seed >= 2])
    out = io.StringIO()
    ctx = SimpleNamespace(spec=SimpleNamespace(adaptive=AdaptiveSeeds(2, 4), finetune=SimpleNamespace(resources=Resources())),
                          data_fingerprint="fp", tracker=_Tracker([t.config_hash for t in trials]), out=out,
                          say=lambda text: print(text, file=out))
    cell = {h: trial_cell(ctx, _trial(h, 0)) for h in ("mlp", "res5")}
    script = [Wave(extend=[cell["mlp"]], stopped={cell["res5"]: "decided"}),
              Wave(extend=[cell["mlp"]], stopped={cell["res5"]: "decided"}),
              Wave(stopped={cell["mlp"]: "max", cell["res5"]: "decided"})]
    asked: list[dict] = []

    def judge(results, axes, attempted, plan_, trials_run, metric, cost=None):
        asked.append({"results": results, "axes": axes, "attempted": dict(attempted), "trials_run": trials_run,
                      "metric": metric, "cost": cost})
        return script[len(asked) - 1]

    monkeypatch.setattr(W, "next_wave", judge)
    monkeypatch.setattr(W, "trials_from_runs", lambda runs, axes, metric: sorted(r.info.run_id for r in runs))
    return SimpleNamespace(ctx=ctx, plan=plan, cell=cell, asked=asked, out=out)


def test_the_cells_in_contention_get_one_more_seed_a_wave_until_the_judge_stops_them(study):
    waves: list[tuple[list[str], int]] = []
    seed_waves = W.SeedWaves(study.ctx, study.plan, lambda t: t.upstream_hash != "dead",
                             lambda trials, number: waves.append(([t.name for t in trials], number)), lambda: False)
    mlp, res5 = study.cell["mlp"], study.cell["res5"]
    assert set(seed_waves.cells) == {mlp, res5} and seed_waves.attempted == {mlp: 2, res5: 2}
    seed_waves.run()
    assert waves == [(["scratch · mlp · seed2"], 2), (["scratch · mlp · seed3"], 3)]
    first, second, last = study.asked
    assert first["attempted"] == {mlp: 2, res5: 2} and first["trials_run"] == 4 and first["axes"] == ["finetune.head"]
    assert first["results"] == ["run-mlp0", "run-mlp1", "run-res50", "run-res51"]  # the seeds run so far, no more
    assert first["cost"] == {mlp: 1, res5: 1} and first["metric"] == DET_AP50
    assert second["attempted"] == {mlp: 3, res5: 2} and "run-mlp2" in second["results"]
    assert last["attempted"] == {mlp: 4, res5: 2} and last["cost"] == {res5: 1}  # mlp has no seed left
    tags = study.ctx.tracker.tags
    assert {r: t for r, t in tags.items() if r.startswith("run-mlp")} == {
        f"run-mlp{s}": {TAG_CELL_SEEDS: "4", TAG_SEEDS_STOP: "max"} for s in range(4)}
    assert {r: t for r, t in tags.items() if r.startswith("run-res5")} == {
        f"run-res5{s}": {TAG_CELL_SEEDS: "2", TAG_SEEDS_STOP: "decided"} for s in range(2)}
    assert not any(r.startswith("run-fpn") for r in tags)
    log = study.out.getvalue()
    assert "adaptive seeds: wave 2: 1 cell(s) still in contention get one more seed; stopped: 1 decided" in log
    assert log.splitlines()[-1] == ("adaptive seeds: 6 fine-tuning trials over 2 cells (at most 4 seeds each); why the "
                                    "cells stopped: 1 decided, 1 max")


def test_a_stop_request_ends_the_waves_before_the_next_and_the_cells_say_stopped(study):
    waves: list = []
    W.SeedWaves(study.ctx, study.plan, lambda t: True, lambda trials, number: waves.append(number), lambda: True).run()
    assert waves == [] and study.asked == []
    assert {t[TAG_SEEDS_STOP] for t in study.ctx.tracker.tags.values()} == {"stopped"}
    assert len(study.ctx.tracker.tags) == 6  # the initial 2 seeds of 3 cells
    assert study.out.getvalue().rstrip().endswith("why the cells stopped: stopped")
