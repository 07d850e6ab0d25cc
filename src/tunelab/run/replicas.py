"""Many seeds in one pass: K replicas of one config trained as one batched computation.

Parameters and buffers are stacked [K, ...] and the model runs under torch.func.vmap. The loss is
the sum of the replicas' mean losses, so each gets its own gradient, and an elementwise optimizer
over the stacked tensors is K independent optimizers sharing one lr schedule. Replica k is the
sequential run `seed=seeds[k]`: its initial weights, its batch order (its own generator), losses,
metrics, best epoch and early stop as loop.fit has them, from loop's own training epoch and
evaluation. A replica whose loss becomes non-finite fails with fit's reason, one that stops early
finishes; both leave the stack at the epoch's end and the others go on.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, vmap

from tunelab.build import build_training
from tunelab.data.loader import epoch_batches
from tunelab.optim.lr_schedule import batches_per_epoch
from tunelab.run.loop import (
    DivergedError,
    Objective,
    Trained,
    TrainState,
    end_epoch,
    epoch_metrics,
    evaluate_all,
    train_epoch,
)
from tunelab.run.replica_rules import can_batch, config_reason
from tunelab.run.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One seed's run: its TrainState, outcome and final (and best-epoch) weights, unstacked."""

    seed: int
    state: TrainState = field(default_factory=TrainState)
    status: str = "RUNNING"  # FINISHED | FAILED
    reason: str | None = None
    diverged: tuple[int, float] | None = None  # a FAILED replica's DivergedError (epoch, loss)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "state": self.state.state_dict()}

    @classmethod
    def from_state(cls, saved: dict[str, Any]) -> Replica:
        return cls(**{**saved, "state": TrainState(**saved["state"])})


class _Stack:
    """The replicas still training as one computation. Row i of the parameters [K, ...] (what the
    optimizer steps), of the buffers [K, ...] (BatchNorm's running statistics, updated in place
    under vmap) and of this epoch's sums is self.replicas[i]."""

    def __init__(self, models: list[nn.Module], replicas: list[Replica]) -> None:
        states = [m.state_dict() for m in models]
        self.keys = list(states[0])
        self.module = copy.deepcopy(models[0])  # names, groups and the forward of one replica
        for name, p in self.module.named_parameters():
            p.data = torch.stack([s[name] for s in states])
        self.params = dict(self.module.named_parameters())
        self.buffers = {
            n: torch.stack([s[n] for s in states]) for n, _ in models[0].named_buffers()
        }
        self.all, self.optimizer = list(replicas), None
        self.replicas = [r for r in replicas if r.status == "RUNNING"]
        self.gens = [torch.Generator().manual_seed(r.seed) for r in self.replicas]
        self.sums = torch.empty(0)  # this epoch's (loss, correct, gradient norm) sums

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """(K, B, ...) inputs, or (B, ...) shared by all replicas -> (K, B, classes)."""
        one = partial(functional_call, self.module)  # one replica: its own (params, buffers)
        return vmap(lambda p, b, xb: one((p, b), (xb,)), in_dims=(0, 0, None if shared else 0))(
            self.params, self.buffers, x
        )

    def trained(self, shared: bool = False) -> Trained:
        """The replicas still training, for loop's epoch and evaluation (shared: every replica
        gets the same inputs)."""
        return Trained(partial(self, shared=shared), list(self.params.values()), stacked=True)

    def snapshot(self, schedule: Any) -> dict[str, Any]:
        """What training continues from: every replica (the running ones with their current
        weights), the optimizer, the schedule and the running replicas' batch-order generators."""
        for i, r in enumerate(self.replicas):
            r.weights = self.weights(i)
        return {
            "replicas": [r.state_dict() for r in self.all],
            "optimizer": self.optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generators": [g.get_state() for g in self.gens],
        }

    def weights(self, i: int) -> dict[str, torch.Tensor]:
        both = {**self.params, **self.buffers}
        return {k: both[k][i].detach().clone() for k in self.keys}

    def fail_nonfinite(self, values: torch.Tensor, epoch: int) -> None:
        for r, v in zip(self.replicas, values.tolist(), strict=True):
            if not math.isfinite(v) and r.status == "RUNNING":  # fit's DivergedError, as a status
                r.status, r.reason, r.diverged = "FAILED", str(DivergedError(epoch, v)), (epoch, v)

    def retire(self) -> int:
        """Take the replicas that failed or stopped early out (at an epoch's end): re-stack
        parameters, gradients, optimizer state and buffers without them. How many go on."""
        keep = [r.status == "RUNNING" for r in self.replicas]
        if all(keep):
            return len(keep)
        for i, r in enumerate(self.replicas):
            r.weights = r.weights if keep[i] else self.weights(i)
        rows = torch.tensor(keep, device=self.sums.device)
        for name, p in self.params.items():  # new leaves: autograd caches the old shapes
            new = self.params[name] = nn.Parameter(p.detach()[rows])
            new.grad = None if p.grad is None else p.grad[rows]  # left between micro-batches
            state = self.optimizer.state.pop(p, {})  # per-element state (moments) is per replica
            self.optimizer.state[new] = {
                k: v[rows] if torch.is_tensor(v) and v.shape == p.shape else v
                for k, v in state.items()
            }
            for group in self.optimizer.param_groups:
                group["params"] = [new if q is p else q for q in group["params"]]
            owner, _, attr = name.rpartition(".")
            setattr(self.module.get_submodule(owner), attr, new)
        self.buffers = {k: v[rows] for k, v in self.buffers.items()}
        self.sums = self.sums[rows]
        self.replicas = [r for r, k in zip(self.replicas, keep, strict=True) if k]
        self.gens = [g for g, k in zip(self.gens, keep, strict=True) if k]
        return len(self.replicas)


def fit_replicas(
    models: list[nn.Module],
    seeds: Sequence[int],
    cfg: DictConfig,
    data: dict[str, torch.Tensor],
    *,
    allow: frozenset[str] | None = None,
    on_epoch: Callable[[Replica, dict[str, float]], None] | None = None,
    autocast: Any = nullcontext,
    resume: dict[str, Any] | None = None,
    after_epoch: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
    task: Task | None = None,
) -> list[Replica]:
    """Train `models` (build_replicas(cfg, seeds, ...)) as loop.fit trains each run `seed=s`
    with cfg's optimizer, schedule and trainer; one Replica per seed, in order. data holds
    x_train/y_train/x_val/y_val on the device; on_epoch(replica, metrics) follows every epoch
    (it may raise, e.g. Pruned); after_epoch(epoch, snapshot) then gets the epoch and the function
    that takes what `resume` continues from (called only when a checkpoint is due). `task`: the
    run's classification task (class weights, label smoothing; default: trainer's smoothing)."""
    trainer, x, y = cfg.trainer, data["x_train"], data["y_train"]
    reason = config_reason(cfg) or can_batch(models[0])
    if reason:
        raise ValueError(f"cannot train as replicas: {reason}")
    n, n_batches = len(y), batches_per_epoch(len(y), trainer)
    task = task or Task(label_smoothing=float(trainer.label_smoothing))
    replicas = [Replica(int(s)) for s in seeds]
    if resume is not None:  # the running replicas continue from their saved weights
        replicas = [Replica.from_state(r) for r in resume["replicas"]]
        models = [m for m, r in zip(models, replicas, strict=True) if r.status == "RUNNING"]
        for m, r in zip(models, [r for r in replicas if r.status == "RUNNING"], strict=True):
            m.load_state_dict(r.weights)
    stack = _Stack([m.to(x.device) for m in models], replicas)
    optimizer, schedule = build_training(stack.module, cfg, n, allow=allow)
    stack.optimizer = optimizer
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        for g, saved in zip(stack.gens, resume["generators"], strict=True):
            g.set_state(saved)
    objective = Objective(cfg.objective.metric, cfg.objective.direction)
    first = stack.replicas[0].state.epoch + 1 if stack.replicas else int(trainer.max_epochs) + 1
    for epoch in range(first, int(trainer.max_epochs) + 1):
        stack.module.train()
        t0 = time.perf_counter()
        batches = _stacked_batches(data, stack.gens, epoch, trainer)
        # a replica whose loss turns non-finite fails; it trains on to the epoch's end, apart
        check = partial(stack.fail_nonfinite, epoch=epoch) if x.device.type == "cpu" else None
        totals = train_epoch(
            stack.trained(),
            batches,
            n_batches,
            optimizer,
            schedule,
            trainer,
            autocast=autocast,
            check=check,
            task=task,
        )
        stack.sums = torch.stack([totals.loss_sum, totals.correct, totals.grad_norm_sum], 1)
        stack.fail_nonfinite(stack.sums[:, 0], epoch)
        train_s = time.perf_counter() - t0
        for r in stack.replicas:
            r.state.step += totals.updates
        if not stack.retire():
            return replicas
        stack.module.eval()
        y_val = data["y_val"]
        val = evaluate_all(stack.trained(shared=True), data["x_val"], y_val, 256, autocast, task)
        for i, (r, sums) in enumerate(zip(stack.replicas, stack.sums.tolist(), strict=True)):
            own = {"loss": float(val[0][i]), **task.metrics(val[2][i], y_val)}
            # the batched epoch's time, shared by all replicas; samples per second per replica
            metrics = epoch_metrics(totals, tuple(sums), own, schedule.lr, train_s)
            if end_epoch(r.state, metrics, objective, trainer.early_stopping):
                r.best_weights = stack.weights(i)
            r.status = "FINISHED" if r.state.stopped_early else r.status
            if on_epoch is not None:
                on_epoch(r, metrics)
        _show(epoch, int(trainer.max_epochs), stack.replicas, train_s)
        if not stack.retire():
            break
        if after_epoch is not None:
            after_epoch(epoch, lambda: stack.snapshot(schedule))
    for i, r in enumerate(stack.replicas):
        r.status, r.weights = "FINISHED", stack.weights(i)
    return replicas


def _stacked_batches(
    data: dict[str, torch.Tensor], gens: list[torch.Generator], epoch: int, trainer: Any
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each replica's own batches of the epoch (its generator's order), stacked: (K, B, ...)
    inputs and (K, B) targets."""
    size, drop_last = int(trainer.batch_size), bool(trainer.drop_last)
    own = [
        epoch_batches(data, size, seed=0, epoch=epoch, generator=g, drop_last=drop_last)
        for g in gens  # each draws its order now, as a plain run's epoch does
    ]
    for parts in zip(*own, strict=True):
        yield torch.stack([x for x, _ in parts]), torch.stack([y for _, y in parts])


def _show(epoch: int, total: int, replicas: list[Replica], train_s: float) -> None:
    """One line per epoch: how many replicas train on and the spread of their val/acc."""
    accs = [r.state.history["val/acc"][-1] for r in replicas]
    log.info(
        f"epoch {epoch}/{total} {len(accs)} replicas val/acc {min(accs):.4f}..{max(accs):.4f} "
        f"({train_s:.2f}s)"
    )
