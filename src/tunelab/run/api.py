"""`run(cfg, ctx)`: the one funnel. The Hydra job, the DVC stages, sweeps, studies, benchmarks and
tests call it; it trains (or, with `diagnose=<check>`, runs a diagnostic), records everything in
one MLflow run and returns a RunResult."""

from __future__ import annotations

import copy
import logging
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig

from tunelab import build, startup
from tunelab.config import ConfigError, validate
from tunelab.diagnostics import command as diagnostics
from tunelab.run import signals
from tunelab.run.checkpoint import load_model_state, load_safe
from tunelab.run.context import RunContext, RunResult
from tunelab.run.group import replica_seeds, train_group
from tunelab.run.loop import Objective, TrainState, fit
from tunelab.run.prepare import autocast_for, build_augment, compile_model, run_data, setup
from tunelab.run.record import (
    RunFailed,
    close_unfinished,
    end_failed,
    final_outcome,
    finish_run,
    start_run,
)
from tunelab.run.refit import check_refit_data, refit, refit_mode
from tunelab.run.store import RunStore
from tunelab.run.tasks import Task
from tunelab.tags import FAILURE_REASON, ROLE, Role
from tunelab.tracking import Tracker

log = logging.getLogger(__name__)


def run(
    cfg: DictConfig, ctx: RunContext | None = None, *, tracker: Tracker | None = None
) -> RunResult:
    """Train, select on validation, report test, and record everything (or run the diagnostic
    that cfg.diagnose names). Failures raise; the MLflow run records why."""
    outcome = attempt(cfg, ctx, tracker=tracker)
    if isinstance(outcome, RunFailed):
        raise outcome.cause
    return outcome


def attempt(
    cfg: DictConfig, ctx: RunContext | None = None, *, tracker: Tracker | None = None
) -> RunResult | RunFailed:
    """run(), with a plain run that stopped once recorded returned as RunFailed (the exception
    and the run that records why) rather than raised."""
    startup.load_libraries()
    ctx = ctx if ctx is not None else RunContext()
    validate(cfg)  # build_data checks the arrays, still before any side effect
    if cfg.get("diagnose"):
        return diagnose(diagnostics.prepare(cfg), ctx, tracker)
    if replica_seeds(cfg):
        if tracker is not None:
            raise ValueError("trainer.replicas records one MLflow run per seed: pass no tracker")
        return train_group(cfg, ctx, train)
    return _train(cfg, ctx, tracker)


def train(cfg: DictConfig, ctx: RunContext, tracker: Tracker | None = None) -> RunResult:
    """One plain run of cfg, recorded by `tracker` (default: cfg.tracking's); failures raise."""
    outcome = _train(cfg, ctx, tracker)
    if isinstance(outcome, RunFailed):
        raise outcome.cause
    return outcome


def _train(
    cfg: DictConfig, ctx: RunContext, tracker: Tracker | None = None
) -> RunResult | RunFailed:
    s = setup(cfg, ctx)
    model, splits, device = s.model, s.splits, s.device
    ft = cfg.get("finetune") or {}
    if ft.get("init_checkpoint"):
        load_backbone(model, ft.init_checkpoint)
    data = run_data(splits, device)
    check_refit_data(cfg, data)
    initial = copy.deepcopy(model).to(device) if refit_mode(cfg) else None  # refit starts here
    compile_model(model.to(device), cfg.trainer)
    try:
        augment = build_augment(cfg, splits)
    except ValueError as exc:  # an augmentation this data's examples cannot take
        raise ConfigError(str(exc)) from None
    lr_mult = float(ft.get("backbone_lr_mult", 1.0))
    optimizer, schedule = build.build_training(
        model, cfg, splits.sizes()["train"], lr_mult, s.allow
    )
    generator = torch.Generator().manual_seed(int(cfg.seed))
    autocast = autocast_for(cfg.trainer, device)
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
    with store.locked(), signals.signals_raise():
        tracker = tracker if tracker is not None else build.build_tracker(cfg.tracking, s.allow)
        try:
            state = open_record(
                store,
                tracker,
                cfg,
                ctx,
                splits,
                device,
                (model, optimizer, schedule, generator),
                s.task,
            )
            state = fit(
                model,
                optimizer,
                schedule,
                data,
                cfg.trainer,
                objective=Objective(cfg.objective.metric, cfg.objective.direction),
                generator=generator,
                state=state,
                tracker=tracker,
                reporter=ctx.reporter,
                on_epoch_end=on_epoch_end,
                autocast=autocast,
                freeze_backbone_epochs=int(ft.get("freeze_backbone_epochs", 0)),
                augment=augment,
                seed=int(cfg.seed),
                task=s.task,
            )
            refitted = None
            if initial is not None:
                compile_model(initial, cfg.trainer)
                refitted = refit(
                    cfg,
                    initial,
                    data,
                    state.best_epoch,
                    task=s.task,
                    allow=s.allow,
                    tracker=tracker,
                    augment=augment,
                    autocast=autocast,
                    lr_mult=lr_mult,
                    freeze_backbone_epochs=int(ft.get("freeze_backbone_epochs", 0)),
                )
            optimizer_name = str(cfg.optimizer.get("name", ""))
            summary = finish_run(
                tracker,
                ctx,
                optimizer_name,
                model,
                data,
                state,
                splits,
                store,
                autocast,
                s.task,
                refit=refitted,
            )
        except BaseException as exc:
            record_failure(tracker, store, exc, state)
            return RunFailed(tracker.run_id, exc)
        store.mark_done()
    return RunResult(
        run_id=tracker.run_id,
        status="FINISHED",
        objective=str(cfg.objective.metric),
        metrics=summary,
        history=state.history,
        checkpoint=_selected_checkpoint(store, refitted),
    )


def _selected_checkpoint(store: RunStore, refitted: Any) -> Any:
    """The weights the run's test metrics come from: the refit's, else the selected epoch's."""
    if refitted is not None:
        return refitted.checkpoint
    return store.best_path if store.best_path.exists() else None


def open_record(
    store: RunStore,
    tracker: Tracker,
    cfg: DictConfig,
    ctx: RunContext,
    data: Any,
    device: torch.device,
    resumable: tuple[torch.nn.Module, Any, Any, torch.Generator],
    task: Task | None = None,
) -> TrainState:
    """Start a run's record: continue the unfinished run of this config from its checkpoint
    (model, optimizer, schedule and generator restored; the run a dead process left RUNNING
    closed when it is not that one) or open a new one. Returns the restored training state.
    tunelab's loop and a loop of the user's own (`tunelab.tracked_run`) start this way."""
    unfinished = store.unfinished_run_id()
    state, run_id = store.resume(cfg.trainer.resume, *resumable)
    if unfinished and unfinished != run_id:
        close_unfinished(tracker, unfinished)
    start_run(tracker, cfg, ctx, data, device, run_id, state, task)
    store.attach(tracker.run_id)
    return state


def record_failure(
    tracker: Tracker, store: RunStore, exc: BaseException, state: TrainState
) -> None:
    """End a run that stopped: why, in its record; pruned and diverged runs are final (a re-run
    starts over instead of resuming them)."""
    end_failed(tracker, exc, state)
    if final_outcome(exc):
        store.mark_done(final_outcome(exc))


def diagnose(cfg: DictConfig, ctx: RunContext, tracker: Tracker | None = None) -> RunResult:
    """One diagnostic (cfg.diagnose.name) on the configured data, model and optimizer, recorded
    as one run tagged role=diagnose; a failed check raises DiagnosticFailed."""
    s = setup(cfg, ctx)
    model = s.model.to(s.device)
    tracker = tracker if tracker is not None else build.build_tracker(cfg.tracking, s.allow)
    diagnose_ctx = ctx.derive(tags={ROLE: Role.DIAGNOSE})
    start_run(tracker, cfg, diagnose_ctx, s.splits, s.device, None, task=s.task)
    tracker.set_tags({"diagnose": str(cfg.diagnose.name)})
    with signals.signals_raise():
        try:
            factory = build.optimizer_factory(cfg.optimizer, s.allow)
            metrics = diagnostics.run_check(
                cfg, s.splits, model, factory, tracker, loss_fn=s.task.check_loss
            )
        except BaseException as exc:
            tracker.set_tags({FAILURE_REASON: diagnostics.failure_reason(exc)})
            tracker.end(
                "KILLED" if isinstance(exc, (KeyboardInterrupt, signals.Terminated)) else "FAILED"
            )
            raise
        tracker.end("FINISHED")
    return RunResult(tracker.run_id, "FINISHED", next(iter(metrics)), metrics)


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
