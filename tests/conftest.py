"""Shared fixtures: compose configs from conf/, run in a temporary working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TRAIN = ROOT / "src" / "train.py"

# Small and fast: what most end-to-end tests train.
FAST = [
    "data=synthetic",
    "model=mlp",
    "model.width=32",
    "trainer.max_epochs=2",
    "trainer.batch_size=64",
    "scheduler=constant",
    "optimizer=adam",
]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside an empty directory so mlflow.db, mlruns/ and checkpoints/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python src/train.py ARGS` in cwd, as a user would type it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def mlflow_runs(cwd: Path, experiment: str = "tunelab") -> list:
    """Every run of an experiment in the store under cwd (absolute URI: MLflow caches stores by URI)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(cwd).resolve()}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=10000) if exp else []
