"""Short tables printed when a command ends: the jobs of a multirun side by side, the best
trials of a sweep. Plain text, sorted best first."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from tunelab.config.tasks import test_metric


def _table(rows: list[list[str]], header: list[str]) -> str:
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def jobs_table(runs: list[Any], metric: str, direction: str) -> str:
    """The jobs of a multirun: what each ran, how it ended, its selected and test scores, time."""
    sign = -1.0 if direction == "maximize" else 1.0
    test = test_metric(metric)  # test/acc for val/acc, test/rmse for val/rmse

    def score(r: Any) -> float:
        value = r.data.metrics.get(f"best/{metric}", math.nan)
        return math.inf if math.isnan(value) else sign * value

    rows = []
    for r in sorted(runs, key=score):
        m = r.data.metrics
        seconds = ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
        rows.append(
            [
                r.data.tags.get("overrides", r.info.run_name or ""),
                r.info.status,
                _fmt(m.get(f"best/{metric}")),
                _fmt(m.get(test)),
                f"{seconds:.0f} s",
            ]
        )
    return _table(rows, ["job", "status", f"best {metric}", test, "time"])


def trial_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Trials per state, lower-case; a FAIL that was not the configuration's fault (a stopped
    sweep, a dead process, a server away: marked stale and run again) counts as interrupted."""
    counts = {s.name.lower(): 0 for s in TrialState}
    counts["interrupted"] = 0
    for t in trials:
        stale = t.state == TrialState.FAIL and t.user_attrs.get("stale")
        counts["interrupted" if stale else t.state.name.lower()] += 1
    return counts


def trials_table(study: optuna.Study, metrics: list[str], k: int = 5) -> str:
    """The study's counts and its best k trials with their parameters."""
    trials = study.get_trials(deepcopy=False)
    counts = trial_counts(trials)
    head = (
        f"study {study.study_name}: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed"
    )
    if counts["interrupted"]:
        head += f", {counts['interrupted']} interrupted and run again"
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        return head
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    missed = {t.number for t in done if any(v > 0 for v in t.constraints.values())}
    if missed:  # a constrained sweep: the feasible trials rank first, the others are marked
        head += f", {len(missed)} infeasible"
    best = sorted(done, key=lambda t: (t.number in missed, sign * t.values[0]))[:k]
    rows = [
        [
            str(t.number) + (" (infeasible)" if t.number in missed else ""),
            *(_fmt(v) for v in t.values),
            " ".join(f"{p}={_fmt(v)}" for p, v in t.params.items()),
        ]
        for t in best
    ]
    return head + "\n" + _table(rows, ["trial", *metrics, "params"])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)
