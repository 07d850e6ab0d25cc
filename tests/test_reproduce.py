"""`tunelab reproduce`, `trace` and `ui` on a throwaway git repository holding this project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, NO_TELEMETRY, ROOT
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
SMALL = [*FAST, "trainer.max_epochs=3", "trainer.num_threads=1", "tracking.log_model=false"]


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """This project's files in a fresh repository with one commit (what a clone looks like)."""
    dest = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for f in files:
        if (ROOT / f).is_file() and f.startswith(("src/", "conf/", "pyproject.toml")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "init")
    (tmp_path / "work").mkdir()
    return dest


def env(repo: Path) -> dict[str, str]:
    return {**os.environ, **NO_TELEMETRY, "PYTHONPATH": str(repo / "src"), "PYTHONUNBUFFERED": "1"}


def train(repo: Path, *args: str) -> str:
    """`python src/train.py ARGS` with the repository's code; the new run's id."""
    work = repo.parent / "work"
    before = {r.info.run_id for r in runs(work)}
    proc = subprocess.run([sys.executable, str(repo / "src" / "train.py"), *args], cwd=work,
                          env=env(repo), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (new,) = {r.info.run_id for r in runs(work)} - before
    return new


def tunelab(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab", *args], cwd=repo.parent / "work",
                          env=env(repo), capture_output=True, text=True, timeout=600)  # fmt: skip


def runs(work: Path) -> list:
    if not (work / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_run_reproduces_identically_and_is_tagged(repo):
    run_id = train(repo, *SMALL)
    proc = tunelab(repo, "reproduce", run_id, "--repo", str(repo))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "identical: every final and per-epoch metric matches" in proc.stdout
    (copy,) = [r for r in runs(repo.parent / "work") if r.data.tags.get("reproduces") == run_id]
    assert copy.info.status == "FINISHED" and copy.data.tags["reproduction"] == "match"


def test_a_later_commit_changing_the_defaults_does_not_change_the_reproduction(repo):
    run_id = train(repo, *SMALL)
    adam = repo / "conf" / "optimizer" / "adam.yaml"
    adam.write_text(adam.read_text().replace("lr: 1.0e-3", "lr: 5.0e-2"))
    git(repo, "commit", "-qam", "another default lr")
    proc = tunelab(repo, "reproduce", run_id, "--repo", str(repo))
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr


def test_a_run_from_a_dirty_tree_reproduces_through_its_diff(repo):
    sources = repo / "src" / "tunelab" / "data" / "sources.py"
    clean = sources.read_text()
    sources.write_text(clean.replace("noise * rng.normal", "1.5 * noise * rng.normal"))
    run_id = train(repo, *SMALL)  # recorded with git.diff
    sources.write_text(clean)  # the tree is clean again: only the diff knows the change
    proc = tunelab(repo, "reproduce", run_id, "--repo", str(repo))
    assert proc.returncode == 0 and "with its diff" in proc.stdout, proc.stdout + proc.stderr
    assert "identical" in proc.stdout


def test_changed_data_and_a_missing_commit_are_refused_without_a_run(repo, tmp_path):
    import numpy as np

    arrays = tmp_path / "arrays.npz"
    rng = np.random.default_rng(0)
    np.savez(arrays, x_train=rng.normal(size=(120, 8)), y_train=rng.integers(0, 3, 120),
             x_test=rng.normal(size=(30, 8)), y_test=rng.integers(0, 3, 30))  # fmt: skip
    run_id = train(repo, *SMALL, "data=npz", f"data.path={arrays}")
    np.savez(arrays, x_train=rng.normal(size=(120, 8)), y_train=rng.integers(0, 3, 120),
             x_test=rng.normal(size=(30, 8)), y_test=rng.integers(0, 3, 30))  # fmt: skip
    n = len(runs(repo.parent / "work"))
    proc = tunelab(repo, "reproduce", run_id, "--repo", str(repo))
    assert proc.returncode == 2 and "data changed: expected digest" in proc.stderr, proc.stderr
    recorded = MlflowClient(f"sqlite:///{repo.parent}/work/mlflow.db").get_run(run_id)
    assert recorded.data.tags["data_digest"] in proc.stderr
    client = MlflowClient(f"sqlite:///{repo.parent}/work/mlflow.db")
    client.set_tag(run_id, "git_sha", "0123456789abcdef0123456789abcdef01234567")
    proc = tunelab(repo, "reproduce", run_id, "--repo", str(repo))
    assert proc.returncode == 2 and "is not in the repository" in proc.stderr, proc.stderr
    proc = tunelab(repo, "reproduce", "nosuchrun", "--repo", str(repo))
    assert proc.returncode == 2 and "run nosuchrun is not in" in proc.stderr
    assert len(runs(repo.parent / "work")) == n  # no run was created by any refusal


def test_a_sweep_trial_reproduces_from_its_trial_run(repo):
    sweep = ["-m", *SMALL, "hydra/sweeper=tunelab", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.sampler.name=random", "optimizer.lr=interval(0.001, 0.01)"]  # fmt: skip
    work = repo.parent / "work"
    proc = subprocess.run([sys.executable, str(repo / "src" / "train.py"), *sweep], cwd=work,
                          env=env(repo), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = next(r for r in runs(work) if r.data.tags.get("role") == "trial")
    proc = tunelab(repo, "reproduce", trial.info.run_id, "--repo", str(repo))
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr
    (trace,) = [tunelab(repo, "trace", trial.info.run_id)]
    assert trace.returncode == 0 and "children:" in trace.stdout and "seed" in trace.stdout


def test_ui_starts_on_the_projects_store_and_answers(repo):
    train(repo, *SMALL)
    proc = tunelab(repo, "ui", "--check")
    assert proc.returncode == 0, proc.stderr
    assert "/#/experiments/1/runs?workflowType=machine_learning" in proc.stdout
