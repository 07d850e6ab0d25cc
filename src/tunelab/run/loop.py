"""Plain PyTorch training: fit() and evaluate(). No Optuna, no MLflow: a tracker and a reporter
are passed in, so the same loop serves single runs, sweeps, tests and diagnostics. Its training
epoch (train_epoch), evaluation (evaluate_all), loss, gradient norm, metric names and end of an
epoch are also what a replica group trains with (run/replicas.py)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from tunelab.compat.torch_internals import tensor_norms
from tunelab.config.tasks import direction_of
from tunelab.data.augment import Augment
from tunelab.data.loader import StreamedSplits, epoch_batches, split_batches
from tunelab.optim.lr_schedule import batches_per_epoch
from tunelab.run.tasks import Task

log = logging.getLogger(__name__)


class Pruned(Exception):
    """Raised by a reporter to stop a run that is not worth finishing (a pruned sweep trial)."""


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the run is a data point (FAILED), not a crash."""

    def __init__(self, epoch: int, value: float) -> None:
        super().__init__(f"non-finite training loss ({value}) in epoch {epoch}")
        self.epoch, self.value = epoch, value

    def __reduce__(self) -> tuple:
        return (DivergedError, (self.epoch, self.value))  # picklable across process pools


@dataclass
class TrainState:
    """Everything besides model/optimizer/schedule/RNG needed to resume exactly."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: dict[str, list[float]] = field(default_factory=dict)
    best_value: float | None = None
    best_epoch: int = 0  # epochs count from 1; 0: none selected yet
    bad_epochs: int = 0  # epochs without improvement of the early-stopping metric
    stop_best: float | None = None  # best early-stopping metric seen
    stopped_early: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Objective:
    metric: str = "val/acc"
    direction: str = "maximize"

    def better(self, new: float, old: float | None, min_delta: float = 0.0) -> bool:
        if old is None:
            return True
        return new > old + min_delta if self.direction == "maximize" else new < old - min_delta


def loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Classification's cross-entropy of one model's batch: (B, classes) and class ids (B,), or
    the class probabilities (B, classes) mixup and cutmix give (every task's loss: run/tasks.py)."""
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction)


@dataclass(frozen=True)
class Trained:
    """What an epoch trains: `forward` maps a batch of inputs to logits; `params` are what the
    optimizer steps. Stacked: K replicas along a leading axis (inputs (K, B, ...), or (B, ...)
    shared in evaluation; logits (K, B, classes); parameters [K, ...]), each with its own loss,
    metrics and gradient norm, computed as one model's are (run/replicas.py)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    params: list[nn.Parameter]
    stacked: bool = False

    def per_replica(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """fn of one model's batch, applied to each replica's: fn itself, or vmapped."""
        return vmap(fn) if self.stacked else fn


@dataclass
class EpochTotals:
    """One epoch's training sums, on the device (one value, or one per replica)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    grad_norm_sum: torch.Tensor
    seen: int = 0  # examples, per replica
    updates: int = 0  # optimizer steps


def augmented(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    augment: Augment | None,
    seed: int,
    epoch: int,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch's training batches as the step sees them: augmented (when configured) by their
    (seed, epoch, batch index), so a resumed epoch sees what an uninterrupted one saw."""
    if augment is None:
        return batches
    return (augment(xb, yb, seed, epoch, b) for b, (xb, yb) in enumerate(batches))


def train_epoch(
    model: Trained,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_batches: int,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    trainer: Any,
    *,
    autocast: Any = nullcontext,
    check: Callable[[torch.Tensor], None] | None = None,
    task: Task | None = None,
) -> EpochTotals:
    """One epoch of training steps: forward, the task's loss, backward, and after every
    grad_accum_steps batches (and the last) the gradient norm and clipping, the optimizer and
    schedule steps. `check` gets each batch's loss (on a CPU, where the look is free) and raises
    or records a divergence. No task: classification with trainer.label_smoothing."""
    accum = int(trainer.grad_accum_steps)
    clip = float(trainer.grad_clip_norm) if trainer.grad_clip_norm else math.inf
    task = task or Task(label_smoothing=float(trainer.label_smoothing))
    train_loss = model.per_replica(task.train_loss)
    totals = None
    for b, (xb, target) in enumerate(batches):
        with autocast():
            logits = model.forward(xb)  # (B, classes), or (K, B, classes)
            losses = train_loss(logits.float(), target)  # (), or (K,)
        if check is not None:
            check(losses.detach())
        scaled = losses / accum if accum > 1 else losses
        (scaled.sum() if model.stacked else scaled).backward()
        if totals is None:  # running sums stay on the device: one host sync per epoch
            totals = EpochTotals(*(torch.zeros_like(losses.detach()) for _ in range(3)))
        size = logits.shape[-2]  # examples per replica
        totals.loss_sum.add_(losses.detach(), alpha=size)
        totals.correct += task.correct(logits.detach(), target)
        totals.seen += size
        if (b + 1) % accum == 0 or b == n_batches - 1:
            totals.grad_norm_sum += grad_norm(model.params, clip, stacked=model.stacked)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.after_step()
            totals.updates += 1
    return totals


@torch.no_grad()
def evaluate_all(
    model: Trained,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
    autocast: Any = nullcontext,
    task: Task | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean loss (float64), accuracy and predictions (what the task keeps) over a whole split, of
    a classifier in eval mode (one value, or one per replica). Batches of 256 keep activations in
    cache: on a 2-core CPU the 1,000 MNIST-1D test examples take half the time they take as one
    batch of 1,000."""
    return evaluate_batches(model, memory_batches(x, y, batch_size), autocast, task)[:3]


def memory_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """An in-memory split's (inputs, targets) in order, batch_size at a time (evaluation)."""
    return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size))


@torch.no_grad()
def evaluate_batches(
    model: Trained,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    autocast: Any = nullcontext,
    task: Task | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """evaluate_all over a split given as batches (a streamed split is never held at once): mean
    loss, accuracy (classification; else NaN), what the task keeps of the outputs (class ids,
    probabilities, values) and the split's targets."""
    task = task or Task()
    summed = model.per_replica(task.eval_loss)
    loss_sum, kept, labels = None, [], []
    for xb, yb in batches:
        with autocast():
            logits = model.forward(xb).float()
        target = yb.expand(logits.shape[0], *yb.shape) if model.stacked else yb  # each replica's
        part = summed(logits, target).double()
        loss_sum = part if loss_sum is None else loss_sum + part
        kept.append(task.kept(logits))
        labels.append(yb)
    axis = -1 if task.name == "classification" else 0  # replicas: classification (replica_rules)
    pred, y = torch.cat(kept, dim=axis), torch.cat(labels)
    n = len(y)
    acc = (pred == y).float().mean(-1) if task.name == "classification" else torch.tensor(math.nan)
    return loss_sum / n, acc, pred, y


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
    autocast: Any = nullcontext,
) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and predictions of one model over a whole split, in eval mode."""
    model.eval()
    loss_mean, accuracy, pred = evaluate_all(Trained(model, []), x, y, batch_size, autocast)
    return float(loss_mean), float(accuracy), pred


def evaluate_split(
    model: nn.Module,
    data: dict[str, torch.Tensor] | StreamedSplits,
    split: str,
    autocast: Any = nullcontext,
    task: Task | None = None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """The task's metrics (`loss` and the task's own, run/tasks.py) of one model over split `val`
    or `test` of the run's data, in memory or streamed from disk (in file order, never
    augmented); also what the task kept of the outputs, and the split's targets."""
    task = task or Task()
    model.eval()
    device = next(model.parameters()).device
    if isinstance(data, StreamedSplits):
        batches = split_batches(data, split, 256, device)
    else:
        batches = memory_batches(data[f"x_{split}"], data[f"y_{split}"], 256)
    loss_mean, _, kept, y = evaluate_batches(Trained(model, []), batches, autocast, task)
    return {"loss": float(loss_mean), **task.metrics(kept, y)}, kept, y


def epoch_metrics(
    totals: EpochTotals,
    sums: tuple[float, float, float],
    val: dict[str, float],
    lr: float,
    train_s: float,
    train_acc: bool = True,
) -> dict[str, float]:
    """The metrics every epoch reports (config/tasks.py's epoch_metrics) for one run: from its
    (loss, correct, gradient norm) sums of the epoch and its validation metrics (`loss` and the
    task's); train/acc where the task has an accuracy."""
    loss_sum, correct, grad_norm_sum = sums
    train = {"train/loss": loss_sum / totals.seen}
    if train_acc:
        train["train/acc"] = correct / totals.seen
    return {
        **train,
        **{f"val/{k}": v for k, v in val.items()},
        "opt/lr": lr,
        "train/grad_norm": grad_norm_sum / max(totals.updates, 1),
        "perf/epoch_s": train_s,
        "perf/samples_per_s": totals.seen / train_s,
    }


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    data: dict[str, torch.Tensor] | StreamedSplits,
    trainer: Any,
    *,
    objective: Objective,
    generator: torch.Generator,
    state: TrainState,
    tracker: Any,
    reporter: Callable[[int, float], None] | None = None,
    on_epoch_end: Callable[[TrainState, bool], None] | None = None,
    autocast: Any = nullcontext,
    freeze_backbone_epochs: int = 0,
    augment: Augment | None = None,
    seed: int = 0,
    task: Task | None = None,
) -> TrainState:
    """Train from `state.epoch` to trainer.max_epochs (or early stop) on `task`'s loss (default:
    classification with trainer.label_smoothing); returns the final state.

    data holds x_train/y_train/x_val/y_val on the training device, or is streamed from disk
    (data/loader.py); `augment` (data/augment.py) changes each training batch as a function of
    (seed, epoch, batch index). After every epoch: `on_epoch_end(state, improved)` writes
    checkpoints, then metrics go to the tracker and the objective to the reporter (which may
    raise Pruned)."""
    device = next(model.parameters()).device
    n = len(data.train) if isinstance(data, StreamedSplits) else len(data["y_train"])
    n_batches = batches_per_epoch(n, trainer)
    trained = Trained(model, list(model.parameters()))
    task = task or Task(label_smoothing=float(trainer.label_smoothing))
    while state.epoch < trainer.max_epochs and not state.stopped_early:
        epoch = state.epoch + 1  # epochs are numbered from 1 everywhere: log, MLflow step, tags
        if freeze_backbone_epochs:
            _freeze_backbone(model, frozen=epoch <= freeze_backbone_epochs)
        model.train()
        t0 = time.perf_counter()
        batches = epoch_batches(
            data,
            int(trainer.batch_size),
            seed=seed,
            epoch=epoch,
            generator=generator,
            drop_last=bool(trainer.drop_last),
            device=device,
        )
        batches = augmented(batches, augment, seed, epoch)
        check = partial(_raise_if_diverged, epoch=epoch) if device.type == "cpu" else None
        totals = train_epoch(
            trained,
            batches,
            n_batches,
            optimizer,
            schedule,
            trainer,
            autocast=autocast,
            check=check,
            task=task,
        )
        sums = tuple(float(t) for t in (totals.loss_sum, totals.correct, totals.grad_norm_sum))
        if not math.isfinite(sums[0]):
            raise DivergedError(epoch, sums[0])
        train_s = time.perf_counter() - t0
        state.step += totals.updates
        val, _, _ = evaluate_split(model, data, "val", autocast, task)
        metrics = epoch_metrics(totals, sums, val, schedule.lr, train_s, task.train_acc)
        schedule.after_epoch(metrics)
        improved = end_epoch(state, metrics, objective, trainer.early_stopping)
        if on_epoch_end is not None:
            on_epoch_end(state, improved)  # checkpoint first: what is reported can be resumed
        tracker.log_metrics(metrics, step=epoch)
        _show(epoch, trainer.max_epochs, metrics, objective.metric)
        if reporter is not None:
            reporter(epoch, metrics[objective.metric])
    return state


def _raise_if_diverged(losses: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(losses):
        raise DivergedError(epoch, losses.item())


def end_epoch(
    state: TrainState, metrics: dict[str, float], objective: Objective, stop: Any
) -> bool:
    """A run's end of an epoch: its history, best epoch and early stopping; whether it improved."""
    state.epoch += 1
    for k, v in metrics.items():
        state.history.setdefault(k, []).append(v)
    value = metrics[objective.metric]
    improved = objective.better(value, state.best_value)
    if improved:
        state.best_value, state.best_epoch = value, state.epoch
    _update_early_stopping(state, metrics, stop, objective)
    return improved


def grad_norm(params: list[nn.Parameter], clip: float, stacked: bool = False) -> torch.Tensor:
    """Total gradient norm before clipping the gradients to `clip`; stacked: each replica's (K,),
    each replica's gradients clipped as clip_grad_norm_ clips one model's. Without a limit one
    model's gradients are only measured, with one fused per-tensor norm (half the time of
    get_total_norm, which regroups the tensors by device and dtype every step: the model is on
    one device, and stack promotes mixed dtypes)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not stacked:
        if not math.isinf(clip):
            return torch.nn.utils.clip_grad_norm_(params, clip).detach()
        if not grads:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack(tensor_norms(grads)))
    per_tensor = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    norms = torch.linalg.vector_norm(per_tensor, dim=0)
    if not math.isinf(clip):
        coef = (clip / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
    return norms.detach()


def _update_early_stopping(
    state: TrainState, metrics: dict[str, float], stop: Any, objective: Objective
) -> None:
    if not stop or not stop.patience:
        return
    metric = stop.metric or objective.metric
    mode = {"max": "maximize", "min": "minimize"}.get(stop.mode or "")
    watch = Objective(metric, mode or direction_of(metric) or objective.direction)
    value = metrics[watch.metric]
    if watch.better(value, state.stop_best, stop.min_delta):
        state.stop_best, state.bad_epochs = value, 0
    else:
        state.bad_epochs += 1
        state.stopped_early = state.bad_epochs >= stop.patience
        if state.stopped_early:
            log.info(
                "early stopping: %s did not improve for %d epochs", watch.metric, stop.patience
            )


def _freeze_backbone(model: nn.Module, frozen: bool) -> None:
    head = {id(p) for p in model.head.parameters()}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(not frozen)


def _show(epoch: int, total: int, m: dict[str, float], objective: str = "val/acc") -> None:
    """One line per epoch, on the console and in the job's train.log: the run's progress and
    its history, kept (val/acc where the task has one, and the objective)."""
    shown = [k for k in dict.fromkeys(("val/acc", objective)) if k in m and k != "val/loss"]
    values = "".join(f" {k}={m[k]:.4f}" for k in shown)
    log.info(
        f"epoch {epoch}/{total} train/loss={m['train/loss']:.4f} val/loss={m['val/loss']:.4f}"
        f"{values} lr={m['opt/lr']:.3g} ({m['perf/epoch_s']:.2f}s)"
    )
