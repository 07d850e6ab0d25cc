"""A study's verdicts and the checks that say how far to trust them.

- The primary verdict is on the held-out test split, which no search saw; the selection metric
  (validation) is reported beside it, with the gaps between them as bias checks.
- A seed that diverged or failed counts, at the worst value any cell reached; each cell's
  failure rate is reported.
- The power line: the smallest difference these seeds resolve, and the seeds a difference of
  interest (`min_effect`) would take. Fewer than 5 seeds is flagged, and so is every added look
  (seeds added after a report), which the family's level pays for.
- From 8 seeds up: the probability that one cell beats another, with a paired bootstrap interval,
  and each cell's interquartile mean with a bootstrap interval.
- Budget: "enough trials" is judged only from 10 trials per searched dimension; settings that
  cannot act within the run (a step beyond the last epoch, ...) are flagged.
- The seed audit: the prediction interval of one more run and the sampling error of the split.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from tunelab.config.tasks import test_metric
from tunelab.reports.verdicts import compare, seeds_needed

TEST = "test/acc"  # the held-out metric of the default objective (test_metric: any objective's)
MIN_SEEDS = 5
MANY_SEEDS = 8


def with_failures(
    confirm: dict[str, dict[int, dict]], metric: str, direction: str
) -> tuple[dict[str, dict[int, float]], dict[str, int]]:
    """Per cell and seed the metric; a seed that did not finish counts at the worst value any
    cell reached (so an unstable cell is not judged on its survivors)."""
    done = {
        cell: {
            s: float(r["values"][metric])
            for s, r in runs.items()
            if r.get("kind") == "complete" and metric in r.get("values", {})
        }
        for cell, runs in confirm.items()
    }
    finished = [v for cell in done.values() for v in cell.values()]
    worst = (min if direction == "maximize" else max)(finished) if finished else math.nan
    failures = {cell: sum(s not in done[cell] for s in runs) for cell, runs in confirm.items()}
    values = {cell: {s: done[cell].get(s, worst) for s in runs} for cell, runs in confirm.items()}
    return values, failures


def verdicts(spec: Any, confirm: dict[str, dict[int, dict]], looks: int) -> dict[str, Any]:
    """Verdicts on the test split (primary: the selection metric's counterpart, test/rmse for
    val/rmse) and on the selection metric, with power lines."""
    test = test_metric(spec.metric)
    metrics = [test, spec.metric] if spec.metric != test else [test]
    out: dict[str, Any] = {"primary": test, "looks": looks}
    for m in metrics:
        direction = spec.direction
        values, failures = with_failures(confirm, m, direction)
        if not any(values.values()):
            continue
        v = compare(values, m, direction, spec.checks["alpha"], spec.baseline, looks, failures)
        entry = v.as_dict()
        entry["values"] = {c: {str(s): x for s, x in vals.items()} for c, vals in values.items()}
        entry["power"] = power_line(v, spec.checks["min_effect"])
        entry["prob_better"] = prob_better(values) if v.n >= MANY_SEEDS else {}
        entry["iqm"] = iqm(values) if v.n >= MANY_SEEDS else {}
        out[m] = entry
    if test not in out and spec.metric in out:
        out["primary"] = spec.metric
    return out


def power_line(v: Any, min_effect: float) -> dict[str, Any]:
    need = seeds_needed(min_effect, v.sd, v.level)
    return {
        "n": v.n,
        "sd": v.sd,
        "detectable": v.detectable,
        "min_effect": min_effect,
        "seeds_for_min_effect": need,
        "few_seeds": v.n < MIN_SEEDS,
    }


def prob_better(values: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """P(a > b) over seeds (ties half), with a 95% paired bootstrap interval, for every pair."""
    out = {}
    cells = list(values)
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            seeds = sorted(set(values[a]) & set(values[b]))
            d = np.array([values[a][s] - values[b][s] for s in seeds])
            score = (d > 0) + 0.5 * (d == 0)
            ci = stats.bootstrap(
                (score,), np.mean, n_resamples=2000, method="percentile", random_state=0
            ).confidence_interval
            out[f"{a} > {b}"] = {"p": float(score.mean()), "low": ci.low, "high": ci.high}
    return out


def iqm(values: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """Interquartile mean per cell with a 95% bootstrap interval (robust to one wild seed)."""
    out = {}
    for cell, vals in values.items():
        x = np.array(list(vals.values()))
        ci = stats.bootstrap(
            (x,),
            lambda s, axis=-1: stats.trim_mean(s, 0.25, axis=axis),
            n_resamples=2000,
            method="percentile",
            random_state=0,
        ).confidence_interval
        out[cell] = {"iqm": float(stats.trim_mean(x, 0.25)), "low": ci.low, "high": ci.high}
    return out


def bias_checks(cell: dict[str, Any], metric: str) -> dict[str, float]:
    """Selection on validation inflates it: the gap to the held-out split, and from the search's
    best (one seed, the maximum of many tries) to the confirmed mean."""
    per, test = cell["per_seed"], test_metric(metric)
    gaps = {}
    common = sorted(set(per.get(metric, {})) & set(per.get(test, {})))
    if metric != test and common:
        gaps["validation_minus_test"] = float(
            np.mean([per[metric][s] - per[test][s] for s in common])
        )
    confirmed = cell["stats"].get(metric, {}).get("mean", math.nan)
    if cell.get("search_value") is not None and math.isfinite(confirmed):
        gaps["search_minus_confirmed"] = float(cell["search_value"] - confirmed)
    return gaps


def budget_check(n_trials: int, space: dict[str, str]) -> str | None:
    """Whether "enough trials" can be judged: from about 10 trials per searched dimension."""
    dims = len(space)
    if dims and n_trials < 10 * dims:
        return (
            f"{n_trials} trials for {dims} searched dimensions: below about {10 * dims} "
            "trials whether the search was long enough cannot be judged"
        )
    return None


def inert_settings(cfg: Any) -> list[str]:
    """Fixed values that cannot act within the run (they change nothing and read as a choice)."""
    get = (lambda k: _select(cfg, k)) if cfg is not None else (lambda k: None)
    epochs, name = get("trainer.max_epochs"), get("scheduler.name")
    if not isinstance(epochs, (int, float)):
        return []
    out = []
    step = get("scheduler.step_epochs")
    if name == "step" and isinstance(step, (int, float)) and step >= epochs:
        out.append(
            f"scheduler.step_epochs={step} >= trainer.max_epochs={epochs}: the lr never steps"
        )
    for key in ("scheduler.milestones_epochs", "scheduler.boundaries_epochs"):
        marks = get(key)
        if name in ("multistep", "piecewise") and marks and min(marks) >= epochs:
            out.append(f"{key}={list(marks)} all >= trainer.max_epochs={epochs}: never reached")
    patience = get("trainer.early_stopping.patience")
    if isinstance(patience, int) and 0 < epochs <= patience:
        out.append(f"trainer.early_stopping.patience={patience} >= max_epochs: never stops early")
    freeze = get("finetune.freeze_backbone_epochs")
    if isinstance(freeze, int) and freeze >= epochs > 0:
        out.append(f"finetune.freeze_backbone_epochs={freeze} >= max_epochs: never unfrozen")
    return out


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def one_run(values: list[float], n_split: float | None) -> dict[str, float]:
    """What one more run would give: the 95% prediction interval from the seeds' spread, and the
    binomial sampling error of an accuracy measured on n_split examples."""
    x = np.asarray(values, dtype=float)
    out = {"low": math.nan, "high": math.nan, "split_se": math.nan}
    if len(x) >= 2:
        half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) * math.sqrt(1 + 1 / len(x))
        low, high = float(x.mean() - half), float(x.mean() + half)
        if n_split:  # an accuracy: the interval stays within [0, 1]
            low, high = max(low, 0.0), min(high, 1.0)
        out.update(low=low, high=high)
    if n_split and len(x):
        p = float(np.clip(x.mean(), 0, 1))
        out["split_se"] = math.sqrt(p * (1 - p) / n_split)
    return out
