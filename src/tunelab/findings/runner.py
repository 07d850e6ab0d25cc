"""Runs each piece of the findings (a study per claim and dataset, a sweep per search method and
study seed) through `python src/train.py -m`, skipping what the store already holds finished.

Each piece is its own process, so Hydra starts clean; its output goes to `<work>/<name>.log`, one
progress line per piece goes to the console; `jobs` pieces run side by side, sharing the cores.
A piece that fails fails the run with its log's path once the others end: the same command resumes
it (studies and sweeps resume from their Optuna storage)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
        sys.executable,
        str(train_script()),
        "-m",
        *job.overrides,
        f"hydra.sweeper.experiment={experiment}",
        f"hydra.sweep.dir={work / job.name}",
    ]


def _env(uri: str, jobs: int) -> dict[str, str]:
    """Side by side, the jobs share the cores (each small model gains little from more threads)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // jobs))
    return env


def run_all(
    spec: Spec,
    budget: str,
    uri: str,
    work: Path,
    only: list[str] | None = None,
    jobs: int = 1,
    echo: Any = print,
) -> dict[str, float]:
    """Every job of the budget the store lacks, `jobs` at a time; seconds per job run."""
    experiment = spec.experiment_for(budget)
    todo = spec.jobs(budget, only)
    work.mkdir(parents=True, exist_ok=True)
    env = _env(uri, jobs)
    reader = store.Reader(uri, experiment)
    took: dict[str, float] = {}
    failed: list[str] = []
    lock = threading.Lock()

    def one(i: int, job: Job) -> None:
        head = f"[{i}/{len(todo)}] {job.name}"
        log = work / f"{job.name}.log"
        echo(f"{head}: running (log {log})")
        t0 = time.monotonic()
        with open(log, "w") as fh:
            done = subprocess.run(
                command(job, experiment, work), stdout=fh, stderr=subprocess.STDOUT, env=env
            )
        with lock:
            took[job.name] = time.monotonic() - t0
            if done.returncode != 0:
                tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
                failed.append(
                    f"{job.name} exited {done.returncode} after {took[job.name]:.0f} s; "
                    f"its log: {log}\n{tail}"
                )
                echo(f"{head}: FAILED after {took[job.name]:.0f} s")
            else:
                echo(f"{head}: done in {took[job.name]:.0f} s")

    pending = []
    for i, job in enumerate(todo, 1):
        if reader.finished(job.kind, job.name):
            echo(f"[{i}/{len(todo)}] {job.name}: already in the store, kept")
        else:
            pending.append((i, job))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one, i, job) for i, job in pending]:
            future.result()
    if failed:
        raise RunFailed("\n".join(failed) + "\nthe same command resumes them")
    return took
