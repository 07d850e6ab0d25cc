"""The `task=` group: each task trains on its kind of targets and reports its own metrics; class
and positive weights change the loss; any metric of the task can be the objective, in its
direction; a task that does not fit its data or objective is refused before anything starts."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, compose_cfg, mlflow_runs, run_cli

from tunelab.build import file_problems
from tunelab.config import ConfigError, validate
from tunelab.config.tasks import epoch_metrics
from tunelab.data.splits import make_splits
from tunelab.run.api import run
from tunelab.run.tasks import make_task
from tunelab.tags import ROLE, Role
from tunelab.tracking import NullTracker

SMALL = [
    "data=npz",
    "model=mlp",
    "model.width=16",
    "trainer.max_epochs=2",
    "trainer.batch_size=32",
    "scheduler=constant",
    "optimizer=adam",
    "trainer.resume=never",
]


def targets_of(task: str, n: int, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Learnable targets of each task's kind from inputs x."""
    score = x[:, :3] @ np.array([1.0, -2.0, 0.5])
    if task == "classification":
        return np.digitize(score, np.quantile(score, [0.6, 0.9]))  # 3 classes, imbalanced
    if task == "binary":
        return (score > np.quantile(score, 0.8)).astype(np.int64)  # 20 % positives
    if task == "multilabel":
        return (x[:, :3] > 0).astype(np.int64)  # 3 labels
    from sklearn.datasets import make_regression

    x2, y = make_regression(n_samples=n, n_features=x.shape[1], noise=5.0, random_state=0)
    x[:] = x2
    return 100.0 + y  # a real-valued target far from 0 (standardised for the loss)


def write_npz(path: Path, task: str, n: int = 240, features: int = 8) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = targets_of(task, n, rng, x)
    cut = n * 3 // 4
    np.savez(path, x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])
    return path


OBJECTIVE = {
    "classification": [],
    "binary": ["task.pos_weight=4.0", "objective.metric=val/auroc"],
    "multilabel": ["objective.metric=val/map"],
    "regression": ["objective.metric=val/rmse", "objective.direction=minimize"],
}


@pytest.mark.parametrize("task", list(OBJECTIVE))
def test_each_task_trains_two_epochs_and_reports_its_metrics(task, in_tmp):
    path = write_npz(in_tmp / f"{task}.npz", task)
    cfg = compose_cfg(*SMALL, f"data.path={path}", f"task={task}", *OBJECTIVE[task])
    result = run(cfg, tracker=NullTracker())
    names = epoch_metrics(task)
    assert set(names) <= set(result.history), set(names) - set(result.history)
    assert all(len(result.history[k]) == 2 for k in names)
    assert ("train/acc" in result.history) == (task in ("classification", "binary"))
    own = [k.split("/", 1)[1] for k in names if k.startswith("val/") and k != "val/loss"]
    for name in own:  # at the end on test, from the selected epoch's weights
        assert math.isfinite(result.metrics[f"test/{name}"]), name
    assert result.value == result.metrics[str(cfg.objective.metric)]
    if task == "classification":  # per-class recall and precision, for each of the 3 classes
        assert {f"val/recall/{c}" for c in range(3)} <= set(result.history)
        assert {f"val/precision/{c}" for c in range(3)} <= set(result.history)


def test_the_record_names_the_task_its_loss_metrics_and_target_statistics(in_tmp):
    path = write_npz(in_tmp / "regression.npz", "regression")
    overrides = ["task=regression", "task.loss=huber", *OBJECTIVE["regression"]]
    result = run(compose_cfg(*SMALL, f"data.path={path}", *overrides))
    (r,) = mlflow_runs(in_tmp)
    assert r.data.tags["task"] == "regression" and r.data.tags["task.loss"] == "huber"
    assert r.data.tags["task.metrics"] == "val/rmse,val/mae,val/r2"
    from tunelab.build import build_data

    y = build_data(compose_cfg(*SMALL, f"data.path={path}").data).y_train.double()
    mean, std = (float(r.data.params[f"task.computed.target_{k}"]) for k in ("mean", "std"))
    assert mean == pytest.approx(float(y.mean()), rel=1e-5)  # of the training split, not val
    assert std == pytest.approx(float(y.std()), rel=1e-5)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    for key in epoch_metrics("regression"):  # per epoch, as the MLflow UI draws them
        assert len(client.get_metric_history(r.info.run_id, key)) == 2, key
    assert r.data.metrics["test/rmse"] == pytest.approx(result.metrics["test/rmse"])
    assert r.data.metrics["best/val/rmse"] == pytest.approx(result.metrics["val/rmse"])


def test_balanced_class_weights_change_the_loss_as_computed_by_hand():
    rng = np.random.default_rng(1)
    y = np.array([0] * 30 + [1] * 10 + [2] * 5)
    splits = make_splits(
        rng.normal(size=(45, 1, 4)).astype(np.float32),
        y,
        rng.normal(size=(6, 1, 4)).astype(np.float32),
        np.array([0, 1, 2, 0, 1, 2]),
        name="imbalanced",
        val_fraction=0.2,
        split_seed=0,
    )
    cfg = compose_cfg("task.class_weights=balanced", "trainer.label_smoothing=0")
    task = make_task(cfg, splits)
    counts = np.bincount(splits.y_train.numpy(), minlength=3)
    weights = len(splits.y_train) / (3 * counts)  # n_train / (classes * count)
    assert task.weight.numpy() == pytest.approx(weights, rel=1e-6)
    assert task.recorded["class_weights"] == pytest.approx(weights.tolist(), rel=1e-6)
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    nll = -torch.log_softmax(logits.double(), -1)[torch.arange(8), target].numpy()
    w = weights[target.numpy()]
    by_hand = float((w * nll).sum() / w.sum())
    assert float(task.train_loss(logits, target)) == pytest.approx(by_hand, rel=1e-5)
    plain = make_task(compose_cfg("trainer.label_smoothing=0"), splits)
    assert float(plain.train_loss(logits, target)) == pytest.approx(float(nll.mean()), rel=1e-5)
    assert abs(by_hand - nll.mean()) > 1e-3  # the weights matter for this batch
    listed = make_task(compose_cfg("task.class_weights=[1,2,3]"), splits)
    assert listed.weight.tolist() == [1.0, 2.0, 3.0]


def test_a_positive_weight_scales_the_positives_loss():
    splits = make_splits(
        np.zeros((20, 1, 2), np.float32),
        np.array([0, 1] * 10),
        np.zeros((4, 1, 2), np.float32),
        np.array([0, 1, 0, 1]),
        name="binary",
        val_fraction=0.2,
        split_seed=0,
    )
    task = make_task(compose_cfg("task=binary", "task.pos_weight=3"), splits)
    out, target = torch.zeros(4, 1), torch.tensor([1, 1, 0, 0])
    log2 = math.log(2)  # BCE of a 0 logit
    assert float(task.train_loss(out, target)) == pytest.approx((3 * 2 * log2 + 2 * log2) / 4)
    assert float(task.eval_loss(out, target)) == pytest.approx(4 * log2)  # unweighted, summed


@pytest.mark.parametrize("deterministic", [False, True])
def test_classification_metrics_from_one_confusion_matrix_equal_torchmetrics(deterministic):
    """Accuracy, balanced accuracy, macro-F1 and per-class recall and precision, read off one
    confusion matrix, as torchmetrics computes them: classes absent from the targets or never
    predicted included, with deterministic algorithms on (the default trainer) and off."""
    import torchmetrics.functional.classification as tmc

    from tunelab.run.tasks import Task

    g = torch.Generator().manual_seed(0)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        for case in range(60):
            n, k = (
                int(torch.randint(1, 60, (1,), generator=g)),
                int(torch.randint(2, 8, (1,), generator=g)),
            )
            y, pred = (torch.randint(0, k, (n,), generator=g) for _ in range(2))
            if case % 3 == 0:
                y[y == 1] = 0  # class 1 has no example
            if case % 4 == 0:
                pred[pred == k - 1] = 0  # the last class is never predicted
            ours = Task(outputs=k).metrics(pred, y)
            recall = tmc.multiclass_recall(pred, y, num_classes=k, average="none")
            precision = tmc.multiclass_precision(pred, y, num_classes=k, average="none")
            f1 = tmc.multiclass_f1_score(pred, y, num_classes=k, average="macro")
            present = torch.bincount(y, minlength=k) > 0
            assert ours["macro_f1"] == pytest.approx(float(f1), abs=1e-6), case
            assert ours["balanced_acc"] == pytest.approx(float(recall[present].mean()), abs=1e-6)
            assert ours["acc"] == pytest.approx(float((pred == y).float().mean()), abs=1e-6)
            for c in range(k):
                assert ours[f"recall/{c}"] == pytest.approx(float(recall[c]), abs=1e-6), case
                assert ours[f"precision/{c}"] == pytest.approx(float(precision[c]), abs=1e-6)
    finally:
        torch.use_deterministic_algorithms(before)


def test_the_objective_must_be_a_metric_of_the_task_in_its_direction(tmp_path):
    cases = {
        ("objective.metric=val/auroc",): "objective.metric='val/auroc' is not a metric of "
        "task=classification",
        ("task=regression",): "objective.metric='val/acc' is not a metric of task=regression",
        ("task=regression", "objective.metric=val/rmse"): "objective.direction='maximize' "
        "contradicts val/rmse",
        ("trainer.early_stopping.metric=val/mae", "trainer.early_stopping.patience=2"): (
            "trainer.early_stopping.metric='val/mae' is not a metric of task=classification"
        ),
        ("trainer.early_stopping.metric=val/loss", "trainer.early_stopping.mode=max"): (
            "trainer.early_stopping.mode='max' contradicts val/loss"
        ),
        ("task.class_weights=[1,2]",): "task.class_weights has 2 weights: the data has 10",
        ("task=binary", "objective.metric=val/f1", "augment=mixup"): "mixes class labels: "
        "task=binary",
    }
    for overrides, needle in cases.items():
        with pytest.raises(ConfigError) as err:
            validate(compose_cfg(*overrides))
        assert needle in str(err.value), (overrides, str(err.value))
    validate(compose_cfg("task=regression", "objective.metric=val/r2"))  # r2: maximise
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tunelab.config.sweep_check import sweeper_problems

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = ["task=regression", "objective.metric=val/r2", "search=nsgaii"]
        nsga = compose("train", overrides=overrides, return_hydra_config=True)
    found = sweeper_problems(nsga)  # its objectives: val/acc and perf/epoch_s
    assert "hydra.sweeper.objectives[0].metric='val/acc' is not a metric of task=regression" in (
        " ".join(found)
    )
    assert not any("objectives[1]" in p for p in found)
    proc = run_cli("objective.metric=val/auroc", cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and "is not a metric of task=classification" in proc.stderr
    assert os.listdir(tmp_path) == []  # no outputs/, mlflow.db or checkpoints/


def test_float_targets_with_task_classification_are_refused_before_anything_starts(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    path = write_npz(tmp_path / "values.npz", "regression")
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*SMALL, f"data.path={path}"), check_files=file_problems)
    text = str(err.value)
    assert "task=classification takes integer class ids" in text and "dtype torch.float32" in text
    multi = write_npz(tmp_path / "multi.npz", "multilabel")
    with pytest.raises(ConfigError, match="task=binary takes integer class ids"):
        validate(
            compose_cfg(*SMALL, f"data.path={multi}", "task=binary", "objective.metric=val/f1"),
            check_files=file_problems,
        )
    proc = run_cli(*SMALL, f"data.path={path}", cwd=work, timeout=300)
    assert proc.returncode != 0 and "task=classification takes" in proc.stderr, proc.stderr[-2000:]
    assert os.listdir(work) == []


def test_regression_skips_the_class_checks_and_trains_replicas_one_after_another(tmp_path):
    from tunelab.diagnostics.datacheck import check_data
    from tunelab.run.replica_rules import config_reason

    path = write_npz(tmp_path / "regression.npz", "regression")
    cfg = compose_cfg(*SMALL, f"data.path={path}", "task=regression")
    from tunelab.build import build_data

    report = check_data(build_data(cfg.data))
    assert "skipped" in report.stats["class_checks"] and "class_counts" not in report.stats
    assert "task=regression" in config_reason(cfg)
    assert config_reason(compose_cfg("model=mlp", "optimizer=adam")) is None
    weighted = compose_cfg("model=mlp", "optimizer=adam", "task.class_weights=balanced")
    assert "task.class_weights" in config_reason(weighted)


def test_the_result_line_shows_the_objectives_test_counterpart():
    from tunelab.hydra_job import summary_line
    from tunelab.run.context import RunResult

    metrics = {"val/rmse": 3.5, "test/rmse": 4.25, "best_epoch": 2, "epochs_run": 3}
    line = summary_line(RunResult("r", "FINISHED", "val/rmse", {**metrics, "perf/epoch_s": 1.0}))
    assert "val/rmse 3.5000 at epoch 2 of 3 (selected), test/rmse 4.2500" in line


@pytest.mark.slow
def test_a_regression_sweep_minimises_rmse(tmp_path):
    path = write_npz(tmp_path / "diabetes_like.npz", "regression")
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli(
        "-m",
        *SMALL,
        f"data.path={path}",
        "task=regression",
        "search=random",
        "hydra.sweeper.n_trials=3",
        "objective.metric=val/rmse",
        "objective.direction=minimize",
        cwd=work,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "3 complete, 0 pruned, 0 failed" in out
    table = out[out.index("trial  val/rmse") :].splitlines()[2:5]  # under the header rule
    values = [float(line.split()[1]) for line in table]
    assert values == sorted(values) and len(set(values)) == 3  # best (lowest rmse) first
    runs = mlflow_runs(work)
    seeds = [r for r in runs if r.data.tags.get(ROLE) == Role.SEED]  # each trial's training run
    assert len(seeds) == 3 and all(r.data.tags["task"] == "regression" for r in seeds)
    best = min(r.data.metrics["best/val/rmse"] for r in seeds)
    assert min(values) == pytest.approx(best, rel=1e-3)  # the table prints 4 digits


def test_reports_speak_of_points_only_for_fractions():
    from tunelab.reports.verdict_words import unit, v

    assert unit("test/acc") == unit("val/auroc") == unit("best/val/macro_f1") == " points"
    assert unit("test/rmse") == unit("val/r2") == unit("val/loss") == ""
    assert v(0.9712, "test/acc") == "97.12" and v(12.3456, "test/rmse") == "12.35"


def test_a_regression_study_judges_test_rmse_lower_is_better_in_its_units():
    from types import SimpleNamespace

    from tunelab.reports import study_verdicts
    from tunelab.reports.verdict_words import power

    rng = np.random.default_rng(0)
    confirm = {
        cell: {
            s: {
                "kind": "complete",
                "values": {
                    "val/rmse": base + 0.1 * rng.normal(),
                    "test/rmse": base + 0.1 * rng.normal(),
                },
            }
            for s in range(5)
        }
        for cell, base in (("small", 10.0), ("large", 12.0))
    }
    checks = {"alpha": 0.05, "min_effect": 0.5}
    spec = SimpleNamespace(metric="val/rmse", direction="minimize", checks=checks, baseline=None)
    judged = study_verdicts.verdicts(spec, confirm, looks=1)
    assert judged["primary"] == "test/rmse"  # the objective's held-out counterpart
    assert judged["test/rmse"]["leader"] == "small" and judged["test/rmse"]["top_set"] == ["small"]
    line = " ".join(power(judged["test/rmse"]))
    assert "points" not in line and "resolving 0.5 (study.min_effect)" in line
