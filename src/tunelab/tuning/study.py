"""Run a playbook study: per cell a nuisance study (a Sweep, its own Optuna study in the shared
storage), then the cell's best configuration under the study's confirmation seeds (paired).

Resume: cells whose nuisance study reached its budget are not searched again, and confirmation
seeds already recorded for the same best configuration are not re-run (both live in the Optuna
storage as study user attrs, so they survive without MLflow too).

Stopping: SIGINT or SIGTERM stops the study as it stops a sweep (a cell's nuisance sweep lets its
running trials end; a confirmation job records its run KILLED). The study's run is left (it stays
RUNNING while another process works on the study), and the process exits 130 or 143; the same
command resumes the study.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from tunelab.compat.hydra_internals import runs_in_process
from tunelab.config.identity import digest
from tunelab.config.secrets import mask
from tunelab.config.space import Param, build_space, quote
from tunelab.config.tasks import test_metric
from tunelab.processes import file_lock
from tunelab.reports.ensemble import seed_ensemble
from tunelab.reports.study_analysis import StudyOutcome
from tunelab.run import signals
from tunelab.run.context import RunContext
from tunelab.tags import FAILURE_REASON, ROLE, Role
from tunelab.tracking.mlflow_writer import MlflowWriter
from tunelab.tracking.run_owners import keyed_run, leave
from tunelab.tuning import study_storage
from tunelab.tuning.inprocess import runner_for
from tunelab.tuning.jobs import can_group, job_overrides, read_job, seed_outcomes
from tunelab.tuning.settings import StudySweeperConf, cell_sweep_settings, tracking_target
from tunelab.tuning.study_spec import Cell, StudySpec, merge_overrides, parse
from tunelab.tuning.sweep_runs import log_record
from tunelab.tuning.sweeper import Sweep, SweepStopped

log = logging.getLogger(__name__)
DONE, CONFIRM = "study:n_trials", "study:confirm"


@dataclass
class CellResult:
    cell: Cell
    study_name: str
    run_id: str | None
    space: list[Param]
    trials: list[FrozenTrial]
    best: FrozenTrial | None
    stopped: str = ""
    confirm: dict[int, dict[str, Any]] = field(default_factory=dict)
    config: Any = None  # the cell's composed config (None when it cannot be composed here)
    ensemble: dict[str, Any] = field(default_factory=dict)  # the confirmed seeds as one model

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best.params) if self.best is not None else {}

    @property
    def feasible(self) -> bool:
        return not self.space or self.best is not None


class _CellSweep(Sweep):
    """A cell's nuisance study; `adopt` nests its MLflow run under the study's run once open."""

    adopt: Callable[[str], None] | None = None

    def open(self) -> None:
        super().open()
        if self.adopt and self.runs and self.runs.parent_id:
            self.adopt(self.runs.parent_id)


class StudyRun:
    def __init__(
        self, settings: StudySweeperConf, config: DictConfig, launcher: Any, arguments: list[str]
    ) -> None:
        self.spec: StudySpec = parse(settings, config, arguments)
        self.settings, self.config, self.launcher = settings, config, launcher
        self.tracking_uri, _ = tracking_target(settings, config)
        self.experiment = self.spec.experiment
        self.storage_url = study_storage.normalize_storage(
            settings.storage or study_storage.default_storage(self.tracking_uri)
        )
        with file_lock(study_storage.lock_path(self.storage_url)):
            self.storage = study_storage.make_storage(self.storage_url)
        self.root = Path(str(config.hydra.sweep.dir)).resolve()
        self.ctx = RunContext.from_env()
        self.writer: Any = None
        if self.tracking_uri:
            self.writer = MlflowWriter(self.tracking_uri, self.experiment)
        self.run_id: str | None = None
        self.cell_run_id: str | None = None  # the run of the cell being confirmed

    # ---- study -------------------------------------------------------------------------
    def open(self) -> None:
        """The study's index (an empty Optuna study holding its attrs) and its MLflow run."""
        spec = self.spec
        self.index = self._open(f"{spec.name}::study", None)
        sig = self.index.user_attrs.get("signature")
        if sig is not None and sig != spec.signature():
            raise ValueError(
                f"study '{spec.name}' in {mask(self.storage_url)} was run with other cells, nuisance "
                "spaces, fixed values or overrides; resume it with the same settings or pass "
                "hydra.sweeper.study_name=<new name>"
            )
        self.index.set_user_attr("signature", spec.signature())
        if self.writer:
            tags = {**self.ctx.tags, "study": spec.name, ROLE: Role.STUDY}
            tags.update(scientific=spec.scientific, goal=spec.goal)
            key = {"run_key": f"study:{spec.name}"}
            self.run_id = keyed_run(self.writer, spec.name, key, tags, self.ctx.parent_run_id)

    def _open(self, name: str, pruner: Any) -> optuna.Study:
        direction = [self.spec.direction]
        return study_storage.open_study(name, self.storage, direction, pruner, self.storage_url)

    def run(self) -> dict[str, Any]:
        try:
            with signals.on_signals(self._on_signal):
                self.open()
                looks = [int(n) for n in self.index.user_attrs.get("study:looks", [])]
                if not looks or looks[-1] != len(self.spec.seeds):
                    looks.append(len(self.spec.seeds))  # seeds added after a report: another look
                    self.index.set_user_attr("study:looks", looks)
                results = [self.run_cell(cell) for cell in self.spec.cells]
                summary = self._report(results, len(looks))
        except BaseException as exc:
            signum = signals.signal_of(exc)
            self._leave(_REASON.get(signum, "") if signum else "")
            if signum is None:
                raise
            log.error(
                "study stopped by %s: the same command resumes it", signal.Signals(signum).name
            )
            raise SystemExit(128 + signum) from None
        if self.writer and self.run_id:
            self.writer.end_run(self.run_id, "FINISHED")
        return summary

    def _on_signal(self, signum: int) -> None:
        """SIGINT or SIGTERM between the study's jobs (a cell's sweep and a confirmation job
        handle their own): the study stops at once."""
        log.warning("%s: the study stops", signal.Signals(signum).name)
        signals.raise_for(signum)

    def _leave(self, reason: str) -> None:
        """The study stopped early: this process leaves its run and the run of the cell it was
        confirming; each ends KILLED unless another process still works on it (then it stays
        RUNNING for that one to end); a signal's reason is tagged."""
        if not self.writer:
            return
        self.writer.flush(quietly=True)
        for run_id in (self.cell_run_id, self.run_id):
            if run_id is None:
                continue
            try:
                if leave(self.writer, run_id, "KILLED") and reason:
                    self.writer.set_tags(run_id, {FAILURE_REASON: reason})
            except Exception as exc:  # the store is away: the study's own error is what matters
                log.warning("could not leave the study's run %s: %s", run_id, mask(str(exc)))

    def _report(self, results: list[CellResult], looks: int) -> dict[str, Any]:
        """The report from the cells' outcomes, and its records on the study's runs."""
        from tunelab.reports.study_analysis import finalize

        outcome = StudyOutcome(
            spec=self.spec,
            cells=tuple(results),
            out_dir=self.root / "study",
            storage_url=self.storage_url,
            run_id=self.run_id,
            looks=looks,
            experiment_id=self.writer.experiment_id if self.writer else None,
            read_json=self.writer.read_json if self.writer else None,
        )
        report = finalize(outcome)
        if self.writer and self.run_id:
            for run_id, record in report.cell_records.items():
                log_record(self.writer, run_id, record)
            log_record(self.writer, self.run_id, report.record)
        return report.summary

    # ---- one cell ----------------------------------------------------------------------
    def _cell_tags(self, cell: Cell) -> dict[str, str]:
        return {"study": self.spec.name, "cell": cell.name, "scientific": self.spec.scientific}

    def _adopt(self, cell: Cell, run_id: str) -> None:
        if self.writer and self.run_id:
            tags = {**self._cell_tags(cell), ROLE: Role.CELL, "mlflow.parentRunId": self.run_id}
            self.writer.set_tags(run_id, tags)

    def run_cell(self, cell: Cell) -> CellResult:
        spec = self.spec
        name = f"{spec.name}-{cell.name}"
        args = spec.cell_arguments(cell)
        space, fixed = build_space(cell.space, args)
        if spec.n_trials <= 0:  # no search: the cell runs as configured
            space = []
        study = self._open(name, self.settings.pruner)
        stopped = str(study.user_attrs.get("study:stopped", ""))
        if space and study.user_attrs.get(DONE) != spec.n_trials:
            stopped = self._search(cell, name, args)
            study.set_user_attr(DONE, spec.n_trials)
            study.set_user_attr("study:stopped", stopped)
        elif space:
            log.info("cell %s: nuisance study %s already done, not searched again", cell.name, name)
        study = optuna.load_study(study_name=name, storage=self.storage)
        run_id = None
        if self.writer:
            key = {"run_key": f"sweep:{name}"}  # the cell's nuisance sweep made it, if it ran
            tags = {**self._cell_tags(cell), ROLE: Role.CELL, "sweep": name}
            run_id = keyed_run(self.writer, name, key, tags, parent_run_id=self.run_id)
        self.cell_run_id = run_id
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("stale")]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = study.best_trial if complete else None
        result = CellResult(cell, name, run_id, space, trials, best, stopped)
        result.config = self._compose(args)
        if result.feasible:
            self._confirm(study, result, fixed)
            result.ensemble = self._ensemble(result, args)
        else:
            log.warning("cell %s: no trial finished; nothing to confirm", cell.name)
        if self.writer and run_id:
            self.writer.end_run(run_id, "FINISHED")
        self.cell_run_id = None
        return result

    def _ensemble(self, result: CellResult, args: list[str]) -> dict[str, Any]:
        """The cell's confirmed seeds as one model (reports/ensemble.py): their recorded
        checkpoints (the refit's where confirm.refit made one), read from MLflow into the study's
        folder and loaded with weights_only=True, scored on the test split. Empty when fewer
        than two seeds finished or the store is not MLflow; a problem is logged, not raised."""
        runs = {
            s: r["run_id"]
            for s, r in result.confirm.items()
            if r.get("kind") == "complete" and r.get("run_id")
        }
        if len(runs) < 2 or not self.writer:
            return {}
        best = [f"{k}={quote(str(v))}" for k, v in result.best_params.items()]
        config = self._compose([*args, *best])
        if config is None:
            return {}
        folder = self.root / "study" / "ensembles" / result.cell.name
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for seed, run_id in runs.items():
            for name in ("refit.pt", "best.pt"):
                data = self.writer.artifact_bytes(run_id, f"checkpoints/{name}")
                if data:
                    paths[seed] = folder / f"seed_{seed}.pt"
                    paths[seed].write_bytes(data)
                    break
        if len(paths) < 2:
            log.warning(
                "cell %s: fewer than 2 confirmed checkpoints recorded: no ensemble",
                result.cell.name,
            )
            return {}
        split = (
            self.spec.vary_split and OmegaConf.select(self.config, "data.split_seed") is not None
        )
        configs = {}
        for seed in paths if split else ():  # each seed trained on its own split (its own scaling)
            configs[seed] = self._compose([*args, *best, f"data.split_seed={seed}"])
        try:
            return seed_ensemble(config, paths, test_metric(self.spec.metric), configs)
        except Exception as exc:  # the report goes on without it
            log.warning("cell %s: ensemble not evaluated: %s", result.cell.name, mask(str(exc)))
            return {}

    def _compose(self, args: list[str]) -> Any:
        """The config a cell's jobs start from (for the checks of settings that cannot act)."""
        loader = getattr(getattr(self.launcher, "hydra_context", None), "config_loader", None)
        try:
            return loader.load_sweep_config(self.config, [a for a in args if "=" in a])
        except Exception as exc:  # e.g. a sweep expression among the arguments
            log.info("cell config not composed for the checks: %s", str(exc).splitlines()[0])
            return None

    def _search(self, cell: Cell, name: str, args: list[str]) -> str:
        sampler = self.settings.sampler
        if sampler.seed is None:  # cells searching the same space try the same points
            sampler = dataclasses.replace(sampler, seed=int(digest(cell.space), 16) % 2**31)
        settings = cell_sweep_settings(
            self.settings,
            storage=self.storage_url,
            experiment=self.experiment,
            sampler=sampler,
            study_name=name,
            n_trials=self.spec.n_trials,
            params=dict(cell.space),
            seeds=self.spec.search_seeds,
            tags=self._cell_tags(cell),
        )
        cell_dir = self.root / cell.name
        config = copy.deepcopy(self.config)
        with open_dict(config):
            config.hydra.sweep.dir = str(cell_dir)
        if OmegaConf.select(self.config, "confirm.refit", default=None) is not None:
            args = merge_overrides(args, ["confirm.refit=null"])  # only confirmations refit
        sweep = _CellSweep(settings, config, self.launcher, [*args, _sweep_dir(cell_dir)])
        sweep.adopt = lambda run_id: self._adopt(cell, run_id)
        log.info("cell %s: nuisance study %s (%d trials)", cell.name, name, self.spec.n_trials)
        try:
            sweep.run()
        except SweepStopped as e:
            log.warning("cell %s: %s", cell.name, e)
            return str(e)
        return ""

    def _confirm(self, study: optuna.Study, result: CellResult, fixed: list[str]) -> None:
        """Run the cell's best configuration under every confirmation seed not yet recorded."""
        spec, cell = self.spec, result.cell
        key = json.dumps(result.best_params, sort_keys=True, default=str)
        stored = {
            int(s): r
            for s, r in (study.user_attrs.get(CONFIRM) or {}).items()
            if r.get("params_key") == key
        }
        todo = [s for s in spec.seeds if s not in stored]
        result.confirm = {s: stored[s] for s in spec.seeds if s in stored}
        if not todo:
            return
        confirm_dir = self.root / cell.name / "confirm"
        fixed = [*fixed, _sweep_dir(confirm_dir)]
        tags = {
            **self._cell_tags(cell),
            ROLE: Role.CONFIRM,
            "sweep": result.study_name,
            "trial": str(result.best.number) if result.best is not None else "-",
        }
        seed_key = self.settings.seed_key
        ctx = self.ctx.derive(parent_run_id=result.run_id, tags=tags, log_model=False)
        split = spec.vary_split and OmegaConf.select(self.config, "data.split_seed") is not None
        jobs = [
            job_overrides(
                [*fixed, *([f"data.split_seed={s}"] if split else [])],
                result.best_params,
                s,
                seed_key,
                ctx,
            )
            for s in todo
        ]
        log.info("cell %s: confirming %s under seeds %s", cell.name, key, todo)
        runner, batch = self._runner(len(fixed))
        # one split for every seed: the seeds train together, as trainer.replicas
        together = not split and seed_key == "seed" and len(todo) > 1
        together = together and can_group(self.settings.replicas, self.config)
        batch = len(todo) if together else batch
        for start in range(0, len(jobs), batch):
            chunk, first = todo[start : start + batch], spec.seeds.index(todo[start])
            try:
                if together:
                    launch = lambda ov, _, at=first: runner.launch([ov], initial_job_idx=at)[0]  # noqa: E731
                    outcomes = list(
                        seed_outcomes(launch, chunk, jobs.__getitem__, [spec.metric], True)
                    )
                else:
                    rets = runner.launch(jobs[start : start + batch], initial_job_idx=first)
                    outcomes = [read_job(r, [spec.metric]) for r in rets]
            except Exception as e:  # the launcher itself failed
                reason = f"launch: {type(e).__name__}: {e}"[:500]
                outcomes = [("fail", reason, {}, "", None)] * len(chunk)
            stopped = [reason for kind, reason, *_ in outcomes if kind == "interrupted"]
            for s, (kind, reason, values, _, run_id) in zip(chunk, outcomes, strict=True):
                if kind == "interrupted":  # not recorded: the seed runs again on resume
                    continue
                record = {"kind": kind, "reason": reason, "values": values, "run_id": run_id}
                result.confirm[s] = record
                stored[s] = {**record, "params_key": key}
            study.set_user_attr(CONFIRM, {str(s): r for s, r in stored.items()})
            if stopped:  # a signal stopped a confirmation job: the study stops with it
                signals.raise_for(signal.Signals[stopped[0]])
        result.confirm = {s: result.confirm[s] for s in spec.seeds if s in result.confirm}

    def _runner(self, n_fixed: int) -> tuple[Any, int]:
        """In this process one job at a time (each recorded as it ends); else all seeds at once."""
        runner = runner_for(self.launcher, n_fixed, self.settings.cached_compose)
        one_at_a_time = runner is not self.launcher or runs_in_process(self.launcher)
        return runner, 1 if one_at_a_time else len(self.spec.seeds)


_REASON = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}  # as a single run's


def _sweep_dir(path: Path) -> str:
    return f"hydra.sweep.dir={quote(str(path))}"


def run_study(
    settings: StudySweeperConf, config: DictConfig, launcher: Any, arguments: list[str]
) -> dict[str, Any]:
    """Entry point used by the Hydra plugin."""
    return StudyRun(settings, config, launcher, arguments).run()
