"""Jobs in the sweeper's process (what Hydra's basic launcher does), with cached composition.

Composing a job's config from scratch costs ~0.1 s (defaults tree, YAML files, merges). Trials of a
study differ only in their overrides, so each job's config is a copy of a template composed once
per choice of config groups, with the value overrides (params, seed, env) applied by Hydra's own
override code; the resulting config is the same as `load_sweep_config` gives (tested).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from tunelab.compat.hydra_internals import (
    apply_value_overrides,
    get_overrides_dirname,
    runs_in_process,
    set_parallel_jobs,
)
from tunelab.config.secrets import mask

log = logging.getLogger(__name__)


class CachedComposer:
    """`load_sweep_config` with a template per config-group choice."""

    def __init__(self, config: DictConfig, config_loader: Any) -> None:
        self.config, self.loader = config, config_loader
        self.groups = set(config.hydra.runtime.choices.keys())
        self.parser = OverridesParser.create()
        self._templates: dict[tuple[str, ...], DictConfig] = {}

    def _is_value(self, ov: Any) -> bool:
        key = ov.key_or_group
        return ov.package is None and key not in self.groups and not key.startswith("hydra/")

    def compose(self, overrides: list[str], fixed: int) -> DictConfig:
        """Config of a job whose first `fixed` overrides are the same for every job of the sweep."""
        parsed = self.parser.parse_overrides(overrides)
        varying = parsed[fixed:]
        structural = [o.input_line for o in varying if not self._is_value(o)]
        key = tuple(overrides[:fixed]) + tuple(structural)
        if key not in self._templates:
            self._templates[key] = self.loader.load_sweep_config(self.config, list(key))
        template = self._templates[key]
        cfg = copy.deepcopy(template)
        OmegaConf.copy_cache(from_config=template, to_config=cfg)
        apply_value_overrides([o for o in varying if self._is_value(o)], cfg)
        master_hydra = list(self.config.hydra.overrides.hydra)
        app = [o for o in parsed if not o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in app]
        cfg.hydra.overrides.hydra = master_hydra + [
            o.input_line for o in parsed if o.is_hydra_override()
        ]
        job = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=app, kv_sep=job.kv_sep, item_sep=job.item_sep, exclude_keys=job.exclude_keys
        )
        return cfg


class InProcessLauncher:
    """Runs one job at a time in this process, like hydra's BasicLauncher, on cached configs."""

    def __init__(self, launcher: Any, fixed: int) -> None:
        self.launcher, self.fixed = launcher, fixed
        self.composer = CachedComposer(launcher.config, launcher.hydra_context.config_loader)

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        hydra_cfg = self.launcher.config.hydra
        configure_log(hydra_cfg.hydra_logging, hydra_cfg.verbose)
        Path(str(hydra_cfg.sweep.dir)).mkdir(parents=True, exist_ok=True)
        runs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            shown = [o for o in overrides if "hydra.job.env_set." not in o]
            log.info("job #%d : %s", idx, mask(" ".join(shown)))
            cfg = self.composer.compose(list(overrides), self.fixed)
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            runs.append(
                run_job(
                    hydra_context=self.launcher.hydra_context,
                    task_function=self.launcher.task_function,
                    config=cfg,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(hydra_cfg.hydra_logging, hydra_cfg.verbose)
        return runs


def plan_launch(launcher: Any, n_jobs: int, n_fixed: int, cached: bool) -> tuple[Any, int]:
    """(what launches the jobs, trials at once): the basic launcher runs one job at a time in
    this process; a joblib launcher is given n_jobs workers."""
    if n_jobs > 1 and runs_in_process(launcher):
        log.warning(
            "n_jobs=%d with the basic launcher: jobs share one process; running 1 at a time "
            "(use hydra/launcher=joblib)",
            n_jobs,
        )
        n_jobs = 1
    if n_jobs > 1:
        set_parallel_jobs(launcher, n_jobs)
    if submits_to_slurm(launcher):
        from tunelab.compat.submitit_internals import use_squeue_status

        use_squeue_status()
    return runner_for(launcher, n_fixed, cached), n_jobs


def submits_to_slurm(launcher: Any) -> bool:
    """True for hydra-submitit-launcher's SLURM launcher (launcher=slurm): its jobs' states are
    then polled from squeue, so a job that died without a result ends its wait."""
    cls = type(launcher)
    return cls.__module__.startswith("hydra_plugins.hydra_submitit_launcher") and (
        cls.__name__ == "SlurmLauncher"
    )


def runner_for(launcher: Any, n_fixed: int, cached_compose: bool = True) -> Any:
    """What launches a sweep's jobs: the in-process launcher on cached configs where Hydra's basic
    launcher would run them here anyway, else the configured launcher."""
    if cached_compose and runs_in_process(launcher):
        return InProcessLauncher(launcher, n_fixed)
    return launcher
