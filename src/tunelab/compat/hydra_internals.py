"""The private Hydra APIs tunelab relies on, named in one place. tests/test_compat.py fails when a
Hydra release changes any of them (the project pins hydra-core < 1.4).

- `ConfigLoaderImpl._apply_overrides_to_config`: applies value overrides to a composed config with
  Hydra's own semantics (`+`, `++`, `~`, type checks). The in-process launcher copies a template
  composed once and applies each job's value overrides with it: there is no public equivalent.
- `get_overrides_dirname`: the job's `override_dirname`, built as Hydra builds it.
- `BasicLauncher` (`hydra/launcher=basic`): jobs run one after another in this process, so the
  in-process launcher can take over and a live Optuna trial can be handed to the job directly.
  Hydra loads plugin modules afresh while scanning for plugins, so the launcher's class is told
  apart by its full name, not with isinstance.
- `JoblibLauncher.joblib`: the launcher's joblib settings, where the sweep sets `n_jobs`.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from omegaconf import DictConfig

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"

__all__ = ["apply_value_overrides", "get_overrides_dirname", "runs_in_process", "set_parallel_jobs"]


def apply_value_overrides(overrides: list[Any], cfg: DictConfig) -> None:
    """Apply parsed value overrides (not group choices) to a composed config, in place."""
    ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)


def runs_in_process(launcher: Any) -> bool:
    """True for Hydra's basic launcher: one job at a time, in this process."""
    cls = type(launcher)
    return f"{cls.__module__}.{cls.__qualname__}" == BASIC_LAUNCHER


def set_parallel_jobs(launcher: Any, n_jobs: int) -> bool:
    """Ask a joblib launcher for n_jobs workers; False when the launcher has no such setting."""
    settings = getattr(launcher, "joblib", None)
    if not isinstance(settings, dict):
        return False
    settings["n_jobs"] = n_jobs
    return True
