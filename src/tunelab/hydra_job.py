"""The Hydra side of tunelab: what one job of `python src/train.py` does, and the callback that
validates before Hydra creates any directory and opens one MLflow parent run per plain multirun.

Light to import: torch and MLflow are loaded only once a job runs (see tunelab/startup.py), so bad
input is refused before they are."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tunelab.build import file_problems
from tunelab.config import ConfigError, validate
from tunelab.config.secrets import mask, mask_file, mask_logs
from tunelab.config.sweep_check import sweeper_kind, validate_multirun
from tunelab.config.tasks import test_metric
from tunelab.run.context import RunContext, RunResult
from tunelab.tags import COMPARE_RUNS, FAILURE_REASON, ROLE, Role

log = logging.getLogger(__name__)


def job(cfg: DictConfig) -> RunResult:
    """One Hydra job: run (or diagnose) under the context its launcher handed on, write
    metrics.json into the job's directory; Ctrl-C and SIGTERM exit 130 and 143."""
    from tunelab.run.api import attempt
    from tunelab.run.record import RunFailed
    from tunelab.run.signals import Terminated

    ctx = job_context()
    output_dir = _hydra_job()[1]
    result = None
    try:
        result = attempt(cfg, ctx)
        if isinstance(result, RunFailed):  # its exception, and the run that records why
            raise result.cause
    except ConfigError as exc:  # found once the data is loaded (a model that cannot take it)
        if _hydra_mode() == "RUN":
            raise SystemExit(f"error: {exc}") from None
        raise  # a multirun's job: its sweep records the reason and goes on
    except (Terminated, KeyboardInterrupt) as exc:
        sig = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
        if isinstance(result, RunFailed) and result.run_id:
            log.error(
                "stopped by %s: run %s is recorded KILLED; the same command resumes it",
                sig.name,
                result.run_id,
            )
        else:
            log.error("stopped by %s before its run was recorded", sig.name)
        raise SystemExit(128 + sig) from None
    if output_dir:
        written = {"run_id": result.run_id, **result.metrics}  # the MLflow run (None untracked)
        Path(output_dir, "metrics.json").write_text(json.dumps(written, indent=2))
    log.info("result: %s", summary_line(result))
    return result


def job_context() -> RunContext:
    """The context of this job: its launcher's (the environment), its Hydra overrides and the
    pruning reporter of its sweep trial (None outside a trial)."""
    from tunelab.tuning.pruning import reporter_for

    ctx = RunContext.from_env()
    return ctx.derive(overrides=tuple(_hydra_job()[0]), reporter=reporter_for(ctx.trial))


def summary_line(result: RunResult) -> str:
    """The run's outcome in words: the selected epoch and its scores, or a diagnostic's metrics."""
    m = result.metrics
    run = f"; run {result.run_id}" if result.run_id else ""  # what reproduce and trace take
    if "best_epoch" not in m:
        return "  ".join(f"{k}={v:.4g}" for k, v in m.items()) + run
    test = test_metric(result.objective)
    tested = f", {test} {m[test]:.4f}" if test in m else ""
    if tested and "refit/epochs" in m:  # confirm.refit: the test split scored the refit
        tested += f" (refit on train+val, {int(m['refit/epochs'])} epochs)"
    return (
        f"{result.objective} {result.value:.4f} at epoch {int(m['best_epoch'])} of "
        f"{int(m['epochs_run'])} (selected){tested}, {m['perf/epoch_s']:.2f} s per epoch{run}"
    )


def _hydra_job() -> tuple[list[str], str | None]:
    """The Hydra overrides of this job and its output dir, when running under Hydra."""
    if not HydraConfig.initialized():
        return [], None
    hc = HydraConfig.get()
    return list(hc.overrides.task), hc.runtime.output_dir


def _hydra_mode() -> str | None:
    return HydraConfig.get().mode.name if HydraConfig.initialized() else None


def _validate_or_exit(config: DictConfig, multirun: bool = False) -> None:
    """Hydra turns a callback's exceptions into warnings; SystemExit is what stops it."""
    try:
        validate(config, check_files=file_problems)
        if multirun:
            validate_multirun(config)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    except Exception as exc:  # e.g. a mandatory value left as ???
        raise SystemExit(f"error: invalid configuration: {exc}") from None


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a multirun's command line sweeps (`optimizer=sgd,adam` -> optimizer)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def multirun_name(overrides: list[str]) -> str:
    """A multirun's parent run is named by what it sweeps (`optimizer=sgd,adam`), the rest of the
    command line is in its `overrides` tag; without a sweep, by the whole command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [o.input_line for o in parsed if o.is_sweep_override() and o.input_line]
    return mask(" ".join(swept or overrides)) or "multirun"


def parallel_threads(config: DictConfig) -> int | None:
    """Torch threads per job when jobs run side by side: the cores divided between them (unless
    trainer.num_threads says otherwise). Without this each job takes every core's threads and
    several on one machine slow each other down many times over."""
    if OmegaConf.select(config, "trainer.num_threads", default=None):
        return None
    jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=1) or 1
    if sweeper_kind(config):
        jobs = OmegaConf.select(config, "hydra.sweeper.n_jobs", default=1) or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jobs = cores if int(jobs) < 0 else int(jobs)  # joblib: -1 means one per core
    return max(1, (cores or 1) // jobs) if jobs > 1 else None


def mask_hydra_files(config: DictConfig) -> None:
    """Hydra writes a job's .hydra/config.yaml, hydra.yaml and overrides.yaml before any callback
    runs, and a plain multirun's multirun.yaml at its start: rewritten with every password masked
    (the job itself keeps the values it was given)."""
    hc = config.hydra
    if hc.output_subdir is not None:
        hydra_dir = Path(str(hc.runtime.output_dir), str(hc.output_subdir))
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            mask_file(hydra_dir / name)
    if hc.mode == RunMode.MULTIRUN:
        mask_file(Path(str(hc.sweep.dir), "multirun.yaml"))


class TunelabCallback(Callback):
    """on_run_start runs before the job's output directory exists, so bad input leaves no trace;
    a multirun ends with its jobs (or its best trials) side by side and the link to its runs."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.parent_id: str | None = None
        self.restore_env: Any = None
        self.failed = False

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_logs()
        _validate_or_exit(config)

    def on_run_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        completed = job_return is not None and job_return.status == JobStatus.COMPLETED
        if completed and config.tracking.get("tracking_uri"):
            from tunelab.tracking.mlflow_writer import MlflowWriter, runs_link

            writer = MlflowWriter(config.tracking.tracking_uri, config.tracking.experiment)
            print(runs_link(config.tracking.tracking_uri, writer.experiment_id))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_logs()  # a job in a worker process
        mask_hydra_files(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_logs()
        _validate_or_exit(config, multirun=True)
        uri = config.tracking.get("tracking_uri")
        ctx = RunContext.from_env()
        if threads := parallel_threads(config):
            ctx = ctx.derive(threads=threads)
        if uri and not sweeper_kind(config) and not ctx.parent_run_id:
            from tunelab.tracking.mlflow_writer import MlflowWriter

            self.writer = MlflowWriter(uri, config.tracking.experiment)
            overrides = mask(" ".join(config.hydra.overrides.task))
            swept = {"swept": ",".join(swept_keys(list(config.hydra.overrides.task)))}
            self.parent_id = self.writer.create_run(
                multirun_name(list(config.hydra.overrides.task)),
                {**ctx.tags, ROLE: Role.MULTIRUN, "overrides": overrides, **swept},
            )
            ctx = ctx.derive(parent_run_id=self.parent_id, tags=swept)
        self.restore_env = ctx.export()

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """A failed job fails its multirun's parent run (Hydra raises before on_multirun_end)."""
        failed = job_return is not None and job_return.status == JobStatus.FAILED
        if failed and self.parent_id is not None and not self.failed:
            self.failed = True
            overrides = mask(" ".join(job_return.overrides or []))
            self.writer.set_tags(self.parent_id, {FAILURE_REASON: f"job failed: {overrides}"})
            self.writer.end_run(self.parent_id, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.restore_env is not None:
            self.restore_env()
        uri = config.tracking.get("tracking_uri")
        if not uri or self.failed:
            return
        from tunelab.tracking.mlflow_writer import MlflowWriter, runs_link

        if self.parent_id is not None:
            from tunelab.reports.runs_table import jobs_table
            from tunelab.tracking.policy import tag_filter

            jobs = self.writer.search(tag_filter({"mlflow.parentRunId": self.parent_id}))
            objective = config.objective.metric
            compare = self._describe_parent(jobs, config)
            self.writer.end_run(self.parent_id, "FINISHED")
            print(jobs_table(jobs, objective, config.objective.direction))
            print(runs_link(uri, self.writer.experiment_id, view_key=self.parent_id))
            print(compare)
            return
        # a tunelab sweep or study: its own experiment; it printed its best trials and their link
        from tunelab.tuning.settings import sweep_settings, tracking_target

        uri, experiment = tracking_target(sweep_settings(config.hydra.sweeper), config)
        print(runs_link(uri, MlflowWriter(uri, experiment).experiment_id))

    def _describe_parent(self, jobs: list[Any], config: DictConfig) -> str:
        """The multirun's views: its jobs side by side and their objective's curves (on the parent
        run: its description and the `compare.runs` tag `tunelab ui --compare` reads), and the runs
        table of its jobs sorted by the objective, with it, test/acc and the swept params as
        columns (a shared view keyed by the parent's id). Returns the printed lines."""
        from tunelab.tracking.mlflow_writer import (
            compare_hint,
            share_view,
            table_view,
        )

        objective = config.objective.metric
        runs = [j.info.run_id for j in sorted(jobs, key=lambda j: j.info.start_time or 0)]
        logged = {k for j in jobs for k in j.data.params}
        params = [
            p
            for key in swept_keys(list(config.hydra.overrides.task))
            for p in (key, f"{key}.name")
            if p in logged
        ]
        ascending = config.objective.direction == "minimize"
        view = table_view(self.parent_id, objective, ascending, [test_metric(objective)], params)
        share_view(self.writer, self.parent_id, view)
        hint = compare_hint(self.writer.experiment_id, runs, objective)
        note = f"{len(runs)} jobs.\n\n{hint}"
        tags = {COMPARE_RUNS: ",".join(runs), "mlflow.note.content": note}
        self.writer.set_tags(self.parent_id, tags)
        return hint
