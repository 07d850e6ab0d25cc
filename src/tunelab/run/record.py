"""What a run records at its start, its finish and on every way out (exception, signal, prune)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tunelab.config.secrets import mask, mask_diff, masked
from tunelab.data.loader import StreamedSplits, split_batches
from tunelab.diagnostics.metrics import per_class_accuracy, per_class_metrics
from tunelab.run.context import RunContext
from tunelab.run.lineage import git_state, lineage_tags
from tunelab.run.loop import DivergedError, Pruned, TrainState, evaluate_split
from tunelab.run.names import job_name, swept_values
from tunelab.run.refit import TRAIN_VAL, Refit
from tunelab.run.signals import Preempted, Terminated
from tunelab.run.tasks import Task
from tunelab.tags import (
    FAILURE_MESSAGE,
    FAILURE_REASON,
    FAILURE_TAGS,
    PREEMPTED,
    REFIT,
    ROLE,
    TASK,
    TASK_LOSS,
    TASK_METRICS,
    Role,
)
from tunelab.tracking import Tracker

log = logging.getLogger(__name__)
REFIT_CHECKPOINT = "refit.pt"  # the refit's weights, beside best.pt


def close_unfinished(tracker: Tracker, run_id: str) -> None:
    """A previous attempt at this config died without cleaning up (SIGKILL, OOM, power cut)."""
    mark = getattr(tracker, "mark_killed", None)
    if mark is not None and mark(run_id, "process_died"):
        log.warning("run %s was left RUNNING by a process that died: marked KILLED", run_id)


def start_run(
    tracker: Tracker,
    cfg: DictConfig,
    ctx: RunContext,
    splits: Any,
    device: torch.device,
    run_id: str | None,
    state: TrainState | None = None,
    task: Task | None = None,
) -> None:
    """Open the run (or continue `run_id`, re-logging checkpointed epochs the run is missing); it
    names its task, loss and metrics, and the class weights or target statistics the task
    computed from the training split."""
    overrides = masked(list(ctx.overrides))  # no password of a URL reaches the record
    shown = [o for o in overrides if not o.startswith("hydra.")]
    ambient = dict(ctx.tags)
    tags = {
        **lineage_tags(device),
        "seed": str(cfg.seed),
        "data_digest": splits.digest,
        "data": splits.name,
        "data_loader": "stream" if isinstance(splits, StreamedSplits) else "memory",
        "overrides": " ".join(overrides) or "(none)",
        ROLE: Role.SINGLE,
        "objective": cfg.objective.metric,
        **(_task_tags(task) if task is not None else {}),  # a loop of the user's: its own
        **ambient,
    }
    if swept := ambient.get("swept"):  # the MLflow UI shows the description over the run
        values = swept_values(shown, swept)
        tags["mlflow.note.content"] = f"swept: {' '.join(values) or swept}"
    parent = ctx.parent_run_id
    name = job_name(shown, ambient, cfg.seed)
    history = state.history if state is not None else {}
    if run_id is not None:
        try:
            tracker.start(run_name=name, tags=tags, parent_run_id=parent, run_id=run_id)
        except Exception as exc:  # e.g. the checkpoint's run is not in this tracking store
            log.warning(
                "cannot continue run %s (%s): recording in a new run", run_id, mask(str(exc))
            )
        else:  # a retried sweep trial adopts the run: it moves under the new parent
            moved = {"mlflow.parentRunId": parent} if parent else {}
            resumed = {"resumed": "true", "resumed_at_epoch": str(state.epoch)}
            tracker.set_tags({**ambient, **moved, **resumed})
            tracker.delete_tags(list(FAILURE_TAGS))  # whatever stopped it is over
            relog_history(tracker, history)
            return
    tracker.start(run_name=name, tags=tags, parent_run_id=parent)
    resolved = masked(OmegaConf.to_container(cfg, resolve=True))
    computed = {f"task.computed.{k}": v for k, v in (task.recorded if task else {}).items()}
    tracker.log_params({**flatten(resolved), **computed})
    tracker.log_dataset(
        splits.name,
        splits.digest,
        source=f"tunelab.data:{splits.name}",
        profile={
            **splits.sizes(),
            "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape),
            **splits.provenance,  # an image folder's manifest digest, file and class counts
        },
    )
    tracker.log_dict(resolved, "config.yaml")
    tracker.log_dict({"overrides": overrides}, "overrides.yaml")
    diff = git_state()["diff"]
    if diff:  # an uncommitted password in a tracked file is not published
        tracker.log_text(mask_diff(diff), "git.diff")
    relog_history(tracker, history)


def _task_tags(task: Task) -> dict[str, str]:
    from tunelab.config.tasks import TASKS

    metrics = ",".join(f"val/{m}" for m in TASKS[task.name].metrics)
    return {TASK: task.name, TASK_LOSS: task.loss_name, TASK_METRICS: metrics}


def relog_history(tracker: Tracker, history: dict[str, list[float]]) -> None:
    """Per-epoch metrics of checkpointed epochs (step = epoch number, from 1); a resumed tracker
    skips the steps it already has."""
    for i in range(len(next(iter(history.values()), []))):
        tracker.log_metrics({k: v[i] for k, v in history.items()}, step=i + 1)


def finish_run(
    tracker: Tracker,
    ctx: RunContext,
    optimizer: str,
    model: torch.nn.Module,
    data: Any,
    state: TrainState,
    splits: Any,
    store: Any,
    autocast: Any,
    task: Task | None = None,
    refit: Refit | None = None,
) -> dict[str, float]:
    """Restore the selected (best-validation) weights, report the task's test metrics (default:
    classification), log artifacts. `optimizer` names the optimizer (the diagnosis's advice
    depends on its family). With a refit (run/refit.py) test/* and the logged model are the
    refit's, the selected weights' test metrics are kept as train_only/test/*."""
    h = state.history
    task = task or Task(outputs=splits.num_classes)
    store.load_best(model)
    val, val_kept, y_val = evaluate_split(model, data, "val", autocast, task)
    test, _, y_test = evaluate_split(model, data, "test", autocast, task)
    refit_summary = {}
    if refit is not None:
        refit_summary = {f"train_only/test/{k}": v for k, v in test.items()} | refit.metrics()
        test, _, y_test = evaluate_split(refit.model, data, "test", autocast, task)
        model = refit.model
        store.save({"model": model.state_dict(), "epoch": refit.epochs}, REFIT_CHECKPOINT)
        store.flush()
        refit.checkpoint = store.dir / REFIT_CHECKPOINT
        tracker.set_tags({REFIT: TRAIN_VAL})
    summary = {
        **{f"val/{k}": v for k, v in val.items()},
        **{f"test/{k}": v for k, v in test.items()},
        **refit_summary,
        "best_epoch": float(state.best_epoch),
        "epochs_run": float(state.epoch),
        "train/loss": h["train/loss"][-1],
        "perf/epoch_s": float(np.mean(h["perf/epoch_s"])),
        "perf/samples_per_s": float(np.mean(h["perf/samples_per_s"])),
        "data/n_val": float(len(y_val)),  # what an accuracy's sampling error rests on
        "data/n_test": float(len(y_test)),
    }
    tests = {k: v for k, v in summary.items() if k.startswith(("test/", "train_only/", "refit/"))}
    tracker.log_metrics(
        {f"best/{k}": v for k, v in summary.items() if k.startswith("val/")}
        | tests
        | {"best_epoch": state.best_epoch},
        step=state.epoch,
    )
    if task.name == "classification":
        accs = per_class_accuracy(val_kept, y_val, splits.num_classes)
        tracker.log_metrics(per_class_metrics(accs), step=state.epoch)
    tracker.set_tags(
        {
            "stopped_early": str(state.stopped_early).lower(),
            **_diagnosis_tags(h, splits, optimizer, task.name),
        }
    )
    tracker.log_dict(h, "history.json")
    if store.best_path.exists():
        tracker.log_artifact(store.best_path, "checkpoints")
    if refit is not None:
        tracker.log_artifact(refit.checkpoint, "checkpoints")
    if ctx.log_model is not False:
        tracker.log_model(model.cpu(), example_inputs(data).cpu().numpy())
    tracker.end("FINISHED")
    return summary


def example_inputs(data: Any) -> torch.Tensor:
    """Two validation inputs as the model takes them (the logged model's signature)."""
    if isinstance(data, StreamedSplits):
        return next(split_batches(data, "val", 2))[0]
    return data["x_val"][:2]


def curve_diagnosis_tags(history: dict[str, list[float]], optimizer: str | None) -> dict[str, str]:
    """The curve diagnosis (overfitting, unstable, ...) of a run's per-epoch history as flat
    tags (`diagnosis=…`), each finding logged: tunelab's runs and a loop of the user's own
    (`tracked_run`) alike. `optimizer`: its conf/optimizer name or class name in lower case."""
    from tunelab.diagnostics.curves import diagnose_curves, findings_to_tags

    findings = diagnose_curves(history, optimizer=optimizer)
    for f in findings:
        log.info("diagnosis: %s — %s", f.message, f.recommendation)
    return findings_to_tags(findings)


def _diagnosis_tags(
    history: dict[str, list[float]], splits: Any, optimizer: str, task: str
) -> dict[str, str]:
    """Curve diagnosis and the data check of the task's targets, as flat tags."""
    from tunelab.diagnostics.datacheck import check_data, datacheck_tags

    report = check_data(splits, task=task)
    for w in report.warnings:
        log.warning("data check: %s", w)
    return {**curve_diagnosis_tags(history, optimizer), **datacheck_tags(report)}


def final_outcome(exc: BaseException) -> str | None:
    """Pruned and diverged runs are results: a re-run starts over instead of resuming them."""
    if isinstance(exc, Pruned):
        return "pruned"
    return "diverged" if isinstance(exc, DivergedError) else None


@dataclass(frozen=True)
class RunFailed:
    """A run that stopped: the exception, and the MLflow run that records why (None when the
    run had not started)."""

    run_id: str | None
    cause: BaseException


def end_failed(tracker: Tracker, exc: BaseException, state: TrainState) -> None:
    """Record why a run stopped: pruned and interrupted runs are KILLED, everything else FAILED."""
    if tracker.run_id is None:
        return
    if isinstance(exc, Pruned):
        tags, status = {"pruned": "true", "pruned_at_epoch": str(state.epoch)}, "KILLED"
    elif isinstance(exc, KeyboardInterrupt):
        tags, status = {FAILURE_REASON: "interrupted"}, "KILLED"
    elif isinstance(exc, Terminated):
        tags, status = {FAILURE_REASON: "terminated"}, "KILLED"
    elif isinstance(exc, Preempted):  # its requeued job continues this run
        tags, status = {PREEMPTED: "true"}, "KILLED"
    elif isinstance(exc, DivergedError):
        tags = {FAILURE_REASON: "nonfinite_loss", "diverged_at_epoch": str(exc.epoch)}
        status = "FAILED"
    else:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        tags = {FAILURE_REASON: reason, FAILURE_MESSAGE: mask(str(exc))[:5000]}
        status = "FAILED"
    try:
        tracker.set_tags(tags)
        tracker.end(status)
    except Exception as log_exc:  # the original error matters more than a failed status update
        log.error("could not record run status %s: %s", status, mask(str(log_exc)))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
