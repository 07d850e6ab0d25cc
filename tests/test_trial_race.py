"""A trial is told exactly once: a worker whose trial another worker failed for a stale heartbeat
(a long pause, a slow network) still has its finished result recorded, in Optuna (as the trial's
retry) and in MLflow, counted once; heartbeats that cannot be recorded are logged, without the
password; the grace period spans at least three heartbeat intervals."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import run_cli
from optuna.trial import TrialState
from test_sweep_plugin import app  # noqa: F401  (the toy Hydra app's files)

from tunelab.tuning import rdb
from tunelab.tuning.study_storage import ask_lock, counted, fail_lost, make_storage, trial_id
from tunelab.tuning.sweep_runs import SweepRuns

QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}

# The trial's job holds it RUNNING until the test creates the release file.
RACE_APP = """
import os, time
import hydra


def task(cfg):
    while not os.path.exists(os.environ["RACE_RELEASE"]):
        time.sleep(0.05)
    return 0.25


main = hydra.main(config_path="conf", config_name="config", version_base="1.3")(task)

if __name__ == "__main__":
    main()
"""


def _wait(what: str, check, proc: subprocess.Popen, timeout: float = 120):
    """Poll a state until check() returns something truthy; fail if the worker exits first."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited before {what}:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)
    return found


def _heartbeat_row(url: str, tid: int) -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            q = text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t")
            return conn.execute(q, {"t": tid}).scalar() == 1
    finally:
        engine.dispose()


def _age_heartbeat(url: str, tid: int) -> None:
    """The trial's last heartbeat two hours old, as if its worker had stopped beating."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            q = "UPDATE trial_heartbeats SET heartbeat = heartbeat - interval '2 hours'"
            conn.execute(text(q + " WHERE trial_id = :t"), {"t": tid})
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("retry_taken", [False, True], ids=["retry-waits", "retry-taken"])
@pytest.mark.xdist_group("postgres")
def test_a_result_that_arrives_after_a_stale_heartbeat_failure_is_recorded_once(
    app,  # noqa: F811
    postgres,
    mlflow_schema,
    retry_taken,
):
    from mlflow import MlflowClient

    (app / "race.py").write_text(RACE_APP)
    shutil.copy(mlflow_schema, app / "mlflow.db")
    tracking = f"sqlite:///{app / 'mlflow.db'}"
    name = f"race-{int(retry_taken)}"
    url = postgres.url(name)
    release = app / "release"
    # a 10-minute heartbeat interval: the worker records one beat when its trial starts and none
    # while the test ages it and fails the trial
    cmd = [
        sys.executable,
        "race.py",
        "-m",
        "search=random",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.study_name={name}",
        "hydra.sweeper.heartbeat_interval_s=600",
        f"tracking.tracking_uri={tracking}",
        "hydra.sweeper.figures=false",
        f"experiment={name}",
    ]
    env = {**os.environ, **QUIET, "TUNELAB_OPTUNA_STORAGE": url, "RACE_RELEASE": str(release)}
    worker = subprocess.Popen(
        cmd, cwd=app, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        storage = make_storage(url, heartbeat_interval_s=600)

        def running_trial():
            try:
                study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                return None
            trials = study.get_trials(states=(TrialState.RUNNING,))
            if trials and trials[0].user_attrs.get("mlflow_run_id"):
                return study, trials[0]
            return None

        study, trial = _wait("a running trial", running_trial, worker)
        tid = trial_id(storage, name, trial.number)
        _wait("the trial's first heartbeat", lambda: _heartbeat_row(url, tid), worker)
        run_id = trial.user_attrs["mlflow_run_id"]

        # another worker's stale check, as it runs before every ask
        _age_heartbeat(url, tid)
        runs = SweepRuns(tracking, name, name)
        with ask_lock(storage, url, name):
            fail_lost(storage, study, runs)
        trials = study.get_trials()
        assert trials[trial.number].state == TrialState.FAIL
        (retry,) = [t for t in trials if t.state == TrialState.WAITING]
        assert retry.system_attrs["failed_trial"] == trial.number
        client = MlflowClient(tracking)
        killed = client.get_run(run_id)
        assert killed.info.status == "KILLED"
        assert killed.data.tags["failure_reason"] == "heartbeat_stale"
        # control: telling the failed trial, as the worker used to, raises and loses the result
        with pytest.raises(ValueError, match="Cannot tell a FAIL trial"):
            study.tell(trial.number, 0.25)
        if retry_taken:  # a third worker has already taken the retry
            assert study.ask().number == retry.number

        release.touch()  # the original worker's job finishes
        out = worker.communicate(timeout=300)[0]
    finally:
        release.touch()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "after a stale heartbeat failed it" in out, out[-3000:]

    trials = study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val/loss"] == 0.25  # the result is on the trial's run
    assert "failure_reason" not in run.data.tags  # it finished after all
    told = trials[retry.number]
    if not retry_taken:
        assert told.state == TrialState.COMPLETE and told.values == [0.25]
        assert told.params == trial.params
        assert told.user_attrs["late_result_of"] == trial.number
        assert told.user_attrs["mlflow_run_id"] == run_id
        assert run.data.tags["late_result"] == f"told as trial {retry.number}"
        assert run.data.tags["optuna_state"] == "COMPLETE"
    else:  # the retry is the third worker's: the late result stays on the MLflow run
        assert told.state == TrialState.RUNNING
        assert run.data.tags["late_result"].startswith("not told")
        assert run.data.tags["optuna_state"] == "FAIL"
        study.tell(retry.number, 0.3)  # the third worker finishes
        trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 1
    assert counted(trials) == 1  # the failed trial is replaced by its retry, not counted again


class _FlakyStorage:
    """A storage whose database goes away after the first heartbeat; its error names the URL."""

    def __init__(self) -> None:
        self.calls = 0
        self.failed = threading.Event()

    def get_heartbeat_interval(self) -> float:
        return 0.01

    def record_heartbeat(self, trial_id: int) -> None:
        self.calls += 1
        if self.calls > 1:
            self.failed.set()
            raise ConnectionError("lost postgresql://team:TopSecret42@db:5432/optuna")


def test_a_heartbeat_that_cannot_be_recorded_is_logged_without_the_password(caplog):
    storage = _FlakyStorage()
    with caplog.at_level(logging.WARNING, logger="tunelab.tuning.rdb"):
        beat = rdb.Heartbeat(storage, 7).start()
        assert storage.failed.wait(30)
        beat.stop()
    lines = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert lines, caplog.text
    assert "trial id 7" in lines[0] and "postgresql://team:***@db:5432/optuna" in lines[0]
    assert "TopSecret42" not in caplog.text


@pytest.mark.xdist_group("postgres")
def test_the_grace_period_is_three_intervals_by_default_and_never_less(postgres):
    url = postgres.url("grace")
    assert make_storage(url, heartbeat_interval_s=5).grace_period == 15
    assert make_storage(url, heartbeat_interval_s=5, grace_period_s=40).grace_period == 40
    with pytest.raises(ValueError, match="at least 3 x heartbeat_interval_s"):
        make_storage(url, heartbeat_interval_s=5, grace_period_s=10)


def test_a_sweep_with_a_grace_period_under_three_intervals_is_refused(tmp_path: Path):
    proc = run_cli(
        "-m",
        "search=random",
        "hydra.sweeper.heartbeat_interval_s=10",
        "hydra.sweeper.grace_period_s=20",
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "hydra.sweeper.grace_period_s=20 is invalid" in out, out[-2000:]
    assert "at least 3 x heartbeat_interval_s (30 s)" in out, out[-2000:]
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was created
