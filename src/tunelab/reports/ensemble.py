"""Ensembles of confirmed models (seed 003): the mean of the members' class probabilities
(classification, binary, multilabel) or predicted values (regression) on the test split, scored
with the task's own metrics, and reported beside the single-seed mean ± sd."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tunelab import build
from tunelab.reports.stats import scale_for
from tunelab.run.checkpoint import load_model_state, load_safe
from tunelab.run.loop import Trained, evaluate_batches, memory_batches
from tunelab.run.tasks import Task, make_task


def member_outputs(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task: Task
) -> torch.Tensor:
    """One member's test outputs as the ensemble averages them: class probabilities (softmax)
    for classification, what the task keeps otherwise (sigmoid probabilities; predictions in
    the targets' units)."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xb).float() for xb, _ in memory_batches(x, y, 256)])
    return torch.softmax(logits, -1) if task.name == "classification" else task.kept(logits)


def ensemble_kept(outputs: list[torch.Tensor], task: Task) -> torch.Tensor:
    """What the task's metrics take from the members' mean output: the class with the highest
    mean probability (classification), else the mean itself."""
    mean = torch.stack(outputs).mean(0)
    return mean.argmax(-1) if task.name == "classification" else mean


def load_member(cfg: DictConfig, path: Path, input_shape: tuple, task: Task) -> torch.nn.Module:
    """A confirmed model from its checkpoint (weights only: load_safe)."""
    model = build.build_model(cfg.model, input_shape, task.outputs)
    load_model_state(model, load_safe(path)["model"], path)
    return model


def evaluate_members(
    cfg: DictConfig, checkpoints: dict[int, Path], configs: dict[int, DictConfig] | None = None
) -> dict:
    """Each member's test metrics and kept outputs (per seed), and the ensemble's test metrics.
    `configs` gives a member its own config where its data differs (a study's split per seed:
    the test examples are the same, standardised with that seed's training split)."""
    configs = configs or {}
    built: dict[str, tuple] = {}

    def data_of(seed: int) -> tuple:
        one = configs.get(seed, cfg)
        key = OmegaConf.to_yaml(one.data)
        if key not in built:
            splits = build.build_data(one.data)
            built[key] = (splits, make_task(one, splits))
        return built[key]

    per_seed, outputs, kept = {}, [], {}
    splits = task = y = None
    for seed, path in sorted(checkpoints.items()):
        splits, task = data_of(seed)
        x = splits.x_test
        if y is not None and not torch.equal(y, splits.y_test):
            raise ValueError(f"seed {seed}: another test split than the other members'")
        y = splits.y_test
        model = load_member(configs.get(seed, cfg), path, splits.input_shape, task)
        batches = memory_batches(x, y, 256)
        loss, _, pred, _ = evaluate_batches(Trained(model.eval(), []), batches, task=task)
        per_seed[seed] = {"loss": float(loss), **task.metrics(pred, y)}
        kept[seed] = pred
        outputs.append(member_outputs(model, x, y, task))
    if splits is None:
        splits, task = data_of(-1)
    ensemble = task.metrics(ensemble_kept(outputs, task), y) if outputs else {}
    return {
        "task": task,
        "splits": splits,
        "per_seed": per_seed,
        "kept": kept,
        "ensemble": ensemble,
    }


def ensemble_line(metric: str, ensemble: float, singles: list[float]) -> str:
    """ "ensemble of 5 seeds: 99.1 %, single seed 98.8 ± 0.3 %" (fractions in percent; other
    metrics in their own units, named)."""
    scale, _ = scale_for(metric)
    n, x = len(singles), np.asarray(singles, dtype=float) * scale
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    if scale == 100.0:
        return (
            f"ensemble of {n} seeds: {ensemble * scale:.1f} %, single seed "
            f"{x.mean():.1f} ± {sd:.1f} %"
        )
    return f"ensemble of {n} seeds: {metric} {ensemble:.4g}, single seed {x.mean():.4g} ± {sd:.2g}"


def seed_ensemble(
    cfg: DictConfig,
    checkpoints: dict[int, Path],
    metric: str,
    configs: dict[int, DictConfig] | None = None,
) -> dict:
    """What a confirmation reports of its seeds' ensemble: `metric` (a test metric, `test/acc`)
    of the ensemble and of each member, every test metric of the ensemble, and the line."""
    members = evaluate_members(cfg, checkpoints, configs)
    name = metric.removeprefix("test/")
    singles = [m[name] for m in members["per_seed"].values()]
    value = members["ensemble"][name]
    return {
        "metric": metric,
        "members": len(singles),
        "value": value,
        "singles": singles,
        "metrics": {f"test/{k}": v for k, v in members["ensemble"].items()},
        "line": ensemble_line(metric, value, singles),
    }
