"""A sweep's constraints, `hydra.sweeper.constraints: ["val/recall/1 >= 0.90", "perf/epoch_s <= 2"]`:
the grammar, the check of each against the task's metrics, and a trial's violation of each in
Optuna's convention (a value <= 0 is feasible). Torch-free: validation reads it before a sweep
starts."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunelab.config import tasks

OPERATORS = (">=", "<=")
_FORM = re.compile(r"^\s*(?P<metric>\S+?)\s*(?P<op>[<>]=?|==|!=|=)\s*(?P<bound>\S+)\s*$")
# per-class metrics classification reports besides its epoch metrics (run/tasks.py)
_PER_CLASS = re.compile(r"^val/(recall|precision)/(\d+)$")


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, as written (`text`): the run's summary value of `metric` must be at least
    (>=) or at most (<=) `bound`."""

    text: str
    metric: str
    op: str
    bound: float

    def violation(self, values: Mapping[str, float]) -> float:
        """How far the trial's value is beyond the bound (<= 0: satisfied; +inf: not reported or
        not finite)."""
        value = values.get(self.metric)
        if value is None or not math.isfinite(value):
            return math.inf
        return self.bound - value if self.op == ">=" else value - self.bound


def parse(text: Any) -> tuple[Constraint | None, str | None]:
    """(the constraint, None) or (None, what is wrong with `text`)."""
    if not isinstance(text, str):
        return None, "a string 'METRIC >= NUMBER' or 'METRIC <= NUMBER'"
    found = _FORM.match(text)
    if not found:
        return None, "the form 'METRIC >= NUMBER' or 'METRIC <= NUMBER'"
    metric, op, bound = found["metric"], found["op"], found["bound"]
    if op not in OPERATORS:
        return None, f"an operator in {list(OPERATORS)}, not {op!r}"
    try:
        number = float(bound)
    except ValueError:
        return None, f"a number after {op}, not {bound!r}"
    if not math.isfinite(number):
        return None, f"a finite number after {op}, not {bound!r}"
    return Constraint(text.strip(), metric, op, number), None


def parse_all(texts: Sequence[Any] | None) -> list[Constraint]:
    """The constraints of `hydra.sweeper.constraints`; ValueError naming every bad entry."""
    out, bad = [], []
    for i, text in enumerate(texts or []):
        constraint, why = parse(text)
        if constraint is None:
            bad.append(f"hydra.sweeper.constraints[{i}]={text!r} is invalid: expected {why}")
        else:
            out.append(constraint)
    if bad:
        raise ValueError("\n".join(bad))
    return out


def metric_known(task: str, metric: str, classes: int | None) -> str | None:
    """None when runs of `task` report `metric` as a validation or timing summary, else what
    they report. Classification's per-class `val/recall/<k>` and `val/precision/<k>` count, k
    below the data's class count where it is known."""
    if task not in tasks.TASKS:
        return None  # the task's own check names it
    known = [m for m in tasks.epoch_metrics(task) if not m.startswith(("train/", "opt/"))]
    if metric in known:
        return None
    per_class = _PER_CLASS.match(metric)
    if per_class and task == "classification":
        if classes is None or int(per_class[2]) < classes:
            return None
        return f"a class below {classes} (the data has {classes} classes)"
    extra = ", val/recall/<k>, val/precision/<k>" if task == "classification" else ""
    return f"a metric of task={task}: {known}{extra}"


def problems(values: Any, task: str, classes: int | None) -> list[str]:
    """Every problem of a `hydra.sweeper.constraints` value: not a list, an entry not of the form,
    an operator, a number or a metric the task does not report, and a metric constrained twice."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        return [
            f"hydra.sweeper.constraints={values!r} is invalid: expected a list of "
            "'METRIC >= NUMBER' or 'METRIC <= NUMBER'"
        ]
    out, seen = [], {}
    for i, text in enumerate(values):
        key = f"hydra.sweeper.constraints[{i}]={text!r}"
        constraint, why = parse(text)
        if constraint is None:
            out.append(f"{key} is invalid: expected {why}")
            continue
        if (why := metric_known(task, constraint.metric, classes)) is not None:
            out.append(f"{key} is invalid: {constraint.metric!r} is not {why}")
        if (constraint.metric, constraint.op) in seen:
            out.append(f"{key} repeats the bound of entry {seen[constraint.metric, constraint.op]}")
        seen.setdefault((constraint.metric, constraint.op), i)
    return out
