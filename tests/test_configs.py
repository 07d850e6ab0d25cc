"""Every option of every config group composes and builds; bad values are rejected with clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CONF, compose_cfg

from tunelab import build
from tunelab.build import build_schedule
from tunelab.config import ConfigError, validate
from tunelab.data.sources import synthetic


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def small_1d():
    return synthetic(num_samples=64, length=16)


def test_groups_have_the_documented_options():
    assert set(options("optimizer")) >= {
        "sgd",
        "momentum",
        "nesterov",
        "adam",
        "adamw",
        "nadam",
        "radam",
        "rmsprop",
        "adagrad",
        "adadelta",
        "adamax",
    }
    assert set(options("scheduler")) >= {
        "constant",
        "step",
        "multistep",
        "exponential",
        "piecewise",
        "polynomial",
        "inverse_time",
        "cosine",
        "cosine_restarts",
        "linear_cosine",
        "onecycle",
        "plateau",
    }
    assert set(options("model")) == {"logreg", "mlp", "cnn", "resnet"}
    data = {"mnist1d", "digits", "images", "cifar10", "npz", "table", "synthetic"}
    assert set(options("data")) == data


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("shape", [(1, 16), (3, 8, 8)])
def test_every_model_builds_for_1d_and_2d_inputs(model, shape):
    cfg = compose_cfg(f"model={model}", "model.width=8" if model != "logreg" else "seed=0")
    net = build.build_model(cfg.model, shape, 5)
    out = net(torch.randn(4, *shape))  # (4, *shape) -> (4, 5)
    assert out.shape == (4, 5)
    assert isinstance(net.head, torch.nn.Linear)


@pytest.mark.parametrize(
    "init",
    [
        "default",
        "kaiming_normal",
        "kaiming_uniform",
        "xavier_normal",
        "xavier_uniform",
        "orthogonal",
    ],
)
@pytest.mark.parametrize("norm", ["batch", "group", "layer", "none"])
def test_cnn_knobs_compose(init, norm):
    cfg = compose_cfg(
        f"model.init={init}",
        f"model.norm={norm}",
        "model.width=8",
        "model.activation=gelu",
        "model.dropout=0.3",
        "model.kernel_size=3",
    )
    net = build.build_model(cfg.model, (1, 40), 10)
    assert torch.isfinite(net(torch.randn(2, 1, 40))).all()


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_every_optimizer_trains_a_few_steps(optimizer, small_1d):
    torch.manual_seed(0)
    cfg = compose_cfg(f"optimizer={optimizer}", "model=mlp", "model.width=16")
    net = build.build_model(cfg.model, small_1d.input_shape, small_1d.num_classes)
    opt = build.build_optimizer(net, cfg.optimizer)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(net(small_1d.x_train), small_1d.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert min(losses[1:]) < losses[0]  # a step lowered the loss


def test_bias_and_norm_parameters_skip_weight_decay():
    cfg = compose_cfg("optimizer=adamw", "model.width=8")
    net = build.build_model(cfg.model, (1, 16), 3)
    opt = build.build_optimizer(net, cfg.optimizer)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in net.named_parameters():
        assert (id(p) in decayed) == (name.endswith("weight") and p.ndim > 1), name


def test_backbone_lr_multiplier_applies_to_backbone_only():
    cfg = compose_cfg("optimizer=momentum", "model=mlp")
    net = build.build_model(cfg.model, (1, 16), 3)
    opt = build.build_optimizer(net, cfg.optimizer, backbone_lr_mult=0.1)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(cfg.optimizer.lr)
    assert lrs["backbone"] == pytest.approx(cfg.optimizer.lr * 0.1)


def _cos(x: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * x))


def _normal(step: int, seed: int = 0) -> float:
    return float(np.random.default_rng([seed, step]).standard_normal())


# lr multipliers of each conf/scheduler default at optimizer steps 0, 59, 150 and 299 of a
# 30-epoch run with 10 steps per epoch, derived by hand from each schedule's definition
EXPECTED = {
    "constant": [1, 1, 1, 1],
    "step": [1, 1, 0.1, 0.01],  # x0.1 every 10 epochs
    "multistep": [1, 1, 0.1, 0.01],  # x0.1 at epochs 15 and 25
    "exponential": [1, 0.9**5.9, 0.9**15, 0.9**29.9],  # x0.9 per epoch, smoothly
    "piecewise": [1, 1, 0.1, 0.01],  # 1 until epoch 10, 0.1 until 20, then 0.01
    "polynomial": [1 - 0.99 * k / 300 for k in (0, 59, 150, 299)],  # linear to 0.01
    "inverse_time": [1 / (1 + k / 100) for k in (0, 59, 150, 299)],  # rate 1 per 10 epochs
    "cosine": [0.01 + 0.99 * _cos(k / 300) for k in (0, 59, 150, 299)],
    # SGDR: cycles of 20, 40, 80 and 160 steps starting at 0, 20, 60 and 140
    "cosine_restarts": [
        1,
        0.01 + 0.99 * _cos(39 / 40),
        0.01 + 0.99 * _cos(10 / 160),
        0.01 + 0.99 * _cos(159 / 160),
    ],  # fmt: skip
    "linear_cosine": [(300 - k) / 300 * _cos(k / 300) + 0.001 for k in (0, 59, 150, 299)],
    # ... plus N(0, (1 + k)^-0.55) noise drawn from (seed 0, k), floored at beta
    "noisy_linear_cosine": [
        max(0.001, ((300 - k) / 300 + (1 + k) ** -0.275 * _normal(k)) * _cos(k / 300) + 0.001)
        for k in (0, 59, 150, 299)
    ],
    # one-cycle: 1/25 of the peak, the peak at 20% of the run, then cosine down to 1/25/1e4
    "onecycle": [0.04, 1, 4e-6 + (1 - 4e-6) * _cos(91 / 240), 4e-6],
    "plateau": [1, 1, 1, 1],  # validation improves every epoch below: never reduced
}


@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_scheduler_gives_its_lr_at_known_steps(scheduler):
    cfg = compose_cfg(f"scheduler={scheduler}")
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = build_schedule(opt, cfg.scheduler, steps_per_epoch=10, max_epochs=30)
    lrs = {}
    for k in range(300):
        lrs[k] = sched.lr
        opt.step()
        sched.after_step()
        if (k + 1) % 10 == 0:
            sched.after_epoch({"val/acc": 0.5 + k / 1000, "val/loss": 1.0 - k / 1000})
    got = [lrs[k] / 0.1 for k in (0, 59, 150, 299)]
    assert got == pytest.approx(EXPECTED[scheduler], rel=1e-6, abs=1e-9)


def test_every_data_source_with_local_files_builds(tmp_path):
    assert build.build_data(compose_cfg("data=digits").data).input_shape == (1, 8, 8)
    rng = np.random.default_rng(0)
    path = tmp_path / "arrays.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(50, 6)),
        y_train=rng.integers(0, 3, 50),
        x_test=rng.normal(size=(20, 6)),
        y_test=rng.integers(0, 3, 20),
    )
    splits = build.build_data(compose_cfg("data=npz", f"data.path={path}").data)
    assert splits.input_shape == (1, 6) and splits.sizes()["test"] == 20


def test_cifar10_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build.build_data(compose_cfg("data=cifar10", f"data.path={tmp_path}").data)


def test_mnist1d_is_the_official_split(tmp_path):
    splits = build.build_data(
        compose_cfg(f"data.cache_dir={tmp_path}").data
    )  # not the repo's data/
    assert splits.sizes() == {"train": 3600, "val": 400, "test": 1000}
    assert splits.input_shape == (1, 40) and splits.num_classes == 10


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optimizer.lr=abc", "optimizer.lr='abc'"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5"),
        ("model.dropout=1.5", "model.dropout=1.5"),
        ("optimizer=adam", None),
    ],
)
def test_validation_names_key_value_and_what_is_allowed(override, needle):
    cfg = compose_cfg(override)
    if needle is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError, match="expected") as err:
        validate(cfg)
    assert needle in str(err.value)


def test_missing_dataset_path_is_rejected():
    with pytest.raises(ConfigError, match="data.path"):
        validate(compose_cfg("data=npz", "data.path=/nonexistent/arrays.npz"))
