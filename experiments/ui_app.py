"""The MLflow UI that ``ablate ui`` serves: MLflow's own app, with the assistant panel closed on a first visit.

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

from typing import Any

FIRST_VISIT_FLAG = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
FIRST_VISIT_SCRIPT = (
    "<script>/* ablate ui: no assistant panel opening by itself on a first visit (experiments/ui_app.py) */"
    f"try{{if(window.localStorage.getItem('{FIRST_VISIT_FLAG}')===null)"
    f"{{window.localStorage.setItem('{FIRST_VISIT_FLAG}','true');}}}}catch(e){{}}</script>"
)


def close_assistant_on_first_visit(response: Any) -> Any:
    """Flask ``after_request``: the UI's HTML page with :data:`FIRST_VISIT_SCRIPT` at the top of its ``<head>``."""
    if response.mimetype != "text/html" or response.status_code != 200:
        return response
    response.direct_passthrough = False  # a file response: read it to rewrite it
    html = response.get_data(as_text=True)
    if "<head>" not in html or FIRST_VISIT_FLAG in html:
        return response
    response.set_data(html.replace("<head>", "<head>" + FIRST_VISIT_SCRIPT, 1))
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
