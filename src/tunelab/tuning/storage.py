"""Optuna storages: journal file (default), SQLite or any RDB URL; opening studies, locks between
sweep processes on one file storage, the budget, the untuned baseline trial, and trials left
RUNNING by a dead sweep.

Everything goes through Optuna's public Study and BaseStorage APIs: the storage object is
opened here and kept by its caller."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from tunelab import ownership
from tunelab.config.space import Param, contains
from tunelab.tuning.samplers import make_pruner

log = logging.getLogger(__name__)
DEFAULT_JOURNAL = "optuna.journal"
OWNER = "tunelab:owner"  # system attr: the owner stamp of the sweep process running a trial


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


def open_study(
    name: str, storage: BaseStorage, directions: list[str], pruner_spec: dict | None, url: str = ""
) -> optuna.Study:
    """Create or load the study (same name + storage = resume); the sampler is set on first ask."""
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
                f"sqlite storage {url or name} is locked by another process; for several processes "
                "use a journal file (hydra.sweeper.storage=journal:./optuna.journal) or PostgreSQL"
            ) from e
        raise


def trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of a study."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that use up the budget: all but interrupted (stale) ones, whose retry replaces them."""
    return sum(1 for t in trials if not t.user_attrs.get("stale"))


def fail_stale(storage: BaseStorage, study: optuna.Study, max_retries: int) -> list[int]:
    """Mark RUNNING trials whose sweep process on this host is gone FAIL(stale); re-enqueue them."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not ownership.is_dead(str(t.system_attrs.get(OWNER, ""))):
            continue
        tid = trial_id(storage, study.study_name, t.number)
        storage.set_trial_user_attr(tid, "stale", True)
        storage.set_trial_user_attr(tid, "fail_reason", "interrupted: sweep process died")
        study.tell(t.number, state=TrialState.FAIL)
        failed.append(t.number)
        retries = int(t.user_attrs.get("retries", 0))
        if retries < max_retries:
            study.enqueue_trial(
                dict(t.params),
                user_attrs={"retry_of": t.number, "retries": retries + 1},
                skip_if_exists=False,
            )
    return failed


def claim(storage: BaseStorage, study: optuna.Study, trial: optuna.Trial) -> None:
    """Record which process runs the trial (for stale detection on restart)."""
    tid = trial_id(storage, study.study_name, trial.number)
    storage.set_trial_system_attr(tid, OWNER, ownership.me())


def enqueue_baseline(study: optuna.Study, space: list[Param], config: Any) -> bool:
    """Queue the config's own values of the searched keys as the study's next trial (the untuned
    reference, user attr baseline=true); False when one of them lies outside the space."""
    values = {}
    for p in space:
        value = OmegaConf.select(config, p.name, default=None)
        if p.condition is not None or value is None or not contains(p.dist, value):
            log.info("no baseline trial: %s=%r is outside the searched space", p.name, value)
            study.set_user_attr("baseline_enqueued", False)
            return False
        values[p.name] = value
    study.enqueue_trial(values, user_attrs={"baseline": True})
    study.set_user_attr("baseline_enqueued", True)
    return True
