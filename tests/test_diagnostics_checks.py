"""Gradient check, data check, lr range test and the tiny-subset overfit check on tiny models."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tunelab.diagnostics.datacheck import check_data, datacheck_tags
from tunelab.diagnostics.gradcheck import gradient_check
from tunelab.diagnostics.lr_range import lr_range_test, plot_lr_range
from tunelab.diagnostics.overfit import overfit_tiny_subset


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def mlp(d_in=8, classes=3, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, classes))


def separable(n=256, d=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + 0.5 * torch.randn(n, d, generator=g), y


# ---- gradient check ----------------------------------------------------------------------------


class DoubledReLU(torch.autograd.Function):
    """ReLU whose backward is wrong by a factor of 2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * grad * (x > 0).to(grad.dtype)


class BadScale(torch.autograd.Function):
    """y = x * w with a backward that forgets a factor for w's gradient."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * w, 0.5 * (grad * x).sum(0)


class Scale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d))

    def forward(self, x):
        return BadScale.apply(x, self.weight)


class ReLUNet(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(8, 12), nn.Linear(12, 3), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_gradcheck_passes_on_mlp_and_cnn():
    x, y = separable(16)
    report = gradient_check(mlp(), x, y)
    assert report.passed, report
    assert report.worst_rel_error < 1e-6
    assert set(report.per_param) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    cnn = nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16, 3),
    )
    cnn(torch.randn(32, 1, 8))  # non-trivial BatchNorm running statistics
    assert gradient_check(cnn, x.view(16, 1, 8), y).passed
    assert gradient_check(cnn, x.view(16, 1, 8), y, train_mode=True).passed


def test_gradcheck_catches_wrong_custom_backward():
    x, y = separable(16)
    report = gradient_check(ReLUNet(lambda t: DoubledReLU.apply(t)), x, y)
    assert not report.passed
    assert report.worst_param.startswith("fc1.")  # upstream of the broken op
    assert report.per_param["fc2.weight"] < report.tolerance
    custom = nn.Sequential(nn.Linear(8, 8), Scale(8), nn.Tanh(), nn.Linear(8, 3))
    report = gradient_check(custom, x, y)
    assert not report.passed and report.worst_param == "1.weight"
    assert report.worst_rel_error == pytest.approx(0.5, abs=1e-3)


def test_gradcheck_leaves_model_untouched():
    model, (x, y) = mlp(), separable(8)
    before = [p.clone() for p in model.parameters()]
    gradient_check(model, x, y)
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ---- data check --------------------------------------------------------------------------------


def make_splits(**overrides):
    x, y = separable(300)
    s = dict(
        x_train=x[:200],
        y_train=y[:200],
        x_val=x[200:250],
        y_val=y[200:250],
        x_test=x[250:],
        y_test=y[250:],
        num_classes=3,
    )
    s.update(overrides)
    return SimpleNamespace(**s)


def test_datacheck_clean_splits():
    y = torch.arange(300) % 3
    x = torch.randn(300, 8)
    report = check_data(
        make_splits(
            y_train=y[:200],
            y_val=y[200:250],
            y_test=y[250:],
            x_train=x[:200],
            x_val=x[200:250],
            x_test=x[250:],
        )
    )
    assert report.warnings == [] and datacheck_tags(report) == {"data_check": "ok"}
    assert report.stats["class_counts"]["val"] == [17, 16, 17]
    assert report.stats["duplicates"]["train-test"] == 0


def test_datacheck_imbalance_and_missing_class():
    y = torch.zeros(200, dtype=torch.long)
    y[:20] = 1
    report = check_data(make_splits(y_train=y))
    text = " | ".join(report.warnings)
    assert "train: classes [2] have no examples" in text
    assert "train: class imbalance" in text
    assert datacheck_tags(report)["data_check"] == "warnings"


def test_datacheck_duplicates_nan_and_shift():
    s = make_splits()
    s.x_test = s.x_test.clone()
    s.x_test[:5] = s.x_train[10:15]
    s.x_val = s.x_val.clone()
    s.x_val[0, 0] = math.nan
    s.x_val[1, 1] = math.inf
    report = check_data(s)
    assert report.stats["duplicates"]["train-test"] == 5
    assert any("5 test examples also appear in train" in w for w in report.warnings)
    assert report.stats["values"]["val"]["nan"] == 1 and report.stats["values"]["val"]["inf"] == 1
    assert not any("test inputs differ" in w for w in report.warnings)
    shifted = make_splits()
    shifted.x_test = shifted.x_test * 3 + 5
    assert any("test inputs differ from train" in w for w in check_data(shifted).warnings)


# ---- lr range test -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt",
    [
        lambda p, lr=None: torch.optim.SGD(p, lr=lr or 0.1, momentum=0.9),
        lambda p, lr=None: torch.optim.Adam(p, lr=lr or 1e-3),
    ],
    ids=["sgd", "adam"],
)
def test_lr_range_suggests_sane_lr(opt):
    x, y = separable(512)
    model = mlp()
    before = [p.clone() for p in model.parameters()]
    result = lr_range_test(model, opt, x, y, num_steps=100, batch_size=32)
    assert 1e-4 <= result.suggested_lr <= 1.0, result.suggested_lr
    assert result.rule == "steepest_descent_of_trend"
    assert len(result.lrs) == len(result.losses) == len(result.smoothed)
    assert all(b < a for a, b in zip(result.lrs[1:], result.lrs[:-1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    fig = plot_lr_range(result)
    assert fig.axes[0].get_xscale() == "log"


def test_lr_range_keeps_param_group_ratios():
    seen = []

    def make(params, lr=None):
        params = list(params)
        opt = torch.optim.SGD(
            [{"params": params[:2], "lr": lr}, {"params": params[2:], "lr": 10 * lr}]
        )
        seen.append(opt)
        return opt

    x, y = separable(64)
    lr_range_test(mlp(), make, x, y, min_lr=1e-5, max_lr=1e-3, num_steps=5)
    g0, g1 = seen[0].param_groups
    assert g0["lr"] == pytest.approx(1e-3) and g1["lr"] == pytest.approx(1e-2)


# ---- overfit a tiny subset ---------------------------------------------------------------------


def adam(params, lr=None):
    return torch.optim.Adam(params, lr=lr or 1e-2)


def test_overfit_passes_on_healthy_model():
    x, y = (
        torch.randn(200, 8),
        torch.randint(0, 3, (200,)),
    )  # random labels: only memorisation works
    result = overfit_tiny_subset(mlp(width=64), adam, x, y, n_examples=32, max_steps=300)
    assert result.passed, result.message
    assert result.final_loss <= 0.05 and result.steps < 300


def test_overfit_fails_when_labels_shuffled_every_step():
    x, y = torch.randn(200, 8), torch.randint(0, 3, (200,))

    def shuffle_labels(bx, by):
        return bx, by[torch.randperm(len(by))]

    result = overfit_tiny_subset(mlp(width=64), adam, x, y, max_steps=150, batch_fn=shuffle_labels)
    assert not result.passed and result.steps == 150
    assert "likely a bug in the model or data pipeline" in result.message
    assert result.message.startswith(f"loss stayed at {result.final_loss:.3g} after 150 steps")
