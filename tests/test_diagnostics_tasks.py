"""Diagnostics for every task: the lr range test, overfit check and gradient check train the
task's own loss (regression on standardised targets), and the data check speaks of the task's
targets (a regression's target statistics, a binary task's positive rate)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_cfg
from test_tasks import SMALL, write_npz

from tunelab.build import build_data
from tunelab.config import validate
from tunelab.run.api import run
from tunelab.run.tasks import make_task
from tunelab.tracking import NullTracker

FAST_CHECK = {
    "lr_range": ["diagnose.num_steps=30"],
    "overfit": ["diagnose.max_steps=400", "optimizer.lr=0.01"],
    "gradcheck": [],
    "datacheck": [],
}
TASK_ARGS = {
    "regression": ["task=regression", "objective.metric=val/rmse", "objective.direction=minimize"],
    "binary": ["task=binary", "task.pos_weight=4.0", "objective.metric=val/auroc"],
}


def logged(tracker: NullTracker, name: str) -> dict:
    """The dict a check logged as artifact `diagnostics/<name>.json`."""
    return next(a[0] for c, a in tracker.calls if c == "log_dict" and a[1].endswith(name))


@pytest.mark.parametrize("task", list(TASK_ARGS))
@pytest.mark.parametrize("check", list(FAST_CHECK))
def test_each_diagnostic_runs_on_the_tasks_loss(task, check, in_tmp):
    path = write_npz(in_tmp / f"{task}.npz", task)
    args = [*SMALL, f"data.path={path}", *TASK_ARGS[task], f"diagnose={check}", *FAST_CHECK[check]]
    cfg = compose_cfg(*args)
    validate(cfg)  # no longer refused for a task other than classification
    result = run(cfg, tracker=(tracker := NullTracker()))
    assert result.status == "FINISHED" and math.isfinite(result.value), result.metrics
    if check == "overfit":  # the task's loss (standardised MSE, BCE) reaches ~0 on 32 examples
        assert result.metrics["diagnose/passed"] == 1.0
        assert result.metrics["diagnose/final_loss"] <= 0.05
    if check == "gradcheck":
        assert result.metrics["diagnose/worst_rel_error"] < 1e-4
    if check == "lr_range":
        assert 1e-7 <= result.metrics["diagnose/suggested_lr"] <= 10
    if check == "datacheck":
        stats = logged(tracker, "datacheck.json")["stats"]
        if task == "regression":  # the targets' own statistics, no class balance
            assert "class_counts" not in stats and "task=regression" in stats["class_checks"]
            train = stats["targets"]["train"]
            assert train["mean"] == pytest.approx(100, abs=30) and train["std"] > 1
            assert train["nan"] == 0 and train["min"] < train["mean"] < train["max"]
        else:  # 20 % positives: the positive rate per label, beside the class counts
            assert stats["positive_rate"]["train"] == [pytest.approx(0.2, abs=0.02)]
            assert "class_counts" in stats


def test_the_check_loss_is_the_unweighted_loss_on_standardised_targets(tmp_path):
    """Regression: MSE of the outputs against (y - mean) / std of the training split, by hand;
    binary: BCE without the positive weight (so a weighted task's overfit target still means ~0)."""
    path = write_npz(tmp_path / "r.npz", "regression")
    cfg = compose_cfg(*SMALL, f"data.path={path}", *TASK_ARGS["regression"])
    splits = build_data(cfg.data)
    task = make_task(cfg, splits)
    y_all = splits.y_train.double()
    out = torch.randn(8, 1, dtype=torch.float64)
    z = (y_all[:8] - y_all.mean()) / y_all.std()
    expected = ((out[:, 0] - z) ** 2).mean()
    assert float(task.check_loss(out, splits.y_train[:8])) == pytest.approx(float(expected), 1e-5)
    path = write_npz(tmp_path / "b.npz", "binary")
    cfg = compose_cfg(*SMALL, f"data.path={path}", *TASK_ARGS["binary"])
    binary = make_task(cfg, build_data(cfg.data))
    logits, target = torch.tensor([[0.3], [-1.0]]), torch.tensor([1, 0])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    assert float(binary.check_loss(logits, target)) == pytest.approx(float(plain))
    assert float(binary.train_loss(logits, target)) > float(plain)  # the weighted one differs
