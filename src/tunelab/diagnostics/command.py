"""The checks behind `python src/train.py diagnose=<lr_range|overfit|gradcheck|datacheck>`.

`tunelab.run.api.run` builds the configured data, model and optimizer and opens the run; each check
here logs its figure, JSON report, tags and metrics through the tracker, and raises DiagnosticFailed
when it fails (non-zero exit)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunelab.data.loader import StreamedSplits, endless_batches, examples
from tunelab.diagnostics.datacheck import check_data, datacheck_tags
from tunelab.diagnostics.gradcheck import gradient_check
from tunelab.diagnostics.lr_range import OptimizerFactory, lr_range_test, plot_lr_range
from tunelab.diagnostics.overfit import overfit_tiny_subset

log = logging.getLogger(__name__)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> mean loss
PREFIX = "diagnostics"  # artifact folder


class DiagnosticFailed(RuntimeError):
    """A sanity check failed; the message says what was measured and what it suggests."""


@dataclass
class Check:
    """What a check gets: its knobs (the diagnose node minus its name) and what the run built."""

    knobs: dict[str, Any]
    cfg: Any
    splits: Any
    model: nn.Module
    make_optimizer: OptimizerFactory
    tracker: Any
    loss_fn: LossFn = F.cross_entropy

    @property
    def seed(self) -> int:
        return int(_get(self.cfg, "seed", 0))


Handler = Callable[[Check], dict[str, float]]


def run_check(
    cfg: Any,
    splits: Any,
    model: nn.Module,
    make_optimizer: OptimizerFactory,
    tracker: Any,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, float]:
    """Run the check named cfg.diagnose.name; returns its metrics (the headline metric first).
    `loss_fn` (outputs, targets) -> mean loss is the task's (run/tasks.py `Task.check_loss`):
    the lr range test, overfit check and gradient check train or differentiate it."""
    knobs = _knobs(cfg)
    name = knobs.pop("name", None)
    if name not in DIAGNOSTICS:
        raise ValueError(f"diagnose.name={name!r}: choose one of {sorted(DIAGNOSTICS)}")
    return DIAGNOSTICS[name](Check(knobs, cfg, splits, model, make_optimizer, tracker, loss_fn))


def _lr_range(c: Check) -> dict[str, float]:
    knobs, tracker = c.knobs, c.tracker
    if knobs.get("batch_size") is None:
        knobs["batch_size"] = int(_get(c.cfg, "trainer.batch_size", 64))
    if isinstance(c.splits, StreamedSplits):
        device = next(c.model.parameters()).device  # pinned and copied as training copies them
        batches = endless_batches(c.splits, int(knobs["batch_size"]), seed=c.seed, device=device)
        r = lr_range_test(
            c.model, c.make_optimizer, batches=batches, seed=c.seed, loss_fn=c.loss_fn, **knobs
        )
    else:
        x, y = c.splits.x_train, c.splits.y_train
        r = lr_range_test(c.model, c.make_optimizer, x, y, seed=c.seed, loss_fn=c.loss_fn, **knobs)
    tracker.log_figure(plot_lr_range(r), f"{PREFIX}/lr_range.png")
    tracker.log_dict(r.to_dict(), f"{PREFIX}/lr_range.json")
    tracker.set_tags(
        {
            "diagnose.passed": "true",
            "diagnose.suggested_lr": f"{r.suggested_lr:.3g}",
            "diagnose.rule": r.rule,
        }
    )
    metrics = {
        "diagnose/suggested_lr": r.suggested_lr,
        "diagnose/min_smoothed_loss": min(r.smoothed),
        "diagnose/steps": float(len(r.lrs)),
    }
    tracker.log_metrics(metrics, step=0)
    stop = (
        f"stopped at lr {r.lrs[-1]:.3g} (loss diverged)"
        if r.diverged
        else f"reached max_lr {r.lrs[-1]:.3g}"
    )
    log.info(
        "lr range test: suggested lr %.3g (%s); %d steps, %s; to train with it: "
        "python src/train.py optimizer.lr=%.3g (plus this command's other overrides)",
        r.suggested_lr,
        r.rule,
        len(r.lrs),
        stop,
        r.suggested_lr,
    )
    return metrics


def _overfit(c: Check) -> dict[str, float]:
    knobs, tracker = c.knobs, c.tracker
    knobs.pop("regularisation_off", None)  # applied when the model/optimizer are built
    n = int(knobs.get("n_examples", 32))
    x, y = _train_examples(c.splits, n, torch.Generator().manual_seed(c.seed))
    r = overfit_tiny_subset(
        c.model, c.make_optimizer, x, y, seed=c.seed, loss_fn=c.loss_fn, **knobs
    )
    tracker.log_figure(_loss_figure(r.losses, r.message), f"{PREFIX}/overfit.png")
    tracker.log_dict(asdict(r), f"{PREFIX}/overfit.json")
    metrics = {
        "diagnose/final_loss": r.final_loss,
        "diagnose/steps": float(r.steps),
        "diagnose/passed": float(r.passed),
    }
    return _verdict(tracker, metrics, r.passed, f"overfit tiny subset: {r.message}")


def _gradcheck(c: Check) -> dict[str, float]:
    knobs, tracker = c.knobs, c.tracker
    n = int(knobs.pop("n_examples", 8))
    x, y = _train_examples(c.splits, n)
    r = gradient_check(c.model, x, y, loss_fn=c.loss_fn, seed=c.seed, **knobs)
    tracker.log_dict(asdict(r), f"{PREFIX}/gradcheck.json")
    tracker.set_tags({"diagnose.worst_param": r.worst_param})
    metrics = {"diagnose/worst_rel_error": r.worst_rel_error, "diagnose/passed": float(r.passed)}
    message = (
        f"gradient check: worst relative error {r.worst_rel_error:.2e} in {r.worst_param} "
        f"(tolerance {r.tolerance:.0e}, {r.coordinates} coordinates)"
    )
    if not r.passed:
        message += ": its backward does not match its forward"
    return _verdict(tracker, metrics, r.passed, message)


def _datacheck(c: Check) -> dict[str, float]:
    knobs, tracker = c.knobs, c.tracker
    fail = bool(knobs.pop("fail_on_warning", False))
    r = check_data(c.splits, task=_get(c.cfg, "task.name", None), **knobs)
    for w in r.warnings:
        log.warning("data check: %s", w)
    tracker.log_dict({"warnings": r.warnings, "stats": r.stats}, f"{PREFIX}/datacheck.json")
    tracker.set_tags(datacheck_tags(r))
    metrics = {"diagnose/data_warnings": float(len(r.warnings))}
    message = f"data check: {len(r.warnings)} warning(s)" + (
        f", first: {r.warnings[0]}" if r.warnings else ""
    )
    return _verdict(tracker, metrics, r.ok or not fail, message)


DIAGNOSTICS: dict[str, Handler] = {
    "lr_range": _lr_range,
    "overfit": _overfit,
    "gradcheck": _gradcheck,
    "datacheck": _datacheck,
}


def prepare(cfg: DictConfig) -> DictConfig:
    """The config a check runs on: regularisation off where the check asks for it."""
    return without_regularisation(cfg) if cfg.diagnose.get("regularisation_off") else cfg


def failure_reason(exc: BaseException) -> str:
    return "diagnostic_failed" if isinstance(exc, DiagnosticFailed) else type(exc).__name__


def without_regularisation(cfg: DictConfig) -> DictConfig:
    """A copy of cfg with model.dropout and optimizer.weight_decay set to 0 where they exist."""
    cfg = copy.deepcopy(cfg)
    for key in ("model.dropout", "optimizer.weight_decay"):
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, 0.0)
    return cfg


def _verdict(
    tracker: Any, metrics: dict[str, float], passed: bool, message: str
) -> dict[str, float]:
    tracker.set_tags({"diagnose.passed": str(passed).lower(), "diagnose.message": message[:5000]})
    tracker.log_metrics(metrics, step=0)
    if not passed:
        log.error(message)
        raise DiagnosticFailed(message)
    log.info(message)
    return metrics


def _loss_figure(losses: list[float], title: str) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_yscale("log")
    ax.set_xlabel("full-batch step")
    ax.set_ylabel("training loss")
    ax.set_title(title[:70], fontsize=9)
    fig.tight_layout()
    return fig


def _train_examples(
    splits: Any, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n training examples, or n drawn with `generator`; in memory all of them when
    drawing (the check draws its own), streamed only the n it needs."""
    if not isinstance(splits, StreamedSplits):
        return (
            (splits.x_train, splits.y_train)
            if generator is not None
            else (splits.x_train[:n], splits.y_train[:n])
        )
    size = len(splits.train)
    idx = torch.randperm(size, generator=generator)[:n] if generator is not None else range(n)
    return examples(splits, "train", [int(i) for i in idx][: min(n, size)])


def _knobs(cfg: Any) -> dict[str, Any]:
    node = cfg.get("diagnose") if hasattr(cfg, "get") else getattr(cfg, "diagnose", None)
    if node is None:
        raise ValueError("no diagnostic selected: pass diagnose=<name>")
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return dict(node)


def _get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, DictConfig):
        value = OmegaConf.select(cfg, key)
        return default if value is None else value
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else getattr(cfg, part, None)
        if cfg is None:
            return default
    return cfg
