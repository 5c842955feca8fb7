"""Adaptive seeds: the space's `seeds: {initial, max}`, the waves' policy, and a launch killed between waves."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from experiments import spaces
from experiments.launch.adaptive import AdaptiveSeeds, next_wave
from experiments.results.headline import TrialResult
from experiments.results.verdict import sequential_alpha
from tests import fake_detector
from trainers import vocabulary as V

ROOT = Path(__file__).resolve().parents[3]
AXES = ["finetune.head", "finetune.norm"]
CELLS = {f"{h}·{n}": (h, n) for h in ("mlp", "res5") for n in ("bn", "gn")}


def space(tmp_path: Path, seeds, **extra) -> Path:
    raw = {"name": "adaptive_study", "data": {"sample": {"size": "small", "seed": 0}}, "seeds": seeds,
           "max_concurrent": 2, "pruning": {"enabled": False},
           "finetune": {"fixed": {"epochs": 1, "backbone": "scratch", "batch_size": 2, "workers": 0,
                                  "figure_images": 0, "lr_scheme": "uniform"},
                        "grid": {"head": ["mlp", "res5"], "norm": ["bn", "gn"]}, "resources": {"cpu": 1}}, **extra}
    path = tmp_path / "adaptive_study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_space_says_initial_max_and_budget(tmp_path: Path) -> None:
    spec = spaces.load_space(space(tmp_path, {"initial": 2, "max": 6, "budget_trials": 20}))
    assert spec.seeds == (0, 1) and spec.adaptive == AdaptiveSeeds(2, 6, 20)
    assert spec.adaptive.looks == 5 and 0.0157 < sequential_alpha(spec.adaptive.looks) < 0.0159  # Pocock, 5 looks
    assert AdaptiveSeeds.parse(spec.adaptive.tag()) == spec.adaptive and AdaptiveSeeds.parse("") is None
    assert spaces.load_space(space(tmp_path, [0, 1, 2])).adaptive is None  # a list means what it always meant
    for seeds, field, message in (({"initial": 3, "max": 2}, "seeds.max", "below seeds.initial"),
                                  ({"initial": 2}, "seeds.max", "missing"),
                                  ({"initial": 0, "max": 2}, "seeds.initial", "integer >= 1"),
                                  ({"initial": 2, "max": 4, "most": 9}, "seeds", "most")):
        with pytest.raises(spaces.SpaceError, match=f"{field}.*{message}|{message}.*{field}"):
            spaces.load_space(space(tmp_path, seeds))


def _predicted_waves(plan: AdaptiveSeeds) -> tuple[dict[str, int], dict[str, str], list[list[str]]]:
    """The waves a launch of the test space must walk, from the stand-in trainer's known values."""
    attempted = dict.fromkeys(CELLS, plan.initial)
    waves = []
    while True:
        trials = [TrialResult(f"{c}{s}", f"{c}{s}", c, "scratch", dict(zip(AXES, hn)), fake_detector.ap50(*hn, s))
                  for c, hn in CELLS.items() for s in range(attempted[c])]
        wave = next_wave(trials, AXES, attempted, plan, sum(attempted.values()), "det/AP50")
        if wave.done:
            return attempted, wave.stopped, waves
        waves.append(sorted(wave.extend))
        for c in wave.extend:
            attempted[c] += 1


def test_the_close_axis_keeps_its_contenders_the_clear_axis_stops_its_losers() -> None:
    attempted, stopped, waves = _predicted_waves(AdaptiveSeeds(2, 6))
    assert waves[0] == sorted(CELLS)  # two seeds decide nothing at the sequential level: everyone gets a third
    assert all(w == ["mlp·bn", "mlp·gn"] for w in waves[1:])  # then only the close axis's contenders
    assert attempted == {"mlp·bn": 6, "mlp·gn": 6, "res5·bn": 3, "res5·gn": 3}
    assert stopped == {"mlp·bn": "max", "mlp·gn": "max", "res5·bn": "decided", "res5·gn": "decided"}
    # a budget cuts the wave and says so
    _, cut, _ = _predicted_waves(AdaptiveSeeds(2, 6, budget_trials=10))
    assert Counter(cut.values())["budget"] >= 1


def _launch(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ABLATE_TRAINER_FINETUNE": "tests.fake_detector",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", "launch", *args, "--no-register"], cwd=cwd,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.mark.slow
def test_adaptive_launch_killed_between_waves_resumes_the_same_waves(tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from experiments.launch import LaunchOptions, launch

    monkeypatch.chdir(tmp_path)  # the dry runs' store and sample data: the launches' own
    path = space(tmp_path, {"initial": 2, "max": 6})
    out = io.StringIO()
    launch(path, LaunchOptions(dry_run=True, out=out))
    assert "fine-tuning: 8 trials (2 seeds; 8 on scratch); adaptive seeds: up to 24 trials (6 seeds per cell)" \
        in out.getvalue()

    first = _launch([str(path)], tmp_path, tmp_path / "first.log")
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None and \
            "adaptive seeds: wave 3" not in (tmp_path / "first.log").read_text():
        time.sleep(0.2)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(first.pid, signal.SIGKILL)  # between waves: no clean-up at all
    first.wait(timeout=60)
    second = _launch([str(path), "--resume"], tmp_path, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()

    attempted, stopped, waves = _predicted_waves(AdaptiveSeeds(2, 6))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("adaptive_study")
    runs = client.search_runs([exp.experiment_id], f"tags.`{V.TAG_STAGE}` = 'finetune'", max_results=100)
    hashes = Counter(r.data.tags[V.TAG_HASH] for r in runs)
    assert all(n == 1 for n in hashes.values()), f"duplicate trials: {hashes}"
    assert len(runs) == sum(attempted.values()) == 18 and all(r.info.status == "FINISHED" for r in runs)
    seeds = Counter((r.data.params["finetune.head"], r.data.params["finetune.norm"]) for r in runs)
    assert {f"{h}·{n}": k for (h, n), k in seeds.items()} == attempted
    for r in runs:
        cell = f"{r.data.params['finetune.head']}·{r.data.params['finetune.norm']}"
        assert r.data.tags[V.TAG_CELL_SEEDS] == str(attempted[cell]) and r.data.tags[V.TAG_SEEDS_STOP] == stopped[cell]
    # the relaunch reused what the first finished and walked the rest of the same waves
    assert "finetune reused" in log and f"wave {len(waves) + 1}: 2 cell(s) still in contention" in log
    assert "adaptive seeds: 18 fine-tuning trials over 4 cells" in log and "2 decided, 2 max" in log
    assert "norm: bn > gn by" in log and "undecided" in log and "head: mlp > res5 by" in log
    assert exp.tags["ablate.seeds"] == "initial=2,max=6" and "trials planned 18" in log
    from experiments.results.report import report

    text = report(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "adaptive_study", fmt="md")
    assert "adaptive seeds per cell" in text and "scratch_res50 · gn · res5 · uniform: 3 (decided)" in text
    # a dry run of the same shapes under another name: its duration from this store's measured epochs
    out = io.StringIO()
    launch(path, LaunchOptions(dry_run=True, out=out, name="adaptive_study_again",
                               tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"))
    assert "estimate: ~" in out.getvalue() and "from the seconds per epoch of finished runs" in out.getvalue()


def test_pretraining_seeds_make_one_cell_of_a_backbones_seeds(tmp_path: Path, sample_data) -> None:
    """`pretrain: {seeds: [0, 1]}`: each backbone setting pretrained twice; downstream, one cell over both."""
    from experiments.launch.ledger import cell_tag
    from experiments.testing.spaces import tiny_space, write_space

    raw = tiny_space("pseeds", pretrain_grid={"prototypes": [20, 30]})
    raw["pretrain"]["seeds"] = [0, 1]
    spec = spaces.load_space(write_space(tmp_path, raw))
    plan = spaces.expand(spec, "fp", {k: str(getattr(sample_data, k)) for k in spaces.DATA_PATH_KEYS})
    assert sorted(b.name for b in plan.pretrain) == ["res18_ep2_p20_s0", "res18_ep2_p20_s1", "res18_ep2_p30_s0",
                                                     "res18_ep2_p30_s1"]
    assert {b.config["seed"] for b in plan.pretrain} == {0, 1} and len({b.group for b in plan.pretrain}) == 2
    cells = {cell_tag(t.config, t.cell_upstream, t.cell_name, "fp", spec.finetune.resources) for t in plan.finetune}
    assert len(plan.finetune) == 4 and len(cells) == 2  # two backbone settings, each one cell over its seeds
    assert all(c.startswith("res18_ep2_p") and "_s" not in c.split(" · ")[0] for c in cells)
    assert spaces.axes_of(spec)["pretrain"] == ["prototypes"]  # the seed is no axis
    raw["pretrain"]["fixed"]["seed"] = 3
    with pytest.raises(spaces.SpaceError, match="also set by pretrain.seeds"):
        spaces.load_space(write_space(tmp_path, raw))
    raw["pretrain"]["fixed"].pop("seed")
    raw["finetune"]["seeds"] = [0]
    with pytest.raises(spaces.SpaceError, match="finetune.seeds: fine-tuning seeds are the top-level"):
        spaces.load_space(write_space(tmp_path, raw))


def test_a_pretraining_axis_holds_the_backbones_variance() -> None:
    """Fine-tunes of two pretraining seeds of one setting are one arm of a pretraining axis: both enter its
    interval, and the backbones' spread widens it."""
    from experiments.results.headline import compute_headline

    def trial(k: int, pseed: int, seed: int, value: float) -> TrialResult:
        backbone = f"res18_ep2_p{k}_s{pseed}"
        return TrialResult(f"{backbone} · bn · seed{seed}", f"{k}{pseed}{seed}", f"res18_ep2_p{k} · bn", backbone,
                           {"finetune.backbone": backbone, "pretrain.prototypes": str(k), "finetune.norm": "bn"}, value)

    tight = [trial(k, p, s, 0.30 + (0.02 if k == 30 else 0) + 0.001 * s) for k in (20, 30) for p in (0, 1)
             for s in range(3)]
    spread = [trial(k, p, s, 0.30 + (0.02 if k == 30 else 0) + (0.03 if p else -0.03) + 0.001 * s)
              for k in (20, 30) for p in (0, 1) for s in range(3)]
    axes = ["finetune.backbone", "pretrain.prototypes"]
    a, b = (compute_headline(t, axes).axes[0].runner_up for t in (tight, spread))
    assert a.winner_n == b.winner_n == 6 and a.strata == b.strata == 1  # both backbones' runs in one arm
    assert a.state == "decided" and b.state == "undecided" and b.high - b.low > 5 * (a.high - a.low)
