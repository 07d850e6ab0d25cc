"""The MLflow server as tunelab serves it (`mlflow ui --app-name tunelab`): MLflow's own app, whose
UI opens experiments in the runs table ("Model training") instead of the GenAI view, with the
Assistant panel closed.

From MLflow 3.x the UI decides which view an experiment opens in from one browser-wide setting
(local storage `mlflow.workflowType_v1`, GenAI unless the user switched), not from the
experiment's `mlflow.experimentKind` tag. This app serves the UI's page with that setting's
default set to "Model training" and the Assistant's first-visit opening marked as done; a browser
where the user has chosen a view or opened the Assistant keeps its choice."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask, Response

from tunelab.compat import mlflow_internals

STORAGE_KEY = "mlflow.workflowType_v1"
DEFAULT_VIEW = "machine_learning"
# MLflow opens its Assistant panel (a third of the page) on a browser's first visit unless this
# setting says it already did; the user's own opening and closing is `mlflow.assistant.panelOpen_v1`.
ASSISTANT_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
DEFAULTS = {STORAGE_KEY: DEFAULT_VIEW, ASSISTANT_KEY: True}
_SET = "if(localStorage.getItem(%(key)s)===null)localStorage.setItem(%(key)s,%(value)s);"


def default_view_script() -> str:
    """Fill each unset browser setting (stored as the UI stores it: JSON); set ones stay."""
    sets = "".join(
        _SET % {"key": json.dumps(key), "value": json.dumps(json.dumps(value))}
        for key, value in DEFAULTS.items()
    )
    return f"<script>try{{{sets}}}catch(e){{}}</script>"


def with_default_view(html: str) -> str:
    """The UI's page with the default set before any of the UI's scripts run."""
    head = html.find("<head>")
    if head < 0:
        return default_view_script() + html
    at = head + len("<head>")
    return html[:at] + default_view_script() + html[at:]


def create_app(app: Flask | None = None):
    """The factory `mlflow server --app-name tunelab` calls (entry point `mlflow.app`)."""
    from mlflow.server import app as mlflow_app

    app = app or mlflow_app
    index = Path(app.static_folder or "") / "index.html"

    def serve(mlflow_view):
        if not index.exists():
            return mlflow_view()
        page = with_default_view(index.read_text(encoding="utf-8"))
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    mlflow_internals.replace_ui_page(app, serve)
    if mlflow_internals.server_name() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
