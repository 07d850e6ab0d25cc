"""Runs each piece of the findings (a study per claim and dataset, a sweep per search method and
study seed) through `python src/train.py -m`, skipping what the store already holds finished.

Each piece is its own process, so Hydra starts clean; its output goes to `<work>/<name>.log`, one
progress line per piece goes to the console. A piece that fails stops the run with its log's path:
the same command resumes it (studies and sweeps resume from their Optuna storage)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.findings import store
from tunelab.findings.spec import Job, Spec


class RunFailed(RuntimeError):
    pass


def train_script() -> Path:
    """src/train.py of this checkout (the findings run the project's own entry point)."""
    script = Path(__file__).resolve().parents[2] / "train.py"
    if not script.is_file():
        raise RunFailed(f"{script} not found: run the findings from a checkout of the project")
    return script


def command(job: Job, experiment: str, work: Path) -> list[str]:
    return [
        sys.executable, str(train_script()), "-m", *job.overrides,
        f"hydra.sweeper.experiment={experiment}", f"hydra.sweep.dir={work / job.name}",
    ]  # fmt: skip


def run_all(spec: Spec, budget: str, uri: str, work: Path, only: list[str] | None = None,
            echo: Any = print) -> dict[str, float]:  # fmt: skip
    """Every job of the budget the store lacks, one after another; seconds per job run."""
    experiment = spec.experiment_for(budget)
    jobs = spec.jobs(budget, only)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    reader = store.Reader(uri, experiment, create=True)
    took: dict[str, float] = {}
    for i, job in enumerate(jobs, 1):
        head = f"[{i}/{len(jobs)}] {job.name}"
        if reader.finished(job.kind, job.name):
            echo(f"{head}: already in the store, kept")
            continue
        log = work / f"{job.name}.log"
        echo(f"{head}: running (log {log})")
        t0 = time.monotonic()
        with open(log, "w") as fh:
            done = subprocess.run(command(job, experiment, work), stdout=fh,
                                  stderr=subprocess.STDOUT, env=env)  # fmt: skip
        took[job.name] = time.monotonic() - t0
        if done.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise RunFailed(
                f"{job.name} exited {done.returncode} after {took[job.name]:.0f} s; its log: {log}\n"
                f"{tail}\nthe same command resumes it"
            )
        echo(f"{head}: done in {took[job.name]:.0f} s")
    return took
