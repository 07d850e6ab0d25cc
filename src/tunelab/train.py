"""`run(cfg)`: one fully recorded training run. Every entry point (Hydra, DVC stages, sweeps, tests)
calls this function."""

from __future__ import annotations

import logging
import os
import random
from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from tunelab import build, startup
from tunelab.checkpoint import load_model_state, load_safe
from tunelab.config import validate
from tunelab.lineage import resolve_device
from tunelab.loop import Objective, Reporter, TrainState, fit
from tunelab.optim.schedules import build_schedule
from tunelab.recording import (  # noqa: F401 (run_context, start_run, Terminated: public here too)
    Terminated,
    close_unfinished,
    end_failed,
    final_outcome,
    finish_run,
    run_context,
    signals_raise,
    start_run,
)
from tunelab.run_store import RunStore
from tunelab.tracking import Tracker

log = logging.getLogger(__name__)


def run(
    cfg: DictConfig, *, tracker: Tracker | None = None, reporter: Reporter | None = None
) -> dict[str, float]:
    """Train, select on validation, report test, and record everything; returns summary metrics."""
    startup.load_libraries()
    validate(cfg, check_data=False)  # build_data checks the arrays, still before any side effect
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
    objective = Objective(cfg.objective.metric, cfg.objective.direction)
    autocast = _autocast(cfg.trainer, device)
    store = RunStore.for_config(cfg)
    on_epoch_end = partial(
        store.on_epoch_end,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        generator=generator,
        every=int(cfg.trainer.checkpoint_every_epochs),
    )
    state = TrainState()
    with store.locked(), signals_raise():
        tracker = tracker if tracker is not None else build.build_tracker(cfg.tracking)
        try:
            unfinished = store.unfinished_run_id()
            state, run_id = store.resume(cfg.trainer.resume, model, optimizer, schedule, generator)
            if unfinished and unfinished != run_id:
                close_unfinished(tracker, unfinished)
            start_run(tracker, cfg, splits, device, run_id, state)
            store.attach(tracker.run_id)
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
            summary = finish_run(tracker, model, data, state, splits, store, autocast)
        except BaseException as exc:
            end_failed(tracker, exc, state)
            if final_outcome(exc):
                store.mark_done(final_outcome(exc))
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
