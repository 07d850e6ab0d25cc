"""K seeds in one pass (run/replicas.py): replica k is the sequential run `seed=k` that users run,
the project's own prepare.setup + loop.fit (or api.run), to the last digit in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import FAST, compose_cfg
from torch import nn

from tunelab import build
from tunelab.build import build_training
from tunelab.run import api, prepare
from tunelab.run.context import RunContext
from tunelab.run.loop import DivergedError, Objective, TrainState, evaluate, fit
from tunelab.run.replica_rules import build_replicas, can_batch, config_reason
from tunelab.run.replicas import fit_replicas
from tunelab.tracking.base import NullTracker

SEEDS = [0, 1, 2]
BASE = [o for o in FAST if not o.startswith(("model", "optimizer", "scheduler"))]
MLP = [
    "model=mlp",
    "model.width=32",
    "model.dropout=0.0",  # model=mlp with adamw brings the MLP recipe: BatchNorm, dropout 0.109
    "optimizer=adamw",  # weight decay with bias/norm exclusion: two parameter groups
    "scheduler=onecycle",
    "trainer.grad_clip_norm=0.5",
]
CNN = ["model=cnn", "model.width=8", "optimizer=momentum", "scheduler=cosine"]  # BatchNorm
CNN_GROUP = ["model=cnn", "model.width=8", "model.norm=group", "optimizer=adam"]


def cfg_for(seed: int, *overrides: str):
    return compose_cfg(*BASE, *overrides, f"seed={seed}", "tracking=none")


def as_dtype(data: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in data.items()}


def sequential(seed: int, overrides: list[str], dtype=torch.float64, poison=None):
    """What api.train runs for `seed=seed` (minus the store and tracking): prepare.setup, then the
    project's fit() with the optimizer, schedule and batch-order generator api.train builds."""
    cfg = cfg_for(seed, *overrides)
    s = prepare.setup(cfg, RunContext())
    model = s.model.to(dtype)
    if poison:
        poison(model)
    init = copy.deepcopy(model.state_dict())
    data = as_dtype({k: getattr(s.splits, k) for k in prepare.SPLIT_KEYS}, dtype)
    optimizer, schedule = build_training(model, cfg, len(s.splits.y_train), allow=s.allow)
    state = fit(
        model,
        optimizer,
        schedule,
        data,
        cfg.trainer,
        objective=Objective(cfg.objective.metric, cfg.objective.direction),
        generator=torch.Generator().manual_seed(seed),
        state=TrainState(),
        tracker=NullTracker(),
    )
    return init, state, model.state_dict()


def replicas(overrides: list[str], seeds=SEEDS, dtype=torch.float64, poison=None):
    cfg = cfg_for(seeds[0], *overrides)
    splits = build.build_data(cfg.data)
    models = build_replicas(cfg, seeds, splits.input_shape, splits.num_classes)
    models = [m.to(dtype) for m in models]
    inits = [copy.deepcopy(m.state_dict()) for m in models]
    for i, model in (poison or {}).items():
        model(models[i])
    data = as_dtype({k: getattr(splits, k) for k in prepare.SPLIT_KEYS}, dtype)
    return inits, fit_replicas(models, seeds, cfg, data), cfg, splits


def assert_close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        assert diff <= tol, f"{k}: differs by {diff}"


def assert_same_history(got: TrainState, want: TrainState, tol: float) -> None:
    assert got.epoch == want.epoch and got.step == want.step
    assert got.best_epoch == want.best_epoch and got.stopped_early == want.stopped_early
    for key, values in want.history.items():
        if key.startswith("perf/"):
            continue  # wall time
        assert got.history[key] == pytest.approx(values, abs=tol, rel=0), key


@pytest.mark.parametrize(
    "overrides", [MLP, CNN, CNN_GROUP], ids=["mlp", "cnn-batchnorm", "cnn-group"]
)
def test_replica_k_is_the_sequential_run_with_seed_k_in_float64(overrides):
    overrides = [*overrides, "trainer.max_epochs=1"]
    inits, reps, cfg, splits = replicas(overrides)
    assert can_batch(build.build_model(cfg.model, splits.input_shape, splits.num_classes)) is None
    for seed, init, rep in zip(SEEDS, inits, reps, strict=True):
        want_init, want_state, want_weights = sequential(seed, overrides)
        assert_close(init, want_init, 0.0)  # bit-identical initial weights
        assert rep.status == "FINISHED" and rep.reason is None
        assert_same_history(rep.state, want_state, 1e-6)
        assert rep.state.history["train/loss"][0] > 0.5  # a real epoch of learning, not zeros
        if cfg.trainer.grad_clip_norm:  # clipping per replica was exercised
            assert want_state.history["train/grad_norm"][0] > cfg.trainer.grad_clip_norm
        assert_close(rep.weights, want_weights, 1e-6)  # parameters and BatchNorm running stats
        fresh = build.build_model(cfg.model, splits.input_shape, splits.num_classes).double()
        fresh.load_state_dict(rep.weights)  # a normal nn.Module state_dict, unstacked
    assert not torch.equal(reps[0].weights["head.weight"], reps[1].weights["head.weight"])


def test_replicas_match_api_runs_over_ten_epochs_in_float32(tmp_path, monkeypatch):
    """Against api.run itself (the store, checkpoints, the NullTracker), with per-replica early
    stopping: replicas leave the stack at different epochs and the others go on."""
    monkeypatch.chdir(tmp_path)
    seeds = [0, 1, 2, 3]
    overrides = [
        *MLP,
        # no BatchNorm here: the gradient of a Linear bias feeding a BatchNorm is rounding noise,
        # which Adam scales into lr-sized steps; in eval mode (running statistics) that noise shows
        # in float32 val/loss at 1e-4 between any two ways of summing (float64 agrees to 1e-12)
        "model.norm=none",
        "trainer.max_epochs=10",
        "data.noise=2.5",  # a task not learned perfectly in two epochs
        "optimizer.lr=0.003",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.metric=val/acc",
    ]
    runs = [api.run(cfg_for(s, *overrides), RunContext(log_model=False)) for s in seeds]
    _, reps, cfg, splits = replicas(overrides, seeds, torch.float32)
    epochs = [len(r.state.history["val/loss"]) for r in reps]
    assert len(set(epochs)) > 1 and min(epochs) < 10  # some stopped early, not all together
    tests = []
    for run, rep in zip(runs, reps, strict=True):
        assert rep.status == "FINISHED" and (rep.state.stopped_early or rep.state.epoch == 10)
        assert rep.state.epoch == run.metrics["epochs_run"]
        assert rep.state.best_epoch == run.metrics["best_epoch"]
        for key in ("train/loss", "val/loss"):
            assert rep.state.history[key] == pytest.approx(run.history[key], abs=1e-4, rel=0)
        best = build.build_model(cfg.model, splits.input_shape, splits.num_classes)
        best.load_state_dict(rep.best_weights)  # the selected epoch's weights, as api.run reports
        test_loss, test_acc, _ = evaluate(best, splits.x_test, splits.y_test)
        assert test_loss == pytest.approx(run.metrics["test/loss"], abs=1e-4, rel=0)
        tests.append((test_acc, run.metrics["test/acc"]))
    mean_acc, want_acc = (sum(t) / len(tests) for t in zip(*tests, strict=True))
    assert abs(mean_acc - want_acc) * 100 <= 0.1  # points
    assert mean_acc > 0.4  # 4 classes: the runs learned


def _poison(model: nn.Module) -> None:
    with torch.no_grad():
        model.head.bias[0] = float("nan")


def test_a_diverging_replica_fails_with_fits_reason_and_the_others_go_on():
    """Replica 1 (seed 1) gets a NaN weight; it leaves at its first batch, between accumulated
    micro-batches, and seeds 0 and 2 still match their sequential runs."""
    overrides = [*MLP, "trainer.max_epochs=2", "trainer.grad_accum_steps=2"]
    _, reps, _, _ = replicas(overrides, poison={1: _poison})
    with pytest.raises(DivergedError) as diverged:
        sequential(1, overrides, poison=_poison)
    assert reps[1].status == "FAILED" and reps[1].reason == str(diverged.value)
    assert "non-finite training loss" in reps[1].reason and reps[1].state.history == {}
    for i in (0, 2):
        _, want_state, want_weights = sequential(SEEDS[i], overrides)
        assert reps[i].status == "FINISHED" and reps[i].state.epoch == 2
        assert_same_history(reps[i].state, want_state, 1e-6)
        assert_close(reps[i].weights, want_weights, 1e-6)


def test_can_batch_explains_what_cannot_train_as_replicas():
    shape, classes = (1, 16), 4

    def model(*overrides: str) -> nn.Module:
        return build.build_model(cfg_for(0, *overrides).model, shape, classes)

    assert can_batch(model("model=mlp", "model.norm=none", "model.dropout=0.0")) is None
    assert can_batch(model("model=mlp", "model.norm=layer", "model.dropout=0.0")) is None
    assert can_batch(model("model=cnn")) is None  # BatchNorm: batched running statistics
    assert can_batch(model("model=logreg")) is None
    reason = can_batch(model("model=mlp", "model.dropout=0.2"))
    assert reason is not None and "dropout p=0.2" in reason and "global RNG" in reason
    cumulative = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8, momentum=None))
    assert "momentum=None" in can_batch(cumulative)
    assert "LSTM" in can_batch(nn.Sequential(nn.LSTM(16, 8)))

    assert config_reason(cfg_for(0, *MLP)) is None
    plateau = config_reason(cfg_for(0, *MLP, "scheduler=plateau"))
    assert plateau is not None and "val/acc" in plateau and "learning rates" in plateau
    cfg = cfg_for(0, "model=mlp", "model.dropout=0.2")
    splits = build.build_data(cfg.data)
    models = build_replicas(cfg, [0, 1], splits.input_shape, splits.num_classes)
    data = {k: getattr(splits, k) for k in prepare.SPLIT_KEYS}
    with pytest.raises(ValueError, match="cannot train as replicas: .*dropout"):
        fit_replicas(models, [0, 1], cfg, data)
