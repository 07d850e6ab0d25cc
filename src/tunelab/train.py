"""`run(cfg)`: one fully recorded training run. Every entry point (Hydra, DVC stages, sweeps, tests)
calls this function."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import tempfile
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tunelab import build, figures
from tunelab.checkpoint import load_model_state, load_safe
from tunelab.config import validate
from tunelab.lineage import git_state, lineage_tags, resolve_device
from tunelab.loop import DivergedError, Objective, Reporter, TrainState, evaluate, fit
from tunelab.optim.schedules import build_schedule
from tunelab.run_store import RunStore
from tunelab.tracking import Tracker

log = logging.getLogger(__name__)


class Terminated(Exception):
    """SIGTERM arrived: the run ends KILLED after recording what it has."""


def run(
    cfg: DictConfig, *, tracker: Tracker | None = None, reporter: Reporter | None = None
) -> dict[str, float]:
    """Train, select on validation, report test, and record everything; returns summary metrics."""
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    seed_everything(int(cfg.seed), cfg.trainer)
    splits = build.build_data(cfg.data)
    model = build.build_model(cfg.model, splits.input_shape, splits.num_classes)
    ft = cfg.get("finetune") or {}
    if ft.get("init_checkpoint"):
        load_backbone(model, ft.init_checkpoint)
    model.to(device)
    data = {
        k: getattr(splits, k).to(device)
        for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    }
    optimizer = build.build_optimizer(model, cfg.optimizer, float(ft.get("backbone_lr_mult", 1.0)))
    steps_per_epoch = _steps_per_epoch(len(splits.y_train), cfg.trainer)
    schedule = build_schedule(
        optimizer,
        cfg.scheduler,
        steps_per_epoch=steps_per_epoch,
        max_epochs=int(cfg.trainer.max_epochs),
    )
    generator = torch.Generator().manual_seed(int(cfg.seed))
    store = RunStore.for_config(cfg)
    state, resumed_run_id = store.resume(cfg.trainer.resume, model, optimizer, schedule, generator)
    tracker = tracker if tracker is not None else build.build_tracker(cfg.tracking)
    objective = Objective(cfg.objective.metric, cfg.objective.direction)
    start_run(tracker, cfg, splits, device, resumed_run_id)
    store.attach(tracker.run_id)
    autocast = _autocast(cfg.trainer, device)
    on_epoch_end = partial(
        store.on_epoch_end,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        generator=generator,
        every=int(cfg.trainer.checkpoint_every_epochs),
    )
    try:
        with _sigterm_raises():
            state = fit(
                model,
                optimizer,
                schedule,
                data,
                cfg.trainer,
                objective=objective,
                generator=generator,
                state=state,
                tracker=tracker,
                reporter=reporter,
                on_epoch_end=on_epoch_end,
                autocast=autocast,
                freeze_backbone_epochs=int(ft.get("freeze_backbone_epochs", 0)),
            )
        summary = finish_run(tracker, cfg, model, data, state, splits, store, autocast)
    except BaseException as exc:
        end_failed(tracker, exc, state)
        raise
    store.mark_done()
    return summary


def seed_everything(seed: int, trainer: DictConfig) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if trainer.num_threads:
        torch.set_num_threads(int(trainer.num_threads))
    if trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _steps_per_epoch(n: int, trainer: DictConfig) -> int:
    batches = (
        n // trainer.batch_size
        if trainer.drop_last and n >= trainer.batch_size
        else -(-n // trainer.batch_size)
    )
    return max(1, -(-batches // trainer.grad_accum_steps))


def _autocast(trainer: DictConfig, device: torch.device) -> Any:
    if trainer.precision == "bf16" and device.type == "cuda":
        return partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)
    return nullcontext


def load_backbone(model: torch.nn.Module, path: str) -> None:
    """Initialise from a checkpoint, keeping this model's own head when the shapes differ (new task)."""
    state = load_safe(path)["model"]
    own = model.state_dict()
    keep = {
        k: v
        for k, v in state.items()
        if not (k.startswith("head.") and own.get(k, v).shape != v.shape)
    }
    keep.update({k: own[k] for k in own if k.startswith("head.") and k not in keep})
    load_model_state(model, keep, path)
    log.info("initialised from %s (%d tensors)", path, len(keep))


def run_context() -> tuple[list[str], str | None]:
    """The Hydra overrides of this job and its output dir, when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], None
    hc = HydraConfig.get()
    return list(hc.overrides.task), hc.runtime.output_dir


def start_run(
    tracker: Tracker, cfg: DictConfig, splits: Any, device: torch.device, run_id: str | None
) -> None:
    overrides, _ = run_context()
    shown = [o for o in overrides if not o.startswith("hydra.")]
    tags = {
        **lineage_tags(device),
        "seed": str(cfg.seed),
        "data_digest": splits.digest,
        "data": splits.name,
        "overrides": " ".join(overrides) or "(none)",
        "role": "single",
        "objective": cfg.objective.metric,
        **json.loads(os.environ.get("TUNELAB_RUN_TAGS", "{}")),
    }
    parent = os.environ.get("TUNELAB_PARENT_RUN_ID") or None
    tracker.start(
        run_name=",".join(shown) or "default", tags=tags, parent_run_id=parent, run_id=run_id
    )
    if run_id is not None:
        tracker.set_tags({"resumed": "true"})
        return
    tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
    tracker.log_dataset(
        splits.name,
        splits.digest,
        source=f"tunelab.data:{splits.name}",
        profile={
            **splits.sizes(),
            "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape),
        },
    )
    tracker.log_dict(OmegaConf.to_container(cfg, resolve=True), "config.yaml")
    tracker.log_dict({"overrides": overrides}, "overrides.yaml")
    diff = git_state()["diff"]
    if diff:
        _log_text(tracker, diff, "git.diff")


def _log_text(tracker: Tracker, text: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(text)
        tracker.log_artifact(path)


def finish_run(
    tracker: Tracker,
    cfg: DictConfig,
    model: torch.nn.Module,
    data: dict,
    state: TrainState,
    splits: Any,
    store: RunStore,
    autocast: Any,
) -> dict[str, float]:
    """Restore the selected (best-validation) weights, report test metrics, log artifacts."""
    store.load_best(model)
    val_loss, val_acc, val_pred = evaluate(model, data["x_val"], data["y_val"], autocast=autocast)
    test_loss, test_acc, _ = evaluate(model, data["x_test"], data["y_test"], autocast=autocast)
    h = state.history
    summary = {
        "val/acc": val_acc,
        "val/loss": val_loss,
        "test/acc": test_acc,
        "test/loss": test_loss,
        "best_epoch": float(state.best_epoch),
        "epochs_run": float(state.epoch),
        "train/loss": h["train/loss"][-1],
        "perf/epoch_s": float(np.mean(h["perf/epoch_s"])),
        "perf/samples_per_s": float(np.mean(h["perf/samples_per_s"])),
    }
    tracker.log_metrics(
        {f"best/{k}": v for k, v in summary.items() if k.startswith("val/")}
        | {"test/acc": test_acc, "test/loss": test_loss, "best_epoch": state.best_epoch},
        step=state.epoch,
    )
    per_class = [
        float((val_pred[data["y_val"] == c] == c).float().mean())
        if (data["y_val"] == c).any()
        else float("nan")
        for c in range(splits.num_classes)
    ]
    tracker.log_metrics(
        {f"val/acc_class_{c}": a for c, a in enumerate(per_class) if a == a}, step=state.epoch
    )
    tracker.set_tags(
        {"stopped_early": str(state.stopped_early).lower(), **_diagnosis_tags(h, splits)}
    )
    fig = figures.learning_curves(h, state.best_epoch)
    tracker.log_figure(fig, "learning_curves.png")
    figures.close(fig)
    tracker.log_dict(h, "history.json")
    if store.best_path.exists():
        tracker.log_artifact(store.best_path, "checkpoints")
    tracker.log_model(model.cpu(), data["x_val"][:2].cpu().numpy())
    tracker.end("FINISHED")
    return summary


def _diagnosis_tags(history: dict[str, list[float]], splits: Any) -> dict[str, str]:
    """Curve diagnosis (overfitting, unstable, ...) and data check, as flat tags."""
    from tunelab.diagnostics.curves import diagnose_curves, findings_to_tags
    from tunelab.diagnostics.datacheck import check_data, datacheck_tags

    findings = diagnose_curves(history)
    for f in findings:
        log.info("diagnosis: %s — %s", f.message, f.recommendation)
    report = check_data(splits)
    for w in report.warnings:
        log.warning("data check: %s", w)
    return {**findings_to_tags(findings), **datacheck_tags(report)}


def end_failed(tracker: Tracker, exc: BaseException, state: TrainState) -> None:
    """Record why a run stopped: pruned and interrupted runs are KILLED, everything else FAILED."""
    if tracker.run_id is None:
        return
    name = type(exc).__name__
    if name == "TrialPruned":
        tags, status = {"pruned": "true", "pruned_at_epoch": str(state.epoch)}, "KILLED"
    elif isinstance(exc, (KeyboardInterrupt, Terminated)):
        tags, status = (
            {
                "failure_reason": "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else "terminated"
            },
            "KILLED",
        )
    elif isinstance(exc, DivergedError):
        tags, status = (
            {"failure_reason": "nonfinite_loss", "diverged_at_epoch": str(exc.epoch)},
            "FAILED",
        )
    else:
        tags, status = {"failure_reason": name, "failure_message": str(exc)[:5000]}, "FAILED"
    try:
        tracker.set_tags(tags)
        tracker.end(status)
    except Exception as log_exc:  # the original error matters more than a failed status update
        log.error("could not record run status %s: %s", status, log_exc)


@contextmanager
def _sigterm_raises():
    """Turn SIGTERM into an exception so the run is recorded KILLED (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
