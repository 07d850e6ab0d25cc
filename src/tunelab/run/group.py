"""`trainer.replicas`: several seeds of one configuration in one process. The seeds are
`seed, seed+1, ...` (replicas=K) or an explicit list. Where the model and config allow, they train
as one batched computation (run/replicas.py); otherwise one after another, with the reason logged.
Either way each seed is recorded as its own MLflow run, the run `seed=s` would record, tagged
`replica_group`; the group checkpoints after every epoch and a re-run resumes it."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import nn

from tunelab import build
from tunelab.run import signals
from tunelab.run.checkpoint import serialize, write_atomic
from tunelab.run.context import RunContext, RunResult, aggregate
from tunelab.run.loop import DivergedError, TrainState
from tunelab.run.prepare import autocast_for, run_data, setup
from tunelab.run.record import end_failed, final_outcome, finish_run, start_run
from tunelab.run.replica_rules import (
    build_replicas,
    can_batch,
    config_reason,
    data_reason,
    has_convolutions,
)
from tunelab.run.replicas import Replica, fit_replicas
from tunelab.run.store import RunStore

log = logging.getLogger(__name__)
SAVED = "group.pt"  # the batched group's checkpoint
SEEDS_DONE = "seeds.pt"  # the seeds a group trained one after another has finished
TrainOne = Callable[[DictConfig, RunContext, Any], RunResult]  # api.train(cfg, ctx, tracker)


def replica_seeds(cfg: DictConfig) -> list[int] | None:
    """The seeds trainer.replicas asks for; None for a plain run of cfg.seed."""
    value = OmegaConf.select(cfg, "trainer.replicas", default=1)
    if isinstance(value, (list, ListConfig)):
        seeds = [int(s) for s in value]
    else:
        seeds = [int(cfg.seed) + k for k in range(int(value))]
    return None if seeds == [int(cfg.seed)] else seeds


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the plain run `seed=<seed>` that a replica stands for."""
    one = cfg.copy()
    with open_dict(one):
        one.seed = int(seed)
        one.trainer.replicas = 1
    return one


def train_group(cfg: DictConfig, ctx: RunContext, train: TrainOne) -> RunResult:
    """Train every seed of trainer.replicas; a RunResult whose `replicas` are the seeds' results.
    `train` is the plain run, for seeds that cannot batch. Raises when no seed finished (the
    first failure), or when the group is pruned or stopped."""
    seeds = replica_seeds(cfg) or [int(cfg.seed)]
    configs = [seed_config(cfg, s) for s in seeds]
    base = setup(configs[0], ctx)
    models = build_replicas(
        cfg, seeds, base.splits.input_shape, base.splits.num_classes, base.allow
    )
    reason = data_reason(base.splits) or batching_reason(cfg, models[0], base.device)
    contexts = [_replica_context(ctx, s, k, len(seeds)) for k, s in enumerate(seeds)]
    if reason:
        log.warning(
            "trainer.replicas: the %d seeds train one after another: %s", len(seeds), reason
        )
        return _summary(cfg, _one_after_another(cfg, configs, contexts, ctx, train, base.allow))
    return _summary(cfg, _batched(cfg, configs, contexts, ctx, base, models))


def batching_reason(cfg: DictConfig, model: nn.Module, device: Any) -> str | None:
    """None when the replicas train batched, else why they train one after another: the model or
    config cannot batch (replica_rules), trainer.batch_replicas=false, or (auto) convolutions on
    a CPU, where stacked replicas' grouped convolutions train slower than one run after another
    (python bench/replicas.py measures both)."""
    mode = cfg.trainer.get("batch_replicas", "auto")
    if reason := config_reason(cfg) or can_batch(model):
        return reason
    if mode is False:
        return "trainer.batch_replicas=false"
    if mode == "auto" and has_convolutions(model) and device.type == "cpu":
        return (
            "on a CPU, batched convolutions train slower than one run after another "
            "(trainer.batch_replicas=true batches them anyway)"
        )
    return None


def _replica_context(ctx: RunContext, seed: int, k: int, n: int) -> RunContext:
    """The context of replica k: its own seed where the group's command line had the group's
    (run names and the `overrides` tag read as its plain run's), and only the first reports."""
    tags = {"replica": f"{k + 1}/{n}"}
    if "replicate" in ctx.tags:  # a sweep's seed replicates: the group is all of them
        tags["replicate"] = str(k)
    group_keys = ("seed=", "trainer.replicas=")
    rest = [o for o in ctx.overrides if not o.lstrip("+").startswith(group_keys)]
    overrides = (f"seed={seed}", *rest) if ctx.overrides else ()
    return ctx.derive(tags=tags, reporter=ctx.reporter if k == 0 else None, overrides=overrides)


def _one_after_another(
    group_cfg: DictConfig,
    configs: list[DictConfig],
    contexts: list[RunContext],
    ctx: RunContext,
    train: TrainOne,
    allow: frozenset[str],
) -> list[RunResult]:
    """Each seed as its plain run, recorded by a tracker of the group's (which knows the run of a
    seed that diverged). The group remembers the seeds it has finished: a re-run after a crash
    keeps their runs and continues with the first unfinished one (resumed by its own
    checkpoint)."""
    store = RunStore.for_config(group_cfg)
    with store.locked():
        saved = store.resume_saved(str(group_cfg.trainer.resume), SEEDS_DONE)
        group = saved["group"] if saved else ctx.tags.get("replica_group") or uuid.uuid4().hex[:12]
        done: dict[str, dict] = dict(saved["results"]) if saved else {}
        for cfg, seed_ctx in zip(configs, contexts, strict=True):
            if str(cfg.seed) in done:
                log.info(
                    "trainer.replicas: seed %s finished before: run %s kept",
                    cfg.seed,
                    done[str(cfg.seed)]["run_id"],
                )
                continue
            tracker = build.build_tracker(cfg.tracking, allow)
            try:
                result = train(cfg, seed_ctx.derive(tags={"replica_group": group}), tracker)
            except DivergedError as exc:  # a result: the other seeds go on
                result = _failed(tracker.run_id, cfg, str(exc))
            done[str(cfg.seed)] = {**result.__dict__, "checkpoint": str(result.checkpoint or "")}
            store.save({"model": {}, "group": group, "results": done}, SEEDS_DONE)
            store.flush()  # on disk before the next seed starts
        store.mark_done()
    return [_result(done[str(cfg.seed)]) for cfg in configs]


def _result(saved: dict) -> RunResult:
    return RunResult(
        **{**saved, "checkpoint": Path(saved["checkpoint"]) if saved["checkpoint"] else None}
    )


def _batched(
    cfg: DictConfig,
    configs: list[DictConfig],
    contexts: list[RunContext],
    ctx: RunContext,
    base: Any,
    models: list[Any],
) -> list[RunResult]:
    seeds, splits, device = [int(c.seed) for c in configs], base.splits, base.device
    data = run_data(splits, device)  # in memory: streamed data trains one seed at a time
    autocast = autocast_for(cfg.trainer, device)
    store, every = RunStore.for_config(cfg), int(cfg.trainer.checkpoint_every_epochs)
    metric = str(cfg.objective.metric)
    with store.locked(), signals.signals_raise():
        saved = store.resume_saved(str(cfg.trainer.resume), SAVED)
        group = saved["group"] if saved else ctx.tags.get("replica_group") or uuid.uuid4().hex[:12]
        contexts = [c.derive(tags={"replica_group": group}) for c in contexts]
        trackers = [build.build_tracker(cfg.tracking, base.allow) for _ in seeds]
        replicas = [Replica.from_state(r) for r in saved["replicas"]] if saved else None
        run_ids = saved["run_ids"] if saved else [None] * len(seeds)
        for k, tracker in enumerate(trackers):
            state = replicas[k].state if replicas else None
            start_run(
                tracker, configs[k], contexts[k], splits, device, run_ids[k], state, base.task
            )
        run_ids, ended = [t.run_id for t in trackers], set()
        states = [r.state for r in replicas] if replicas else [TrainState() for _ in seeds]
        log.info(
            "trainer.replicas: seeds %s train as one batched computation (group %s)", seeds, group
        )

        def on_epoch(replica: Replica, metrics: dict[str, float]) -> None:
            k = seeds.index(replica.seed)
            states[k] = replica.state
            trackers[k].log_metrics(metrics, step=replica.state.epoch)
            if contexts[k].reporter is not None:
                contexts[k].reporter(replica.state.epoch, metrics[metric])

        def after_epoch(epoch: int, snapshot: Callable[[], dict[str, Any]]) -> None:
            if every and epoch % every == 0:
                # "model": every tunelab checkpoint has one; here the weights are per replica
                store.save({**snapshot(), "model": {}, "group": group, "run_ids": run_ids}, SAVED)

        try:
            done = fit_replicas(
                models,
                seeds,
                cfg,
                data,
                allow=base.allow,
                on_epoch=on_epoch,
                autocast=autocast,
                resume=saved,
                after_epoch=after_epoch,
                task=base.task,
            )
            results = []
            for k, r in enumerate(done):
                results.append(
                    _finish(
                        r,
                        trackers[k],
                        configs[k],
                        contexts[k],
                        models[k],
                        data,
                        splits,
                        store,
                        autocast,
                    )
                )
                ended.add(k)
        except BaseException as exc:
            for k, tracker in enumerate(trackers):
                if k not in ended:
                    end_failed(tracker, exc, states[k])
            if final_outcome(exc):
                store.mark_done(final_outcome(exc))
            raise
        store.mark_done()
    return results


def _finish(
    replica: Replica,
    tracker: Any,
    cfg: DictConfig,
    ctx: RunContext,
    model: Any,
    data: dict,
    splits: Any,
    store: RunStore,
    autocast: Any,
) -> RunResult:
    """Record one replica's outcome as its plain run would: FAILED with why, or the selected
    epoch's weights evaluated, tested and logged."""
    if replica.status == "FAILED":
        end_failed(tracker, DivergedError(*replica.diverged), replica.state)
        return _failed(tracker.run_id, cfg, str(replica.reason))
    own = RunStore(store.dir / f"seed-{replica.seed}")
    write_atomic(
        serialize({"model": replica.best_weights, "epoch": replica.state.best_epoch}), own.best_path
    )
    model.load_state_dict(replica.weights)
    optimizer = str(cfg.optimizer.get("name", ""))
    summary = finish_run(tracker, ctx, optimizer, model, data, replica.state, splits, own, autocast)
    return RunResult(
        run_id=tracker.run_id,
        status="FINISHED",
        objective=str(cfg.objective.metric),
        metrics=summary,
        history=replica.state.history,
        checkpoint=own.best_path,
    )


def _failed(run_id: str | None, cfg: DictConfig, reason: str) -> RunResult:
    return RunResult(run_id, "FAILED", str(cfg.objective.metric), {}, reason=reason)


def _summary(cfg: DictConfig, results: list[RunResult]) -> RunResult:
    """The group's result: the mean (and sample std) of each metric over the finished seeds."""
    finished = [r for r in results if r.status == "FINISHED"]
    if not finished:
        first = results[0].reason
        log.error("trainer.replicas: every seed failed (%s)", first)
        raise DivergedError(_epoch_of(first), math.nan)
    failed = [r for r in results if r.status != "FINISHED"]
    if failed:
        log.warning(
            "trainer.replicas: %d of %d seeds failed: %s",
            len(failed),
            len(results),
            "; ".join(r.reason for r in failed),
        )
    metrics = aggregate([r.metrics for r in finished])
    return RunResult(
        finished[0].run_id, "FINISHED", str(cfg.objective.metric), metrics, replicas=results
    )


def _epoch_of(reason: str) -> int:
    words = reason.rsplit("epoch", 1)
    return int(words[1]) if len(words) == 2 and words[1].strip().isdigit() else 0
