"""The diagnose command layer: registry dispatch, tracker logging, failures that exit non-zero."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF, compose_cfg
from omegaconf import OmegaConf
from torch import nn

from tunelab.diagnostics.command import (
    DIAGNOSTICS,
    DiagnosticFailed,
    run_check,
    without_regularisation,
)
from tunelab.tracking import NullTracker


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def splits(n=240, d=8, classes=3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = 3 * torch.randn(classes, d, generator=g)[y] + torch.randn(n, d, generator=g)
    k, v = n * 2 // 3, n * 5 // 6
    return SimpleNamespace(
        x_train=x[:k],
        y_train=y[:k],
        x_val=x[k:v],
        y_val=y[k:v],
        x_test=x[v:],
        y_test=y[v:],
        num_classes=classes,
    )


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))


def adam(params, lr=None):
    return torch.optim.Adam(params, lr=lr or 1e-2)


def diagnose(name, **overrides):
    """cfg with conf/diagnose/<name>.yaml as shipped, plus overrides."""
    knobs = OmegaConf.load(CONF / "diagnose" / f"{name}.yaml")
    return OmegaConf.create(
        {"seed": 0, "trainer": {"batch_size": 32}, "diagnose": {**knobs, **overrides}}
    )


def called(tracker, method):
    return [args for name, args in tracker.calls if name == method]


def test_registry_matches_shipped_configs():
    assert set(DIAGNOSTICS) == {p.stem for p in (CONF / "diagnose").glob("*.yaml")}
    for name in DIAGNOSTICS:
        assert OmegaConf.load(CONF / "diagnose" / f"{name}.yaml").name == name


def test_lr_range_logs_figure_json_tags_and_metrics(caplog):
    tracker = NullTracker()
    with caplog.at_level(logging.INFO, logger="tunelab.diagnostics.command"):
        metrics = run_check(
            diagnose("lr_range", num_steps=40, min_lr=1.0e-5), splits(), mlp(), adam, tracker
        )
    assert (
        list(metrics)[0] == "diagnose/suggested_lr"
        and 1e-5 <= metrics["diagnose/suggested_lr"] <= 10
    )
    assert called(tracker, "log_figure")[0][1] == "diagnostics/lr_range.png"
    assert called(tracker, "log_dict")[0][1] == "diagnostics/lr_range.json"
    assert called(tracker, "set_tags")[0][0]["diagnose.rule"] == "steepest_descent_of_trend"
    assert "lr range test: suggested lr" in caplog.text


def test_overfit_passes_and_fails_with_message():
    tracker = NullTracker()
    metrics = run_check(diagnose("overfit", max_steps=300), splits(), mlp(), adam, tracker)
    assert metrics["diagnose/passed"] == 1.0
    assert called(tracker, "set_tags")[-1][0]["diagnose.passed"] == "true"

    class Broken(nn.Module):
        """Ignores its input (a bug): only the bias can learn."""

        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(torch.zeros_like(x))

    tracker = NullTracker()
    with pytest.raises(DiagnosticFailed, match="likely a bug in the model or data pipeline"):
        run_check(diagnose("overfit", max_steps=100), splits(), Broken(), adam, tracker)
    assert called(tracker, "set_tags")[-1][0]["diagnose.passed"] == "false"
    assert called(tracker, "log_metrics")  # the verdict is recorded before raising


def test_gradcheck_and_datacheck():
    tracker = NullTracker()
    metrics = run_check(diagnose("gradcheck"), splits(), mlp(), adam, tracker)
    assert metrics["diagnose/passed"] == 1.0 and metrics["diagnose/worst_rel_error"] < 1e-4
    s = splits()
    s.x_test = s.x_train[: len(s.y_test)].clone()  # leakage
    tracker = NullTracker()
    metrics = run_check(diagnose("datacheck"), s, mlp(), adam, tracker)
    assert metrics["diagnose/data_warnings"] >= 1
    assert called(tracker, "set_tags")[0][0]["data_check"] == "warnings"
    with pytest.raises(DiagnosticFailed, match="data check"):
        run_check(diagnose("datacheck", fail_on_warning=True), s, mlp(), adam, NullTracker())


def test_unknown_diagnostic_names_the_choices():
    with pytest.raises(ValueError, match="datacheck"):
        run_check({"diagnose": {"name": "nope"}}, splits(), mlp(), adam, NullTracker())


def test_without_regularisation_zeroes_dropout_and_weight_decay():
    cfg = compose_cfg("model=mlp", "model.dropout=0.3", "optimizer=adamw")
    off = without_regularisation(cfg)
    assert off.model.dropout == 0.0 and off.optimizer.weight_decay == 0.0
    assert cfg.model.dropout == 0.3  # the original is untouched


@pytest.mark.parametrize("name", sorted(DIAGNOSTICS))
def test_run_diagnoses_through_the_one_funnel(name, in_tmp):
    """`run(cfg)` with diagnose=<name>: one recorded run, its headline metric first."""
    from conftest import FAST

    from tunelab.run.api import run

    extra = {"lr_range": ["diagnose.num_steps=30"], "overfit": ["diagnose.max_steps=300"]}
    cfg = compose_cfg(*FAST, "trainer.device=cpu", f"diagnose={name}", *extra.get(name, []))
    result = run(cfg, tracker=(tracker := NullTracker()))
    assert result.status == "FINISHED" and result.checkpoint is None
    assert result.objective == next(iter(result.metrics)) and math.isfinite(result.value)
    calls = [c for c, _ in tracker.calls]
    assert "log_params" in calls and calls[-1] == "end"
    assert ("set_tags", ({"diagnose": name},)) in tracker.calls


def test_cli_failing_check_exits_non_zero(in_tmp):
    from conftest import FAST, run_cli

    args = ["diagnose=overfit", "diagnose.max_steps=2"]
    proc = run_cli(*FAST, "tracking=none", "trainer.device=cpu", *args, cwd=in_tmp)
    assert proc.returncode != 0
    assert "likely a bug in the model or data pipeline" in proc.stdout + proc.stderr
