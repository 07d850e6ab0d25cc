"""The run contract: RunContext crosses processes intact; run() returns a RunResult whose fields
are what the run recorded; the pipeline and sweeps read results from it."""

from __future__ import annotations

import json
import math
import os
import pickle

import pytest
from conftest import FAST, compose_cfg, mlflow_runs
from mlflow import MlflowClient

from tunelab.run.context import RunContext, RunResult, TrialRef


def test_context_round_trips_through_the_environment():
    ctx = RunContext(
        parent_run_id="p1",
        tags={"sweep": 'it\'s "quoted"', "trial": "3"},
        log_model=False,
        trial=TrialRef("/tmp/a b/ctx.json", 3, report=False),
    )
    env = ctx.to_env()
    assert len(env) == 1  # one variable carries it all
    assert RunContext.from_env(env) == ctx
    assert RunContext.from_env({}) == RunContext()
    assert RunContext().to_env() == {}


def test_derive_merges_tags_and_export_restores_the_outer_context(monkeypatch):
    outer = RunContext(tags={"dvc_stage": "tune"})
    for key in outer.to_env():  # whatever export() leaves, monkeypatch takes back after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    restore_outer = outer.export()
    inner = RunContext.from_env().derive(parent_run_id="p", tags={"role": "seed"})
    assert dict(inner.tags) == {"dvc_stage": "tune", "role": "seed"}
    restore_inner = inner.export()
    assert RunContext.from_env().parent_run_id == "p"
    restore_inner()
    assert RunContext.from_env() == outer
    restore_outer()
    assert RunContext.from_env() == RunContext()


def test_a_broken_context_variable_is_a_clear_error():
    (key,) = RunContext(log_model=False).to_env()
    with pytest.raises(ValueError, match=key):
        RunContext.from_env({key: "{not json"})


def test_result_is_picklable_and_a_number():
    result = RunResult("r", "FINISHED", "val/acc", {"val/acc": 0.75}, {"val/acc": [0.5, 0.75]})
    again = pickle.loads(pickle.dumps(result))  # crosses joblib's process boundary
    assert again == result and float(again) == 0.75 == again.value


def test_run_returns_what_it_recorded(in_tmp):
    from tunelab.run.api import run

    ctx = RunContext(tags={"study": "s1"}, log_model=False, overrides=("seed=4",))
    result = run(compose_cfg(*FAST, "seed=4"), ctx)
    (r,) = mlflow_runs(in_tmp)
    assert result.run_id == r.info.run_id and result.status == r.info.status == "FINISHED"
    assert result.objective == "val/acc" and result.value == r.data.metrics["best/val/acc"]
    assert result.metrics["test/acc"] == r.data.metrics["test/acc"]
    assert r.data.tags["study"] == "s1" and r.data.tags["overrides"] == "seed=4"
    assert result.checkpoint is not None and result.checkpoint.name == "best.pt"
    assert result.checkpoint.exists()
    client = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    logged = [m.value for m in client.get_metric_history(r.info.run_id, "val/acc")]
    assert result.history["val/acc"] == logged and len(logged) == 2
    assert all(math.isfinite(v) for v in result.history["train/loss"])
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert "model" not in artifacts  # the context said: no model


def test_a_stopped_run_is_returned_with_the_run_that_records_why(in_tmp):
    """attempt() hands back a recorded run's exception with its run id (the Hydra job names the
    KILLED run); run() raises the same exception, unchanged."""
    from tunelab.run.api import attempt, run
    from tunelab.run.loop import DivergedError
    from tunelab.run.record import RunFailed

    cfg = compose_cfg(*FAST, "optimizer=sgd", "optimizer.lr=1.0e6", "trainer.max_epochs=5")
    outcome = attempt(cfg, RunContext(log_model=False))
    assert isinstance(outcome, RunFailed) and isinstance(outcome.cause, DivergedError)
    (r,) = mlflow_runs(in_tmp)
    assert outcome.run_id == r.info.run_id and r.info.status == "FAILED"
    assert not hasattr(outcome.cause, "run_id")
    with pytest.raises(DivergedError):
        run(cfg.copy(), RunContext(log_model=False))


def test_parent_and_tags_come_from_the_context_not_the_environment(in_tmp, monkeypatch):
    from tunelab.run.api import run
    from tunelab.tracking.mlflow_writer import MlflowWriter

    writer = MlflowWriter(f"sqlite:///{in_tmp}/mlflow.db", "tunelab")
    parent = writer.create_run("parent", {"role": "multirun"})
    monkeypatch.setenv("TUNELAB_UNRELATED", json.dumps({"parent_run_id": "nope"}))
    run(compose_cfg(*FAST), RunContext(parent_run_id=parent, log_model=False))
    child = next(r for r in mlflow_runs(in_tmp) if r.info.run_id != parent)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert os.environ["TUNELAB_UNRELATED"]  # untouched
