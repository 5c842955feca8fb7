"""experiments/results/ui_app.py: the MLflow UI that `ablate ui` serves. Its ``after_request`` hook puts the page
scripts at the top of the HTML page's ``<head>`` once, moves the runs table's "Created" column after the axes in
MLflow's own bundle (conftest.py's ``bundle``), and passes every other response through untouched."""

from __future__ import annotations

import sys
from types import ModuleType

import mlflow
import pytest
from flask import Flask, Response

from experiments.results.ui_app import (
    FIRST_VISIT_FLAG, METRIC_DIGITS, PAGE_SCRIPTS, close_assistant_on_first_visit, create_app,
)
from tests.experiments.results.helpers import BUNDLE

PAGE = "<!doctype html><html><head><title>MLflow</title></head><body><div id='root'></div></body></html>"


def test_the_served_bundle_moves_the_created_column_after_the_axes(bundle: str) -> None:
    """MLflow pins "Created" left of every param; the app serves the table's script with it locked right instead."""
    from flask import Response

    from experiments.results.ui_app import CREATED_PINNED, close_assistant_on_first_visit

    assert len(CREATED_PINNED.findall(bundle)) == 1, f"MLflow {mlflow.__version__} defines Created otherwise"
    chunk = next(p for p in BUNDLE.glob("*.js") if CREATED_PINNED.search(p.read_text(errors="replace")))
    served = close_assistant_on_first_visit(Response(chunk.read_text(), mimetype="text/javascript"))
    text = served.get_data(as_text=True)
    assert not CREATED_PINNED.search(text) and 'DATE,lockPosition:"right",sortable' in text
    other = "const a=1;"  # any other script is served as it is
    assert close_assistant_on_first_visit(Response(other, mimetype="text/javascript")).get_data(as_text=True) == other


def test_the_page_gets_its_scripts_once_at_the_top_of_its_head() -> None:
    page = Response(PAGE, mimetype="text/html", headers={"ETag": '"abc"'})
    served = close_assistant_on_first_visit(page)
    text = served.get_data(as_text=True)
    assert text == PAGE.replace("<head>", "<head>" + PAGE_SCRIPTS, 1)
    assert "ETag" not in served.headers  # a cached copy of the plain page must not be revalidated as this one
    # the flag is set only when the browser has none: a visitor who opened or closed the panel keeps that choice
    assert f"window.localStorage.getItem('{FIRST_VISIT_FLAG}')===null" in text
    assert f"var DIGITS = {METRIC_DIGITS}," in text  # the runs table's metrics rounded to 3 decimals
    again = close_assistant_on_first_visit(Response(text, mimetype="text/html")).get_data(as_text=True)
    assert again == text and again.count(FIRST_VISIT_FLAG) == text.count(FIRST_VISIT_FLAG)


@pytest.mark.parametrize("response", [
    Response(PAGE, status=404, mimetype="text/html"),  # only a page that was served
    Response("<html><body>no head</body></html>", mimetype="text/html"),
    Response('{"experiments": []}', mimetype="application/json"),
    Response("x={headerName:a.b.DATE,headerTooltip:a.b.DATE,sortable:!0}", mimetype="text/javascript"),  # not pinned
], ids=["not found", "no head", "json", "script defining Created otherwise"])
def test_other_responses_pass_through_untouched(response: Response) -> None:
    before = response.get_data(as_text=True)
    assert close_assistant_on_first_visit(response).get_data(as_text=True) == before


def test_create_app_serves_mlflows_app_with_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a WSGI server, create_app returns MLflow's Flask app itself, its pages now going through the hook
    (a small Flask app stands in for MLflow's, whose import takes seconds)."""
    mlflows = Flask("mlflow-standin")
    mlflows.add_url_rule("/", "page", lambda: Response(PAGE, mimetype="text/html"))
    mlflows.add_url_rule("/api", "api", lambda: {"experiments": []})
    server = ModuleType("mlflow.server")
    server.app = mlflows
    monkeypatch.setitem(sys.modules, "mlflow.server", server)
    monkeypatch.delenv("_MLFLOW_SGI_NAME", raising=False)
    app = create_app()
    assert app is mlflows
    client = app.test_client()
    assert client.get("/").get_data(as_text=True) == PAGE.replace("<head>", "<head>" + PAGE_SCRIPTS, 1)
    assert client.get("/api").get_json() == {"experiments": []}
