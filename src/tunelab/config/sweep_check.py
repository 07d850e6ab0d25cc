"""The up-front check of a multirun: the sweeper's settings and every value a sweep will try,
before the sweep directory, its MLflow run or its Optuna study exist."""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, ListConfig, OmegaConf

from tunelab.config import constraints, tasks
from tunelab.config import rules as r
from tunelab.config.schema import ConfigError, validate
from tunelab.config.search_methods import FIDELITIES, FIDELITY_PRUNERS, pruner_name, sampler_name

STORAGE_SCHEMES = ("journal", "sqlite", "postgresql", "mysql")
# a trial is stale after this many heartbeat intervals without one (the default and the minimum):
# a single late or failed beat never gets a live trial failed by another worker
GRACE_INTERVALS = 3


def grace_period(interval_s: int, grace_s: int | None) -> int:
    """The grace period of a heartbeat interval: grace_s, else GRACE_INTERVALS intervals; a
    ValueError when grace_s is shorter than that."""
    if (problem := grace_problem(interval_s, grace_s)) is not None:
        raise ValueError(f"hydra.sweeper.grace_period_s={grace_s!r} is invalid: expected {problem}")
    return int(grace_s) if grace_s is not None else GRACE_INTERVALS * int(interval_s)


def grace_problem(interval_s: Any, grace_s: Any) -> str | None:
    """Why grace_s cannot go with interval_s (None: it can)."""
    if grace_s is None or r.POSITIVE_INT(interval_s) is not None:
        return None
    least = GRACE_INTERVALS * int(interval_s)
    if r.POSITIVE_INT(grace_s) is not None or grace_s < least:
        return (
            f"null or at least {GRACE_INTERVALS} x heartbeat_interval_s ({least} s): a shorter "
            "one lets a late heartbeat get a live trial failed"
        )
    return None


def storage(v: Any) -> str | None:
    """null, `journal:PATH`, a file path (a journal), or an RDB URL Optuna can open."""
    allowed = f"null, journal:PATH, a file path or a URL with a scheme in {list(STORAGE_SCHEMES)}"
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        return allowed
    if "://" not in v:
        return None  # journal:PATH or a plain path
    scheme = v.split(":", 1)[0].split("+", 1)[0].lower()
    return None if scheme in STORAGE_SCHEMES else allowed


def seeds(v: Any) -> str | None:
    ok = v is None or (isinstance(v, list) and v and all(r.INTEGER(s) is None for s in v))
    return None if ok else "null or a non-empty list of integer seeds"


def study_seeds(v: Any) -> str | None:
    ok = r.POSITIVE_INT(v) is None or (seeds(v) is None and v is not None)
    return None if ok else "a number of seeds >= 1 or a non-empty list of integer seeds"


def warm_start(v: Any) -> str | None:
    """{study: null or NAME, storage: null or a storage, top_k: >= 1}."""
    allowed = "{study: null or NAME, storage: null or a storage, top_k: an integer >= 1}"
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) - {"study", "storage", "top_k"}:
        return allowed
    rules = {"study": r.optional(r.text), "storage": storage, "top_k": r.POSITIVE_INT}
    bad = [f"{k}: {why}" for k, rule in rules.items() if k in v and (why := rule(v[k])) is not None]
    return f"{allowed} ({'; '.join(bad)})" if bad else None


COMMON: dict[str, r.Check] = {
    "n_jobs": r.POSITIVE_INT,
    "timeout_s": r.OPTIONAL_POSITIVE,
    "storage": storage,
    "max_failure_rate": r.UNIT,
    "max_retries": r.NON_NEGATIVE_INT,
    "heartbeat_interval_s": r.POSITIVE_INT,
    "grid_points": r.number(2, integer=True),
    "sampler.name": sampler_name,
    "pruner.name": pruner_name,
}
SWEEPER: dict[str, r.Check] = {
    **COMMON,
    "n_trials": r.POSITIVE_INT,
    "seeds": seeds,
    "warm_start": warm_start,
    "fidelity": r.optional(r.one_of(*FIDELITIES)),  # absent: epochs
    "data_rungs": r.optional(r.number(2, integer=True)),
}
STUDY: dict[str, r.Check] = {
    **COMMON,
    "n_trials": r.NON_NEGATIVE_INT,  # 0: no nuisance search, each cell runs as configured
    "seeds": study_seeds,
    "search_seeds": seeds,
    "edge_fraction": r.number(0, 0.5, hi_open=True),
    "top_k_curves": r.NON_NEGATIVE_INT,
    "bootstrap": r.POSITIVE_INT,
    "alpha": r.OPEN_UNIT,
    "min_effect": r.POSITIVE,
    "vary_split": r.boolean,
}


def sweeper_kind(cfg: DictConfig) -> str | None:
    """ "sweeper", "study" or None (not a tunelab sweeper) from hydra.sweeper._target_."""
    target = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="") or "")
    if not target.startswith("hydra_plugins.tunelab_sweeper."):
        return None
    return "study" if target.endswith("StudySweeper") else "sweeper"


def _objective_problems(cfg: DictConfig) -> list[str]:
    """The sweep's own objectives (multi-objective sweeps): metrics of the task, each in its
    direction (config/tasks.py)."""
    objectives = OmegaConf.select(cfg, "hydra.sweeper.objectives", default=None)
    if not isinstance(objectives, ListConfig):
        return []
    task = str(OmegaConf.select(cfg, "task.name", default=tasks.DEFAULT))
    out = []
    for i, entry in enumerate(objectives):
        metric = entry.get("metric") if isinstance(entry, DictConfig) else None
        if isinstance(metric, str):
            key = f"hydra.sweeper.objectives[{i}]"
            out += tasks.watch_problems(task, key, metric, entry.get("direction"))
    return out


def _constraint_problems(cfg: DictConfig) -> list[str]:
    """hydra.sweeper.constraints: each of the form, on a metric the task's runs report (a class
    the data has)."""
    values = OmegaConf.select(cfg, "hydra.sweeper.constraints", default=None)
    values = OmegaConf.to_container(values) if OmegaConf.is_config(values) else values
    task = str(OmegaConf.select(cfg, "task.name", default=tasks.DEFAULT))
    target = OmegaConf.select(cfg, "data._target_", default=None)
    classes = tasks.CLASS_COUNTS.get(target)
    if target == "tunelab.data.sources.synthetic":
        classes = OmegaConf.select(cfg, "data.num_classes", default=None)
    return constraints.problems(values, task, classes if isinstance(classes, int) else None)


def _fidelity_problems(cfg: DictConfig) -> list[str]:
    """fidelity=data: rungs of a successive-halving or Hyperband pruner, on one objective."""
    sel = OmegaConf.select
    if sel(cfg, "hydra.sweeper.fidelity", default="epochs") != "data":
        return []
    out = []
    pruner = sel(cfg, "hydra.sweeper.pruner.name", default="none")
    if pruner not in FIDELITY_PRUNERS:
        out.append(
            f"hydra.sweeper.fidelity=data needs a pruner in {list(FIDELITY_PRUNERS)}, not "
            f"{pruner!r}: set hydra.sweeper.pruner.name=successive_halving (or hyperband)"
        )
    objectives = sel(cfg, "hydra.sweeper.objectives", default=None)
    if isinstance(objectives, ListConfig) and len(objectives) > 1:
        out.append(
            "hydra.sweeper.fidelity=data prunes by one objective: Optuna cannot prune a "
            f"study of {len(objectives)} (hydra.sweeper.objectives)"
        )
    eta = sel(cfg, "hydra.sweeper.pruner.kwargs.reduction_factor", default=3)
    if r.number(2, integer=True)(eta) is not None:
        out.append(
            f"hydra.sweeper.pruner.kwargs.reduction_factor={eta!r} is invalid with "
            "fidelity=data: expected an integer >= 2 (the ratio of two rungs' fractions)"
        )
    return out


def sweeper_problems(cfg: DictConfig) -> list[str]:
    kind = sweeper_kind(cfg)
    if kind is None:
        return []
    table = STUDY if kind == "study" else SWEEPER
    out = _objective_problems(cfg)
    if kind == "sweeper":
        out += _constraint_problems(cfg) + _fidelity_problems(cfg)
    for key, check in table.items():
        value = OmegaConf.select(cfg, f"hydra.sweeper.{key}", default=None)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if (allowed := check(value)) is not None:
            out.append(f"hydra.sweeper.{key}={value!r} is invalid: expected {allowed}")
    interval = OmegaConf.select(cfg, "hydra.sweeper.heartbeat_interval_s", default=None)
    grace = OmegaConf.select(cfg, "hydra.sweeper.grace_period_s", default=None)
    if (allowed := grace_problem(interval, grace)) is not None:
        out.append(f"hydra.sweeper.grace_period_s={grace!r} is invalid: expected {allowed}")
    return out


def sweep_values(cfg: DictConfig, arguments: list[str]) -> dict[str, list[Any]]:
    """key -> the values (or interval ends) a sweep will give it: the command line's sweeps and
    hydra.sweeper.params. Group choices (`optimizer=sgd,adam`) are left to Hydra, which composes
    each option before the first job."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    groups = set(OmegaConf.select(cfg, "hydra.runtime.choices", default={}) or {})
    out: dict[str, list[Any]] = {}
    for ov in OverridesParser.create().parse_overrides(lines):
        if not ov.is_sweep_override() or ov.key_or_group in groups or ov.is_hydra_override():
            continue
        sweep = ov.value()
        if isinstance(sweep, IntervalSweep):
            out[ov.key_or_group] = [sweep.start, sweep.end]
        elif isinstance(sweep, RangeSweep):
            values = list(sweep.range())
            out[ov.key_or_group] = values[:1] + values[-1:]
        elif isinstance(sweep, ChoiceSweep):
            out[ov.key_or_group] = list(sweep.list)
    return out


def validate_multirun(cfg: DictConfig) -> None:
    """Raise ConfigError when the sweeper's settings, or any value a job of the sweep would take,
    cannot work; the master config itself is checked by `validate`."""
    problems = sweeper_problems(cfg)
    arguments = list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])
    for key, values in sweep_values(cfg, arguments).items():
        for value in values:
            job = cfg.copy()
            OmegaConf.update(job, key, value, merge=False, force_add=True)
            try:
                validate(job)
            except ConfigError as exc:
                lines = str(exc).splitlines()[1:]
                problems += [f"{line.strip()} (a value the sweep of {key} tries)" for line in lines]
    if problems:
        raise ConfigError("invalid sweep:\n  " + "\n  ".join(dict.fromkeys(problems)))
