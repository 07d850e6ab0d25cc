"""The private MLflow APIs tunelab relies on, named in one place. tests/test_compat.py fails when an
MLflow release changes any of them.

- `mlflow.environment_variables._MLFLOW_SGI_NAME`: the server `mlflow server`/`mlflow ui` runs an
  app factory (`--app-name`) under ("uvicorn", "waitress", "gunicorn"). Under uvicorn the factory
  must return the FastAPI app wrapped around the Flask one, as MLflow's own factories do; MLflow
  says which server it chose only through this variable.
- the Flask view named `serve` in `mlflow.server.app`: the route that sends the UI's page. Flask
  has no public way to wrap another package's view, so tunelab's app replaces it in the app's
  `view_functions`, keeping MLflow's for when the page is not built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

UI_PAGE_VIEW = "serve"  # the endpoint name of MLflow's UI page

__all__ = ["UI_PAGE_VIEW", "replace_ui_page", "server_name"]


def server_name() -> str | None:
    """The server MLflow runs the app under ("uvicorn", "waitress", "gunicorn"), None when unset."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    return _MLFLOW_SGI_NAME.get()


def replace_ui_page(app: Any, page: Callable[[Callable[[], Any]], Any]) -> None:
    """Serve the UI's page from `page(mlflow_view)` instead of MLflow's view; `page` gets MLflow's
    own view to fall back on."""
    mlflow_view = app.view_functions[UI_PAGE_VIEW]
    app.view_functions[UI_PAGE_VIEW] = lambda: page(mlflow_view)
