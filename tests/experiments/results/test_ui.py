"""What the launch writes for the MLflow UI, checked against MLflow's own UI code (no browser: tests/e2e/test_ui_browser.py),
and `ablate ui`'s checks of its host and port (the server command recorded, not run)."""

from __future__ import annotations

import json
import socket

import mlflow
import pytest

from experiments.results import ui
from experiments.testing.s3server import free_port

SMOKE_RUNS = [  # the params of smoke's four fine-tuning runs that matter here
    {"finetune.backbone": "res18_ep2_p30", "pretrain.prototypes": "30", "finetune.lr_scheme": "357", "finetune.norm": "bn"},
    {"finetune.backbone": "res18_ep2_p100", "pretrain.prototypes": "100", "finetune.lr_scheme": "357", "finetune.norm": "bn"},
    {"finetune.backbone": "res18_ep2_p100", "pretrain.prototypes": "100", "finetune.lr_scheme": "357",
     "finetune.norm": "frozen_bn"},
    {"finetune.backbone": "scratch", "pretrain.prototypes": "none", "finetune.lr_scheme": "uniform", "finetune.norm": "bn"},
]
AXES = ["finetune.backbone", "pretrain.prototypes", "finetune.lr_scheme", "finetune.norm"]


def test_names_we_rely_on_are_in_mlflows_ui(bundle: str) -> None:
    for text in ('"mlflow.experimentKind"', 'CUSTOM_MODEL_DEVELOPMENT="custom_model_development"',
                 '"mlflow.sharedViewState."', '"viewStateShareKey"', '"compareRunsMode"', 'PARALLEL="PARALLEL"',
                 '"mlflow.note.content"', 'e.Tag="tag"', 'e.Average="average"', "groupByKeys"):
        assert text in bundle, f"{text} is gone from MLflow {mlflow.__version__}'s UI: experiments/results/ui.py needs a look"
    state = ui.view_state(AXES, SMOKE_RUNS)
    for key in state:  # every key of our view is one the UI takes from a shared state
        assert f'"{key}"' in bundle, key


def test_varying_params_put_the_backbone_first() -> None:
    sets = [{"finetune.norm": "bn", "finetune.backbone": "a", "pretrain.k": "1"},
            {"finetune.norm": "frozen_bn", "finetune.backbone": "b", "pretrain.k": "1"}]
    assert ui.varying_params(sets, ["finetune.norm", "pretrain.k", "finetune.backbone"]) == \
        ["finetune.backbone", "finetune.norm"]


def test_parallel_chart_rule_drops_text_from_a_numeric_axis() -> None:
    # "none" among numbers: MLflow's chart treats the axis as numeric and drops the scratch run
    assert ui.kept_by_parallel_chart(SMOKE_RUNS, ["pretrain.prototypes"]) == [0, 1, 2]
    assert ui.kept_by_parallel_chart(SMOKE_RUNS, ["finetune.lr_scheme"]) == [0, 1, 2]  # "357" is a number
    assert ui.kept_by_parallel_chart(SMOKE_RUNS, ["finetune.backbone", "finetune.norm"]) == [0, 1, 2, 3]
    assert ui.kept_by_parallel_chart(SMOKE_RUNS, ["missing"]) == []
    everyone, pretrained = ui.chart_axes(SMOKE_RUNS, AXES)
    assert everyone == ["finetune.backbone", "finetune.norm"]  # the baseline stays in the first chart
    assert pretrained == ["finetune.backbone", "pretrain.prototypes", "finetune.norm"]


def test_view_and_experiment_tags() -> None:
    tags = ui.experiment_tags("what this study compares", AXES, SMOKE_RUNS)
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "what this study compares" and tags["ablate.axes"] == ",".join(AXES)
    state = json.loads(tags["mlflow.sharedViewState.ablate-leaderboard"])
    assert state["searchFilter"] == "tags.`ablate.stage` = 'finetune'"
    assert state["orderByKey"] == "metrics.`det/AP50`" and state["orderByAsc"] is False
    assert state["selectedColumns"][0] == "metrics.`det/AP50`"
    assert [f"params.`{a}`" for a in AXES] == [c for c in state["selectedColumns"] if c.startswith("params.`") and
                                               "seed" not in c]
    charts = state["compareRunCharts"]
    assert [c["type"] for c in charts] == ["PARALLEL", "PARALLEL", "BAR"]
    assert all(c["selectedMetrics"] == ["det/AP50"] for c in charts if c["type"] == "PARALLEL")
    assert "mlflow.note.content" not in ui.experiment_tags("", AXES)
    compare = json.loads(tags["mlflow.sharedViewState.ablate-compare"])
    assert compare == {**state, "runListHidden": True}  # the charts over the full width; the table keeps its rows
    cells = json.loads(tags["mlflow.sharedViewState.ablate-cells"])  # the leaderboard, seeds averaged per cell
    assert cells == {**state, "groupBy": {"aggregateFunction": "average",
                                          "groupByKeys": [{"mode": "tag", "groupByData": "ablate.cell"}]}}


def test_name_columns_fit_the_longest_run_and_cell_names() -> None:
    names = ["res18_ep2_p100 · frozen_bn · mlp · 357 · seed0", "scratch_res18 · bn · mlp · uniform · seed0"]
    cells = ["res18_ep2_p100 · frozen_bn · mlp · 357 · 1c2d3e4f", "scratch_res18 · bn · mlp · uniform · 0a1b2c3d"]
    tags = ui.experiment_tags("", AXES, SMOKE_RUNS, names=names, cells=cells)
    width = {key: json.loads(tags[f"mlflow.sharedViewState.ablate-{key}"])["columnWidths"][ui.RUN_NAME_COLUMN]
             for key in ("leaderboard", "cells", "compare")}
    assert width["leaderboard"] == width["compare"] == ui.name_column_width(names, 60) > 300
    assert width["cells"] == ui.name_column_width([f"Group: {c}" for c in cells], 90) > width["leaderboard"]
    assert ui.name_column_width([], 60) == 300 and ui.name_column_width(["x" * 200], 60) == 520


def test_links_with_and_without_the_view() -> None:
    tagged = ui.links("http://127.0.0.1:5000/", "7", "smoke", ui.experiment_tags("", AXES, SMOKE_RUNS))
    assert tagged.leaderboard == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                                  "&viewStateShareKey=ablate-leaderboard")
    assert tagged.compare == tagged.leaderboard.replace("ablate-leaderboard", "ablate-compare") + "&compareRunsMode=CHART"
    assert tagged.axes == tuple(AXES)
    assert tagged.cells == tagged.leaderboard.replace("ablate-leaderboard", "ablate-cells")
    old = ui.links("http://127.0.0.1:5000", "7", "smoke", {})  # a study launched before the view existed
    assert "searchFilter=tags.%60ablate.stage%60%20%3D%20%27finetune%27" in old.leaderboard
    assert "orderByKey=metrics.%60det%2FAP50%60&orderByAsc=false" in old.leaderboard
    assert old.cells == ""  # no grouped view to open: none is printed


def test_scratch_gets_none_for_every_pretraining_field() -> None:
    extra = ui.finetune_extra_params("scratch_res18", None, ["arch", "prototypes", "arch"], 1)
    assert extra == {"finetune.backbone": "scratch", "pretrain.arch": "none", "pretrain.prototypes": "none",
                     "pretrain.world_size": "none"}
    pre = ui.finetune_extra_params("res18_ep2_p30", {"arch": "resnet18", "prototypes": 30}, ["arch"], 2)
    assert pre == {"finetune.backbone": "res18_ep2_p30", "pretrain.arch": "resnet18", "pretrain.prototypes": "30",
                   "pretrain.world_size": "2"}
    assert ui.finetune_extra_params("scratch_res18", None, [], 1) == {"finetune.backbone": "scratch"}


# ---------------------------------------------------------------------------
# `ablate ui`: host and port
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory: pytest.TempPathFactory, new_store) -> str:
    """An empty MLflow sqlite store (conftest.py's ``new_store``) for `ablate ui` to open (it only reads it)."""
    return new_store(tmp_path_factory.mktemp("ui"))


@pytest.fixture(name="ui")
def ablate_ui(monkeypatch, ui_store):
    """Run `ablate ui ARGS` through experiments.cli.main on :func:`ui_store`, with the server command recorded, not run.

    Returns a function of the extra arguments -> (exit code, stdout, stderr, the server's argv or None).
    """
    from experiments import cli

    execs: list[list[str]] = []
    monkeypatch.setattr(ui, "serve", lambda cmd, *a, **k: execs.append(list(cmd)) or 0)
    monkeypatch.setattr(cli, "quiet_libraries", lambda verbose=False: None)  # it sets process-wide variables

    def run(capsys, *extra: str):
        execs.clear()
        code = cli.main(["ui", "--tracking-uri", ui_store, *extra])
        out = capsys.readouterr()
        return code, out.out, out.err, (execs[0] if execs else None)

    return run


def test_ui_off_loopback_needs_insecure_no_auth(ui, capsys):
    port = str(free_port())
    code, out, err, argv = ui(capsys, "--host", "0.0.0.0", "--port", port)
    assert code == 2 and argv is None and out == ""
    assert "ablate ui --host 0.0.0.0: ablate ui has no auth" in err and "--insecure-no-auth" in err
    code, out, err, argv = ui(capsys, "--host", "0.0.0.0", "--port", port, "--insecure-no-auth")
    assert code == 0 and argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == port
    code, out, err, argv = ui(capsys, "--port", port)  # the default: loopback, no flag needed
    assert code == 0 and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert f"starting the MLflow UI on http://127.0.0.1:{port} " in out


def test_ui_refuses_a_taken_or_invalid_port(ui, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err, argv = ui(capsys, "--port", str(port))
    assert code == 2 and argv is None and out == ""  # no ready banner for a server that cannot start
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port N" in err
    for bad in ("70000", "-1"):
        code, out, err, argv = ui(capsys, "--port", bad)
        assert code == 2 and argv is None and f"--port {bad}: must be an integer in 0..65535" in err


def test_ui_port_zero_picks_a_free_port_and_prints_it(ui, capsys):
    code, out, err, argv = ui(capsys, "--port", "0")
    assert code == 0, err
    port = int(argv[argv.index("--port") + 1])
    assert port > 0 and f"starting the MLflow UI on http://127.0.0.1:{port} " in out and ":0 " not in out
