"""Study factory: storages (journal file, sqlite, any RDB URL), samplers, pruners, budget and resume."""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from tunelab.sweep.samplers import GoldenSectionSampler

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

DEFAULT_JOURNAL = "optuna.journal"
HOST = socket.gethostname()


def default_storage(tracking_uri: str | None) -> str:
    """A journal file next to the MLflow sqlite store (or in the working directory)."""
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///") :]).resolve().parent / DEFAULT_JOURNAL)
    return str(Path(DEFAULT_JOURNAL).resolve())


def normalize_storage(url: str) -> str:
    """Absolute form of a storage spec: `journal:PATH`, a bare file path, or an RDB URL."""
    if url.startswith("journal:"):
        return "journal:" + str(Path(url[len("journal:") :]).resolve())
    if "://" not in url:
        return "journal:" + str(Path(url).resolve())
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url[len("sqlite:///") :]).resolve())
    return url


def lock_path(url: str) -> Path | None:
    """File used to serialise ask() between sweep processes sharing a file-based storage."""
    if url.startswith("journal:"):
        return Path(url[len("journal:") :] + ".ask.lock")
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :] + ".ask.lock")
    return None


def make_storage(url: str) -> BaseStorage:
    """Open a storage; sqlite gets a long busy timeout so several processes can share it."""
    if url.startswith("journal:"):
        path = url[len("journal:") :]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if url.startswith("sqlite:"):
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return RDBStorage(url)


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """Exclusive advisory lock (no-op for server storages, where Optuna's own transactions apply)."""
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Grid(optuna.samplers.GridSampler):
    """GridSampler whose exhaustion is handled by the sweep's budget (no study.stop() outside optimize)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def make_sampler(spec: dict[str, Any], seed: int | None, grid: dict[str, list] | None = None):
    """Sampler by name: grid, random, qmc, tpe, gp, cmaes, nsgaii, line, bruteforce."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make_sampler(spec, seed, grid)


def _make_sampler(spec: dict[str, Any], seed: int | None, grid: dict[str, list] | None):
    name, kw = spec["name"], dict(spec.get("kwargs") or {})
    samplers = optuna.samplers
    if name == "grid":
        return _Grid(grid or {}, seed=seed)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "qmc":
        kw.setdefault("qmc_type", "sobol")
        kw.setdefault("scramble", True)
        kw.setdefault("warn_asynchronous_seeding", False)
        return samplers.QMCSampler(seed=seed, **kw)
    if name == "tpe":
        return samplers.TPESampler(seed=seed, **kw)
    if name == "gp":
        return samplers.GPSampler(seed=seed, **kw)
    if name == "cmaes":
        return samplers.CmaEsSampler(seed=seed, **kw)
    if name == "nsgaii":
        return samplers.NSGAIISampler(seed=seed, **kw)
    if name == "line":
        return GoldenSectionSampler(seed=seed)
    if name == "bruteforce":
        return samplers.BruteForceSampler(seed=seed, **kw)
    raise ValueError(f"unknown sampler '{name}' (grid, random, qmc, tpe, gp, cmaes, nsgaii, line)")


def make_pruner(spec: dict[str, Any] | None) -> optuna.pruners.BasePruner:
    """Pruner by name: none, median, percentile, successive_halving, hyperband, wilcoxon."""
    spec = spec or {}
    name, kw = spec.get("name") or "none", dict(spec.get("kwargs") or {})
    pruners = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "wilcoxon": optuna.pruners.WilcoxonPruner,
    }
    if name not in pruners:
        raise ValueError(f"unknown pruner '{name}' ({', '.join(pruners)})")
    return pruners[name]() if name == "none" else pruners[name](**kw)


def open_study(
    name: str, url: str, directions: list[str], pruner_spec: dict | None
) -> optuna.Study:
    """Create or load the study (same name + storage = resume); sampler is set on first ask."""
    storage = make_storage(url)
    try:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            directions=directions,
            pruner=make_pruner(pruner_spec),
            sampler=optuna.samplers.RandomSampler(),
            load_if_exists=True,
        )
    except Exception as e:
        if "database is locked" in str(e):
            raise RuntimeError(
                f"sqlite storage {url} is locked by another process; for several processes use a "
                "journal file (hydra.sweeper.storage=journal:./optuna.journal) or PostgreSQL"
            ) from e
        raise


def counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that use up the budget: all but interrupted (stale) ones, whose retry replaces them."""
    return sum(1 for t in trials if not t.user_attrs.get("stale"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale(study: optuna.Study, max_retries: int) -> list[int]:
    """Mark RUNNING trials whose sweep process on this host is gone FAIL(stale); re-enqueue them."""
    failed = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.system_attrs.get("tunelab:owner", "")).rpartition(":")
        if host != HOST or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        storage.set_trial_user_attr(t._trial_id, "stale", True)
        storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted: sweep process died")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        failed.append(t.number)
        retries = int(t.user_attrs.get("retries", 0))
        if retries < max_retries:
            study.enqueue_trial(
                dict(t.params),
                user_attrs={"retry_of": t.number, "retries": retries + 1},
                skip_if_exists=False,
            )
    return failed


def claim(trial: optuna.Trial) -> None:
    """Record which process runs the trial (for stale detection on restart)."""
    trial.storage.set_trial_system_attr(trial._trial_id, "tunelab:owner", f"{HOST}:{os.getpid()}")
