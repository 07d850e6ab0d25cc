"""What the tunelab commands share: the store they read, the runs in it, errors for the user, and
text from a run record made safe to print."""

from __future__ import annotations

import os
from typing import Any

from tunelab.config.secrets import mask
from tunelab.tracking.mlflow_reader import MlflowReader
from tunelab.tracking.store_uri import absolute_uri, missing_store

DEFAULT_STORE = "sqlite:///mlflow.db"  # conf/tracking/mlflow.yaml


class CommandError(RuntimeError):
    """What a command cannot do, said for the user (exit status 2, no traceback)."""


def store_uri(given: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's default store; a SQLite store
    must exist (a command never creates one)."""
    uri = absolute_uri(given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE)
    if missing_store(uri):
        raise CommandError(f"no MLflow store at {mask(uri)} (pass --tracking-uri)")
    return uri


def get_run(store: MlflowReader, run_id: str) -> Any:
    """The run, or the user told it is not in the store."""
    run = store.run(run_id)
    if run is None:
        raise CommandError(f"run {run_id} is not in {mask(store.tracking_uri)}")
    return run


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
