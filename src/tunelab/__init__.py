"""tunelab. Its public API for a training loop of your own, `tunelab.tracked_run` (README: "Your
own training loop"), is imported on first use, so `import tunelab.config` stays free of torch."""

from importlib import import_module
from typing import Any

_PUBLIC = {"tracked_run": "tunelab.own_loop", "TrackedRun": "tunelab.own_loop"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
