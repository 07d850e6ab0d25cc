"""What the tunelab commands share: the store they read, the runs in it, errors for the user, and
text from a run record made safe to print."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tunelab.config.secrets import mask

DEFAULT_STORE = "sqlite:///mlflow.db"  # conf/tracking/mlflow.yaml


class CommandError(RuntimeError):
    """What a command cannot do, said for the user (exit status 2, no traceback)."""


def store_uri(given: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's default store; a SQLite store
    must exist (a command never creates one)."""
    from tunelab.tracking.mlflow_writer import absolute_uri

    uri = absolute_uri(given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise CommandError(f"no MLflow store at {mask(uri)} (pass --tracking-uri)")
    return uri


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def get_run(mlflow: Any, run_id: str, uri: str) -> Any:
    try:
        return mlflow.get_run(run_id)
    except Exception:
        raise CommandError(f"run {run_id} is not in {mask(uri)}") from None


def artifact_text(mlflow: Any, run_id: str, path: str) -> str | None:
    """A text artifact of a run, or None when it has none."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with tempfile.TemporaryDirectory() as d:
            return Path(mlflow.download_artifacts(run_id, path, d)).read_text()
    except Exception:
        return None


def run_link(experiment_id: str, run_id: str | None = None, port: int = 5000) -> str:
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
    return f"{base}/runs/{run_id}" if run_id else f"{base}/runs?workflowType=machine_learning"


def printable(text: object, keep: str = "") -> str:
    """Text from a store (a run's name, tags, params, artifacts), safe to print on a terminal:
    every control or formatting character (escape sequences, carriage returns, newlines, bidi
    overrides) is shown as its escape (`\\x1b`), except those in `keep` (e.g. a diff's tabs)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table (columns padded to their widest cell); cells are printable()."""
    cells = [[printable(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
