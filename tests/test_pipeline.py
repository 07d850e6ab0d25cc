"""The DVC pipeline: params.yaml stays the composed form of conf/, and `dvc repro` runs end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, mlflow_runs

sys.path.insert(0, str(ROOT / "pipelines"))
from compose_params import composed  # noqa: E402


def test_params_yaml_is_conf_composed():
    """Fails when conf/ changed without `python pipelines/compose_params.py`."""
    have = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert have == composed([]), (
        "params.yaml drifted from conf/: run python pipelines/compose_params.py"
    )


def test_drift_check_catches_a_stale_params_file(tmp_path):
    stale = yaml.safe_load((ROOT / "params.yaml").read_text())
    stale["optimizer"]["lr"] = 123.0
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(stale))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipelines" / "compose_params.py"),
            "--check",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "out of date" in proc.stderr


def test_every_stage_lists_only_params_that_exist():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"stage {name} lists params {key!r}, absent from params.yaml"
                node = node[part]


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


def _sh(*cmd: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """A command in the clone, with the clone's code (as its own install would give it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(cwd / "src")}
    proc = subprocess.run(
        list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.mark.slow
def test_dvc_repro_end_to_end_on_a_fresh_clone(tmp_path):
    repo = tmp_path / "repo"
    _copy_repo(repo)
    _sh("git", "init", "-q", cwd=repo)
    _sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A", cwd=repo)
    _sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", cwd=repo)
    tiny = [
        "pipeline.tune.n_trials=3",
        "pipeline.confirm.seeds=[0,1]",
        "trainer.max_epochs=2",
        "model.width=8",
        "data.num_samples=1000",
    ]
    _sh(sys.executable, "pipelines/compose_params.py", *tiny, cwd=repo)
    first = _sh("dvc", "repro", cwd=repo)
    for stage in ("prepare", "tune", "confirm", "evaluate", "report"):
        assert f"Running stage '{stage}'" in first.stdout, stage
    for out in (
        "data/prepared/splits.npz",
        "results/tune/trials.csv",
        "results/tune/best_overrides.yaml",
        "results/tune/space.json",
        "results/confirm/seed_0.pt",
        "results/confirm/seed_1.pt",
        "results/confirm/curves.csv",
        "results/eval/confusion.csv",
        "results/eval/per_class.csv",
        "results/report/report.md",
        "results/report/learning_curves.png",
        "dvc.lock",
    ):
        assert (repo / out).exists(), out
    metrics = json.loads((repo / "results/eval/metrics.json").read_text())
    assert set(metrics["test_acc_per_seed"]) == {"0", "1"}
    assert 0.0 < metrics["test_acc_mean"] <= 1.0
    assert metrics["metric"] == "test/acc" and metrics["ensemble_seeds"] == 2
    assert 0.0 < metrics["ensemble_test_acc"] == metrics["ensemble"]["test_acc"] <= 1.0
    assert metrics["study"]["complete"] + metrics["study"]["pruned"] + metrics["study"]["fail"] == 3
    shown = _sh("dvc", "metrics", "show", cwd=repo).stdout
    assert "test_acc_mean" in shown
    runs = mlflow_runs(repo, "tunelab-pipeline")
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("dvc_stage"), []).append(r)
    assert {"tune", "confirm", "evaluate", "report"} <= set(by_stage), set(by_stage)
    digest = json.loads((repo / "data/prepared/data.json").read_text())["digest"]
    sha = _sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    for r in by_stage["confirm"]:
        assert r.data.tags["data_digest"] == digest and r.data.tags["git_sha"] == sha
        # named by what it trained, under the pipeline's run with every other stage's runs
        assert r.info.run_name.startswith(f"seed={r.data.tags['seed']},optimizer.")
        assert r.data.tags["overrides"] != "(none)" and r.data.tags["sweep"].startswith("pipeline-")
    (pipeline,) = (
        by_stage[None]
        if None in by_stage
        else [r for r in runs if r.data.tags.get("role") == "pipeline"]
    )
    assert pipeline.data.tags["role"] == "pipeline" and pipeline.info.status == "FINISHED"
    tops = [
        r for r in runs if r.data.tags.get("role") in ("sweep", "confirm", "evaluate", "report")
    ]
    assert {r.data.tags["mlflow.parentRunId"] for r in tops} == {pipeline.info.run_id}
    report = (repo / "results/report/report.md").read_text()
    assert "The untuned configuration (trial 0" in report  # what tuning gained, not just the best
    assert "ensemble of 2 seeds: " in report and " %, single seed " in report
    assert pipeline.data.metrics["ensemble/test/acc"] == pytest.approx(metrics["ensemble_test_acc"])
    traced = _sh(sys.executable, "-m", "tunelab", "trace", "results/eval/metrics.json",
                 "test_acc_mean", cwd=repo).stdout  # fmt: skip
    confirm_ids = {r.info.run_id for r in by_stage["confirm"]}
    assert (
        traced.startswith("2 run(s)")
        and {ln.split()[0] for ln in traced.splitlines()[3:]} == confirm_ids
    )
    one = _sh(sys.executable, "-m", "tunelab", "trace", "results/eval/metrics.json",
              "test_acc_per_seed.1", cwd=repo).stdout  # fmt: skip
    assert one.startswith("1 run(s)")
    assert "modified" not in _sh("dvc", "status", cwd=repo).stdout
    second = _sh("dvc", "repro", cwd=repo)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout.lower()
