"""confirm.refit=train+val: the selected configuration trained again on train ∪ val for the
selected number of epochs, its test metrics recorded; a bad value refused before anything exists."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, compose_cfg, mlflow_runs, run_cli
from mlflow import MlflowClient

from tunelab import build
from tunelab.config import ConfigError, validate
from tunelab.hydra_job import summary_line
from tunelab.run.api import run
from tunelab.run.checkpoint import load_model_state, load_safe
from tunelab.run.loop import evaluate
from tunelab.run.refit import train_and_val

REFIT = ["confirm.refit=train+val", "trainer.max_epochs=4", "trainer.resume=never"]


def test_refit_trains_on_train_and_val_for_the_selected_epochs_and_is_recorded(in_tmp):
    cfg = compose_cfg(*FAST, *REFIT, "tracking.log_model=false")
    result = run(cfg)
    m = result.metrics
    splits = build.build_data(cfg.data)
    n_train, n_val = len(splits.y_train), len(splits.y_val)
    assert 1 <= m["best_epoch"] <= 4
    assert m["refit/epochs"] == m["best_epoch"]  # the epochs the first pass selected
    assert m["refit/n_train"] == n_train + n_val  # the union
    (r,) = mlflow_runs(in_tmp)
    assert r.data.params["confirm.refit"] == "train+val"
    assert r.data.tags["refit"] == "train+val"
    client = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    refit_steps = client.get_metric_history(r.info.run_id, "refit/train/loss")
    assert [s.step for s in refit_steps] == list(range(1, int(m["best_epoch"]) + 1))
    assert len(client.get_metric_history(r.info.run_id, "val/acc")) == 4  # the first pass's
    # test/* is the refit's weights' (the returned checkpoint), the selected epoch's are kept aside
    assert result.checkpoint.name == "refit.pt"
    model = build.build_model(cfg.model, splits.input_shape, splits.num_classes)
    load_model_state(model, load_safe(result.checkpoint)["model"], result.checkpoint)
    _, acc, _ = evaluate(model, splits.x_test, splits.y_test)
    assert m["test/acc"] == pytest.approx(acc, abs=1e-6)
    assert r.data.metrics["test/acc"] == pytest.approx(acc, abs=1e-6)
    best = result.checkpoint.with_name("best.pt")
    load_model_state(model, load_safe(best)["model"], best)
    _, selected_acc, _ = evaluate(model, splits.x_test, splits.y_test)
    assert m["train_only/test/acc"] == pytest.approx(selected_acc, abs=1e-6)
    line = summary_line(result)  # the job's last log line says whose test score it is
    assert (
        f"test/acc {m['test/acc']:.4f} (refit on train+val, {int(m['best_epoch'])} epochs)" in line
    )
    assert "checkpoints/refit.pt" in {
        a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")
    }


def test_the_refit_training_split_is_train_then_val_and_the_rest_is_unchanged():
    data = {
        "x_train": torch.arange(6.0).view(3, 2),
        "y_train": torch.tensor([0, 1, 0]),
        "x_val": torch.arange(6.0, 10.0).view(2, 2),
        "y_val": torch.tensor([1, 1]),
        "x_test": torch.zeros(1, 2),
        "y_test": torch.tensor([0]),
    }
    joined = train_and_val(data)
    assert joined["x_train"].tolist() == torch.arange(10.0).view(5, 2).tolist()
    assert joined["y_train"].tolist() == [0, 1, 0, 1, 1]
    assert joined["x_test"] is data["x_test"] and joined["x_val"] is data["x_val"]


def test_refit_off_by_default_records_the_selected_weights(in_tmp):
    cfg = compose_cfg(*FAST, "trainer.resume=never", "tracking.log_model=false")
    assert cfg.confirm.refit is None
    result = run(cfg)
    assert result.checkpoint.name == "best.pt"
    assert not any(k.startswith(("refit/", "train_only/")) for k in result.metrics)
    (r,) = mlflow_runs(in_tmp)
    assert "refit" not in r.data.tags


def test_a_bad_refit_value_is_refused_before_anything_exists(tmp_path):
    p = run_cli(*FAST, "confirm.refit=all", cwd=tmp_path)
    assert p.returncode != 0
    assert "confirm.refit='all' is invalid: expected one of ['train+val'] or null" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_refit_refuses_a_schedule_that_watches_the_validation_split():
    cfg = compose_cfg(*FAST, "confirm.refit=train+val", "scheduler=plateau")
    with pytest.raises(ConfigError, match="confirm.refit='train\\+val' cannot follow"):
        validate(cfg)
    with pytest.raises(ConfigError, match="confirm.typo is not a setting of confirm"):
        validate(compose_cfg(*FAST, "+confirm.typo=1"))
