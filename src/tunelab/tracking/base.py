"""The Tracker protocol the training loop and the run record write to, and a null tracker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """start(run_id=...) continues an existing run; on it log_metrics skips (key, step) pairs the
    run already has, so replaying epochs after a crash never duplicates history."""

    run_id: str | None

    def start(
        self,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def delete_tags(self, keys: list[str]) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_figure(self, fig: Any, artifact_file: str) -> None: ...  # fig: not changed afterwards
    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None: ...
    def log_model(self, model: Any, input_example: Any) -> None: ...
    def flush(self) -> None: ...
    def end(self, status: str) -> None: ...
    def mark_killed(self, run_id: str, reason: str) -> bool: ...


class NullTracker:
    """Records nothing; keeps the calls so tests can inspect them."""

    def __init__(self, **_: Any) -> None:
        self.run_id: str | None = None
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args or kwargs))

    def start(
        self,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        self.run_id = run_id or "null"
        return self.run_id
