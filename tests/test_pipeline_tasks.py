"""The DVC stages for a task other than classification: a tiny regression pipeline, each stage
called as dvc.yaml calls it, reports the objective's test metric, the task's others and the
seeds' ensemble (metrics.json, report, the pipeline's MLflow run); its confirm stage refits
(confirm.refit=train+val)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, mlflow_runs

STAGES = ROOT / "pipelines"


def _stage(script: str, *args: str, cwd) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        [sys.executable, str(STAGES / script), "--params", "params.yaml", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, f"{script}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_a_regression_pipeline_reports_rmse_and_the_seed_ensemble(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=6)
    x = rng.normal(size=(360, 6)).astype(np.float32)
    y = (x @ w + 0.3 * rng.normal(size=360)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x_train=x[:280], y_train=y[:280], x_test=x[280:], y_test=y[280:])
    subprocess.run(
        [
            sys.executable,
            str(STAGES / "compose_params.py"),
            "--out",
            str(tmp_path / "params.yaml"),
            "data=npz",
            f"data.path={tmp_path / 'reg.npz'}",
            "task=regression",
            "objective.metric=val/rmse",
            "objective.direction=minimize",
            "model=mlp",
            "model.width=8",
            "trainer.max_epochs=2",
            "trainer.batch_size=64",
            "pipeline.tune.n_trials=2",
            "pipeline.confirm.seeds=[0,1]",
            "confirm.refit=train+val",
        ],
        check=True,
        capture_output=True,
    )
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["task"]["name"] == "regression"
    _stage("prepare.py", "--out", "data/prepared", cwd=tmp_path)
    _stage("tune.py", "--study", "results/study", "--out", "results/tune", cwd=tmp_path)
    confirm = _stage(
        "confirm.py",
        "--best",
        "results/tune/best_overrides.yaml",
        "--out",
        "results/confirm",
        cwd=tmp_path,
    )
    assert "val/rmse=" in confirm and "test/rmse=" in confirm
    evaluated = _stage(
        "evaluate.py",
        "--confirm",
        "results/confirm",
        "--tune",
        "results/tune",
        "--out",
        "results/eval",
        cwd=tmp_path,
    )
    assert "ensemble of 2 seeds: test/rmse " in evaluated
    metrics = json.loads((tmp_path / "results/eval/metrics.json").read_text())
    assert metrics["metric"] == "test/rmse" and set(metrics["test_rmse_per_seed"]) == {"0", "1"}
    assert {"test_mae", "test_r2", "test_rmse"} <= set(metrics["ensemble"])
    assert metrics["ensemble_test_rmse"] == metrics["ensemble"]["test_rmse"] > 0
    assert metrics["test_mean"]["test_rmse"] == pytest.approx(metrics["test_rmse_mean"])
    _stage(
        "report.py",
        "--tune",
        "results/tune",
        "--confirm",
        "results/confirm",
        "--eval",
        "results/eval",
        "--out",
        "results/report",
        cwd=tmp_path,
    )
    report = (tmp_path / "results/report/report.md").read_text()
    assert "test/rmse over seeds 0, 1" in report and "ensemble of 2 seeds: test/rmse" in report
    assert "points" not in report and " %" not in report.split("## Best configuration")[0]
    assert "Confusion matrix" not in report
    runs = mlflow_runs(tmp_path, "tunelab-pipeline")
    confirmed = [r for r in runs if r.data.tags.get("dvc_stage") == "confirm"]
    assert len(confirmed) == 2
    for r in confirmed:  # each seed refit on the 252 + 28 examples left after the test split
        assert r.data.tags["refit"] == "train+val" and r.data.metrics["refit/n_train"] == 280
        assert r.data.metrics["refit/epochs"] == r.data.metrics["best_epoch"]
    trials = [r for r in runs if r.data.tags.get("role") in ("trial", "seed")]
    assert trials and not any("refit" in r.data.tags for r in trials)  # the search selects only
    (pipeline,) = [r for r in runs if r.data.tags.get("role") == "pipeline"]
    assert pipeline.data.metrics["ensemble/test/rmse"] == pytest.approx(
        metrics["ensemble_test_rmse"]
    )
    assert pipeline.data.tags["ensemble"].startswith("ensemble of 2 seeds: test/rmse")
