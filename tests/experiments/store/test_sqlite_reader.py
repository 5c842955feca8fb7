"""The read-only commands' sqlite client (experiments/store/sqlite_reader.py) answers as MlflowClient does, on the smoke
launch's store (runs, params, tags, latest metrics, histories, registered versions and aliases)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from experiments.store.sqlite_reader import ACTIVE_ONLY, NotFound, SqliteReader, parse_filter, read_client
from experiments.store.checks import is_missing
from trainers.vocabulary import TAG_STAGE


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def _run(run: Any) -> tuple:
    i = run.info
    return (i.run_id, i.run_name, str(i.experiment_id), i.status, i.start_time, i.end_time, i.lifecycle_stage,
            dict(run.data.params), dict(run.data.tags))


@pytest.fixture(scope="module")
def clients(smoke) -> tuple[Any, SqliteReader]:
    _cwd, client, _out = smoke
    reader = read_client(client.tracking_uri)
    assert isinstance(reader, SqliteReader)
    return client, reader


def test_experiments_and_runs_read_as_mlflow_reads_them(clients) -> None:
    client, reader = clients
    assert sorted((e.experiment_id, e.name, e.lifecycle_stage, tuple(sorted(e.tags.items())))
                  for e in reader.search_experiments()) == sorted(
        (e.experiment_id, e.name, e.lifecycle_stage, tuple(sorted(e.tags.items()))) for e in client.search_experiments())
    exp = reader.get_experiment_by_name("smoke")
    assert exp.experiment_id == client.get_experiment_by_name("smoke").experiment_id
    assert reader.get_experiment(exp.experiment_id).tags == client.get_experiment(exp.experiment_id).tags
    assert reader.get_experiment_by_name("no such study") is None
    for flt, order in [("", None), (f"tags.`{TAG_STAGE}` = 'finetune'", None),
                       (f"tags.`{TAG_STAGE}` = 'pretrain' and attributes.status = 'FINISHED'", None),
                       (f"tags.`{TAG_STAGE}` != 'launch'", ["attributes.start_time ASC"]),
                       (f"tags.`{TAG_STAGE}` = 'launch'", ["attributes.start_time DESC"])]:
        ours = reader.search_runs([exp.experiment_id], filter_string=flt, run_view_type=ACTIVE_ONLY, order_by=order)
        theirs = client.search_runs([exp.experiment_id], filter_string=flt, run_view_type=ACTIVE_ONLY, order_by=order)
        assert [_run(r) for r in ours] == [_run(r) for r in theirs], flt
        assert all(_same(a.data.metrics, b.data.metrics) for a, b in zip(ours, theirs)), flt
        assert ours, flt
    # pages: max_results and the token walk the same runs in the same order
    every = [r.info.run_id for r in client.search_runs([exp.experiment_id])]
    walked, token = [], None
    while True:
        page = reader.search_runs([exp.experiment_id], max_results=2, page_token=token)
        walked += [r.info.run_id for r in page]
        token = page.token
        if not token:
            break
    assert walked == every and len(every) > 2
    run = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'finetune'")[0]
    assert _run(reader.get_run(run.info.run_id)) == _run(run)
    for key in ("det/AP50", "det/loss"):
        assert sorted((m.key, m.value, m.step, m.timestamp) for m in reader.get_metric_history(run.info.run_id, key)) \
            == sorted((m.key, m.value, m.step, m.timestamp) for m in client.get_metric_history(run.info.run_id, key))
    with pytest.raises(NotFound) as missing:
        reader.get_run("0" * 32)
    assert is_missing(missing.value)


def test_the_registry_reads_as_mlflow_reads_it(clients) -> None:
    client, reader = clients
    models = reader.search_registered_models(max_results=1000)
    assert [(m.name, m.aliases) for m in models] == sorted(
        ((m.name, {a: str(v) for a, v in m.aliases.items()}) for m in client.search_registered_models()))
    assert models, "the smoke launch registers its best detector and backbone"
    for model in models:
        ours = reader.search_model_versions(f"name = '{model.name}'")
        theirs = sorted(client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version))
        assert [(v.version, v.run_id, v.source, v.tags) for v in ours] == \
            [(str(v.version), v.run_id, v.source, v.tags) for v in theirs]
        # MLflow's search leaves a version's aliases empty; its get_model_version fills them
        assert [sorted(v.aliases) for v in ours] == \
            [sorted(client.get_model_version(model.name, v.version).aliases) for v in theirs]
        for alias, version in model.aliases.items():
            assert reader.get_model_version_by_alias(model.name, alias).version == version
        with pytest.raises(NotFound):
            reader.get_model_version_by_alias(model.name, "no-such-alias")


@pytest.mark.parametrize("text", ["tags.a = 'x' or tags.b = 'y'", "metrics.`det/AP50` > 0.3", "tags.a LIKE 'x%'",
                                  "attributes.artifact_uri = 'x'"])
def test_a_filter_the_reader_cannot_answer_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="filter"):
        parse_filter(text)
