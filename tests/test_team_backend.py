"""The team backend against the real thing: many sweep processes sharing one PostgreSQL study and
one MLflow tracking server (itself on PostgreSQL), heartbeats, and errors that name the server but
never its password."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import FAST, free_port, reaped, run_cli, wait_for_health
from optuna.trial import TrialState
from test_sweep_plugin import app  # noqa: F401  (the toy Hydra app whose objective is known)

from tunelab.config.secrets import mask, masked
from tunelab.tuning import rdb
from tunelab.tuning.study_storage import counted, heartbeat, make_storage

# the PostgreSQL cluster and the MLflow server (session fixtures) start on one worker only
pytestmark = pytest.mark.xdist_group("postgres")

QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def _workers(app_dir: Path, n: int, env: dict, *overrides: str) -> list[str]:
    """n sweep processes of the toy app started together; their outputs (all must succeed)."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "-m",
                "search=random",
                *overrides,
                f"hydra.sweep.dir=multirun/w{i}",
            ],
            cwd=app_dir,
            env={**os.environ, **QUIET, **env},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for i in range(n)
    ]
    for p in procs:
        reaped(p)
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n=====\n".join(o[-3000:] for o in outs)
    return outs


def test_password_masking():
    assert mask("postgresql://team:s3cret@db:5432/optuna") == "postgresql://team:***@db:5432/optuna"
    assert (
        mask("x http://u:p%40ss@h:5000/ y sqlite:///a.db")
        == "x http://u:***@h:5000/ y sqlite:///a.db"
    )
    assert mask("journal:/tmp/optuna.journal") == "journal:/tmp/optuna.journal"
    assert rdb.scheme("postgresql+psycopg://a@b/c") == "postgresql+psycopg"
    # what a run logs (params, config.yaml, overrides.yaml) goes through masked()
    cfg = {
        "tracking": {"tracking_uri": "http://ana:pw1@mlflow:5000"},
        "ov": ["a=1", "s=mysql+pymysql://r:pw2@h/d"],
    }
    assert masked(cfg) == {"tracking": {"tracking_uri": "http://ana:***@mlflow:5000"},
                           "ov": ["a=1", "s=mysql+pymysql://r:***@h/d"]}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", [2, 4])
def test_workers_share_one_postgres_study_and_one_tracking_server(
    app,  # noqa: F811
    postgres,
    mlflow_server,
    n_workers,
):
    from mlflow.tracking import MlflowClient

    study_name, n_trials = f"team-{n_workers}", 12
    storage = postgres.url("optuna")
    env = {"TUNELAB_OPTUNA_STORAGE": storage}
    outs = _workers(app, n_workers, env, f"hydra.sweeper.n_trials={n_trials}",
                    f"hydra.sweeper.study_name={study_name}", "sleep_s=0.2",
                    f"tracking.tracking_uri={mlflow_server}", "hydra.sweeper.figures=false",
                    f"experiment=team-{n_workers}")  # fmt: skip
    assert not any(postgres.password in o for o in outs)  # no log line carries the password
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(n_trials))  # none lost, none extra
    assert all(t.state == TrialState.COMPLETE for t in trials)
    owners = {t.system_attrs["tunelab:owner"] for t in trials}
    assert 1 <= len(owners) <= n_workers  # each trial run by one of the workers, however shared
    # one parent, one child run per trial, all on the server
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(f"team-{n_workers}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert sorted(int(r.data.tags["trial"]) for r in children) == list(range(n_trials))
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    assert "***" in parent.data.tags["optuna_storage"]
    assert postgres.password not in json.dumps(parent.data.tags)
    # the reports: written once, by the worker that ended the study, complete
    reported = [i for i in range(n_workers) if (app / f"multirun/w{i}/summary.json").exists()]
    assert len(reported) == 1, reported
    summary = json.loads((app / f"multirun/w{reported[0]}/summary.json").read_text())
    assert sum(summary["counts"].values()) == n_trials and "***" in summary["storage"]
    local = client.download_artifacts(parent.info.run_id, "trials.csv", str(app))
    rows = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert sorted(int(r["number"]) for r in rows) == list(range(n_trials))


@pytest.mark.slow
def test_a_trial_whose_heartbeat_stops_is_failed_and_run_again(postgres):
    url = postgres.url("heartbeat")
    storage = make_storage(url, heartbeat_interval_s=1, grace_period_s=3, max_retries=1)
    study = optuna.create_study(study_name="hb", storage=storage)
    trial = study.ask()
    study.tell(study.ask(), 1.0)  # a finished one beside it
    beats, record = threading.Semaphore(0), storage.record_heartbeat

    def recorded(trial_id: int) -> None:
        record(trial_id)
        beats.release()

    storage.record_heartbeat = recorded
    beat = heartbeat(storage, "hb", trial.number).start()  # the first beat, recorded at once
    assert beats.acquire(timeout=30) and beats.acquire(timeout=30)  # and a beat from the thread
    rdb.fail_stale(storage, study)
    assert study.trials[trial.number].state == TrialState.RUNNING  # still beating: alive
    beat.stop()  # its machine died
    time.sleep(4)  # longer than the grace period after its last beat
    rdb.fail_stale(storage, study)
    trials = study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.params == trial.params and retry.system_attrs["failed_trial"] == trial.number
    assert counted(trials) == 2  # the retry replaces the stale trial in the budget


def _fails_fast(app_dir: Path, env: dict, *overrides: str) -> str:
    proc = subprocess.run(
        [sys.executable, "app.py", "-m", "search=random", "hydra.sweeper.n_trials=2", *overrides],
        cwd=app_dir, env={**os.environ, **QUIET, **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert not (app_dir / "multirun" / "0").exists(), "a job ran before the storage was checked"
    return out


@pytest.mark.slow
def test_an_unreachable_database_stops_the_sweep_before_training_naming_the_host(app):  # noqa: F811
    port = free_port()  # nothing listens there
    url = f"postgresql://team:TopSecret42@127.0.0.1:{port}/optuna"
    out = _fails_fast(app, {"TUNELAB_OPTUNA_STORAGE": url})
    assert f"cannot open the Optuna storage at 127.0.0.1:{port}/optuna" in out, out[-2000:]
    assert "TopSecret42" not in out


@pytest.mark.slow
def test_wrong_credentials_and_unknown_schemes_are_refused_without_the_password(app, postgres):  # noqa: F811
    wrong = f"postgresql://{postgres.user}:WrongPass99@127.0.0.1:{postgres.port}/optuna"
    out = _fails_fast(app, {"TUNELAB_OPTUNA_STORAGE": wrong})
    assert "password authentication failed" in out and "WrongPass99" not in out, out[-2000:]
    out = _fails_fast(app, {}, "hydra.sweeper.storage=redis://u:Hidden77@cache:6379/0")
    assert "unknown Optuna storage" in out and "Hidden77" not in out, out[-2000:]


DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "team-server.sh"


def test_the_team_server_refuses_to_start_without_its_secrets():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        ["bash", str(DEPLOY)], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "set MLFLOW_BACKEND_URI" in proc.stderr
    env.update(MLFLOW_BACKEND_URI="postgresql://a@b/c", MLFLOW_AUTH_DB_URI="postgresql://a@b/d")
    proc = subprocess.run(
        ["bash", str(DEPLOY)], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in proc.stderr


@pytest.mark.slow
def test_the_team_server_with_basic_auth_records_a_training_run(postgres, tmp_path):
    import base64
    import urllib.error
    import urllib.request

    port = free_port()
    admin_pw = "Admin-Pass-31415"
    env = {**os.environ, **QUIET, "MLFLOW_BACKEND_URI": postgres.url("team_mlflow"),
           "MLFLOW_AUTH_DB_URI": postgres.url("team_auth"), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_pw,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "0123456789abcdef" * 4, "PORT": str(port),
           "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "WORKERS": "1"}  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = reaped(subprocess.Popen(["bash", str(DEPLOY)], env=env, cwd=tmp_path,
                                         stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"

    def status(auth: str | None) -> int:
        req = urllib.request.Request(search)
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        wait_for_health(server, url, log)
        assert status(None) == 401
        assert status("admin:wrong") == 401
        assert status(f"admin:{admin_pw}") == 200
        creds = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
                 "MLFLOW_TRACKING_PASSWORD": admin_pw}  # fmt: skip
        proc = run_cli(*FAST, cwd=tmp_path, env=creds)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert admin_pw not in proc.stdout + proc.stderr
        from mlflow.tracking import MlflowClient

        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin_pw)
        try:
            client = MlflowClient(url)
            exp = client.get_experiment_by_name("tunelab")
            (run,) = client.search_runs([exp.experiment_id])
            arts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        finally:
            for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(k, None)
        assert run.info.status == "FINISHED" and run.data.params["tracking.tracking_uri"] == url
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
        # the same run in the embedded store records the same things
        local_dir = tmp_path / "local"
        local_dir.mkdir()
        proc = run_cli(*FAST, cwd=local_dir)
        assert proc.returncode == 0, proc.stderr[-2000:]
        local_client = MlflowClient(f"sqlite:///{local_dir / 'mlflow.db'}")
        (local,) = local_client.search_runs(
            [local_client.get_experiment_by_name("tunelab").experiment_id]
        )
        drop = {"tracking.tracking_uri"}
        assert {k: v for k, v in run.data.params.items() if k not in drop} == {
            k: v for k, v in local.data.params.items() if k not in drop
        }
        timing = ("perf/", "system/")
        same = {k for k in local.data.metrics if not k.startswith(timing)}
        assert same and same == {k for k in run.data.metrics if not k.startswith(timing)}
        for k in same:
            assert run.data.metrics[k] == pytest.approx(local.data.metrics[k], rel=1e-6), k
        assert arts == sorted(a.path for a in local_client.list_artifacts(local.info.run_id))
        for tag in ("model_format", "data_digest", "seed", "git_sha"):
            assert run.data.tags[tag] == local.data.tags[tag], tag
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_fails_trials_and_the_sweep_resumes(app, postgres):  # noqa: F811
    from tunelab.tuning.study_storage import counted

    port, backend = free_port(), postgres.url("away_mlflow")
    url, log = f"http://127.0.0.1:{port}", app / "server.log"

    def serve() -> subprocess.Popen:
        with log.open("a") as out:
            server = reaped(subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                 str(port), "--backend-store-uri", backend, "--workers", "1"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **QUIET},
            ))  # fmt: skip
        wait_for_health(server, url, log)
        return server

    storage = postgres.url("away_optuna")
    env = {**os.environ, **QUIET, "TUNELAB_OPTUNA_STORAGE": storage,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}  # fmt: skip
    cmd = [sys.executable, "app.py", "-m", "search=random", "hydra.sweeper.n_trials=6",
           "hydra.sweeper.study_name=away", "sleep_s=0.4", f"tracking.tracking_uri={url}",
           "hydra.sweeper.figures=false", "hydra.sweeper.max_failure_rate=0.2",
           "hydra.sweeper.max_retries=3", "experiment=away"]  # fmt: skip
    server = serve()
    worker = reaped(subprocess.Popen(cmd, cwd=app, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT))  # fmt: skip
    deadline = time.monotonic() + 120
    while True:  # two trials done, then the server goes away
        try:
            study = optuna.load_study(study_name="away", storage=make_storage(storage))
            if len(study.get_trials(states=(TrialState.COMPLETE,))) >= 2:
                break
        except KeyError:
            pass
        assert worker.poll() is None and time.monotonic() < deadline, worker.stdout.read()
        time.sleep(0.2)
    server.terminate()
    server.wait(timeout=60)
    out = worker.communicate(timeout=300)[0]
    assert worker.returncode != 0, out[-3000:]  # stopped: too many trials failed
    assert "failed trials exceed max_failure_rate" in out, out[-3000:]
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and all(
        t.user_attrs["fail_reason"].startswith("tracking unavailable") for t in failed
    )
    assert all(t.user_attrs["stale"] for t in failed)  # the server's fault: not the budget's
    # the server is back: the same command finishes the study
    server = serve()
    try:
        again = subprocess.run(cmd, cwd=app, env=env, text=True, capture_output=True, timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=60)
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert counted(trials) == 6 and len(done) == 6, [(t.number, t.state) for t in trials]
    assert postgres.password not in out + again.stdout + again.stderr


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_retried_by_the_heartbeat(
    app,  # noqa: F811
    postgres,
    mlflow_server,
):
    import signal

    from mlflow.tracking import MlflowClient

    storage = postgres.url("killed")
    env = {**os.environ, **QUIET, "TUNELAB_OPTUNA_STORAGE": storage}
    cmd = [sys.executable, "app.py", "-m", "search=random", "hydra.sweeper.n_trials=6",
           "hydra.sweeper.study_name=killed", "sleep_s=1.0", f"tracking.tracking_uri={mlflow_server}",
           "hydra.sweeper.figures=false", "hydra.sweeper.heartbeat_interval_s=1",
           "hydra.sweeper.grace_period_s=3", "experiment=killed"]  # fmt: skip
    # two machines: the survivor cannot see the victim's process, only its heartbeat stop
    workers = [reaped(subprocess.Popen([*cmd, f"hydra.sweep.dir=multirun/k{i}"], cwd=app,
                                env={**env, "TUNELAB_HOST": f"machine-{i}"}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
               for i in range(2)]  # fmt: skip
    victim, survivor = workers
    deadline, killed = time.monotonic() + 120, None
    while killed is None:  # the victim's first trial is under way: its machine dies
        assert time.monotonic() < deadline and victim.poll() is None
        try:
            study = optuna.load_study(study_name="killed", storage=make_storage(storage))
        except KeyError:
            continue
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            owner = str(t.system_attrs.get("tunelab:owner", "")).split(":")  # host:pid:start
            if owner[1:2] == [str(victim.pid)] and t.user_attrs.get("mlflow_run_id"):
                os.kill(victim.pid, signal.SIGKILL)
                killed = t
                break
        time.sleep(0.2)
    victim.wait(timeout=30)
    out = survivor.communicate(timeout=300)[0]
    assert survivor.returncode == 0, out[-3000:]
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert counted(trials) == 6 and sum(t.state == TrialState.COMPLETE for t in trials) == 6
    run = MlflowClient(mlflow_server).get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "heartbeat_stale"
