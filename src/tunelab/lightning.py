"""`TunelabCallback`: a Lightning Trainer's epochs through `tunelab.tracked_run`, so a
LightningModule is recorded, checkpointed, resumed and pruned as tunelab's own runs are. Needs
the optional extra: `pip install -e ".[lightning]"`."""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # the optional extra is not installed
    raise ImportError(
        'tunelab.lightning needs Lightning: pip install -e ".[lightning]" (lightning>=2.6,<2.7)'
    ) from exc

from tunelab.own_loop import TrackedRun


class TunelabCallback(pl.Callback):
    """At train start: `run.resume()` with the module, its first optimizer and scheduler (a
    resumed fit starts after the checkpointed epochs). After each training epoch, whose
    validation has run by then: `run.log_epoch()` with the epoch's scalar
    `trainer.callback_metrics` (record, checkpoint, report to the pruner: Pruned and
    DivergedError leave `trainer.fit` and end the run as tunelab's own); early stopping
    (trainer.early_stopping) stops the Trainer. A Ctrl-C, which Lightning turns into exit
    status 1, ends the run KILLED (`interrupted`) as a Ctrl-C of tunelab's own loop does."""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resume here, not at fit start: Lightning's data setup, which runs in between, draws
        from a DataLoader's generator (its iterability check); a resume restores it after that."""
        if len(trainer.optimizers) != 1:
            raise ValueError(
                "TunelabCallback checkpoints one optimizer; this module has "
                f"{len(trainer.optimizers)}"
            )
        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        done = self.run.resume(pl_module, trainer.optimizers[0], scheduler)
        if done:  # the fit continues after the checkpointed epochs
            progress = trainer.fit_loop.epoch_progress.current
            progress.ready = progress.started = progress.processed = progress.completed = done

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        self.run.log_epoch(
            trainer.current_epoch + 1, {k: v for k, v in metrics.items() if v is not None}
        )
        if self.run.should_stop:
            trainer.should_stop = True

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Lightning calls this with the KeyboardInterrupt before its `sys.exit(1)`: remembered,
        so that `tracked_run` records and raises the interrupt rather than a failure."""
        if isinstance(exception, KeyboardInterrupt):
            self.run.interrupted_by = exception


def _scalar(value: Any) -> float | None:
    """A logged value as a float, or None for one that is not a single number."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
