"""Layer-wise adaptive optimizers (LARS, LAMB from pytorch-optimizer): they train end to end, and
their trust ratio is what sets the step."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, compose_cfg

from tunelab import build
from tunelab.optim import schedule_fns as fns
from tunelab.run.api import run
from tunelab.tracking import NullTracker


@pytest.mark.parametrize("optimizer", ["lars", "lamb"])
def test_layerwise_optimizers_train_two_epochs(in_tmp, optimizer):
    cfg = compose_cfg(*FAST, f"optimizer={optimizer}", "trainer.resume=never")
    result = run(cfg, tracker=NullTracker())
    losses = result.history["train/loss"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[1] < losses[0]
    assert result.metrics["val/acc"] > 1.0 / 3  # synthetic data has 3 classes: above chance


def _one_step(optimizer: str, *overrides: str) -> tuple[dict, dict, dict, torch.optim.Optimizer]:
    """A small MLP's parameters before and after one step of `optimizer` on a fixed batch, their
    gradients, and the optimizer."""
    cfg = compose_cfg("model=mlp", "model.width=8", f"optimizer={optimizer}", *overrides)
    torch.manual_seed(0)
    net = build.build_model(cfg.model, (1, 16), 3)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    opt = build.build_optimizer(net, cfg.optimizer)
    x, y = torch.randn(32, 1, 16), torch.randint(0, 3, (32,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    grads = {k: p.grad.detach().clone() for k, p in net.named_parameters()}
    opt.step()
    return before, grads, dict(net.named_parameters()), opt


def test_a_lars_step_is_sgds_scaled_by_each_weights_trust_ratio():
    lr, trust, wd = 2.0, 1.0e-3, 5.0e-4
    keys = [f"optimizer.lr={lr}", f"optimizer.trust_coefficient={trust}"]
    before, grads, after, _ = _one_step("lars", *keys, f"optimizer.weight_decay={wd}")
    scaled = 0
    for name, w in before.items():
        g, step = grads[name], after[name].detach() - w
        if w.ndim > 1:  # a weight matrix: trust x ||w|| / (||g|| + wd ||w||) times SGD's step
            ratio = trust * w.norm() / (g.norm() + wd * w.norm())
            expected = -lr * ratio * (g + wd * w)
            assert not torch.allclose(step, -lr * g, rtol=1e-2), name  # not plain SGD
            scaled += 1
        else:  # biases and norms: SGD's step, no decay (excluded from it)
            expected = -lr * g
        torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-7)
    assert scaled >= 2


def test_a_lamb_step_is_adams_scaled_by_the_trust_ratio():
    keys = ("optimizer.lr=1.0e-2", "optimizer.weight_decay=0.0")
    before, _, lamb, opt = _one_step("lamb", *keys)
    _, _, adam, _ = _one_step("lamb", *keys, "optimizer.adam=true")  # the same update, ratio 1
    for name, w in before.items():
        step, plain = lamb[name].detach() - w, adam[name].detach() - w
        ratio = float(opt.state[lamb[name]]["trust_ratio"])  # ||w|| / ||Adam's update||
        assert ratio != pytest.approx(1.0, rel=1e-2), name
        torch.testing.assert_close(step, plain * ratio, rtol=1e-4, atol=1e-7)


def _lrs(*overrides: str) -> list[float]:
    """The lr of each of a run's 60 updates (10 epochs of 6) under scheduler=noisy_linear_cosine,
    built as a run builds it."""
    extra = ["optimizer=sgd", "optimizer.lr=0.1", "trainer.batch_size=10", "trainer.max_epochs=10"]
    cfg = compose_cfg("scheduler=noisy_linear_cosine", *extra, *overrides)
    opt, sched = build.build_training(torch.nn.Linear(2, 2), cfg, n_train=60)
    out = []
    for _ in range(60):
        out.append(sched.lr)
        opt.step()
        sched.after_step()
    return out


def test_noisy_linear_cosine_is_linear_cosine_plus_decaying_noise_seeded_by_the_run():
    cfg = compose_cfg("scheduler=noisy_linear_cosine")
    assert cfg.scheduler.noise_seed is None and cfg.scheduler.noise == 1.0  # tf's initial variance
    noisy = _lrs("seed=5")
    assert noisy == _lrs("seed=5") and noisy != _lrs("seed=6")
    assert noisy == _lrs("seed=6", "scheduler.noise_seed=5")  # the seed it names wins
    kw = {"decay_steps": 60, "num_periods": 0.5, "alpha": 0.0, "beta": 1.0e-3}
    noise = {"noise": 1.0, "noise_decay": 0.55, "noise_seed": 5}
    expected = [0.1 * fns.linear_cosine_decay(k, **kw, **noise) for k in range(60)]
    assert noisy == pytest.approx(expected, rel=1e-12)
    plain = [0.1 * fns.linear_cosine_decay(k, **kw) for k in range(60)]
    assert min(noisy) >= 0.1 * 1.0e-3  # floored at beta: a draw never stops training
    # the noise's standard deviation (1 + step)^-0.275 shrinks: later steps stray less
    early = sum(abs(a - b) for a, b in zip(noisy[:20], plain[:20], strict=True))
    late = sum(abs(a - b) for a, b in zip(noisy[40:], plain[40:], strict=True))
    assert late < early and early > 0


def test_a_seeded_noisy_schedule_keeps_replicas_sequential():
    from tunelab.run.replica_rules import config_reason

    noisy = compose_cfg(*FAST, "scheduler=noisy_linear_cosine")
    assert "draws its noise from each run's seed" in config_reason(noisy)
    fixed = compose_cfg(*FAST, "scheduler=noisy_linear_cosine", "scheduler.noise_seed=3")
    assert config_reason(compose_cfg(*FAST, "scheduler=linear_cosine")) is None
    assert config_reason(fixed) is None  # one noise for every seed: the replicas share it
