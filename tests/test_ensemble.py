"""Ensembles of confirmed models: the mean of the members' probabilities (or predictions) on the
test split, checked against a hand computation from their checkpoints; the report's words."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST, compose_cfg

from tunelab import build
from tunelab.reports.ensemble import ensemble_line, evaluate_members
from tunelab.reports.evaluation import evaluate_checkpoints
from tunelab.run.tasks import make_task


def _members(cfg, tmp_path, seeds=(0, 1, 2)):
    """Untrained models of different seeds, saved as the confirm stage saves them."""
    splits = build.build_data(cfg.data)
    task = make_task(cfg, splits)
    paths, models = {}, {}
    for seed in seeds:
        torch.manual_seed(seed)
        model = build.build_model(cfg.model, splits.input_shape, task.outputs).eval()
        paths[seed] = tmp_path / f"seed_{seed}.pt"
        torch.save({"model": model.state_dict(), "epoch": 1}, paths[seed])
        models[seed] = model
    return splits, task, paths, models


def test_a_classification_ensemble_is_the_class_of_the_mean_probability(tmp_path):
    cfg = compose_cfg(*FAST)
    splits, _, paths, models = _members(cfg, tmp_path)
    with torch.no_grad():
        probs = [torch.softmax(m(splits.x_test), -1).numpy() for m in models.values()]
    y = splits.y_test.numpy()
    by_hand = float((np.mean(probs, 0).argmax(1) == y).mean())
    singles = [float((p.argmax(1) == y).mean()) for p in probs]
    result = evaluate_members(cfg, paths)
    assert result["ensemble"]["acc"] == pytest.approx(by_hand, abs=1e-9)
    assert [m["acc"] for m in result["per_seed"].values()] == pytest.approx(singles, abs=1e-9)
    summary = evaluate_checkpoints(cfg, paths)
    assert summary["ensemble"]["test_acc"] == pytest.approx(by_hand, abs=1e-9)
    assert summary["test_acc_mean"] == pytest.approx(np.mean(singles), abs=1e-9)


def test_a_regression_ensemble_is_the_mean_prediction_in_the_targets_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(260, 5)).astype(np.float32)
    y = (3.0 * x[:, 0] + 10.0 + rng.normal(size=260)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    cfg = compose_cfg(
        "data=npz",
        f"data.path={tmp_path / 'reg.npz'}",
        "task=regression",
        "objective.metric=val/rmse",
        "objective.direction=minimize",
        "model=mlp",
        "model.width=8",
    )
    splits, task, paths, models = _members(cfg, tmp_path, seeds=(0, 1))
    with torch.no_grad():  # standardised outputs back in the targets' units, then averaged
        preds = [(m(splits.x_test)[:, 0] * task.std + task.mean).numpy() for m in models.values()]
    mean = np.mean(preds, 0)
    rmse = float(np.sqrt(np.mean((mean - splits.y_test.numpy()) ** 2)))
    result = evaluate_checkpoints(cfg, paths, "val/rmse")
    assert result["ensemble"]["test_rmse"] == pytest.approx(rmse, rel=1e-5)
    assert result["metric"] == "rmse" and "test_rmse_mean" in result
    assert result["confusion"] == [] and result["task"] == "regression"


def test_the_ensemble_line_reads_as_the_article_writes_it():
    line = ensemble_line("test/acc", 0.991, [0.985, 0.988, 0.991, 0.986, 0.990])
    assert line == "ensemble of 5 seeds: 99.1 %, single seed 98.8 ± 0.3 %"
    rmse = ensemble_line("test/rmse", 1.5, [1.4, 1.6])
    assert rmse == "ensemble of 2 seeds: test/rmse 1.5, single seed 1.5 ± 0.14"
