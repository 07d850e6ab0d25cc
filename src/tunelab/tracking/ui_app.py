"""The MLflow server as tunelab serves it (`mlflow ui --app-name tunelab`): MLflow's own app, whose
UI opens experiments in the runs table ("Model training") instead of the GenAI view.

From MLflow 3.x the UI decides which view an experiment opens in from one browser-wide setting
(local storage `mlflow.workflowType_v1`, GenAI unless the user switched), not from the
experiment's `mlflow.experimentKind` tag. This app serves the UI's page with that setting's
default set to "Model training"; a browser where the user has chosen a view keeps its choice."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask, Response

STORAGE_KEY = "mlflow.workflowType_v1"
DEFAULT_VIEW = "machine_learning"
_SCRIPT = (
    "<script>try{if(localStorage.getItem(%(key)s)===null)"
    "localStorage.setItem(%(key)s,%(value)s)}catch(e){}</script>"
)


def default_view_script() -> str:
    return _SCRIPT % {"key": json.dumps(STORAGE_KEY), "value": json.dumps(json.dumps(DEFAULT_VIEW))}


def with_default_view(html: str) -> str:
    """The UI's page with the default set before any of the UI's scripts run."""
    head = html.find("<head>")
    if head < 0:
        return default_view_script() + html
    at = head + len("<head>")
    return html[:at] + default_view_script() + html[at:]


def create_app(app: Flask | None = None):
    """The factory `mlflow server --app-name tunelab` calls (entry point `mlflow.app`)."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as mlflow_app

    app = app or mlflow_app
    index = Path(app.static_folder or "") / "index.html"
    serve_ui = app.view_functions["serve"]

    def serve():
        if not index.exists():
            return serve_ui()
        page = with_default_view(index.read_text(encoding="utf-8"))
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    app.view_functions["serve"] = serve
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
