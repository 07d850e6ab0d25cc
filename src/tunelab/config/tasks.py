"""The tasks a run can train (`task=` group): each one's settings, the metrics its epochs report
with their directions, and the target kinds it takes. Torch-free, so validation can check an
objective, a stopping rule or a sweep's metric against the task before anything starts; the
losses and metric computations are in tunelab/run/tasks.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.config import rules as r

MAX, MIN = "maximize", "minimize"

# What every task's epochs report (run/loop.py), whatever its metrics.
COMMON_METRICS = (
    "train/loss",
    "val/loss",
    "opt/lr",
    "train/grad_norm",
    "perf/epoch_s",
    "perf/samples_per_s",
)
# Metrics that are fractions in [0, 1]: reports speak of their differences in points.
FRACTIONS = frozenset(
    {"acc", "balanced_acc", "macro_f1", "auroc", "ap", "f1", "recall", "precision", "map"}
)
# Target kinds a dataset's labels can have (data/splits.py decides which).
CLASSES, MULTI_HOT, VALUES = "classes", "multi_hot", "values"


def class_weights(v: Any) -> str | None:
    """null, `balanced`, or one positive weight per class."""
    if v is None or v == "balanced":
        return None
    if isinstance(v, (list, tuple)) and v and all(r.is_number(w) and w > 0 for w in v):
        return None
    return "null, 'balanced' or a list of positive numbers (one per class)"


@dataclass(frozen=True)
class TaskFacts:
    """One task: its settings with their rules; its metrics (name without the split prefix) with
    their directions; whether train/acc means something; the target kinds it takes."""

    settings: dict[str, r.Check]
    metrics: dict[str, str]
    train_acc: bool
    targets: tuple[str, ...]


TASKS: dict[str, TaskFacts] = {
    "classification": TaskFacts(
        {"class_weights": class_weights, "label_smoothing": r.FRACTION},
        {"acc": MAX, "balanced_acc": MAX, "macro_f1": MAX},
        train_acc=True,
        targets=(CLASSES,),
    ),
    "binary": TaskFacts(
        {
            "pos_weight": r.OPTIONAL_POSITIVE,
            "threshold": r.OPEN_UNIT,
            # a class id of a multi-class dataset: that class is 1, every other 0 (run/prepare.py)
            "positive_class": r.optional(r.NON_NEGATIVE_INT),
        },
        {"acc": MAX, "auroc": MAX, "ap": MAX, "f1": MAX, "recall": MAX, "precision": MAX},
        train_acc=True,
        targets=(CLASSES,),
    ),
    "multilabel": TaskFacts(
        {"pos_weight": r.OPTIONAL_POSITIVE, "threshold": r.OPEN_UNIT},
        {"macro_f1": MAX, "map": MAX},
        train_acc=False,
        targets=(MULTI_HOT,),
    ),
    "regression": TaskFacts(
        {
            "loss": r.one_of("mse", "huber", "l1"),
            "huber_delta": r.POSITIVE,
            "standardize_target": r.boolean,
        },
        {"rmse": MIN, "mae": MIN, "r2": MAX},
        train_acc=False,
        targets=(VALUES, CLASSES, MULTI_HOT),
    ),
}
DEFAULT = "classification"


def epoch_metrics(task: str) -> tuple[str, ...]:
    """The metrics every epoch of `task` reports (besides classification's per-class ones):
    what an objective, a stopping rule or a sweep may watch."""
    facts = TASKS[task]
    own = tuple(f"val/{m}" for m in facts.metrics)
    return (*COMMON_METRICS, *(("train/acc",) if facts.train_acc else ()), *own)


ALL_METRICS = tuple(dict.fromkeys(m for task in TASKS for m in epoch_metrics(task)))


def direction_of(metric: str) -> str | None:
    """The direction in which `metric` (`val/rmse`, `test/acc`, `val/loss`) improves; None for
    metrics that have none (learning rate, time)."""
    split, _, name = metric.partition("/")
    if name == "loss":
        return MIN
    if split == "train" and name == "acc":
        return MAX
    for facts in TASKS.values():
        if name in facts.metrics:
            return facts.metrics[name]
    return None


def test_metric(objective: str) -> str:
    """The test-split counterpart of an objective (`val/rmse` -> `test/rmse`): what a run's
    result line and a multirun's table show beside it; test/acc for a metric without one."""
    name = objective.partition("/")[2]
    return f"test/{name}" if direction_of(objective) else "test/acc"


def is_fraction(metric: str) -> bool:
    """Whether `metric` is a fraction in [0, 1] (accuracy-like, F1, AUROC, ...): reports say
    points for it."""
    name = metric.split("/")[-1]  # val/auroc, best/val/auroc, auroc
    return name in FRACTIONS or name.endswith("acc")


def task_name(plain: dict[str, Any]) -> str:
    """The task a composed config (as plain containers) trains: its `task.name`, else the default."""
    node = plain.get("task")
    return str(node.get("name", DEFAULT)) if isinstance(node, dict) else DEFAULT


# Shipped datasets whose class count their config implies (synthetic: data.num_classes; a
# file's or folder's: build.file_problems counts them).
CLASS_COUNTS = {
    "tunelab.data.sources.mnist1d": 10,
    "tunelab.data.sources.digits": 10,
    "tunelab.data.sources.cifar10": 10,
}


def weights_problem(task: Any, classes: int | None) -> str | None:
    """A task.class_weights list whose length is not the data's class count."""
    weights = task.get("class_weights") if isinstance(task, dict) else None
    if not isinstance(weights, (list, tuple)) or classes is None or len(weights) == classes:
        return None
    return f"task.class_weights has {len(weights)} weights: the data has {classes} classes"


def metric_problems(plain: dict[str, Any]) -> list[str]:
    """An objective, early-stopping metric or direction the task cannot give, and class weights
    that do not fit the data's classes: every one named."""
    task = task_name(plain)
    if task not in TASKS:
        return []  # the task's own check names it
    known = epoch_metrics(task)
    data = plain.get("data") if isinstance(plain.get("data"), dict) else {}
    target = data.get("_target_")
    classes = data.get("num_classes") if target == "tunelab.data.sources.synthetic" else None
    problem = weights_problem(plain.get("task"), CLASS_COUNTS.get(target, classes))
    out = [problem] if problem else []
    objective = plain.get("objective") or {}
    stop = (plain.get("trainer") or {}).get("early_stopping") or {}
    for key, metric, direction, word in (
        ("objective", objective.get("metric"), objective.get("direction"), "direction"),
        ("trainer.early_stopping", stop.get("metric"), _mode(stop.get("mode")), "mode"),
    ):
        if isinstance(metric, str) and (metric in known or metric in ALL_METRICS):
            out += watch_problems(task, key, metric, direction, word)  # else: the key's own rule
    monitor = (plain.get("scheduler") or {}).get("monitor")
    if isinstance(monitor, str) and monitor in ALL_METRICS and monitor not in known:
        out.append(
            f"scheduler.monitor={monitor!r} is not a metric of task={task}; its metrics are "
            f"{list(known)}"
        )
    augment = plain.get("augment") if isinstance(plain.get("augment"), dict) else {}
    mixing = [k for k in ("mixup_alpha", "cutmix_alpha") if augment.get(k)]
    if mixing and task != "classification":
        out.append(
            f"augment.{mixing[0]}={augment[mixing[0]]!r} mixes class labels: task={task} "
            "trains without it (augment=none or another augmentation)"
        )
    return out


def watch_problems(
    task: str, key: str, metric: str, direction: Any, word: str = "direction"
) -> list[str]:
    """A metric the task does not report, or a direction (`word`: direction, or a stopping
    rule's mode) that contradicts the metric's, under config key `key`."""
    known = epoch_metrics(task) if task in TASKS else ALL_METRICS
    if metric not in known:
        return [
            f"{key}.metric={metric!r} is not a metric of task={task}; its metrics are {list(known)}"
        ]
    wanted = direction_of(metric)
    if not wanted or direction not in (MAX, MIN) or direction == wanted:
        return []
    short = {MAX: "max", MIN: "min"}
    value, want = (short[direction], short[wanted]) if word == "mode" else (direction, wanted)
    better = "lower" if wanted == MIN else "higher"
    return [
        f"{key}.{word}={value!r} contradicts {metric}, which is better {better}: "
        f"set {key}.{word}={want}"
    ]


def _mode(mode: Any) -> str | None:
    return {"max": MAX, "min": MIN}.get(mode) if isinstance(mode, str) else None


def target_problem(task: str, splits: Any) -> str | None:
    """Why `task` cannot train on a dataset's targets (None: it can), naming the task and the
    targets' kind, dtype and shape. `splits`: anything with `targets` (its target kind),
    `num_classes` and `y_train`."""
    facts = TASKS.get(task)
    kind = getattr(splits, "targets", CLASSES)
    y = getattr(splits, "y_train", None)
    shown = f"dtype {y.dtype}, shape {tuple(y.shape)}" if y is not None else kind
    if facts is None or kind in facts.targets:
        if task == "binary" and splits.num_classes > 2:
            return (
                f"task=binary takes class ids 0 and 1; the data's targets have "
                f"{splits.num_classes} classes ({shown}): use task=classification"
            )
        return None
    wanted = {CLASSES: "integer class ids (N,)", MULTI_HOT: "multi-hot targets (N, L) of 0/1"}
    takes = " or ".join(wanted.get(k, "real-valued targets") for k in facts.targets)
    return f"task={task} takes {takes}; the data's targets are {kind} ({shown})"
