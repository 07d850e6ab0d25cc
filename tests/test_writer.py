"""The one MLflow writer: retry policy, limits, and race-safe get-or-create of keyed runs."""

from __future__ import annotations

import math
import threading
from pathlib import Path

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


def test_store_uris_are_read_in_one_place(tmp_path, monkeypatch):
    from tunelab.tracking import store_uri

    monkeypatch.chdir(tmp_path)
    assert store_uri.sqlite_path("sqlite:///mlflow.db").name == "mlflow.db"
    assert store_uri.sqlite_path("postgresql://u@db/mlflow") is None
    assert store_uri.absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert store_uri.absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert store_uri.lock_beside("sqlite:////abs/m.db", ".lock") == Path("/abs/m.db.lock")
    assert store_uri.lock_beside("http://mlflow:5000", ".lock") is None
    assert store_uri.missing_store("sqlite:///mlflow.db") and not store_uri.missing_store(
        "http://x"
    )


def test_the_printed_ui_command_works_and_never_shows_a_password():
    from tunelab.tracking.mlflow_writer import runs_link

    hint = runs_link("sqlite:///mlflow.db", "1")
    assert "mlflow ui --app-name tunelab --backend-store-uri sqlite:///mlflow.db " in hint
    spaced = runs_link("sqlite:////tmp/my runs/mlflow.db", "1")
    assert "--backend-store-uri 'sqlite:////tmp/my runs/mlflow.db'" in spaced  # one shell word
    secret = runs_link("postgresql://team:S3cret@db:5432/mlflow", "1")
    assert "S3cret" not in secret and "<masked>" not in secret
    assert '--backend-store-uri "$MLFLOW_BACKEND_STORE_URI"' in secret
    assert "MLFLOW_BACKEND_STORE_URI=postgresql://team:***@db:5432/mlflow" in secret


def test_the_reader_pages_through_runs_and_retries_a_busy_store(monkeypatch):
    from mlflow.store.entities.paged_list import PagedList

    from tunelab.tracking.mlflow_reader import MlflowReader

    monkeypatch.setattr(policy.time, "sleep", lambda s: None)
    pages = {None: PagedList(["a", "b"], "p2"), "p2": PagedList(["c"], None)}
    calls = []

    class Client:
        def search_runs(self, experiments, query, max_results, order_by, page_token):
            calls.append((experiments, page_token))
            if len(calls) == 2:
                raise MlflowException("(sqlite3.OperationalError) database is locked")
            return pages[page_token]

    reader = MlflowReader("http://mlflow:5000", experiment_id="7")
    reader._client = Client()
    assert reader.search("tags.x = '1'") == ["a", "b", "c"]
    assert calls == [(["7"], None), (["7"], "p2"), (["7"], "p2")]
    assert reader.search("", max_results=1, experiment_ids=["8"]) == ["a"]


def test_the_reader_reads_runs_artifacts_and_histories_and_creates_no_store(tmp_path):
    from tunelab.tracking.mlflow_reader import MlflowReader

    missing = MlflowReader(f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.experiment_named("tunelab") is None and not (tmp_path / "none.db").exists()
    writer = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", "read")
    run_id = writer.create_run("r", {"k": "v"})
    writer.log_dict(run_id, {"a": 1}, "summary.json")
    for step in range(3):
        writer.log(run_id, metrics={"val/acc": step / 10}, step=step)
    reader = MlflowReader(f"sqlite:///{tmp_path}/mlflow.db")
    assert reader.experiment_named("read") == writer.experiment_id
    assert reader.run(run_id).data.tags["k"] == "v" and reader.run("0" * 32) is None
    assert reader.read_json(run_id, "summary.json") == {"a": 1}
    assert reader.artifact_text(run_id, "missing.txt") is None
    assert [m.value for m in reader.metric_history(run_id, "val/acc")] == [0.0, 0.1, 0.2]
    assert reader.logged_pairs(run_id) == {("val/acc", s) for s in range(3)}
    child = writer.create_run("c", {}, parent_run_id=run_id)
    assert [r.info.run_id for r in reader.children(reader.run(run_id))] == [child]
