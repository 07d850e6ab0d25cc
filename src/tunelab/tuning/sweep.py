"""The sweep: ask a trial, run its seed replicates as Hydra jobs, tell the mean, record, analyse.

Replicates and pruning: every trial runs the same seeds, one after another. Only the first replicate
reports to the pruner (the same seed in every trial, so the pruner compares like with like); when it
is pruned the trial is PRUNED and the other seeds are not run. A surviving config runs under every
seed and Optuna is told the mean (per-seed values in the trial's user attrs, the std in MLflow).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tunelab.config.secrets import mask
from tunelab.config.space import build_space, describe, grid_values, suggest
from tunelab.reports import sweep as results
from tunelab.reports.runs_table import trials_table
from tunelab.run.context import RunContext, TrialRef, aggregate
from tunelab.tuning import devices, pruning
from tunelab.tuning import storage as studies
from tunelab.tuning.inprocess import plan_launch
from tunelab.tuning.jobs import Outcome, can_group, job_overrides, seed_outcomes
from tunelab.tuning.samplers import make_sampler
from tunelab.tuning.settings import tracking_target
from tunelab.tuning.sweep_runs import SweepRuns

log = logging.getLogger(__name__)


class SweepStopped(RuntimeError):
    """The sweep ended before its budget: too many failed trials. Its results are still written."""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sampler_ready: bool = False
    stop: str = ""
    failed: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)


class Sweep:
    """One sweep process working on a (possibly shared, possibly resumed) study."""

    def __init__(
        self, conf: dict[str, Any], config: DictConfig, launcher: Any, arguments: list[str]
    ):
        self.conf, self.config, self.launcher = conf, config, launcher
        sel = OmegaConf.select
        objectives = conf.get("objectives") or [
            {"metric": sel(config, "objective.metric", default="val/acc"),
             "direction": sel(config, "objective.direction", default="maximize")}]  # fmt: skip
        self.metrics = [o["metric"] for o in objectives]
        self.directions = [o["direction"] for o in objectives]
        self.space, self.fixed = build_space(conf.get("params"), arguments, conf.get("conditional"))
        if not self.space:
            raise ValueError("empty search space: set hydra.sweeper.params or pass sweep overrides")
        self.sampler_spec = dict(conf.get("sampler") or {"name": "tpe"})
        self.sampler_name = self.sampler_spec["name"]
        self.n_jobs = max(1, int(conf.get("n_jobs") or 1))
        self._check_launch()
        self.tracking_uri, self.experiment = tracking_target(conf, config)
        self.study_name = conf.get("study_name") or f"{self.experiment}-{self.sampler_name}"
        self.storage_url = studies.normalize_storage(
            conf.get("storage") or studies.default_storage(self.tracking_uri)
        )
        self.seeds: list[int | None] = list(conf.get("seeds") or [None])
        self.together = len(self.seeds) > 1 and can_group(conf, config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.context_path = str(self.sweep_dir / "sweep_context.json")
        self.state = _State()
        # the enclosing context (e.g. a DVC stage) and hydra.sweeper.tags go on every run
        self.ctx = RunContext.from_env().derive(tags=conf.get("tags") or {})
        self.runs: SweepRuns | None = None

    def _check_launch(self) -> None:
        if self.sampler_name == "line":
            floats = [p for p in self.space if isinstance(p.dist, FloatDistribution)]
            if len(self.space) != 1 or len(floats) != 1:
                raise ValueError("search=line needs exactly one continuous parameter (an interval)")
            self.n_jobs = 1  # golden-section steps depend on the previous result
        cached = bool(self.conf.get("cached_compose", True))
        self.runner, self.n_jobs = plan_launch(self.launcher, self.n_jobs, len(self.fixed), cached)
        self.n_jobs, self.devices = devices.plan(self.conf, self.config, self.n_jobs)

    # ---- study -----------------------------------------------------------------------------
    def open(self) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage = studies.open_storage(self.storage_url, self.conf)
        with studies.ask_lock(self.storage, self.storage_url, self.study_name):  # one at a time
            self.study = studies.open_study(
                self.study_name, self.storage, self.directions, self.conf.get("pruner"),
                self.storage_url,
            )  # fmt: skip
            stale = studies.fail_stale(
                self.storage, self.study, int(self.conf.get("max_retries", 1))
            )
            attrs = self.study.user_attrs
            seed = self.sampler_spec.get("seed")
            if seed is None:
                seed = attrs.get("sampler_seed", random.SystemRandom().randrange(2**31))
            if self.conf.get("baseline") and "baseline_enqueued" not in attrs:
                studies.enqueue_baseline(self.study, self.space, self.config)
            for key, value in {
                "sampler_seed": seed,
                "sampler": self.sampler_name,
                "metrics": self.metrics,
                "seeds": self.seeds,
                "space": describe(self.space),
            }.items():
                if key not in attrs:
                    self.study.set_user_attr(key, value)
        self._open_records(seed)
        if stale:
            log.warning(
                "trials %s were left RUNNING by a dead sweep: marked FAIL and re-queued", stale
            )
        self.seed = int(seed)
        self.grid = None
        self.n_trials = int(self.conf.get("n_trials") or 20)
        self.max_retries = int(self.conf.get("max_retries", 1))
        if self.sampler_name == "grid":
            self.grid = grid_values(self.space, int(self.conf.get("grid_points") or 5))
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in self.grid.values()))
        context = {"study_name": self.study_name, "storage": self.storage_url,
                   "pruner": self.conf.get("pruner"), "directions": self.directions}  # fmt: skip
        pruning.write_context(self.context_path, context)  # readable by this user only

    def _open_records(self, seed: int) -> None:
        """The sweep's MLflow run: one per study, found again by its `run_key` tag on resume and
        by every other process working on the same study."""
        if not self.tracking_uri:
            return
        self.runs = SweepRuns(self.tracking_uri, self.experiment, self.study_name)
        tags = {
            **self.ctx.tags,
            "sampler": self.sampler_name,
            "pruner": (self.conf.get("pruner") or {}).get("name", "none"),
            "optuna_storage": mask(self.storage_url),
            "sampler_seed": str(seed),
        }
        self.runs.open_parent(tags, self.ctx.parent_run_id)

    def _ask(self) -> tuple[optuna.Trial, dict[str, Any]] | None:
        """Next trial within the study-wide budget (atomic across processes on a file storage)."""
        with self.state.lock, studies.ask_lock(self.storage, self.storage_url, self.study_name):
            if self.state.stop or (self.deadline and time.time() > self.deadline):
                return None
            studies.fail_lost(self.storage, self.study, self.runs)  # their machines stopped
            trials = self.study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and studies.counted(trials) >= self.n_trials:
                return None
            if not self.state.sampler_ready:
                fixed_seed = self.sampler_name in ("qmc", "grid", "line")
                seed = self.seed if fixed_seed else self.seed + len(trials)
                self.study.sampler = make_sampler(self.sampler_spec, seed, self.grid)
                self.state.sampler_ready = True
            trial = self.study.ask()
            studies.claim(self.storage, self.study, trial)
            return trial, suggest(trial, self.space)

    # ---- one trial -------------------------------------------------------------------------
    def _run_trial(self, trial: optuna.Trial, params: dict[str, Any], slot: int = 0) -> None:
        start, on = time.time(), devices.overrides(self.devices, slot)  # the slot's GPU, if any
        tags = {"sweep": self.study_name, "trial": str(trial.number), "sampler": self.sampler_name,
                "swept": ",".join(p.name for p in self.space), **devices.tags(self.devices, slot)}  # fmt: skip
        run_id = None
        if self.runs:
            try:
                run_id = self.runs.start_trial(trial.number, params, {**self.ctx.tags, **tags})
            except Exception as exc:  # the tracking server is away: this trial fails and re-queues
                return self._tell(trial, Outcome("fail", f"tracking unavailable: {mask(str(exc))}"[:500]), None, params)  # fmt: skip
            trial.set_user_attr("mlflow_run_id", run_id)
        pruning.register(self.context_path, trial)
        out = Outcome("complete")
        beat = studies.heartbeat(self.storage, self.study_name, trial.number).start()
        try:
            seed_key = str(self.conf.get("seed_key") or "seed")

            def overrides_for(i: int) -> list[str]:
                ctx = self.ctx.derive(
                    parent_run_id=run_id,
                    tags={**tags, "role": "seed", "replicate": str(i)},
                    log_model=False,
                    trial=TrialRef(self.context_path, trial.number, report=i == 0),
                )
                return job_overrides([*self.fixed, *on], params, self.seeds[i], seed_key, ctx)

            def launch(overrides: list[str], i: int) -> Any:
                first = trial.number * len(self.seeds) + i
                return self.runner.launch([overrides], initial_job_idx=first)[0]

            together = self.together and seed_key == "seed"
            outcomes = seed_outcomes(launch, self.seeds, overrides_for, self.metrics, together)
            for kind, reason, values, job_dir, job_run in outcomes:
                out.job_dirs.append(job_dir)
                if kind != "complete":
                    out.kind, out.reason = kind, reason
                    break
                out.per_seed.append(values)
                out.run_ids.append(job_run or "")
        finally:
            beat.stop()
            pruning.unregister(self.context_path, trial)
        self._tell(trial, out, run_id, params)
        with self.state.lock:
            self.state.spans.append((start, time.time()))

    def _tell(
        self, trial: optuna.Trial, out: Outcome, run_id: str | None, params: dict[str, Any]
    ) -> None:
        means = aggregate(out.per_seed) if out.kind == "complete" else {}
        end_tags: dict[str, str] = {}
        with self.state.lock, studies.ask_lock(self.storage, self.storage_url, self.study_name):
            if not studies.still_running(self.storage, self.study, trial.number):
                return studies.tell_late(self, trial, out, means, run_id, params)
            if out.run_ids and out.run_ids[0]:
                trial.set_user_attr("mlflow_seed_run_ids", out.run_ids)
            if out.kind == "complete":
                if len(self.seeds) > 1:
                    for m in self.metrics:
                        trial.set_user_attr(f"seeds:{m}", [v[m] for v in out.per_seed])
                self.study.tell(trial, [means[m] for m in self.metrics])
            elif out.kind == "pruned":
                self.study.tell(trial, state=TrialState.PRUNED)
                end_tags["pruned"] = "true"
            else:  # a server or database away is not the config's fault: not counted, run again
                away = studies.infrastructure_failure(trial, out.reason)
                self.study.tell(trial, state=TrialState.FAIL)
                if away:
                    studies.requeue(self.study, trial.params, trial.user_attrs, self.max_retries)
                end_tags["failure_reason"] = out.reason[:250]
                self.state.failed += 1
                limit = float(self.conf.get("max_failure_rate", 0.5)) * self.n_trials
                if self.state.failed > limit and not self.state.stop:
                    self.state.stop = f"{self.state.failed} failed trials exceed max_failure_rate (limit {limit:g})"
        state = {"complete": "COMPLETE", "pruned": "PRUNED"}.get(out.kind, "FAIL")
        shown = {m: means.get(m) for m in self.metrics} if means else ""
        log.info("trial %d %s %s %s", trial.number, state, shown, out.reason)
        if self.runs and run_id:
            end_tags.update(optuna_state=state, n_seeds=str(len(out.per_seed)))
            self.runs.end_trial(run_id, out.kind, means, end_tags, params)

    # ---- loop + analysis -------------------------------------------------------------------
    def _worker(self, slot: int = 0) -> None:
        while (nxt := self._ask()) is not None:
            self._run_trial(*nxt, slot)

    def run(self) -> dict[str, Any]:
        self.open()
        timeout = self.conf.get("timeout_s")
        self.deadline = time.time() + float(timeout) if timeout else None
        t0 = time.time()
        try:
            if self.n_jobs == 1:
                self._worker()
            else:
                with ThreadPoolExecutor(self.n_jobs, thread_name_prefix="trial") as pool:
                    for f in [pool.submit(self._worker, i) for i in range(self.n_jobs)]:
                        f.result()
        except BaseException:
            self.state.stop = "interrupted"
            if self.runs:
                self.runs.interrupted()
            raise
        wall = time.time() - t0
        busy = sum(e - s for s, e in self.state.spans)
        util = busy / (self.n_jobs * wall) if wall > 0 and self.state.spans else 0.0
        ran_here = len(self.state.spans)
        if studies.reports_due(self.storage, self.storage_url, self.study, ran_here, self.runs):
            result = results.finalize(self, util, ran_here)
        else:
            result = {**results.summary(self.study, self.metrics), "reported_here": False}
        if self.state.stop:
            raise SweepStopped(f"sweep stopped: {self.state.stop}")
        return result


def run_sweep(
    conf: dict[str, Any], config: DictConfig, launcher: Any, arguments: list[str]
) -> dict:
    """Entry point used by the Hydra plugin."""
    sweep = Sweep(conf, config, launcher, arguments)
    result = sweep.run()
    log.info("%s", trials_table(sweep.study, sweep.metrics))
    return result
