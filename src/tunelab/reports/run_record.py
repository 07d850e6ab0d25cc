"""What a report asks to be recorded on an MLflow run: the tuning layer, which owns the run, logs
it (tuning/sweep_runs.log_record); reports never write to or end a run themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # (file, the artifact folder it goes in, None: the top)
    files: tuple[tuple[Path, str | None], ...] = ()
    # folders whose whole content goes in the artifacts' top
    folders: tuple[Path, ...] = ()
