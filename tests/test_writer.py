"""The one MLflow writer: retry policy, limits, and race-safe get-or-create of keyed runs."""

from __future__ import annotations

import math
import threading

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from tunelab.tracking import policy
from tunelab.tracking.mlflow_writer import MlflowWriter
from tunelab.tracking.run_owners import keyed_run


def test_transient_errors_are_retried_and_others_are_not(monkeypatch):
    monkeypatch.setattr(policy.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert policy.retry(flaky) == "ok" and len(calls) == 3
    server_busy = MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE)
    assert policy.is_transient(server_busy)
    assert policy.is_transient(ConnectionError("connection refused"))
    assert not policy.is_transient(MlflowException("RESOURCE_DOES_NOT_EXIST: run abc"))
    with pytest.raises(ValueError):
        policy.retry(lambda: (_ for _ in ()).throw(ValueError("a real bug")))


def test_limits_clip_values_and_drop_non_finite_metrics(tmp_path):
    writer = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", "limits")
    run_id = writer.create_run("r", {"long": "x" * 10_000})
    params = {f"p{i}": i for i in range(250)} | {"long": "y" * 10_000}
    metrics = {"ok": 1.0, "nan": math.nan, "inf": math.inf, "text": "abc"}
    writer.log(run_id, params=params, metrics=metrics, tags={"t": "z" * 9000})
    run = MlflowClient(writer.tracking_uri).get_run(run_id)
    assert len(run.data.params) == 251  # more than one batch's worth
    assert len(run.data.params["long"]) == policy.VALUE_CHARS
    assert len(run.data.tags["long"]) == len(run.data.tags["t"]) == policy.VALUE_CHARS
    assert run.data.metrics == {"ok": 1.0}


def test_keep_existing_leaves_a_param_that_has_another_value(tmp_path):
    writer = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", "params")
    run_id = writer.create_run("r", {})
    writer.log(run_id, params={"n_trials": 10})
    writer.log(run_id, params={"n_trials": 20, "new": 1}, keep_existing=True)  # a resumed sweep
    assert MlflowClient(writer.tracking_uri).get_run(run_id).data.params == {
        "n_trials": "10",
        "new": "1",
    }


def test_two_writers_starting_together_share_one_keyed_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowWriter(uri, "race")  # the schema exists: the race is over the run, not the tables
    barrier, ids = threading.Barrier(4), []

    def start() -> None:
        writer = MlflowWriter(uri, "race")
        barrier.wait()
        ids.append(keyed_run(writer, "sweep-a", {"run_key": "sweep:a"}, {"role": "sweep"}))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("race")
    live = client.search_runs([exp.experiment_id], "tags.run_key = 'sweep:a'")
    assert [r.info.run_id for r in live] == ids[:1]
    again = keyed_run(MlflowWriter(uri, "race"), "sweep-a", {"run_key": "sweep:a"}, {})
    assert again == ids[0]  # a resumed sweep finds it


def test_mark_killed_only_touches_running_runs(tmp_path):
    writer = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", "killed")
    running, done = writer.create_run("a", {}), writer.create_run("b", {})
    writer.end_run(done, "FINISHED")
    assert writer.mark_killed(running, "process_died") and not writer.mark_killed(done, "x")
    run = MlflowClient(writer.tracking_uri).get_run(running)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "process_died"
    assert not writer.mark_killed("0123456789abcdef", "x")  # not in this store


def test_background_writes_keep_order_and_surface_failures(tmp_path):
    writer = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", "queue")
    run_id = writer.create_run("r", {})
    for i in range(5):
        writer.later(writer.set_tags, run_id, {"last": str(i)})
    writer.flush()
    assert MlflowClient(writer.tracking_uri).get_run(run_id).data.tags["last"] == "4"
    writer.later(writer.set_tags, "no-such-run", {"x": "1"})
    with pytest.raises(MlflowException):
        writer.flush()


def test_experiments_open_in_the_runs_table_of_the_mlflow_ui(tmp_path):
    """The MLflow 3 UI opens an experiment in its GenAI view unless the experiment's kind says
    model development: new experiments carry it, older ones get it, a user's own choice stays."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    old = client.create_experiment("made-before")
    mine = client.create_experiment(
        "users-own", tags={"mlflow.experimentKind": "genai_development"}
    )
    for name in ("fresh", "made-before", "users-own"):
        MlflowWriter(uri, name)
    kinds = {e.name: e.tags.get("mlflow.experimentKind") for e in client.search_experiments()}
    assert kinds["fresh"] == kinds["made-before"] == "custom_model_development"
    assert kinds["users-own"] == "genai_development"
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"
