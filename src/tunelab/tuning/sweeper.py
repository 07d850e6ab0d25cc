"""The sweep: ask a trial, run its seed replicates as Hydra jobs, tell the mean, record, analyse.

Replicates and pruning: every trial runs the same seeds, one after another. Only the first replicate
reports to the pruner (the same seed in every trial, so the pruner compares like with like); when it
is pruned the trial is PRUNED and the other seeds are not run. A surviving config runs under every
seed and Optuna is told the mean (per-seed values in the trial's user attrs, the std in MLflow).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tunelab.compat.hydra_internals import runs_in_process
from tunelab.config.constraints import parse_all
from tunelab.config.identity import changed_keys, digest, fixed_settings
from tunelab.config.search_methods import FIDELITY_PRUNERS, SAMPLERS, SamplerFacts
from tunelab.config.secrets import mask
from tunelab.config.space import Param, build_space, describe, grid_values, suggest
from tunelab.reports import sweep_outputs
from tunelab.reports.runs_table import trials_table
from tunelab.run import signals
from tunelab.run.context import RunContext, TrialRef, aggregate
from tunelab.tags import (
    DATA_FRACTION,
    FAILURE_REASON,
    FEASIBLE,
    PREEMPTED,
    ROLE,
    WARM_START_FROM,
    Role,
)
from tunelab.tuning import devices, pruning, slurm_jobs, study_storage
from tunelab.tuning.inprocess import plan_launch
from tunelab.tuning.jobs import (
    Interrupted,
    Outcome,
    can_group,
    job_overrides,
    preemptions,
    seed_outcomes,
)
from tunelab.tuning.samplers import make_sampler
from tunelab.tuning.settings import SweepSettings, TunelabSweeperConf, tracking_target
from tunelab.tuning.sweep_runs import SweepRuns

log = logging.getLogger(__name__)


class SettingsChanged(ValueError):
    """The named study's earlier trials held other settings fixed than this command does."""


class SweepStopped(RuntimeError):
    """The sweep ended before its budget: too many failed trials. Its results are still written."""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sampler_ready: bool = False
    stop: str = ""
    failed: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)
    signum: int = 0  # the signal that stopped the sweep
    signals: int = 0  # how many the sweep's own handler received
    in_job: bool = False  # the main thread runs a job here (in-process launcher)


class Sweep:
    """One sweep process working on a (possibly shared, possibly resumed) study."""

    def __init__(
        self, settings: TunelabSweeperConf, config: DictConfig, launcher: Any, arguments: list[str]
    ):
        self.settings, self.config, self.launcher = settings, config, launcher
        sel = OmegaConf.select
        objectives = [
            {"metric": o.metric, "direction": o.direction} for o in settings.objectives or []
        ] or [
            {
                "metric": sel(config, "objective.metric", default="val/acc"),
                "direction": sel(config, "objective.direction", default="maximize"),
            }
        ]
        self.metrics = [o["metric"] for o in objectives]
        self.directions = [o["direction"] for o in objectives]
        self.constraints = parse_all(settings.constraints)
        # what each job must report: the objectives and the constrained metrics
        self.watched = list(dict.fromkeys(self.metrics + [c.metric for c in self.constraints]))
        self.space, self.fixed = build_space(settings.params, arguments, settings.conditional)
        if not self.space:
            raise ValueError("empty search space: set hydra.sweeper.params or pass sweep overrides")
        self.sampler_name = settings.sampler.name
        self.sampler_facts = SAMPLERS[self.sampler_name]
        _check_space(self.sampler_facts, self.space)
        if self.constraints and not self.sampler_facts.constrained:
            log.info(
                "sampler %s samples without the constraints; the best trial is chosen among "
                "the trials that meet them",
                self.sampler_name,
            )
        # the training-set fraction of each rung (fidelity=data), the pruner's steps: fraction x
        # rung_steps; one rung of all the data (fidelity=epochs: the jobs report every epoch)
        self.rungs, self.rung_steps = data_rungs(settings)
        if len(self.rungs) > 1:
            settings = dataclasses.replace(settings, pruner=rung_pruner(settings))
            self.settings = settings
        self.runner, self.n_jobs, self.devices = _launch_plan(
            settings, config, launcher, len(self.fixed), self.sampler_facts.sequential
        )
        self.tracking_uri, self.experiment = tracking_target(settings, config)
        # what the trials hold fixed: a study never mixes trials run under other settings
        held = fixed_settings(config, [p.name for p in self.space])
        held.update({"hydra.sweeper.seeds": settings.seeds, "objectives": objectives})
        if settings.fidelity != "epochs":  # its trials' intermediate values are of other rungs
            held.update(fidelity=settings.fidelity, data_rungs=settings.data_rungs)
        if self.constraints:  # a study's trials are judged feasible under one set of constraints
            held["constraints"] = [c.text for c in self.constraints]
        self.held = json.loads(json.dumps(held, default=str))  # as the study stores it
        self.study_name = settings.study_name or (
            f"{self.experiment}-{self.sampler_name}-{digest(self.held, 8)}"
        )
        self.storage_url = study_storage.normalize_storage(
            settings.storage or study_storage.default_storage(self.tracking_uri)
        )
        self.seeds: list[int | None] = list(settings.seeds or [None])
        self.together = len(self.seeds) > 1 and can_group(settings.replicas, config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.context_path = str(self.sweep_dir / "sweep_context.json")
        self.state = _State()
        # the enclosing context (e.g. a DVC stage) and hydra.sweeper.tags go on every run
        self.ctx = RunContext.from_env().derive(tags=settings.tags)
        self.runs: SweepRuns | None = None
        self.n_trials = settings.n_trials
        self.max_retries = settings.max_retries
        self.deadline: float | None = None  # set when the trials start (hydra.sweeper.timeout_s)
        self.grid: dict[str, list] | None = None
        if self.sampler_facts.gridded:
            self.grid = grid_values(self.space, settings.grid_points)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in self.grid.values()))
        # an earlier study's best configurations, read now: a missing one fails before the sweep
        # creates its directory, run or study
        self.warm: study_storage.WarmStart | None = None
        self.warm_source: str | None = None
        if settings.warm_start.study is not None:
            self.warm = study_storage.read_warm_start(
                settings.warm_start,
                self.storage_url,
                self.study_name,
                self.space,
                self.directions,
                self.n_trials,
            )

    # ---- study -----------------------------------------------------------------------------
    def open(self) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage = study_storage.open_storage(self.storage_url, self.settings)
        with study_storage.ask_lock(
            self.storage, self.storage_url, self.study_name
        ):  # one at a time
            self.study = study_storage.open_study(
                self.study_name,
                self.storage,
                self.directions,
                self.settings.pruner,
                self.storage_url,
            )
            one_job = len(self.seeds) == 1 or self.together  # SLURM jobs a restart waits for
            self.adopted = slurm_jobs.adopt(self.storage, self.study, one_job)
            stale = study_storage.fail_stale(self.storage, self.study, self.max_retries)
            attrs = self.study.user_attrs
            self._check_settings(attrs.get("fixed_settings"))
            seed = self.settings.sampler.seed
            if seed is None:
                seed = attrs.get("sampler_seed", random.SystemRandom().randrange(2**31))
            if self.settings.baseline and "baseline_enqueued" not in attrs:
                study_storage.enqueue_baseline(self.study, self.space, self.config)
            if self.warm is not None:
                study_storage.enqueue_warm_start(self.study, self.warm)
            warm = self.study.user_attrs.get(WARM_START_FROM)
            self.warm_source = warm["source"] if isinstance(warm, dict) else None
            for key, value in {
                "sampler_seed": seed,
                "sampler": self.sampler_name,
                "metrics": self.metrics,
                "seeds": self.seeds,
                "space": describe(self.space),
                "fixed_settings": self.held,
            }.items():
                if key not in attrs:
                    self.study.set_user_attr(key, value)
        self._open_records(seed)
        if stale:
            log.warning(
                "trials %s were left RUNNING by a dead sweep: marked FAIL and re-queued", stale
            )
        self.seed = int(seed)
        context = {
            "study_name": self.study_name,
            "storage": self.storage_url,
            "pruner": dataclasses.asdict(self.settings.pruner),
            "directions": self.directions,
        }
        pruning.write_context(self.context_path, context)  # readable by this user only

    def _check_settings(self, recorded: dict[str, Any] | None) -> None:
        """Refuse to add trials to a study whose earlier trials held other settings fixed (its best
        trial and best overrides would mix both); a study from before the check is not judged."""
        if recorded is None or recorded == self.held:
            return
        lines = changed_keys(recorded, self.held)
        more = f"\n  … and {len(lines) - 12} more" if len(lines) > 12 else ""
        shown = "\n  ".join(lines[:12]) + more
        raise SettingsChanged(
            f"study '{self.study_name}' in {mask(self.storage_url)} was run with other fixed "
            f"settings (recorded -> now):\n  {shown}\nrun it with the recorded settings to resume "
            "it, or give this sweep a study of its own: hydra.sweeper.study_name=<new name>"
        )

    def _open_records(self, seed: int) -> None:
        """The sweep's MLflow run: one per study, found again by its `run_key` tag on resume and
        by every other process working on the same study."""
        if not self.tracking_uri:
            return
        self.runs = SweepRuns(self.tracking_uri, self.experiment, self.study_name)
        tags = {
            **self.ctx.tags,
            "sampler": self.sampler_name,
            "pruner": self.settings.pruner.name,
            "optuna_storage": mask(self.storage_url),
            "sampler_seed": str(seed),
        }
        if self.warm_source:
            tags[WARM_START_FROM] = self.warm_source
        self.runs.open_parent(tags, self.ctx.parent_run_id)

    def _ask(self) -> tuple[optuna.Trial, dict[str, Any]] | None:
        """Next trial within the study-wide budget (atomic across processes on a file storage)."""
        with (
            self.state.lock,
            study_storage.ask_lock(self.storage, self.storage_url, self.study_name),
        ):
            if self.state.stop or (self.deadline and time.time() > self.deadline):
                return None
            study_storage.fail_lost(self.storage, self.study, self.runs)  # their machines stopped
            trials = self.study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and study_storage.counted(trials) >= self.n_trials:
                return None
            if not self.state.sampler_ready:
                fixed_seed = self.sampler_facts.fixed_seed
                seed = self.seed if fixed_seed else self.seed + len(trials)
                self.study.sampler = make_sampler(self.settings.sampler, seed, self.grid)
                self.state.sampler_ready = True
            trial = self.study.ask()
            study_storage.claim(self.storage, self.study, trial)
            return trial, suggest(trial, self.space)

    # ---- one trial -------------------------------------------------------------------------
    def _run_trial(self, trial: optuna.Trial, params: dict[str, Any], slot: int = 0) -> None:
        start, on = time.time(), devices.overrides(self.devices, slot)  # the slot's GPU, if any
        tags = {
            "sweep": self.study_name,
            "trial": str(trial.number),
            "sampler": self.sampler_name,
            "swept": ",".join(p.name for p in self.space),
            **devices.tags(self.devices, slot),
        }
        run_id = None
        if self.runs:
            try:
                run_id = self.runs.start_trial(trial.number, params, {**self.ctx.tags, **tags})
            except Exception as exc:  # the tracking server is away: this trial fails and re-queues
                return self._tell(
                    trial,
                    Outcome("fail", f"tracking unavailable: {mask(str(exc))}"[:500]),
                    None,
                    params,
                )
            trial.set_user_attr("mlflow_run_id", run_id)
        pruning.register(self.context_path, trial)
        out = Outcome("complete")
        beat = study_storage.heartbeat(self.storage, self.study_name, trial.number).start()
        try:
            seed_key = self.settings.seed_key

            rung, fraction = 0, 1.0
            by_epoch = self.settings.fidelity == "epochs"  # else the rungs' jobs report nothing

            def overrides_for(i: int) -> list[str]:
                ctx = self.ctx.derive(
                    parent_run_id=run_id,
                    tags={**tags, ROLE: Role.SEED, "replicate": str(i)},
                    log_model=False,
                    trial=TrialRef(self.context_path, trial.number, report=i == 0 and by_epoch),
                )
                less = [f"++trainer.train_fraction={fraction!r}"] if fraction < 1 else []
                fixed = [*self.fixed, *on, *less]
                return job_overrides(fixed, params, self.seeds[i], seed_key, ctx)

            def launch(overrides: list[str], i: int) -> Any:
                first = (trial.number * len(self.rungs) + rung) * len(self.seeds) + i
                if self.state.signum:  # the next seed of a trial that a signal stopped
                    raise Interrupted(self.state.signum)
                self.state.in_job = runs_in_process(self.launcher) and _main_thread()
                try:
                    return self.runner.launch([overrides], initial_job_idx=first)[0]
                except BaseException as exc:  # the sweep's handler stopped it outside the job
                    if (signum := signals.signal_of(exc)) is None:
                        raise
                    raise Interrupted(signum) from None
                finally:
                    self.state.in_job = False

            together = self.together and seed_key == "seed"
            for rung, fraction in enumerate(self.rungs):  # noqa: B007 (the closures read them)
                out.per_seed, out.run_ids = [], []
                outcomes = seed_outcomes(launch, self.seeds, overrides_for, self.watched, together)
                for kind, reason, values, job_dir, job_run in outcomes:
                    out.job_dirs.append(job_dir)
                    # e.g. its worker, or its SLURM job, stopped with the sweep
                    if kind in ("fail", "lost") and self.state.signum:
                        kind, reason = "interrupted", signal.Signals(self.state.signum).name
                    if kind != "complete":
                        out.kind, out.reason = kind, reason
                        break
                    out.per_seed.append(values)
                    out.run_ids.append(job_run or "")
                if len(self.rungs) > 1:
                    trial.set_user_attr("data_fraction", fraction)
                    out.fraction = fraction
                if out.kind != "complete" or rung == len(self.rungs) - 1:
                    break
                value = aggregate(out.per_seed)[self.metrics[0]]
                trial.report(value, step=round(fraction * self.rung_steps))
                if trial.should_prune():
                    out.kind, out.reason = "pruned", f"pruned at data fraction {fraction:.4g}"
                    break
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
        with (
            self.state.lock,
            study_storage.ask_lock(self.storage, self.storage_url, self.study_name),
        ):
            if not study_storage.still_running(self.storage, self.study, trial.number):
                return study_storage.tell_late(self, trial, out, means, run_id, params)
            if out.run_ids and out.run_ids[0]:
                trial.set_user_attr("mlflow_seed_run_ids", out.run_ids)
            if times := preemptions(out.job_dirs):  # requeued by SLURM, resumed: counted once
                trial.set_user_attr(PREEMPTED, times)
                end_tags[PREEMPTED] = str(times)
            if out.kind == "complete":
                if len(self.seeds) > 1:
                    for m in self.metrics:
                        trial.set_user_attr(f"seeds:{m}", [v[m] for v in out.per_seed])
                if self.constraints:
                    violations = self.violations(means)
                    trial.set_user_attr("constraints", violations)
                    for text, value in violations.items():  # what samplers and best_trial read
                        trial.set_constraint(text, value)
                    end_tags[FEASIBLE] = str(all(v <= 0 for v in violations.values())).lower()
                self.study.tell(trial, [means[m] for m in self.metrics])
            elif out.kind == "pruned":
                self.study.tell(trial, state=TrialState.PRUNED)
                end_tags["pruned"] = "true"
            elif out.kind == "interrupted":  # not the config's fault: not counted, run again
                reason = _REASON[signal.Signals[out.reason]]
                self._stop_by(signal.Signals[out.reason])
                trial.set_user_attr("stale", True)
                trial.set_user_attr("fail_reason", f"{reason}: stopped by {out.reason}")
                self.study.tell(trial, state=TrialState.FAIL)
                attrs = {**trial.user_attrs, "number": trial.number}
                study_storage.requeue(self.study, trial.params, attrs, self.max_retries)
                end_tags[FAILURE_REASON] = reason
            elif out.kind == "lost":  # its cluster job died (scancel, node): re-run, counted once
                trial.set_user_attr("fail_reason", out.reason)
                attrs = {**trial.user_attrs, "number": trial.number}
                if study_storage.requeue(self.study, trial.params, attrs, self.max_retries):
                    trial.set_user_attr("stale", True)
                self.study.tell(trial, state=TrialState.FAIL)
                end_tags[FAILURE_REASON] = out.reason
            else:  # a server or database away is not the config's fault: not counted, run again
                away = study_storage.infrastructure_failure(trial, out.reason)
                self.study.tell(trial, state=TrialState.FAIL)
                if away:
                    study_storage.requeue(
                        self.study, trial.params, trial.user_attrs, self.max_retries
                    )
                end_tags[FAILURE_REASON] = out.reason[:250]
                self.state.failed += 1
                limit = self.settings.max_failure_rate * self.n_trials
                if self.state.failed > limit and not self.state.stop:
                    self.state.stop = f"{self.state.failed} failed trials exceed max_failure_rate (limit {limit:g})"
        state = {"complete": "COMPLETE", "pruned": "PRUNED"}.get(out.kind, "FAIL")
        shown = {m: means.get(m) for m in self.metrics} if means else ""
        said = "INTERRUPTED (re-queued)" if out.kind == "interrupted" else state
        if end_tags.get(FEASIBLE) == "false":
            said += " (infeasible)"
        log.info("trial %d %s %s %s", trial.number, said, shown, out.reason)
        if len(self.rungs) > 1 and out.fraction is not None:
            end_tags[DATA_FRACTION] = f"{out.fraction:.6g}"
        if self.runs and run_id:
            end_tags.update(optuna_state=state, n_seeds=str(len(out.per_seed)))
            self.runs.end_trial(run_id, out.kind, means, end_tags, params)

    def violations(self, means: dict[str, float]) -> dict[str, float]:
        """Each constraint's violation by a trial's seed-mean metrics (<= 0: met), by its text."""
        return {c.text: c.violation(means) for c in self.constraints}

    # ---- stopping ----------------------------------------------------------------------------
    def _stop_by(self, signum: int) -> None:
        """Stop at the next ask: no trial starts after this (a job reported the signal, or the
        sweep's handler received it)."""
        if not self.state.signum:
            self.state.signum = signum
            self.state.stop = f"stopped by {signal.Signals(signum).name}"

    def _on_signal(self, signum: int) -> None:
        """SIGINT or SIGTERM in the sweep's process (main thread; no lock taken here: the main
        thread may hold it). The first stops the sweep: nothing new is asked or launched, the
        running trials end (their jobs stop on the same signal when it went to the process group,
        as a terminal's Ctrl-C does) and are recorded KILLED and re-queued. A second exits at once
        after ending every open run KILLED."""
        self.state.signals += 1
        name = signal.Signals(signum).name
        if self.state.signals > 1:
            log.warning("%s again: the sweep exits now; its open runs end KILLED", name)
            signals.raise_for(signum)
        self._stop_by(signum)
        log.warning(
            "%s: the sweep stops; no new trial starts, running ones end KILLED and are re-queued "
            "(%s again exits at once; the same command resumes the sweep)",
            name,
            name,
        )
        if self.state.in_job:  # a job of this thread: it stops like a single run
            signals.raise_for(signum)
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        """Hand the signal on to the processes that run this sweep's jobs (joblib's workers), so
        that they stop also when it went to the sweep's process alone (`kill PID`). A job that got
        it already ignores the copy while it records its run; a worker between jobs holds it
        (tuning/jobs.py)."""
        if runs_in_process(self.launcher):
            return
        import psutil

        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                child.send_signal(signum)

    def _kill_jobs(self) -> None:
        """A second signal: the processes running this sweep's jobs are killed (they would go on
        after the sweep exits), before their runs are ended KILLED."""
        if runs_in_process(self.launcher):
            return
        import psutil

        children = []
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "resource_tracker" not in " ".join(child.cmdline()):  # loky's: it ends alone
                    child.kill()
                    children.append(child)
        psutil.wait_procs(children, timeout=10)

    def _abandon(self, exc: BaseException) -> None:
        """The sweep stops without waiting for its trials (an error, or a second signal): their
        runs, the runs RUNNING under them and the parent end KILLED, the queued writes are sent."""
        signum = signals.signal_of(exc)
        if signum and not self.state.signum:
            self._stop_by(signum)
        self.state.stop = self.state.stop or "interrupted"
        if self.runs:
            self.runs.interrupted(_REASON.get(self.state.signum, "interrupted"))

    def _stopped(self) -> None:
        """After a signal, once the running trials are told: the parent run ends KILLED unless
        another process still runs trials of the study (it ends the sweep), the queued writes
        are sent, and the sweep exits 130 (SIGINT) or 143 (SIGTERM), like a single run."""
        signum = self.state.signum
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if self.runs:
            if running:
                log.info("trials %s still run in another process", [t.number for t in running])
                self.runs.writer.flush(quietly=True)
            else:
                self.runs.end_parent(_REASON[signum])
        log.error(
            "sweep stopped by %s: the same command resumes it (%d trials ran here)",
            signal.Signals(signum).name,
            len(self.state.spans),
        )
        raise SystemExit(128 + signum)

    # ---- loop + analysis -------------------------------------------------------------------
    def _worker(self, slot: int = 0) -> None:
        while (nxt := self._ask()) is not None:
            self._run_trial(*nxt, slot)

    def _work(self) -> None:
        if self.n_jobs == 1:
            return self._worker()
        pool = ThreadPoolExecutor(self.n_jobs, thread_name_prefix="trial")
        futures = [pool.submit(self._worker, i) for i in range(self.n_jobs)]
        try:
            # The main thread waits in short slices: a signal the kernel hands to another thread
            # (a trial's, a heartbeat's) runs its Python handler only once the main thread runs
            # bytecode again, and a wait without a timeout would hold it until a worker ends.
            while wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION).not_done:
                if any(f.done() and f.exception() for f in futures):
                    break
            for f in futures:
                if f.done():
                    f.result()
        except BaseException:
            self.state.stop = self.state.stop or "interrupted"  # the other workers ask no more
            raise
        finally:  # a second signal does not wait for the running trials
            pool.shutdown(wait=self.state.signals < 2, cancel_futures=True)

    def run(self) -> dict[str, Any]:
        self.open()
        timeout = self.settings.timeout_s
        self.deadline = time.time() + float(timeout) if timeout else None
        t0 = time.time()
        try:
            with signals.on_signals(self._on_signal):
                waits = slurm_jobs.wait_for(
                    self.storage, self.study_name, self.adopted, self.metrics, self._tell
                )
                self._work()
                self._wait_adopted(waits)
        except BaseException as exc:
            now = self.state.signals > 1  # a second signal: the trials are not waited for
            if now:
                self._kill_jobs()
            self._abandon(exc)
            if now:  # trial threads still wait for their (killed) jobs
                log.error(
                    "sweep stopped by %s at once: its open runs are recorded KILLED; the same "
                    "command resumes it",
                    signal.Signals(self.state.signum).name,
                )
                logging.shutdown()
                os._exit(128 + self.state.signum)
            raise
        finally:
            if self.runs:
                self.runs.writer.flush(quietly=True)  # every trial told here is recorded
        if self.state.signum:
            self._stopped()
        wall = time.time() - t0
        busy = sum(e - s for s, e in self.state.spans)
        util = busy / (self.n_jobs * wall) if wall > 0 and self.state.spans else 0.0
        ran_here = len(self.state.spans)
        if ran_here == 0 and not self.state.stop:
            log.info(
                "all %d trials of study %s are done; raise hydra.sweeper.n_trials to run more",
                self.n_trials,
                self.study_name,
            )
        due = study_storage.reports_due(
            self.storage, self.storage_url, self.study, ran_here, self.runs
        )
        outcome = self._outcome(util, ran_here)  # the trials as reports_due left them
        if due:
            report = sweep_outputs.finalize(outcome)
            if self.runs:
                self.runs.finish(report.record, str(self.sweep_dir))
            result = report.summary
        else:
            study = sweep_outputs.as_study(outcome)
            result = {**sweep_outputs.summary(study, self.metrics), "reported_here": False}
            if self.warm_source:
                result[WARM_START_FROM] = self.warm_source
        if self.state.stop:
            raise SweepStopped(f"sweep stopped: {self.state.stop}")
        return result

    def _wait_adopted(self, waits: list[threading.Thread]) -> None:
        """The trials taken over from a dead sweep process are told before the sweep reports; a
        signal stops the wait (their jobs go on; the next restart takes them over again)."""
        for thread in waits:
            while thread.is_alive() and not self.state.signum:
                thread.join(0.2)

    def _outcome(self, utilisation: float, ran_here: int) -> sweep_outputs.SweepOutcome:
        """What this sweep produced, for its reports: the study's trials as they are now."""
        return sweep_outputs.SweepOutcome(
            study_name=self.study_name,
            trials=tuple(self.study.get_trials(deepcopy=False)),
            directions=tuple(self.study.directions),
            metrics=tuple(self.metrics),
            fixed=tuple(self.fixed),
            space=tuple(self.space),
            sampler=self.sampler_name,
            seeds=tuple(self.seeds),
            n_trials=self.n_trials,
            n_jobs=self.n_jobs,
            storage_url=self.storage_url,
            sweep_dir=self.sweep_dir,
            figures=self.settings.figures,
            utilisation=utilisation,
            n_run_here=ran_here,
            experiment_id=self.runs.writer.experiment_id if self.runs else None,
            warm_start_from=self.warm_source,
        )


_REASON = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}  # as a single run's


def _check_space(facts: SamplerFacts, space: list[Param]) -> None:
    """A sequential sampler (the line search) needs exactly one continuous parameter."""
    if facts.sequential:
        floats = [p for p in space if isinstance(p.dist, FloatDistribution)]
        if len(space) != 1 or len(floats) != 1:
            raise ValueError("search=line needs exactly one continuous parameter (an interval)")


def _launch_plan(
    settings: SweepSettings, config: DictConfig, launcher: Any, n_fixed: int, sequential: bool
) -> tuple[Any, int, list[str] | None]:
    """(the runner that launches each job, trials at once, the device of each trial slot or
    None): a sequential sampler runs one trial at a time; the launcher and the GPUs may allow
    fewer than n_jobs."""
    n_jobs = 1 if sequential else settings.n_jobs
    runner, n_jobs = plan_launch(launcher, n_jobs, n_fixed, settings.cached_compose)
    n_jobs, slots = devices.plan(settings.gpus, settings.trials_per_gpu, config, n_jobs)
    return runner, n_jobs, slots


def data_rungs(settings: TunelabSweeperConf) -> tuple[list[float], int]:
    """(the training-set fraction of each rung, the pruner's steps for all the data). With
    fidelity=data and the pruner's reduction factor eta (3 unless its kwargs say), data_rungs R
    rungs train on eta^-(R-1), ..., 1/eta, 1 of the training split and report at steps 1, eta, ...,
    eta^(R-1): the successive-halving rungs with min_resource 1."""
    if settings.fidelity != "data":
        return [1.0], 1
    if settings.pruner.name not in FIDELITY_PRUNERS:
        raise ValueError(
            f"hydra.sweeper.fidelity=data needs a pruner in {list(FIDELITY_PRUNERS)}, not "
            f"{settings.pruner.name!r}: set hydra.sweeper.pruner.name=successive_halving"
        )
    eta = int(settings.pruner.kwargs.get("reduction_factor", 3))
    top = eta ** (settings.data_rungs - 1)
    return [eta**r / top for r in range(settings.data_rungs)], top


def rung_pruner(settings: TunelabSweeperConf) -> Any:
    """The pruner settings whose rungs are data_rungs' steps: min_resource 1 (and Hyperband's
    max_resource the last step), reduction factor eta."""
    eta = int(settings.pruner.kwargs.get("reduction_factor", 3))
    kwargs = {**settings.pruner.kwargs, "reduction_factor": eta, "min_resource": 1}
    if settings.pruner.name == "hyperband":
        kwargs["max_resource"] = eta ** (settings.data_rungs - 1)
    return dataclasses.replace(settings.pruner, kwargs=kwargs)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def run_sweep(
    settings: TunelabSweeperConf, config: DictConfig, launcher: Any, arguments: list[str]
) -> dict:
    """Entry point used by the Hydra plugin."""
    sweep = Sweep(settings, config, launcher, arguments)
    result = sweep.run()
    log.info("%s", trials_table(sweep.study, sweep.metrics))
    return result
