"""Run a study: per cell a nuisance study (tunelab.sweep, its own Optuna study in the shared
storage), then the cell's best configuration under the study's confirmation seeds (paired).

Resume: cells whose nuisance study reached its budget are not searched again, and confirmation
seeds already recorded for the same best configuration are not re-run (both live in the Optuna
storage as study user attrs, so they survive without MLflow too).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from tunelab.study.spec import Cell, StudySpec, parse
from tunelab.sweep import study as studies
from tunelab.sweep.jobs import job_overrides, read_job
from tunelab.sweep.orchestrate import Sweep
from tunelab.sweep.space import Param, build_space, quote

log = logging.getLogger(__name__)
DONE, CONFIRM, RUN_ID = "study:n_trials", "study:confirm", "mlflow_parent_run_id"


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
        if self.adopt and self.recorder is not None and self.recorder.parent_id:
            self.adopt(self.recorder.parent_id)


class StudyRun:
    def __init__(
        self, conf: dict[str, Any], config: DictConfig, launcher: Any, arguments: list[str]
    ) -> None:
        self.spec: StudySpec = parse(conf, config, arguments)
        self.config, self.launcher = config, launcher
        sel = OmegaConf.select
        enabled = sel(config, "tracking.enabled", default=True) is not False
        self.tracking_uri = conf.get("tracking_uri") or (
            sel(config, "tracking.tracking_uri", default=None) if enabled else None
        )
        self.experiment = self.spec.experiment
        self.storage = studies.normalize_storage(
            conf.get("storage") or studies.default_storage(self.tracking_uri)
        )
        self.spec.sweep_conf.update(storage=self.storage, experiment=self.experiment)
        self.root = Path(str(config.hydra.sweep.dir)).resolve()
        self.records = None
        if self.tracking_uri:
            from tunelab.study.records import StudyRecords

            self.records = StudyRecords(self.tracking_uri, self.experiment)
        self.run_id: str | None = None

    # ---- study -------------------------------------------------------------------------
    def open(self) -> None:
        """The study's index (an empty Optuna study holding its attrs) and its MLflow run."""
        spec = self.spec
        self.index = studies.open_study(f"{spec.name}::study", self.storage, [spec.direction], None)
        sig = self.index.user_attrs.get("signature")
        if sig is not None and sig != spec.signature():
            raise ValueError(
                f"study '{spec.name}' in {self.storage} was run with other cells, nuisance spaces, "
                "fixed values or overrides; resume it with the same settings or pass "
                "hydra.sweeper.study_name=<new name>"
            )
        self.index.set_user_attr("signature", spec.signature())
        if self.records:
            tags = {"study": spec.name, "role": "study", "scientific": spec.scientific}
            tags["goal"] = spec.goal[:5000]
            self.run_id = self.records.open_run(spec.name, self.index.user_attrs.get(RUN_ID), tags)
            self.index.set_user_attr(RUN_ID, self.run_id)

    def run(self) -> dict[str, Any]:
        from tunelab.study.analysis import finalize

        self.open()
        try:
            results = [self.run_cell(cell) for cell in self.spec.cells]
            summary = finalize(self, results)
        except BaseException:
            if self.records and self.run_id:
                self.records.end(self.run_id, "KILLED")
            raise
        if self.records and self.run_id:
            self.records.end(self.run_id, "FINISHED")
        return summary

    # ---- one cell ----------------------------------------------------------------------
    def _cell_tags(self, cell: Cell) -> dict[str, str]:
        return {"study": self.spec.name, "cell": cell.name, "scientific": self.spec.scientific}

    def _adopt(self, cell: Cell, run_id: str) -> None:
        if self.records and self.run_id:
            tags = {**self._cell_tags(cell), "role": "cell", "mlflow.parentRunId": self.run_id}
            self.records.set_tags(run_id, tags)

    def run_cell(self, cell: Cell) -> CellResult:
        spec = self.spec
        name = f"{spec.name}-{cell.name}"
        args = spec.cell_arguments(cell)
        space, fixed = build_space(cell.space, args)
        if spec.n_trials <= 0:  # no search: the cell runs as configured
            space = []
        study = studies.open_study(
            name, self.storage, [spec.direction], spec.sweep_conf.get("pruner")
        )
        stopped = str(study.user_attrs.get("study:stopped", ""))
        if space and study.user_attrs.get(DONE) != spec.n_trials:
            stopped = self._search(cell, name, args)
            study.set_user_attr(DONE, spec.n_trials)
            study.set_user_attr("study:stopped", stopped)
        elif space:
            log.info("cell %s: nuisance study %s already done, not searched again", cell.name, name)
        study = optuna.load_study(study_name=name, storage=studies.make_storage(self.storage))
        run_id = study.user_attrs.get(RUN_ID)
        if self.records:
            if not space:
                tags = {**self._cell_tags(cell), "role": "cell", "sweep": name}
                run_id = self.records.open_run(name, run_id, tags, parent=self.run_id)
                study.set_user_attr(RUN_ID, run_id)
            else:
                self.records.tag_sweep(name, self._cell_tags(cell))
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("stale")]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = study.best_trial if complete else None
        result = CellResult(cell, name, run_id, space, trials, best, stopped)
        if result.feasible:
            self._confirm(study, result, fixed)
        else:
            log.warning("cell %s: no trial finished; nothing to confirm", cell.name)
        if self.records and run_id:
            self.records.end(run_id, "FINISHED")
        return result

    def _search(self, cell: Cell, name: str, args: list[str]) -> str:
        conf = {
            **self.spec.sweep_conf,
            "study_name": name,
            "n_trials": self.spec.n_trials,
            "params": dict(cell.space),
            "conditional": {},
            "seeds": self.spec.search_seeds,
            "tags": self._cell_tags(cell),
        }
        cell_dir = self.root / cell.name
        config = copy.deepcopy(self.config)
        with open_dict(config):
            config.hydra.sweep.dir = str(cell_dir)
        sweep = _CellSweep(conf, config, self.launcher, [*args, _sweep_dir(cell_dir)])
        sweep.adopt = lambda run_id: self._adopt(cell, run_id)
        log.info("cell %s: nuisance study %s (%d trials)", cell.name, name, self.spec.n_trials)
        try:
            sweep.run()
        except RuntimeError as e:
            if not str(e).startswith("sweep stopped"):
                raise
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
            "role": "confirm",
            "sweep": result.study_name,
            "trial": str(result.best.number) if result.best is not None else "-",
        }
        seed_key = str(spec.sweep_conf.get("seed_key") or "seed")
        jobs = [
            job_overrides(
                fixed,
                result.best_params,
                s,
                seed_key,
                context_path=str(confirm_dir / "no_pruning.json"),
                trial_id=-1,
                report=False,
                parent_run_id=result.run_id,
                tags=tags,
            )
            for s in todo
        ]
        log.info("cell %s: confirming %s under seeds %s", cell.name, key, todo)
        runner, batch = self._runner(len(fixed))
        for start in range(0, len(jobs), batch):
            chunk = todo[start : start + batch]
            try:
                first = spec.seeds.index(chunk[0])
                rets = runner.launch(jobs[start : start + batch], initial_job_idx=first)
                outcomes = [read_job(r, [spec.metric]) for r in rets]
            except Exception as e:  # the launcher itself failed
                outcomes = [("fail", f"launch: {type(e).__name__}: {e}"[:500], {}, "")] * len(chunk)
            for s, (kind, reason, values, _) in zip(chunk, outcomes, strict=True):
                result.confirm[s] = {"kind": kind, "reason": reason, "values": values}
                stored[s] = {**result.confirm[s], "params_key": key}
            study.set_user_attr(CONFIRM, {str(s): r for s, r in stored.items()})
        result.confirm = {s: result.confirm[s] for s in spec.seeds if s in result.confirm}

    def _runner(self, n_fixed: int) -> tuple[Any, int]:
        """In this process one job at a time (each recorded as it ends); else all seeds at once."""
        if type(self.launcher).__name__ != "BasicLauncher":
            return self.launcher, len(self.spec.seeds)
        if self.spec.sweep_conf.get("cached_compose", True):
            from tunelab.sweep.inprocess import InProcessLauncher

            return InProcessLauncher(self.launcher, n_fixed), 1
        return self.launcher, 1


def _sweep_dir(path: Path) -> str:
    return f"hydra.sweep.dir={quote(str(path))}"


def run_study(
    conf: dict[str, Any], config: DictConfig, launcher: Any, arguments: list[str]
) -> dict[str, Any]:
    """Entry point used by the Hydra plugin."""
    summary = StudyRun(conf, config, launcher, arguments).run()
    log.info("study summary: %s", json.dumps(summary.get("verdicts", []), ensure_ascii=False))
    return summary
