"""experiments/spaces/naming.py: trial names (the first-listed backbone keeps the plain name), the identity a hash is
taken of, sample-set folders, and the dry-run text, whose work grows linearly with the grid."""

from __future__ import annotations

from pathlib import Path

from experiments import spaces
from experiments.spaces import expand, load_space
from experiments.spaces.naming import (
    finetune_hash, finetune_name, fmt_value, identity, pretrain_name, sample_folder,
)
from experiments.spaces.schema import Resources
from tests.experiments.spaces.helpers import sample_paths, write_base


def test_backbones_that_tie_name_the_first_listed_one_plainly(tmp_path, sample_data):
    """Equal counts of each value: the first-listed run is the reference row, whatever the hash seed."""
    def names(body: dict) -> list[str]:
        plan = expand(load_space(write_base(tmp_path, body, sample_data)), "fp", sample_paths(sample_data))
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
    return write_base(tmp_path, {"name": f"grid{n}", "pretrain": {"grid": {
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
        plan = expand(load_space(_grid(tmp_path, sample_data, n)), "fp", sample_paths(sample_data))
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


def test_names_and_sample_folders():
    assert pretrain_name({"arch": "resnet50", "epochs": 200, "prototypes": 3000}) == "res50_ep200_p3000"
    assert pretrain_name({"arch": "resnet50", "epochs": 200, "prototypes": 3000, "norm": "gn"}) == "res50_ep200_p3000_gn"
    assert pretrain_name({"arch": "resnet18", "epochs": 2, "prototypes": 30, "method": "supervised"}) == \
        "res18_ep2_supervised"  # a supervised trunk has no prototypes
    assert finetune_name({"norm": "frozen_bn", "head": "mlp_ln", "lr_scheme": "357"}, "res50_ep200_p3000", 0) == \
        "res50_ep200_p3000 · frozen_bn · mlp_ln · 357 · seed0"
    assert sample_folder("small", 0, "shapes") == "sample-small-0"  # the shapes keep their storage folder's old name
    assert sample_folder("medium", 3, "digits", renderings=2) == "sample-digits-medium-3-r2"
    assert [fmt_value(v) for v in (0.10, 3000, float("inf"), [0.14, 1.0], {"a": 1}, True)] == [
        "0.1", "3000", "inf", "[0.14,1.0]", '{"a":1}', "True"]


def test_identity_keeps_only_what_changes_a_result():
    config = {"arch": "resnet18", "prototypes": 30, "method": "swav", "workers": 4, "data": "/data/unlabeled",
              "knn_every": 5, "seed": 0}
    assert identity(config) == {"arch": "resnet18", "prototypes": 30, "seed": 0}  # SwAV runs keep their old hashes
    assert identity(config, Resources(processes=1)) == identity(config)
    assert identity(config, Resources(processes=4))["world_size"] == 4  # another global batch: another run
    supervised = identity({**config, "method": "supervised"})
    assert supervised == {"arch": "resnet18", "method": "supervised", "seed": 0}  # SwAV's fields change nothing there
    assert identity({"head": "res5"}) == {"head": "res5-c4"}
    ft = {"norm": "bn", "head": "mlp", "seed": 0}
    base = finetune_hash(ft, "fp", "backbone-hash")
    assert finetune_hash({**ft, "workers": 8}, "fp", "backbone-hash") == base
    assert len({base, finetune_hash(ft, "other-data", "backbone-hash"), finetune_hash(ft, "fp", None),
                finetune_hash({**ft, "seed": 1}, "fp", "backbone-hash")}) == 4
