"""The MLflow UI that ``ablate ui`` serves: MLflow's own app, with the assistant panel closed on a first visit, the
runs table's metrics rounded to 3 decimals, its "Created" column after the axes instead of pinned before them, and
its parallel-coordinates charts titled by what they compare.

MLflow 3.17 opens its *Assistant (Beta)* panel by itself the first time a browser visits a server on
localhost (its page checks ``window.location.hostname`` and the ``localStorage`` flag
``mlflow.assistant.fab.autoOpenedOnFirstLoad_v1``; no server setting turns it off). The panel takes a
quarter of a 1600 px window and hides the leaderboard's axes. This app is MLflow's (the Flask app
under MLflow's FastAPI app, as ``mlflow ui`` builds it for uvicorn) plus one ``after_request`` hook: the
HTML page gets a script that sets that flag *when the browser has none*, before MLflow's code runs. A
newcomer lands on the leaderboard; the assistant stays one click away (its button), and a browser
that opened or closed it before keeps its own choice.

Registered as the MLflow app ``ablate-ui`` (pyproject's ``mlflow.app`` entry point); ``ablate ui`` runs
``mlflow ui --app-name ablate-ui``.
"""

from __future__ import annotations

import re
from typing import Any

FIRST_VISIT_FLAG = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
FIRST_VISIT_SCRIPT = (
    "<script>/* ablate ui: no assistant panel opening by itself on a first visit (experiments/results/ui_app.py) */"
    f"try{{if(window.localStorage.getItem('{FIRST_VISIT_FLAG}')===null)"
    f"{{window.localStorage.setItem('{FIRST_VISIT_FLAG}','true');}}}}catch(e){{}}</script>"
)
METRIC_DIGITS = 3  # the runs table's metric cells: AP50 0.320, not 0.320251...
PARCOORDS_TITLE = "Parallel Coordinates"  # MLflow 3.17's fixed title of every parallel-coordinates chart
# What MLflow's page has no setting for, done on the page itself, again whenever React redraws it (a
# MutationObserver, at most every 250 ms); the stored values, sorting and the charts' data are untouched:
# - the runs table (ag-grid) prints a metric with every digit it has and cuts it to its column ("0.002574..."):
#   the text of its metric cells (`col-id` "metrics.`KEY`") is rounded to METRIC_DIGITS, the full value kept in the
#   cell's tooltip;
# - every parallel-coordinates chart is titled "Parallel Coordinates", and its axis labels are cut to the column
#   ("finetu...ckbone"): the title becomes what the chart compares, from the full names its SVG keeps for its axes
#   (`.axis > text.label`, or its `.axis-label-tooltip` when the label is cut; the last axis is the metric):
#   "det/AP50 by finetune.backbone, finetune.norm".
READABLE_PAGE_SCRIPT = """<script>/* ablate ui: metrics rounded, charts titled (experiments/results/ui_app.py) */
(function () {
  var DIGITS = %(digits)d, LONG = /^-?\\d*\\.\\d{%(long)d,}(e-?\\d+)?$/;
  var CELLS = '.ag-cell[col-id^="metrics."]', TITLE = '%(title)s';
  function roundCells() {
    document.querySelectorAll(CELLS).forEach(function (cell) {
      var walk = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT), node;
      while ((node = walk.nextNode())) {
        var text = node.nodeValue.trim();
        if (LONG.test(text)) { node.nodeValue = Number(text).toFixed(DIGITS); cell.title = text; }
      }
    });
  }
  function titleCharts() {
    document.querySelectorAll('svg').forEach(function (svg) {
      var names = Array.prototype.map.call(svg.querySelectorAll('.axis > text.label'), function (label) {
        var full = label.parentElement.querySelector('.axis-label-tooltip text');  // a cut label's whole name
        return (full || label).textContent; });
      if (names.length < 2) return;
      var title = names[names.length - 1] + ' by ' + names.slice(0, -1).join(', ');
      // the nearest ancestor holding a chart title (MLflow's, or one set here before) is this chart's card
      for (var box = svg.parentElement, up = 0; box && up < 15; box = box.parentElement, up++) {
        var leaf = box.querySelector('[data-ablate-title]') || Array.prototype.find.call(
          box.querySelectorAll('*'), function (e) { return e.children.length === 0 && e.textContent.trim() === TITLE; });
        if (leaf) {
          if (leaf.textContent !== title) { leaf.textContent = title; leaf.title = title; }
          leaf.setAttribute('data-ablate-title', '1');
          return;
        }
      }
    });
  }
  var pending = false;
  function tidy() {
    if (pending) return;
    pending = true;
    setTimeout(function () { pending = false; roundCells(); titleCharts(); }, 250);
  }
  function start() {
    tidy();
    new MutationObserver(tidy).observe(document.body, {childList: true, subtree: true, characterData: true});
  }
  if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
})();</script>""" % {"digits": METRIC_DIGITS, "long": METRIC_DIGITS + 1, "title": PARCOORDS_TITLE}
PAGE_SCRIPTS = FIRST_VISIT_SCRIPT + READABLE_PAGE_SCRIPT
# MLflow 3.17's runs table pins its "Created" column left, beside the run name and ahead of every metric and param,
# whatever the view asks (the column has no id a view state could hide or move). In the bundle that builds the table,
# that column's definition becomes ag-grid's `lockPosition: "right"`: it scrolls with the table, after the axes.
# A bundle without this exact definition (another MLflow) is served unchanged.
CREATED_PINNED = re.compile(r'(\{headerName:[\w$]+\.[\w$]+\.DATE,headerTooltip:[\w$]+\.[\w$]+\.DATE,)'
                            r'pinned:[\w$]+\?void 0:"left",')
CREATED_AFTER_AXES = r'\1lockPosition:"right",'


def close_assistant_on_first_visit(response: Any) -> Any:
    """Flask ``after_request``: the UI's HTML page with :data:`FIRST_VISIT_SCRIPT` and :data:`READABLE_PAGE_SCRIPT`
    at the top of its ``<head>``; the script that defines the runs table with its "Created" column unpinned, last
    (:data:`CREATED_PINNED`)."""
    if response.status_code != 200 or response.mimetype not in ("text/html", "text/javascript",
                                                                 "application/javascript"):
        return response
    response.direct_passthrough = False  # a file response: read it to rewrite it
    text = response.get_data(as_text=True)
    if response.mimetype == "text/html":
        if "<head>" not in text or FIRST_VISIT_FLAG in text:
            return response
        text = text.replace("<head>", "<head>" + PAGE_SCRIPTS, 1)
    else:
        if "DATE,headerTooltip:" not in text:
            return response
        text, changed = CREATED_PINNED.subn(CREATED_AFTER_AXES, text, count=1)
        if not changed:
            return response
    response.set_data(text)
    response.headers.pop("ETag", None)
    return response


def create_app() -> Any:
    """MLflow's app with :func:`close_assistant_on_first_visit` (FastAPI under uvicorn, Flask otherwise)."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as flask_app

    flask_app.after_request(close_assistant_on_first_visit)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(flask_app)
    return flask_app
