"""The search-space package (experiments/spaces): every shipped space expands to the expected plan and follows the
paper's recipe with a fair no-pretraining baseline; `ablate launch --dry-run` exits 2 on a broken file and loads neither
Ray nor torch; `ablate demo` runs the shipped smoke.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments import spaces
from experiments.spaces import expand, load_space
from tests.experiments.spaces.helpers import EXPECTED, SPACES, sample_paths, write_base


def test_every_shipped_space_is_covered():
    assert {p.name for p in SPACES.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_space_expands(name, sample_data):
    spec = load_space(SPACES / name)
    plan = expand(spec, "fp", sample_paths(sample_data))
    n_pre, n_ft, n_cells = EXPECTED[name]
    assert (len(plan.pretrain), len(plan.finetune), plan.requested_pretrain) == (n_pre, n_ft, n_cells)
    # names are unique (they are how a fine-tuning case points at one backbone) and hashes too
    assert len({t.name for t in plan.pretrain}) == len(plan.pretrain)
    assert len({t.config_hash for t in plan.finetune}) == len(plan.finetune)
    # every fine-tuning trial pairs norms correctly
    by_hash = {t.config_hash: t for t in plan.pretrain}
    for t in plan.finetune:
        if t.upstream_hash is not None:
            assert spaces.PAIRING[t.config["norm"]] == by_hash[t.upstream_hash].config["norm"]
            assert t.config["arch"] == by_hash[t.upstream_hash].config["arch"]
    text = spaces.format_plan(plan)
    assert f"{n_pre} unique runs" in text and f"{n_ft} trials" in text


def test_paper_full_names_and_pairing(sample_data):
    plan = expand(load_space(SPACES / "paper_full.yaml"), "fp", sample_paths(sample_data))
    names = {t.name for t in plan.pretrain}
    assert {"res18_ep70_p1000", "res34_ep100_p3000", "res50_ep200_p3000", "res50_ep200_p3000_gn",
            "res50_ep200_p3000_q15", "res50_ep200_p3000_ampfalse"} <= names
    gn = [t for t in plan.finetune if t.config["norm"] == "gn"]
    assert len(gn) == 3 and all("res50_ep200_p3000_gn" in t.name for t in gn)
    # the GN backbone is excluded from the frozen_affine sweep over every backbone, and says why
    assert any("res50_ep200_p3000_gn" in e and "bn-pretrained" in e for e in plan.excluded)


def test_cli_dry_run_and_exit_code_2(tmp_path, sample_data):
    bad = write_base(tmp_path, {"pretrain": {"grid": {"prototype": [10]}}}, sample_data)
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "launch", str(bad), "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "did you mean 'prototypes'" in proc.stderr and str(bad) in proc.stderr


def test_dry_run_imports_no_ray(tmp_path):
    """Validating a space (`ablate launch --dry-run`) checks its pruning settings but never loads Ray (nor Optuna,
    for that: a space reads on a machine without it, as `bench device` needs), nor torch (a plan is configs and
    data, read in about a second)."""
    smoke = Path(__file__).resolve().parents[3] / "search_spaces" / "smoke.yaml"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "experiments.cli", "launch", str(smoke), "--dry-run",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: nothing trained" in proc.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "experiments.pruning.settings" in imported  # the space's pruning section was validated
    assert [m for m in imported if m.split(".")[0] in ("ray", "optuna", "torch", "torchvision")] == []


def test_demo_runs_smoke_and_prints_the_next_steps(sample_data, monkeypatch, capsys, tmp_path):
    """`ablate demo` launches the shipped smoke.yaml and ends with the commands of the three flows,
    `ablate detect` on two of the launch's own validation images included (the launch is stubbed
    here; tests/e2e/test_launch.py runs smoke.yaml for real)."""
    from experiments import cli, launch

    seen = {}

    def fake_launch(space, options):
        seen["space"] = Path(space)
        return launch.LaunchResult("smoke", "run0", [], 0, None, {"val_images": str(sample_data.val_images)})

    monkeypatch.setattr(launch, "launch", fake_launch)
    store = tmp_path / "unused.db"
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--tracking-uri", f"sqlite:///{store}"]) == 0
    assert list(tmp_path.iterdir()) == []  # the stubbed launch made no store: the demo's read-outs make none either
    out = capsys.readouterr().out
    assert seen["space"].name == "smoke.yaml" and seen["space"].is_file()
    assert "report smoke" in out and "pull smoke-detector@champion --dest pulled_model" in out
    detect_line = next(line for line in out.splitlines() if " detect pulled_model " in line)
    images = detect_line.split(" detect pulled_model ")[1].split(" --out")[0].split()
    assert len(images) == 2 and all(Path(i).is_file() for i in images)


# ---------------------------------------------------------------------------
# The paper's recipe and a fair no-pretraining baseline in the shipped spaces
# ---------------------------------------------------------------------------

# smoke and the fidelity study are sized for a CPU or one GPU, not the paper's 4 GPUs
PAPER_SPACES = sorted(n for n in EXPECTED if n not in ("smoke.yaml", "fidelity.yaml", "fidelity_gpu.yaml"))
FIDELITY = {"fidelity.yaml": 2, "fidelity_gpu.yaml": 3}  # the fidelity spaces: the control's case index


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scratch_baseline_trains_the_ordinary_way(name, sample_data):
    """No frozen random trunk: trainable norm and one learning rate for every scratch trial."""
    plan = expand(load_space(SPACES / name), "fp", sample_paths(sample_data))
    scratch = [t for t in plan.finetune if t.upstream_hash is None]
    if name in FIDELITY:
        # Its deliberate control (the pretrained arm's detector on a random trunk) is warned about, by case.
        scratch = [t for t in scratch if t.config["lr_scheme"] == "uniform"]
        assert plan.warnings and all(f"finetune.cases[{FIDELITY[name]}]" in w for w in plan.warnings)
    else:
        assert plan.warnings == []
    for t in scratch:
        assert t.config["norm"] in ("bn", "gn") and t.config["lr_scheme"] == "uniform", t.name
    if name in ("paper_table1.yaml", "paper_full.yaml", "smoke.yaml", *FIDELITY):
        assert scratch, f"{name} has no no-pretraining baseline"
        pretrained_epochs = {t.config["epochs"] for t in plan.finetune if t.upstream_hash is not None}
        assert all(t.config["epochs"] >= max(pretrained_epochs) for t in scratch)


@pytest.mark.parametrize("name", PAPER_SPACES)
def test_paper_spaces_follow_the_paper_recipe(name, sample_data):
    spec = load_space(SPACES / name)
    plan = expand(spec, "fp", sample_paths(sample_data))
    queue = {t.config["queue_start_epoch"] for t in plan.pretrain}
    assert queue == ({15, 30} if name in ("queue_start.yaml", "paper_full.yaml") else {30})
    # DDP on 4 GPUs at 64 per GPU: the global batch of 256
    assert spec.pretrain.resources.processes == 4
    assert {t.config["batch_size"] for t in plan.pretrain} == {64}
    norms = {t.config["norm"] for t in plan.finetune if t.upstream_hash is not None}
    if name == "norm_type.yaml":
        assert norms == {"bn", "frozen_bn", "frozen_affine", "gn"}
    elif name == "paper_full.yaml":
        assert {"frozen_affine", "frozen_bn", "bn", "gn"} <= norms
        others = {t.config["norm"] for t in plan.finetune if t.upstream_hash is not None
                  and t.backbone_name not in ("res50_ep200_p3000", "res50_ep200_p3000_gn")}
        assert others == {"frozen_affine"}, others  # every other backbone gets the paper's FBN
    else:
        assert norms == {"frozen_affine"}  # the paper's FBN: affine frozen, statistics adapt
