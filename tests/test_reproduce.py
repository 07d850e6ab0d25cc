"""`tunelab reproduce`, `trace` and `ui` on a throwaway git repository holding this project.

A run record is untrusted input: the tests after the first few plant what someone with write access
to the store could (a diff, a config, a git_sha, escape sequences, a decoy run) into copies of one
recorded run, and check that nothing planted runs, is applied or reaches the terminal raw."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import FAST, NO_TELEMETRY, ROOT
from mlflow import MlflowClient
from mlflow.entities import Metric

pytestmark = pytest.mark.slow
SMALL = [*FAST, "trainer.max_epochs=3", "trainer.num_threads=1", "tracking.log_model=false"]


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


# A user's own dataset (README: Your own model or dataset): the synthetic data under another name.
MYDATA = """from tunelab.data.sources import synthetic


def make(**settings):
    return synthetic(**settings)
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    """This project's files in a fresh repository with one commit (what a clone looks like)."""
    return make_repo(tmp_path / "repo")


def make_repo(dest: Path, extra: dict[str, str] | None = None) -> Path:
    """This project's files (and `extra` ones) committed in a new repository at dest, with an
    empty working directory `work` beside it."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for f in files:
        if (ROOT / f).is_file() and f.startswith(("src/", "conf/", "pyproject.toml")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    for f, text in (extra or {}).items():
        (dest / f).write_text(text)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "init")
    (dest.parent / "work").mkdir()
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
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args],
        cwd=repo.parent / "work",
        env=env(repo),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


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
    proc = tunelab(repo, "reproduce", run_id, "--repo", str(repo), "--apply-diff")
    assert proc.returncode == 0 and "with its diff" in proc.stdout, proc.stdout + proc.stderr
    assert "identical" in proc.stdout and re.search(r"data/sources.py \| +2 \+-", proc.stdout)


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


# ---- a run record is untrusted input -------------------------------------------------------------

TINY = [*FAST, "trainer.num_threads=1", "tracking.log_model=false"]  # 2 epochs
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\r\u202e"  # a title, a clear, a colour, a bidi override


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> SimpleNamespace:
    """One recorded 2-epoch run in a repository that also holds a user's own dataset (mydata);
    the tests reproduce it, or copies of its record with something planted in them."""
    base = tmp_path_factory.mktemp("recorded")
    repo = make_repo(base / "repo", {"src/mydata.py": MYDATA})
    job = base / "job"
    run_id = train(repo, *TINY, f"hydra.run.dir={job}")
    client = MlflowClient(f"sqlite:///{base}/work/mlflow.db")
    config = yaml.safe_load(
        Path(client.download_artifacts(run_id, "config.yaml", str(base))).read_text()
    )
    return SimpleNamespace(repo=repo, run_id=run_id, job=job, client=client, config=config)


def copy_run(rec, *, config=None, tags=None, shift=None, files=None, name="copy") -> str:
    """A new run holding the recorded run's tags, metrics (each metric in `shift` moved by its
    amount) and config.yaml (`config` instead when given; none when False), plus `files`."""
    c, src = rec.client, rec.client.get_run(rec.run_id)
    kept = {k: v for k, v in src.data.tags.items() if not k.startswith("mlflow.")}
    new = c.create_run(src.info.experiment_id, run_name=name, tags={**kept, **(tags or {})})
    new_id = new.info.run_id
    for key in src.data.metrics:
        history = c.get_metric_history(rec.run_id, key)
        moved = (shift or {}).get(key, 0.0)
        c.log_batch(new_id, [Metric(key, m.value + moved, m.timestamp, m.step) for m in history])
    if config is not False:
        c.log_dict(new_id, rec.config if config is None else config, "config.yaml")
    for path, text in (files or {}).items():
        c.log_text(new_id, text, path)
    c.set_terminated(new_id)
    return new_id


def planted(rec, **changes) -> dict:
    """The recorded config with top-level keys replaced."""
    return {**json.loads(json.dumps(rec.config)), **changes}


def reproduce(rec, run_id: str, *args: str) -> subprocess.CompletedProcess:
    return tunelab(rec.repo, "reproduce", run_id, "--repo", str(rec.repo), *args)


def n_runs(rec) -> int:
    return len(runs(rec.repo.parent / "work"))


def refused(rec, run_id: str, *args: str) -> subprocess.CompletedProcess:
    """`tunelab reproduce RUN_ID ARGS`, which must exit 2 before it checks anything out or
    creates a run."""
    n = n_runs(rec)
    proc = reproduce(rec, run_id, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "reproducing run" not in proc.stdout and n_runs(rec) == n
    return proc


def planted_diff(rec, marker: Path) -> str:
    """A diff adding to src/train.py a line that creates `marker` when train.py runs."""
    train_py = rec.repo / "src" / "train.py"
    clean = train_py.read_text()
    train_py.write_text(
        clean.replace("import hydra\n", f"import hydra\nopen({str(marker)!r}, 'w')\n")
    )
    try:
        return subprocess.run(["git", "diff"], cwd=rec.repo, capture_output=True, text=True).stdout
    finally:
        train_py.write_text(clean)


def test_the_job_reports_its_mlflow_run_in_metrics_json(rec):
    metrics = json.loads((rec.job / "metrics.json").read_text())
    assert metrics["run_id"] == rec.run_id and "val/acc" in metrics


def test_a_planted_diff_is_shown_and_runs_only_with_apply_diff(rec, tmp_path):
    marker = tmp_path / "planted-line-ran"
    diff = planted_diff(rec, marker)
    run_id = copy_run(rec, tags={"git_dirty": "true"}, files={"git.diff": diff})
    proc = refused(rec, run_id)
    assert re.search(r"src/train.py \| +1 \+", proc.stdout) and "+open(" not in proc.stdout
    assert "was not applied and nothing ran" in proc.stderr and "--apply-diff" in proc.stderr
    proc = refused(rec, run_id, "--show-diff")
    assert f"+open({str(marker)!r}, 'w')" in proc.stdout  # the whole diff, with --show-diff
    assert not marker.exists()
    # the control: agreed to, the diff is applied and its line runs
    proc = reproduce(rec, run_id, "--apply-diff")
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr
    assert marker.exists()


def test_a_diff_that_no_longer_applies_exits_2(rec, tmp_path):
    diff = planted_diff(rec, tmp_path / "marker").replace(" import hydra", " import nothing")
    run_id = copy_run(rec, tags={"git_dirty": "true"}, files={"git.diff": diff})
    n = n_runs(rec)
    proc = reproduce(rec, run_id, "--apply-diff")
    assert proc.returncode == 2 and "its recorded diff does not apply" in proc.stderr, proc.stderr
    assert n_runs(rec) == n and not (tmp_path / "marker").exists()


def test_a_planted_target_copies_nothing_and_is_refused_with_the_reason(rec, tmp_path):
    from hydra.utils import instantiate

    secret, stolen = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("s3cret")
    data = {"_target_": "shutil.copyfile", "src": str(secret), "dst": str(stolen)}
    instantiate(data)  # the control: built, this node copies the file
    assert stolen.read_text() == "s3cret"
    stolen.unlink()
    listed = copy_run(rec, config=planted(rec, data=data, allowed_targets=["shutil.copyfile"]))
    proc = refused(rec, listed)
    assert "allowed_targets lists ['shutil.copyfile']" in proc.stderr
    assert "--trust-target shutil.copyfile" in proc.stderr
    unlisted = copy_run(rec, config=planted(rec, data=data))
    proc = refused(rec, unlisted)
    assert "data._target_='shutil.copyfile' is not allowed" in proc.stderr
    assert "--trust-target" in proc.stderr
    assert not stolen.exists()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"hydra": {"callbacks": {"x": {"_target_": "shutil.copyfile"}}}}, "hydra: block"),
        ({"tracking": {"experiment": "${oc.env:HOME}"}}, "interpolations (tracking.experiment)"),
        ({"trainer": {"max_epochs": -1}}, "trainer.max_epochs=-1 is invalid"),
        ({"extra": 1}, "extra is not a setting"),
    ],
)
def test_a_stored_config_is_checked_like_a_command_line_config(rec, change, reason):
    group = next(iter(change))
    config = planted(rec)
    if isinstance(config.get(group), dict):
        config[group] = {**config[group], **change[group]}
    else:
        config[group] = change[group]
    proc = refused(rec, copy_run(rec, config=config))
    assert reason in proc.stderr, proc.stderr


def test_a_git_sha_that_is_not_a_full_commit_id_is_refused(rec, tmp_path):
    out = tmp_path / "x"
    sha = rec.client.get_run(rec.run_id).data.tags["git_sha"]
    for bad in (f"--output={out}", sha[:12]):
        proc = refused(rec, copy_run(rec, tags={"git_sha": bad}))
        assert "is not a commit id (40 hex digits)" in proc.stderr
    assert not out.exists()


def test_a_run_without_config_yaml_exits_2(rec):
    proc = refused(rec, copy_run(rec, config=False))
    assert "has no config.yaml" in proc.stderr, proc.stderr


def test_a_users_own_target_runs_when_they_trust_it_on_the_command_line(rec):
    data = {**rec.config["data"], "_target_": "mydata.make"}
    run_id = copy_run(rec, config=planted(rec, data=data, allowed_targets=["mydata.make"]))
    proc = refused(rec, run_id)
    assert "--trust-target mydata.make" in proc.stderr, proc.stderr
    proc = reproduce(rec, run_id, "--trust-target", "mydata.make")
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr


def test_text_from_the_store_reaches_the_terminal_neutralised(rec):
    c = rec.client
    run_id = copy_run(rec, tags={"device_name": f"cpu{ESCAPES}"}, name=f"copy{ESCAPES}")
    experiment = c.get_run(run_id).info.experiment_id
    child = c.create_run(
        experiment, run_name="child", tags={"mlflow.parentRunId": run_id, "role": f"seed{ESCAPES}"}
    ).info.run_id
    shown = [tunelab(rec.repo, "trace", run_id), tunelab(rec.repo, "trace", child)]
    assert "children:" in shown[0].stdout and "parent:" in shown[1].stdout
    shown.append(reproduce(rec, run_id))  # the environment rows show the recorded device_name
    assert shown[2].returncode == 0 and "[device_name]" in shown[2].stdout, shown[2].stderr
    for proc in shown:
        out = proc.stdout + proc.stderr
        assert not any(ch in out for ch in "\x1b\x07\r\u202e"), out
    assert "seed\\x1b]0;owned\\x07" in shown[0].stdout
    assert "copy\\x1b]0;owned\\x07\\x1b[2J" in shown[1].stdout
    assert "cpu\\x1b]0;owned" in shown[2].stdout


def test_the_comparison_is_with_the_run_the_reproduction_reports(rec):
    """Not the newest run tagged reproduces=<id>: anyone can add one (here, one that would differ
    in every metric, started in the future)."""
    c, src = rec.client, rec.client.get_run(rec.run_id)
    future = int(time.time() * 1000) + 10**9
    decoy = c.create_run(
        src.info.experiment_id, start_time=future, tags={"reproduces": rec.run_id}
    ).info.run_id
    c.log_batch(decoy, [Metric(k, v + 1.0, future, 0) for k, v in src.data.metrics.items()])
    proc = reproduce(rec, rec.run_id)
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr
    assert "reproduction" not in c.get_run(decoy).data.tags
    new_id = proc.stdout.split("the reproduction: run ")[1].split()[0]
    assert new_id != decoy and c.get_run(new_id).data.tags["reproduces"] == rec.run_id


def test_a_reproduction_that_differs_in_the_same_environment_exits_1(rec):
    run_id = copy_run(rec, shift={"test/acc": 0.25})
    proc = reproduce(rec, run_id)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "differs in the same environment: test/acc" in proc.stdout
    (copy,) = [r for r in runs(rec.repo.parent / "work") if r.data.tags.get("reproduces") == run_id]
    assert copy.data.tags["reproduction"] == "differs"


def test_a_difference_within_the_seed_spread_passes_only_where_the_environment_differs(rec):
    c = rec.client
    experiment = c.get_run(rec.run_id).info.experiment_id
    trial = c.create_run(experiment, tags={"role": "trial"}).info.run_id
    c.log_metric(trial, "test/acc_std", 0.05)
    elsewhere = {"mlflow.parentRunId": trial, "threads": "64"}  # recorded with 64 threads
    proc = reproduce(rec, copy_run(rec, tags=elsewhere, shift={"test/acc": 0.09}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "within the seed spread of its sweep (environment differs: threads: 64 -> 1)" in proc.stdout
    )
    proc = reproduce(rec, copy_run(rec, tags=elsewhere, shift={"test/acc": 0.11}))
    assert proc.returncode == 1 and "differs (test/acc); the environment differs" in proc.stdout


def test_a_run_of_a_commit_whose_jobs_report_no_run_id_still_reproduces(rec):
    """Commits from before metrics.json held run_id: the run carrying the reproduction's key."""
    cli = rec.repo / "src" / "tunelab" / "hydra_job.py"
    today = cli.read_text()
    written = 'written = {"run_id": result.run_id, **result.metrics}'
    assert written in today
    cli.write_text(today.replace(written, "written = result.metrics"))
    git(rec.repo, "commit", "-qam", "metrics.json without run_id")
    try:
        run_id = train(rec.repo, *TINY)
    finally:
        cli.write_text(today)
        git(rec.repo, "commit", "-qam", "metrics.json with run_id")
    proc = reproduce(rec, run_id)
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("answer", ["n", "y"])
def test_at_a_terminal_the_diff_is_applied_only_on_a_typed_y(rec, tmp_path, answer):
    import pty

    marker = tmp_path / "planted-line-ran"
    run_id = copy_run(
        rec, tags={"git_dirty": "true"}, files={"git.diff": planted_diff(rec, marker)}
    )
    n = n_runs(rec)
    terminal, stdin = pty.openpty()
    os.write(terminal, f"{answer}\n".encode())  # typed ahead: waits in the terminal's input
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tunelab", "reproduce", run_id, "--repo", str(rec.repo)],
            cwd=rec.repo.parent / "work",
            env=env(rec.repo),
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        os.close(stdin)
        os.close(terminal)
    assert "apply this diff and run the code it changes? [y/N]" in proc.stdout
    if answer == "y":
        assert proc.returncode == 0 and marker.exists(), proc.stdout + proc.stderr
    else:
        assert proc.returncode == 2 and "--apply-diff" in proc.stderr, proc.stdout + proc.stderr
        assert not marker.exists() and n_runs(rec) == n


@pytest.mark.slow
def test_a_run_on_your_own_dataset_reproduces_from_your_folder(tmp_path):
    """The README's own-data example (examples/own_data) in a clone: its run reproduces when the
    user trusts the target and has the folder on PYTHONPATH; without the folder the message says
    the target's code is not part of the commit and how to import it."""
    repo = make_repo(tmp_path / "repo")
    own = repo / "examples" / "own_data"
    shutil.copytree(ROOT / "examples" / "own_data", own)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "own data")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mine = {**env(repo), "MLFLOW_TRACKING_URI": store}
    mine["PYTHONPATH"] = os.pathsep.join([".", mine["PYTHONPATH"]])
    args = ["hydra.searchpath=[file://conf]", "data=wine", "model=mlp", "trainer.max_epochs=2"]
    train_py = [sys.executable, str(repo / "src" / "train.py"), *args]
    proc = subprocess.run(train_py, cwd=own, env=mine, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads(next(own.glob("outputs/*/*/metrics.json")).read_text())["run_id"]

    cmd = [sys.executable, "-m", "tunelab", "reproduce", run_id, "--trust-target", "mydata.make"]
    quiet = {"capture_output": True, "text": True, "timeout": 600, "stdin": subprocess.DEVNULL}
    ok = subprocess.run(cmd, cwd=own, env=mine, **quiet)
    assert ok.returncode == 0 and "identical" in ok.stdout, ok.stdout + ok.stderr
    away = {**mine, "PYTHONPATH": env(repo)["PYTHONPATH"]}
    failed = subprocess.run(cmd, cwd=own, env=away, **quiet)
    assert failed.returncode == 2
    assert "could not import a target" in failed.stderr
    assert "not part of the recorded commit" in failed.stderr and "PYTHONPATH" in failed.stderr
