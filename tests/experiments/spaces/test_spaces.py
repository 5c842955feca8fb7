"""Search spaces: every shipped file expands to the expected plan; broken files fail with a useful error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import spaces
from experiments.spaces import SpaceError, expand, load_space

ROOT = Path(__file__).resolve().parents[3]
SPACES = ROOT / "search_spaces"

# file -> (unique pretraining runs, fine-tuning trials, pretraining cells before dedup)
EXPECTED = {
    "smoke.yaml": (2, 4, 2),
    "paper_table1.yaml": (5, 18, 5),
    "norm_type.yaml": (2, 12, 2),
    "box_head.yaml": (1, 9, 1),
    "lr_scheme.yaml": (1, 9, 1),
    "queue_start.yaml": (2, 6, 2),
    "crop_scales.yaml": (2, 6, 2),
    "mixed_precision.yaml": (2, 6, 2),
    "paper_full.yaml": (9, 48, 9),
    "fidelity.yaml": (2, 12, 2),  # SwAV and the supervised positive control; 4 arms x 3 seeds
    "fidelity_gpu.yaml": (2, 18, 2),  # ... and both pretrained trunks fine-tuned two ways, on one GPU
}


def _paths(sample_data) -> dict[str, str]:
    """The sample set's paths; its unlabeled folder stands in with a labels file of its own beside the images (a
    supervised pretraining case plans only when its classes exist: the digits set writes them)."""
    paths = {k: str(getattr(sample_data, k)) for k in spaces.DATA_PATH_KEYS}
    labeled = Path(sample_data.root).parent / "unlabeled-with-labels"
    if not labeled.exists():
        labeled.mkdir()
        (labeled / "labels.json").write_text('{"a.jpg": "0", "b.jpg": "1"}')
    return {**paths, "unlabeled": str(labeled)}


def test_every_shipped_space_is_covered():
    assert {p.name for p in SPACES.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_space_expands(name, sample_data):
    spec = load_space(SPACES / name)
    plan = expand(spec, "fp", _paths(sample_data))
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
    plan = expand(load_space(SPACES / "paper_full.yaml"), "fp", _paths(sample_data))
    names = {t.name for t in plan.pretrain}
    assert {"res18_ep70_p1000", "res34_ep100_p3000", "res50_ep200_p3000", "res50_ep200_p3000_gn",
            "res50_ep200_p3000_q15", "res50_ep200_p3000_ampfalse"} <= names
    gn = [t for t in plan.finetune if t.config["norm"] == "gn"]
    assert len(gn) == 3 and all("res50_ep200_p3000_gn" in t.name for t in gn)
    # the GN backbone is excluded from the frozen_affine sweep over every backbone, and says why
    assert any("res50_ep200_p3000_gn" in e and "bn-pretrained" in e for e in plan.excluded)


def test_dedup_and_hash_stability(tmp_path, sample_data):
    space = {
        "name": "dedup", "data": {"root": str(sample_data.root)}, "seeds": [0, 1],
        "pretrain": {"fixed": {"arch": "resnet18", "epochs": 2},
                     # the same config twice (3000 is the default), plus `workers`, which does not change results
                     "cases": [{"prototypes": 3000}, {"workers": 1}, {"prototypes": 100}]},
        "finetune": {"fixed": {"epochs": 1}},
    }
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(space))
    spec = load_space(f)
    plan = expand(spec, "fp", _paths(sample_data))
    assert plan.requested_pretrain == 3 and len(plan.pretrain) == 2
    again = expand(load_space(f), "fp", _paths(sample_data))
    assert [t.config_hash for t in again.pretrain] == [t.config_hash for t in plan.pretrain]
    other_data = expand(spec, "other-fingerprint", _paths(sample_data))
    assert not {t.config_hash for t in other_data.pretrain} & {t.config_hash for t in plan.pretrain}
    assert len(plan.finetune) == 2 * 2  # two backbones x two seeds


def _write(tmp_path: Path, body: dict, sample_data) -> Path:
    base = {"name": "broken", "data": {"root": str(sample_data.root)},
            "pretrain": {"fixed": {"arch": "resnet18", "epochs": 2}}, "finetune": {"fixed": {"epochs": 1}}}
    for key, value in body.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


BROKEN = [
    ({"pretrian": {}}, "<top level>: unknown key 'pretrian' (did you mean 'pretrain'?)"),
    ({"pretrain": {"grid": {"prototype": [10, 20]}}}, "pretrain.grid: unknown key 'prototype' (did you mean 'prototypes'?)"),
    ({"pretrain": {"grid": {"prototypes": [10, 0]}}}, "pretrain.grid.prototypes[1]: prototypes=0"),
    ({"pretrain": {"fixed": {"arch": "resnet18", "epochs": 2, "base_lr": -1.0}}}, "pretrain.fixed.base_lr: base_lr=-1.0"),
    ({"pretrain": {"cases": [{"crops": [{"count": 2, "size": 32, "min_scale": 0.5, "max_scale": 1.5}]}]}},
     "pretrain.cases[0].crops"),
    ({"pretrain": {"cases": [{"crops": [{"count": 2, "size": 32, "min_scale": 0.9, "max_scale": 0.5}]}]}},
     "pretrain.cases[0].crops"),
    ({"pretrain": {"fixed": {"arch": "resnet18", "epochs": 2, "queue_length": 64, "queue_start_epoch": 5}}},
     "queue_start_epoch"),
    ({"pretrain": {"grid": {"prototypes": 100}}}, "pretrain.grid.prototypes: a grid axis is a non-empty list"),
    ({"finetune": {"grid": {"norm": ["gn"]}}}, "finetune.grid.norm[0]: norm=gn has no backbone to pair with"),
    ({"finetune": {"grid": {"head": ["mlp", "transformer"]}}}, "finetune.grid.head[1]: head='transformer'"),
    ({"finetune": {"grid": {"base_lr": {"loguniform": [1, 10]}}}}, "distributions need `search: {kind: tpe}`"),
    ({"data": {"root": "/nonexistent/data"}}, "data.unlabeled: /nonexistent/data/unlabeled does not exist"),
    ({"seeds": [0, 0]}, "seeds: duplicate seeds"),
    ({"name": "a/b"}, "name: 'a/b' may not contain"),
    ({"pretrain": {"resources": {"gpu": -1}}}, "pretrain.resources.gpu"),
    ({"pruning": {"patiense": 3}}, "pruning: "),
    ({"finetune": {"cases": [{"backbone": "res18_ep2_p300"}]}}, "did you mean 'res18_ep2_p3000'"),
    ({"storage_path": 5}, "storage_path: expected a folder or an s3:// URI"),
    ({"storage_path": "gs://b/ray"}, "storage_path: 'gs://b/ray' is not a storage this service supports"),
    ({"storage_path": "s3://key:secret@b/ray"}, "storage_path: credentials do not belong in the space file"),
    ({"pretrain": {"cases": [{"method": "supervised"}]}}, "pretrain.cases[0].method: method: supervised needs each "
     "image's class, and"),
    ({"pretrain": {"cases": [{"method": "clip"}]}}, "method='clip' is invalid"),
]


@pytest.mark.parametrize("body,expected", BROKEN, ids=[b[1][:40] for b in BROKEN])
def test_broken_space_names_file_key_and_fix(tmp_path, sample_data, body, expected):
    from experiments.launch import resolve_data

    path = _write(tmp_path, body, sample_data)
    with pytest.raises(SpaceError) as err:
        spec = load_space(path)
        paths, fp = resolve_data(spec, tmp_path)
        expand(spec, fp, paths)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert expected in msg, msg


def _write_sample(tmp_path: Path, sample: dict, sample_data) -> Path:
    path = _write(tmp_path, {}, sample_data)
    body = yaml.safe_load(path.read_text())
    body["data"] = {"sample": sample}  # replaces `root` (`_write` would merge the two)
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("sample,expected", [
    ({"size": "small"}, ("small", 0, "shapes", 1)),
    ({"kind": "digits", "size": "medium", "seed": 3}, ("medium", 3, "digits", 1)),
    ({"kind": "digits", "size": "medium", "seed": 3, "renderings": 2}, ("medium", 3, "digits", 2)),
])
def test_data_sample_kind(tmp_path, sample_data, sample, expected):
    spec = load_space(_write_sample(tmp_path, sample, sample_data))
    assert spec.data.sample == expected
    # shapes keep their storage folder name; other kinds are named in it
    assert spaces.sample_folder(*expected) == {"shapes": "sample-small-0", "digits": "sample-digits-medium-3"}[
        expected[2]] + ("-r2" if expected[3] == 2 else "")


def test_resolve_data_generates_digits_in_their_own_folder(tmp_path, sample_data):
    from experiments.launch import resolve_data

    spec = load_space(_write_sample(tmp_path, {"kind": "digits"}, sample_data))
    paths, fingerprint = resolve_data(spec, tmp_path / "storage")
    assert Path(paths["val_annotations"]).is_relative_to(tmp_path / "storage" / "data" / "sample-digits-small-0")
    assert fingerprint and "sample small/0 (digits)" in spaces._describe_data(spec.data)


def test_a_supervised_backbone_is_one_more_pretraining_run_and_swav_runs_keep_their_hashes(tmp_path, sample_data):
    """``method: supervised`` (the positive control) plans as one more backbone, named for its method, with its labels
    file in its identity; the SwAV runs beside it hash as they did before the method existed."""
    from experiments.launch import resolve_data

    def plan(cases):
        path = _write_sample(tmp_path, {"kind": "digits"}, sample_data)
        body = yaml.safe_load(path.read_text())
        body["pretrain"]["cases"] = cases
        path.write_text(yaml.safe_dump(body))
        spec = load_space(path)
        paths, fingerprint = resolve_data(spec, tmp_path / "storage")
        return expand(spec, fingerprint, paths), paths

    before, _ = plan([{}])
    after, paths = plan([{}, {"method": "supervised"}, {"method": "supervised", "prototypes": 77}])
    swav, supervised = after.pretrain  # the two supervised cases differ in a SwAV-only field: one run
    assert swav.config_hash == before.pretrain[0].config_hash and swav.config["method"] == "swav"
    assert supervised.name.endswith("_supervised") and supervised.config["method"] == "supervised"
    assert {t.upstream_hash for t in after.finetune} >= {swav.config_hash, supervised.config_hash}
    labels = Path(paths["unlabeled"]) / "labels.json"
    labels.write_text(labels.read_text().replace(': "1"', ': "7"', 1))  # one image's class changed
    changed, _ = plan([{}, {"method": "supervised"}])
    assert changed.pretrain[0].config_hash == swav.config_hash
    assert changed.pretrain[1].config_hash != supervised.config_hash


def test_data_sample_kind_invalid_names_the_key(tmp_path, sample_data):
    path = _write_sample(tmp_path, {"kind": "letters"}, sample_data)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "data.sample.kind" in msg and "shapes or digits" in msg, msg


def test_cli_dry_run_and_exit_code_2(tmp_path, sample_data):
    bad = _write(tmp_path, {"pretrain": {"grid": {"prototype": [10]}}}, sample_data)
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
# Hostile input: keys given twice, study names, large grids
# ---------------------------------------------------------------------------

SPACE_HEAD = "name: dup\ndata: {root: /nowhere}\n"


@pytest.mark.parametrize("body,key_path,lines", [
    ("pretrain:\n  fixed:\n    epochs: 1\n    arch: resnet18\n    epochs: 500\n", "pretrain.fixed.epochs", (5, 7)),
    ("name: other\n", "name", (1, 3)),
    ("pretrain:\n  cases:\n    - {prototypes: 10}\n    - prototypes: 20\n      prototypes: 30\n",
     "pretrain.cases[1].prototypes", (6, 7)),
    ("finetune: {grid: {norm: [bn], head: [mlp], norm: [gn]}}\n", "finetune.grid.norm", (3, 3)),
], ids=["pretrain.fixed.epochs", "name", "cases[1].prototypes", "flow mapping"])
def test_space_with_a_key_given_twice_names_file_lines_key_and_fix(tmp_path, body, key_path, lines):
    path = tmp_path / "dup.yaml"
    path.write_text(SPACE_HEAD + body)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    key = key_path.rsplit(".", 1)[-1].split("]")[-1].lstrip(".")
    assert msg.startswith(f"{path}: {key_path}: key '{key}' is given twice ("), msg
    first, second = lines
    assert (f"lines {first} and {second}" if first != second else f"line {first}, columns") in msg, msg
    assert "delete one of them" in msg


BAD_NAMES = ["my+study", "it's", 'say"hi"', "x" * 300, "-lead", "_lead", "two words", "a/b", "a@b", "a:b", "tab\there",
             "ünï"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_study_name_that_the_registry_cannot_parse_is_refused_at_load(tmp_path, sample_data, bad):
    from experiments.results.registry import RegistryError, model_name

    path = _write(tmp_path, {"name": bad}, sample_data)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: name: "), msg
    assert (repr(bad) if len(bad) < 40 else "300 characters") in msg, msg
    assert "letters, digits, '_', '.' or '-'" in msg and "1-100" in msg
    suggestion = msg.rsplit("e.g. ", 1)[1]
    assert spaces.validate_study_name(suggestion) == suggestion  # the suggested name is itself valid

    # the same value given as `--name` (the override argument) is refused the same way, saying so
    good = _write(tmp_path, {"name": "fine"}, sample_data)
    with pytest.raises(SpaceError, match=r"name \(given by --name\): "):
        load_space(good, name=bad)
    # and the registry uses the same rule rather than creating a model `pull` cannot parse back
    with pytest.raises(RegistryError, match="study name"):
        model_name(bad, "detector")


@pytest.mark.parametrize("good", ["norm_type", "paper.v2-run_3", "A", "x" * 100])
def test_every_accepted_study_name_gives_model_names_pull_can_parse(tmp_path, sample_data, good):
    from experiments.results.pull import parse_spec
    from experiments.results.registry import model_name

    assert load_space(_write(tmp_path, {"name": "fine"}, sample_data), name=good).name == good
    for kind in ("detector", "backbone"):
        name = model_name(good, kind)
        assert parse_spec(name) == (name, "champion", None)
        assert parse_spec(f"{name}/3") == (name, None, "3")


def test_backbones_that_tie_name_the_first_listed_one_plainly(tmp_path, sample_data):
    """Equal counts of each value: the first-listed run is the reference row, whatever the hash seed."""
    def names(body: dict) -> list[str]:
        plan = expand(load_space(_write(tmp_path, body, sample_data)), "fp", _paths(sample_data))
        return [t.name for t in plan.pretrain]

    assert names({"pretrain": {"cases": [{"amp": True}, {"amp": False}]}}) == ["res18_ep2_p3000",
                                                                                "res18_ep2_p3000_ampfalse"]
    assert names({"pretrain": {"cases": [{"amp": False}, {"amp": True}]}}) == ["res18_ep2_p3000",
                                                                                "res18_ep2_p3000_amptrue"]
    temps = [round(0.05 + 0.01 * i, 2) for i in range(12)]
    got = names({"pretrain": {"grid": {"temperature": temps}}})
    assert got == ["res18_ep2_p3000"] + [f"res18_ep2_p3000_t{t:g}" for t in temps[1:]]


def _grid(tmp_path: Path, sample_data, n: int) -> Path:
    """A space whose pretraining grid has ``n`` cells (10 x 10 x n/100), one fine-tuning trial per backbone."""
    return _write(tmp_path, {"name": f"grid{n}", "pretrain": {"grid": {
        "prototypes": [100 * (i + 1) for i in range(10)],
        "queue_start_epoch": list(range(10)),
        "temperature": [round(0.01 * (i + 1), 2) for i in range(n // 100)],
    }}}, sample_data)


def test_dry_run_plan_work_is_linear_in_the_grid(tmp_path, sample_data, monkeypatch):
    """The printout used to redo the whole-grid axis scan and the fine-tuning scan for every row.

    Work is counted, not timed: JSON encodings plus fine-tuning trials scanned while formatting.
    Twice the grid must cost about twice the work (it was four times).
    """
    import json

    work = {"n": 0}
    real_dumps, real_finetune_for = json.dumps, spaces.Plan.finetune_for

    def dumps(*args, **kwargs):
        work["n"] += 1
        return real_dumps(*args, **kwargs)

    def finetune_for(self, upstream_hash):
        work["n"] += len(self.finetune)
        return real_finetune_for(self, upstream_hash)

    cost = {}
    for n in (1000, 2000):
        plan = expand(load_space(_grid(tmp_path, sample_data, n)), "fp", _paths(sample_data))
        assert len(plan.pretrain) == len(plan.finetune) == n
        work["n"] = 0
        with monkeypatch.context() as m:
            m.setattr(json, "dumps", dumps)
            m.setattr(spaces.Plan, "finetune_for", finetune_for)
            text = spaces.format_plan(plan)
        cost[n] = work["n"]
        names = {t.name for t in plan.pretrain}
        assert len(names) == n  # every backbone has its own name ...
        rows = text.split("pretraining runs:")[1].split("fine-tuning trials:")
        assert {line.split()[1] for line in rows[0].splitlines()[2:] if line.strip()} == names  # ... and a row
        assert {line.strip().split("  ", 1)[1] for line in rows[1].splitlines() if line.strip()} == {
            t.name for t in plan.finetune}
    assert cost[2000] <= 2.2 * cost[1000], cost


# ---------------------------------------------------------------------------
# The paper's recipe and a fair no-pretraining baseline in the shipped spaces
# ---------------------------------------------------------------------------

# smoke and the fidelity study are sized for a CPU or one GPU, not the paper's 4 GPUs
PAPER_SPACES = sorted(n for n in EXPECTED if n not in ("smoke.yaml", "fidelity.yaml", "fidelity_gpu.yaml"))
FIDELITY = {"fidelity.yaml": 2, "fidelity_gpu.yaml": 3}  # the fidelity spaces: the control's case index


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scratch_baseline_trains_the_ordinary_way(name, sample_data):
    """No frozen random trunk: trainable norm and one learning rate for every scratch trial."""
    plan = expand(load_space(SPACES / name), "fp", _paths(sample_data))
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
    plan = expand(spec, "fp", _paths(sample_data))
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


def _space_with(tmp_path: Path, edit, name: str = "space.yaml") -> Path:
    data = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_scratch_with_frozen_bn_is_refused_naming_the_field(tmp_path, sample_data, capsys):
    from experiments import cli

    def edit(d):
        d["finetune"]["cases"][2]["norm"] = "frozen_bn"
    path = _space_with(tmp_path, edit)
    with pytest.raises(SpaceError, match=r"finetune\.cases\[2\]\.norm: norm='frozen_bn'.*identity.*norm: bn"):
        expand(load_space(path), "fp", _paths(sample_data))
    assert cli.main(["launch", str(path), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "finetune.cases[2].norm" in capsys.readouterr().err


@pytest.mark.parametrize("change, words", [
    ({"norm": "frozen_affine"}, "frozen_affine"),
    ({"lr_scheme": "357"}, "357"),
    ({"lr_scheme": "frozen"}, "lr_scheme: frozen"),
])
def test_dry_run_warns_when_a_scratch_trunk_would_stay_untrained(tmp_path, sample_data, change, words):
    def edit(d):
        d["finetune"]["cases"][2].update(change)
    plan = expand(load_space(_space_with(tmp_path, edit)), "fp", _paths(sample_data))
    assert len(plan.warnings) == 1 and words in plan.warnings[0] and "finetune.cases[2]" in plan.warnings[0]
    assert "warnings (1):" in spaces.format_plan(plan)


def test_world_size_is_part_of_a_run_s_identity(tmp_path, sample_data):
    def more_workers(d):
        d["pretrain"]["resources"]["processes"] = 2
        d["pretrain"]["resources"]["cpu"] = 1
    one = expand(load_space(SPACES / "smoke.yaml"), "fp", _paths(sample_data))
    two = expand(load_space(_space_with(tmp_path, more_workers)), "fp", _paths(sample_data))
    assert {t.config_hash for t in one.pretrain}.isdisjoint(t.config_hash for t in two.pretrain)
    # the fine-tuning runs on those backbones differ with them; the scratch ones stay the same
    scratch = lambda plan: {t.config_hash for t in plan.finetune if t.upstream_hash is None}  # noqa: E731
    assert scratch(one) == scratch(two)


def test_resources_workers_is_read_as_processes_with_a_warning(tmp_path):
    data = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    data["pretrain"]["resources"] = {"cpu": 1, "workers": 2}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.warns(FutureWarning, match=r"pretrain\.resources\.workers is now pretrain\.resources\.processes"):
        assert load_space(path).pretrain.resources.processes == 2
    data["pretrain"]["resources"]["processes"] = 2
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpaceError, match="both processes and workers"):
        load_space(path)


def test_pretraining_runs_get_the_labeled_set_for_the_knn_monitor_outside_their_identity(tmp_path, sample_data):
    plan = expand(load_space(SPACES / "smoke.yaml"), "fp", _paths(sample_data))
    for t in plan.pretrain:
        assert (t.config["knn_train_images"], t.config["knn_val_annotations"]) == (
            str(sample_data.train_images), str(sample_data.val_annotations))

    def monitor_settings(d):
        d["pretrain"]["fixed"].update(knn_every=3, knn_k=10, knn_max_objects=50)
    changed = expand(load_space(_space_with(tmp_path, monitor_settings)), "fp", _paths(sample_data))
    # The monitor reads the trunk and never trains it: same runs, same hashes, same fine-tuning trials.
    assert [t.config_hash for t in changed.pretrain] == [t.config_hash for t in plan.pretrain]
    assert [t.config_hash for t in changed.finetune] == [t.config_hash for t in plan.finetune]
    assert changed.pretrain[0].config["knn_every"] == 3

    def set_path(d):
        d["pretrain"]["fixed"]["knn_train_images"] = "/elsewhere"
    with pytest.raises(spaces.SpaceError, match="pretrain.fixed.knn_train_images.*top-level `data`"):
        load_space(_space_with(tmp_path, set_path))
