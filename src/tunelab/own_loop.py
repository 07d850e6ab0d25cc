"""tunelab around a training loop the user wrote: `with tracked_run(cfg, data=splits) as run:`
gives it what tunelab's own loop gets. Seeded RNGs and the device; the run record that
`run/record.py` writes (config, lineage, data digest, per-epoch metrics through the one MLflow
writer, artifacts); checkpoints and resume through the atomic store (`run/store.py`: kill -9, and
the same command continues the same MLflow run from the last completed epoch, RNG states
included); the objective reported to a sweep's pruner after every epoch (pruned: KILLED with
`pruned`); a non-finite loss FAILED as tunelab's own runs are; the best epoch selected by
`objective.metric`; and a RunResult, so sweeps, seeds as replicates and studies take the job as
they take tunelab's own.

The config needs `seed`, `objective`, tunelab's `trainer` and `tracking` groups (checked before
anything is created: `config/own_loop.py`); everything else in it is the user's."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tunelab import build, startup
from tunelab.config import targets
from tunelab.config.own_loop import validate_own_loop
from tunelab.hydra_job import job_context
from tunelab.run import signals
from tunelab.run.api import open_record, record_failure
from tunelab.run.context import RunContext, RunResult
from tunelab.run.lineage import resolve_device
from tunelab.run.loop import DivergedError, Objective, TrainState, end_epoch
from tunelab.run.prepare import DataChangedError, seed_everything
from tunelab.run.record import curve_diagnosis_tags
from tunelab.run.store import RunStore
from tunelab.tags import ENTRY_POINT
from tunelab.tracking import Tracker

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # tunelab's config groups
if not OmegaConf.has_resolver("tunelab_conf"):
    # `hydra.searchpath: [file://${tunelab_conf:}]` in a script's own config reuses tunelab's groups
    OmegaConf.register_new_resolver("tunelab_conf", lambda: str(CONF_DIR))


def entry_point() -> str | None:
    """The running script relative to the repository that holds tunelab (what `tunelab
    reproduce` runs at the recorded commit), or None for a script outside it."""
    try:
        return Path(sys.argv[0]).resolve().relative_to(CONF_DIR.parent).as_posix()
    except ValueError:
        return None


class _NoSchedule:
    """What the store checkpoints when the loop has no learning-rate scheduler."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class TrackedRun:
    """One run of the user's loop. `seed`, `device` and `generator` (for the loop's shuffling: its
    state is checkpointed with the global RNGs) are set; `resume()` starts the record; then
    `log_epoch()` once per epoch. `result` is the RunResult once the `with` block has ended."""

    cfg: DictConfig
    ctx: RunContext
    store: RunStore
    tracker: Tracker
    seed: int
    device: torch.device
    generator: torch.Generator
    data: Any
    objective: Objective
    state: TrainState = field(default_factory=TrainState)
    result: RunResult | None = None
    started: bool = False
    model: torch.nn.Module | None = None
    optimizer: Any = None
    scheduler: Any = None
    extra: dict[str, float] = field(default_factory=dict)
    # A Ctrl-C that a framework caught and turned into an exit (Lightning exits 1): the run ends
    # KILLED as for the signal, and the block raises it in place of that exit.
    interrupted_by: KeyboardInterrupt | None = None

    def resume(self, model: torch.nn.Module, optimizer: Any, scheduler: Any = None) -> int:
        """Start the record: continue an unfinished run of this config from its last checkpoint
        (model, optimizer, scheduler and every RNG restored; the same MLflow run continues) or
        open a new one. Returns the number of epochs already completed (0 on a fresh start)."""
        if self.started:
            raise RuntimeError("run.resume() starts the run: call it once, before the first epoch")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler or _NoSchedule()
        resumable = (model, optimizer, self.scheduler, self.generator)
        self.state = open_record(
            self.store, self.tracker, self.cfg, self.ctx, self.data, self.device, resumable
        )
        self.started = True
        return self.state.epoch

    def epochs(self, max_epochs: int | None = None) -> Iterator[int]:
        """The epochs left to train, numbered from 1 (after a resume: from the next one), up to
        `max_epochs` (default trainer.max_epochs), ending early when early stopping says so."""
        last = int(max_epochs if max_epochs is not None else self.cfg.trainer.max_epochs)
        while self.state.epoch < last and not self.state.stopped_early:
            epoch = self.state.epoch + 1
            yield epoch
            if self.state.epoch < epoch:
                raise RuntimeError(f"epoch {epoch} ended without run.log_epoch({epoch}, metrics)")

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Record epoch `epoch` (numbered from 1): refuse a non-finite loss (DivergedError: the run
        FAILED), keep the best epoch by objective.metric, checkpoint, log the metrics, and report
        the objective to the sweep's pruner (which may raise Pruned: the run KILLED, `pruned`)."""
        if not self.started:
            raise RuntimeError("call run.resume(model, optimizer[, scheduler]) before log_epoch")
        if epoch != self.state.epoch + 1:
            raise ValueError(
                f"log_epoch({epoch}): the next epoch is {self.state.epoch + 1} (epochs count "
                "from 1; after a resume, from the epoch run.resume() returned + 1)"
            )
        values = {str(k): float(v) for k, v in metrics.items()}
        for name, value in values.items():
            if name.endswith("loss") and not math.isfinite(value):
                raise DivergedError(epoch, value)
        if self.objective.metric not in values:
            raise KeyError(
                f"objective.metric={self.objective.metric!r} is not among the metrics logged for "
                f"epoch {epoch}: {sorted(values)}"
            )
        improved = end_epoch(self.state, values, self.objective, self.cfg.trainer.early_stopping)
        self.store.on_epoch_end(  # checkpoint first: what is reported can be resumed
            self.state,
            improved,
            model=self.model,
            optimizer=self.optimizer,
            schedule=self.scheduler,
            generator=self.generator,
            every=int(self.cfg.trainer.checkpoint_every_epochs),
        )
        self.tracker.log_metrics(values, step=epoch)
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        log.info("epoch %d/%d %s", epoch, int(self.cfg.trainer.max_epochs), shown)
        if self.ctx.reporter is not None:
            self.ctx.reporter(epoch, values[self.objective.metric])

    @property
    def should_stop(self) -> bool:
        """Early stopping (trainer.early_stopping) has ended the run."""
        return self.state.stopped_early

    def load_best(self, model: torch.nn.Module) -> None:
        """Put the selected epoch's weights into `model` (e.g. before evaluating on test)."""
        self.store.load_best(model)

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        """Final metrics of the run (e.g. test/acc of the selected weights): logged at the last
        step and part of the RunResult's metrics."""
        self.extra.update({str(k): float(v) for k, v in metrics.items()})

    def finish(self) -> RunResult:
        """End the record FINISHED: the selected epoch's metrics, the curve diagnosis's tags,
        history.json, best.pt."""
        if not self.started:
            raise RuntimeError("the run never started: call run.resume(model, optimizer)")
        self.store.flush()
        state, best = self.state, self.state.best_epoch
        summary = {k: v[best - 1] for k, v in state.history.items()} if best else {}
        summary.update(best_epoch=float(best), epochs_run=float(state.epoch), **self.extra)
        logged = {f"best/{k}": v for k, v in summary.items() if k.startswith("val/")}
        self.tracker.log_metrics(
            {**logged, "best_epoch": float(best), **self.extra}, step=max(state.epoch, 1)
        )
        optimizer = type(self.optimizer).__name__.lower()  # adamw: the diagnosis's advice
        self.tracker.set_tags(
            {
                "stopped_early": str(state.stopped_early).lower(),
                **curve_diagnosis_tags(state.history, optimizer),
            }
        )
        self.tracker.log_dict(state.history, "history.json")
        if self.store.best_path.exists():
            self.tracker.log_artifact(self.store.best_path, "checkpoints")
        self.tracker.end("FINISHED")
        return RunResult(
            run_id=self.tracker.run_id,
            status="FINISHED",
            objective=self.objective.metric,
            metrics=summary,
            history=state.history,
            checkpoint=self.store.best_path if self.store.best_path.exists() else None,
        )


@contextmanager
def tracked_run(
    cfg: DictConfig,
    *,
    data: Any,
    ctx: RunContext | None = None,
    tracker: Tracker | None = None,
) -> Iterator[TrackedRun]:
    """Run the user's loop as a tunelab run. `data` describes what it trains on for the record
    (`tunelab.data.splits.make_splits` gives one; it needs name, digest, sizes(), num_classes,
    input_shape, provenance). `ctx` defaults to the Hydra job's (its sweep trial's pruner
    included). The block's exceptions end the run as tunelab's own (FAILED, or KILLED for a
    prune or a signal) and propagate; a block that ends normally ends it FINISHED."""
    startup.load_libraries()
    validate_own_loop(cfg)
    ctx = ctx if ctx is not None else job_context()
    if entry := entry_point():
        ctx = ctx.derive(tags={ENTRY_POINT: entry})
    if ctx.data_digest and getattr(data, "digest", None) != ctx.data_digest:
        raise DataChangedError(
            f"data changed: expected digest {ctx.data_digest}, the data now has "
            f"{getattr(data, 'digest', None)}"
        )
    device = resolve_device(cfg.trainer.device)
    seed = int(cfg.seed)
    seed_everything(seed, cfg.trainer, ctx.threads)
    store = RunStore.for_config(cfg)
    with store.locked(), signals.signals_raise():
        tracker = (
            tracker
            if tracker is not None
            else build.build_tracker(cfg.tracking, targets.allowed(cfg))
        )
        run = TrackedRun(
            cfg=cfg,
            ctx=ctx,
            store=store,
            tracker=tracker,
            seed=seed,
            device=device,
            generator=torch.Generator().manual_seed(seed),
            data=data,
            objective=Objective(str(cfg.objective.metric), str(cfg.objective.direction)),
        )
        try:
            yield run
            run.result = run.finish()
        except BaseException as exc:
            cause = run.interrupted_by if isinstance(exc, SystemExit) else None
            record_failure(tracker, store, cause or exc, run.state)
            if cause is not None:
                raise cause from None
            raise
        store.mark_done()
