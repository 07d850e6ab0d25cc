"""Curve diagnosis: every code fires on a constructed curve and none fires on a healthy run."""

import math

import numpy as np
import pytest
import torch

from tunelab.diagnostics.curves import diagnose_curves, findings_to_tags
from tunelab.diagnostics.metrics import per_class_accuracy, per_class_metrics

EPOCHS = 40


def noisy(values, scale=0.01, seed=0):
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    return list(v * (1 + scale * rng.standard_normal(len(v))))


def healthy(seed=0, epochs=EPOCHS):
    """Both losses fall then flatten with a small gap; cosine-decayed lr."""
    t = np.arange(epochs)
    decay = np.exp(-t / 4)
    return {
        "train/loss": noisy(0.25 + 2.0 * decay, seed=seed),
        "val/loss": noisy(0.30 + 2.0 * decay, seed=seed + 100),
        "train/acc": list(0.97 - 0.85 * decay),
        "val/acc": noisy(0.94 - 0.82 * decay, 0.005, seed + 200),
        "opt/lr": list(0.05 * 0.5 * (1 + np.cos(np.pi * t / epochs))),
    }


def codes(history):
    return [f.code for f in diagnose_curves(history)]


@pytest.mark.parametrize("seed", range(10))
def test_healthy_run_has_no_findings(seed):
    assert codes(healthy(seed)) == []
    assert findings_to_tags(diagnose_curves(healthy(seed))) == {"diagnosis": "healthy"}


def test_short_and_empty_histories_are_quiet():
    assert diagnose_curves({}) == []
    assert codes({"train/loss": [2.0, 1.5], "val/loss": [2.1, 1.6]}) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_diverged_on_non_finite_loss(bad):
    h = healthy()
    h["train/loss"][7] = bad
    findings = diagnose_curves(h)
    assert [f.code for f in findings] == ["diverged"]
    assert findings[0].since_epoch == 8  # history index 7 is epoch 8: epochs count from 1


def test_diverged_on_exploding_loss():
    h = healthy()
    h["train/loss"] = h["train/loss"][:20] + [3.0, 9.0, 40.0]
    h = {k: v[:23] for k, v in h.items()}
    f = diagnose_curves(h)[0]
    assert (f.code, f.since_epoch) == ("diverged", 21)
    assert "momentum" in f.recommendation
    for name in ("adam", "adamw", "nadam", "radam", "rmsprop"):
        adaptive = diagnose_curves(h, optimizer=name)[0]
        assert "momentum" not in adaptive.recommendation and "lr" in adaptive.recommendation


@pytest.mark.parametrize("seed", range(3))
def test_overfitting_since_epoch(seed):
    t = np.arange(EPOCHS)
    h = healthy(seed)
    h["train/loss"] = noisy(2.2 * np.exp(-t / 6) + 0.01, seed=seed)
    val = np.where(
        t < 15, 0.5 + 1.7 * np.exp(-t / 5), 0.5 + 1.7 * np.exp(-15 / 5) + 0.03 * (t - 15)
    )
    h["val/loss"] = noisy(val, 0.02, seed + 1)
    h["train/acc"] = list(1.0 - 0.9 * np.exp(-t / 6))
    findings = diagnose_curves(h)
    assert findings[0].code == "overfitting"
    assert 12 <= findings[0].since_epoch <= 20
    tags = findings_to_tags(findings)
    assert tags["diagnosis"].startswith("overfitting")
    assert tags["diagnosis.overfitting.since_epoch"] == str(findings[0].since_epoch)
    assert "weight decay" in tags["diagnosis.recommendation"]


def test_underfitting_when_train_acc_poor_and_close_to_val():
    t = np.arange(EPOCHS)
    h = healthy()
    h["train/acc"] = list(0.55 - 0.4 * np.exp(-t / 5))
    h["val/acc"] = list(0.53 - 0.4 * np.exp(-t / 5))
    assert codes(h) == ["underfitting"]


def test_underfitting_from_loss_alone():
    t = np.arange(EPOCHS)
    h = {
        "train/loss": list(2.3 - 0.3 * (1 - np.exp(-t / 5))),
        "val/loss": list(2.31 - 0.3 * (1 - np.exp(-t / 5))),
    }
    h["opt/lr"] = list(0.1 * 0.5 * (1 + np.cos(np.pi * t / EPOCHS)))
    assert "underfitting" in codes(h)


def test_unstable_validation():
    t = np.arange(EPOCHS)
    h = healthy()
    swing = np.where(t % 2 == 0, 1.0, 1.6)  # val loss jumps 60% every other epoch
    h["val/loss"] = list((0.30 + 2.0 * np.exp(-t / 5)) * swing)
    findings = diagnose_curves(h)
    assert "unstable_val" in [f.code for f in findings]
    assert "momentum" in next(f for f in findings if f.code == "unstable_val").recommendation


def test_single_spike_is_not_instability():
    h = healthy()
    h["val/loss"][25] *= 1.8
    assert "unstable_val" not in codes(h)


def test_plateaued_with_lr_still_high():
    t = np.arange(EPOCHS)
    h = healthy()
    h["opt/lr"] = [0.1] * EPOCHS
    flat = np.minimum(t, 12)
    h["val/loss"] = noisy(0.8 + 1.5 * np.exp(-flat / 4), 0.005, 3)
    h["train/loss"] = noisy(0.7 + 1.5 * np.exp(-flat / 4), 0.005, 4)
    findings = diagnose_curves(h)
    assert [f.code for f in findings] == ["plateaued"]
    assert 9 <= findings[0].since_epoch <= 17
    assert "ReduceLROnPlateau" in findings[0].recommendation


def test_plateau_after_lr_decay_is_convergence():
    t = np.arange(EPOCHS)
    h = healthy()
    flat = np.minimum(t, 12)
    h["val/loss"] = noisy(0.8 + 1.5 * np.exp(-flat / 4), 0.005, 3)
    h["opt/lr"] = list(np.where(t < 12, 0.1, 0.001))
    assert "plateaued" not in codes(h)


def test_still_improving():
    t = np.arange(EPOCHS)
    h = healthy()
    h["train/loss"] = noisy(2.0 * np.exp(-t / 25) + 0.1, seed=5)
    h["val/loss"] = noisy(2.0 * np.exp(-t / 25) + 0.2, seed=6)
    findings = diagnose_curves(h)
    assert [f.code for f in findings] == ["still_improving"]
    assert "train longer" in findings[0].recommendation


def test_per_class_accuracy_from_logits_and_preds():
    targets = torch.tensor([0, 0, 1, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    assert per_class_accuracy(preds, targets, 4)[:3] == pytest.approx([0.5, 2 / 3, 1.0])
    assert math.isnan(per_class_accuracy(preds, targets, 4)[3])
    logits = torch.nn.functional.one_hot(preds, 4).float()
    assert per_class_accuracy(logits, targets, 4)[:3] == pytest.approx([0.5, 2 / 3, 1.0])
    assert set(per_class_metrics(per_class_accuracy(preds, targets, 4))) == {
        "val/acc_class_0",
        "val/acc_class_1",
        "val/acc_class_2",
    }
