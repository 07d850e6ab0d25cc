"""Optuna storages: journal file (default), SQLite or any RDB URL; opening studies, locks between
sweep processes on one file storage, the budget, the untuned baseline trial, and trials left
RUNNING by a dead sweep, and an earlier study's best configurations queued as a warm start.

Everything goes through Optuna's public Study and BaseStorage APIs: the storage object is
opened here and kept by its caller."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from tunelab import environment, processes
from tunelab.config.secrets import mask
from tunelab.config.space import Param, contains
from tunelab.config.sweep_check import grace_period
from tunelab.tags import WARM_START_FROM
from tunelab.tracking.policy import transient_text
from tunelab.tracking.store_uri import absolute_uri, lock_beside, sqlite_path
from tunelab.tuning import rdb
from tunelab.tuning.samplers import make_pruner
from tunelab.tuning.settings import PrunerConf, SweepSettings, WarmStartConf

log = logging.getLogger(__name__)
DEFAULT_JOURNAL = "optuna.journal"
OWNER = "tunelab:owner"  # system attr: the owner stamp of the sweep process running a trial
ENV_STORAGE = environment.OPTUNA_STORAGE  # a team's study database, e.g. postgresql://…


def default_storage(tracking_uri: str | None) -> str:
    """$TUNELAB_OPTUNA_STORAGE, else a journal file next to the MLflow sqlite store (or in the
    working directory)."""
    if team := environment.optuna_storage():
        return team
    if (db := sqlite_path(tracking_uri)) is not None:
        return str(db.resolve().parent / DEFAULT_JOURNAL)
    return str(Path(DEFAULT_JOURNAL).resolve())


def normalize_storage(url: str) -> str:
    """Absolute form of a storage spec: `journal:PATH`, a bare file path, or an RDB URL."""
    if url.startswith("journal:"):
        return "journal:" + str(Path(url[len("journal:") :]).resolve())
    if "://" not in url:
        return "journal:" + str(Path(url).resolve())
    if sqlite_path(url) is not None:
        return absolute_uri(url)
    if rdb.scheme(url) in rdb.SERVER_SCHEMES:
        return url
    raise ValueError(
        f"unknown Optuna storage {mask(url)!r}: use journal:PATH (or a path), sqlite:///FILE, "
        "or a database server URL (postgresql://user@host:port/db)"
    )


def lock_path(url: str) -> Path | None:
    """File used to serialise ask() between sweep processes sharing a file-based storage."""
    if url.startswith("journal:"):
        return Path(url[len("journal:") :] + ".ask.lock")
    return lock_beside(url, ".ask.lock")


def make_storage(
    url: str,
    heartbeat_interval_s: int = 60,
    grace_period_s: int | None = None,
    max_retries: int = 1,
) -> BaseStorage:
    """Open a storage; sqlite gets a long busy timeout so several processes can share it; a
    database server gets heartbeats, so trials of a machine that died are failed and retried."""
    if url.startswith("journal:"):
        path = url[len("journal:") :]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if url.startswith("sqlite:"):
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    grace = grace_period(heartbeat_interval_s, grace_period_s)
    return rdb.open_server_storage(url, heartbeat_interval_s, grace, max_retries)


def open_storage(url: str, settings: SweepSettings) -> BaseStorage:
    """The storage a sweep's settings (hydra.sweeper) ask for; the first process to arrive at a
    file storage creates its tables while the others wait."""
    with processes.file_lock(lock_path(url)):
        return make_storage(
            url, settings.heartbeat_interval_s, settings.grace_period_s, settings.max_retries
        )


def ask_lock(storage: BaseStorage, url: str, name: str) -> contextlib.AbstractContextManager:
    """Serialises ask() and the budget check between every process working on a study: a file
    lock beside a file storage, a database lock on a server."""
    if rdb.locks_in_database(url):
        return rdb.advisory_lock(storage, f"tunelab:ask:{name}")
    return processes.file_lock(lock_path(url))


def open_study(
    name: str,
    storage: BaseStorage,
    directions: list[str],
    pruner_spec: PrunerConf | None,
    url: str = "",
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
                f"sqlite storage {mask(url) or name} is locked by another process; for several processes "
                "use a journal file (hydra.sweeper.storage=journal:./optuna.journal) or PostgreSQL"
            ) from e
        raise


def trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of a study."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that use up the budget: all but interrupted (stale) ones, whose retry replaces them
    (a dead sweep's trial on this host, or a trial whose heartbeat stopped)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if not t.user_attrs.get("stale") and t.number not in retried)


def fail_stale(storage: BaseStorage, study: optuna.Study, max_retries: int) -> list[int]:
    """Mark RUNNING trials whose sweep process on this host is gone FAIL(stale); re-enqueue them."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not processes.is_dead(str(t.system_attrs.get(OWNER, ""))):
            continue
        tid = trial_id(storage, study.study_name, t.number)
        storage.set_trial_user_attr(tid, "stale", True)
        storage.set_trial_user_attr(tid, "fail_reason", "interrupted: sweep process died")
        study.tell(t.number, state=TrialState.FAIL)
        failed.append(t.number)
        requeue(study, dict(t.params), {**t.user_attrs, "number": t.number}, max_retries)
    return failed


def infrastructure_failure(trial: optuna.Trial, reason: str) -> bool:
    """Record why a running trial failed; True (and the trial marked stale, so the budget does not
    count it) when the cause was the tracking server or a database being unreachable."""
    trial.set_user_attr("fail_reason", reason)
    away = reason.startswith("tracking unavailable") or transient_text(reason)
    if away:
        trial.set_user_attr("stale", True)
    return away


def requeue(study: optuna.Study, params: dict, attrs: dict, max_retries: int) -> bool:
    """Queue a trial's params again (at most max_retries times for one original trial)."""
    retries = int(attrs.get("retries", 0))
    if retries >= max_retries:
        return False
    origin = attrs.get("retry_of", attrs.get("number"))
    study.enqueue_trial(
        dict(params), user_attrs={"retry_of": origin, "retries": retries + 1}, skip_if_exists=False
    )
    return True


def claim(storage: BaseStorage, study: optuna.Study, trial: optuna.Trial) -> None:
    """Record which process runs the trial (for stale detection on restart)."""
    tid = trial_id(storage, study.study_name, trial.number)
    storage.set_trial_system_attr(tid, OWNER, processes.me())


def still_running(storage: BaseStorage, study: optuna.Study, number: int) -> bool:
    """Whether trial `number` is RUNNING in the storage now, so its worker may tell it: another
    worker fails it when its heartbeat went stale (call under ask_lock, which that check takes)."""
    tid = trial_id(storage, study.study_name, number)
    return storage.get_trial(tid).state == TrialState.RUNNING


def tell_late(
    sweep: Any, trial: optuna.Trial, out: Any, means: dict, run_id: str | None, params: dict
) -> None:
    """The result of a trial another worker failed while it ran (its heartbeat went stale): a
    complete one is told as the trial's retry if that still waits (retry_for); the trial's MLflow
    run keeps it either way, tagged late_result."""
    told = None
    if out.kind == "complete":
        attrs: dict[str, Any] = {"mlflow_run_id": run_id, "mlflow_seed_run_ids": out.run_ids}
        if len(out.per_seed) > 1:
            attrs.update({f"seeds:{m}": [v[m] for v in out.per_seed] for m in sweep.metrics})
        if sweep.constraints:
            attrs["constraints"] = sweep.violations(means)
        values = [means[m] for m in sweep.metrics]
        told = retry_for(sweep.storage, sweep.study, trial.number, values, attrs)
    where = f"told as its retry, trial {told}" if told is not None else "not told to Optuna"
    log.warning(
        "trial %d ended %s after a stale heartbeat failed it: %s", trial.number, out.kind, where
    )
    if sweep.runs and run_id:
        sweep.runs.end_late(run_id, out.kind, means, params, told, len(out.per_seed))


def retry_for(
    storage: BaseStorage, study: optuna.Study, number: int, values: list[float], attrs: dict
) -> int | None:
    """Tell the values of trial `number`, failed by a stale heartbeat while it ran, as its retry:
    the WAITING trial with its params that RetryHeartbeatStaleTrialCallback queued, claimed here so
    the study counts the result once (the failed trial is in the retry's history). The number told;
    None when no retry waits (another worker has taken it, or the retries are used up)."""
    failed = storage.get_trial(trial_id(storage, study.study_name, number))
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        history = t.system_attrs.get("retry_history") or [None]
        if history[-1] != number or t.params != failed.params:
            continue
        tid = trial_id(storage, study.study_name, t.number)
        if not storage.set_trial_state_values(tid, TrialState.RUNNING):  # taken meanwhile
            continue
        storage.set_trial_system_attr(tid, OWNER, processes.me())
        for key, value in {**attrs, "late_result_of": number}.items():
            storage.set_trial_user_attr(tid, key, value)
        for text, value in (attrs.get("constraints") or {}).items():
            optuna.Trial(study, tid).set_constraint(text, value)
        study.tell(t.number, values)
        return t.number
    return None


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


class WarmStartError(ValueError):
    """hydra.sweeper.warm_start names no usable earlier study (the user's to fix)."""


@dataclass(frozen=True)
class WarmStart:
    """An earlier study's best configurations, as this sweep's space can take them."""

    source: str  # study@storage (masked)
    configs: tuple[dict[str, Any], ...]  # best first
    skipped: tuple[str, ...]  # the better trials left out, and why


def read_warm_start(
    conf: WarmStartConf,
    own_url: str,
    own_name: str,
    space: list[Param],
    directions: list[str],
    limit: int,
) -> WarmStart:
    """The best min(top_k, limit) completed configurations of the earlier study `conf` names,
    restricted to the keys this sweep searches. Read before the sweep creates anything: a missing
    storage or study, other objectives or no configuration inside this space is a WarmStartError.
    A better trial with a value outside this space is skipped, with its reason."""
    key = "hydra.sweeper.warm_start"
    url = normalize_storage(conf.storage) if conf.storage else own_url
    if url == own_url and conf.study == own_name:
        raise WarmStartError(f"{key}.study={conf.study!r} is this sweep's own study")
    where = mask(url)
    file = Path(url[len("journal:") :]) if url.startswith("journal:") else sqlite_path(url)
    if file is not None and not file.exists():
        raise WarmStartError(f"{key}.storage: {where} does not exist (no earlier study there)")
    storage = make_storage(url)
    names = optuna.study.get_all_study_names(storage)
    if conf.study not in names:
        raise WarmStartError(
            f"{key}.study={conf.study!r}: no such study in {where} (it holds {sorted(names)})"
        )
    source = optuna.load_study(study_name=conf.study, storage=storage)
    theirs = [d.name.lower() for d in source.directions]
    if theirs != [d.lower() for d in directions]:
        raise WarmStartError(
            f"{key}.study={conf.study!r} optimised {theirs}, this sweep {directions}: its best "
            "configurations are not this sweep's"
        )
    done = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = -1.0 if theirs[0] == "maximize" else 1.0
    by_name = {p.name: p for p in space}
    configs: list[dict[str, Any]] = []
    skipped: list[str] = []
    for t in sorted(done, key=lambda t: (sign * t.values[0], t.number)):
        if len(configs) >= min(conf.top_k, limit):
            break
        shared = {k: v for k, v in t.params.items() if k in by_name}
        outside = [f"{k}={v!r}" for k, v in shared.items() if not contains(by_name[k].dist, v)]
        if outside or not shared:
            why = ", ".join(outside) + " outside this space" if outside else "no key in common"
            skipped.append(f"trial {t.number}: {why}")
        elif shared not in configs:
            configs.append(shared)
    if not configs:
        reasons = "; ".join(skipped) or "it has no completed trial"
        raise WarmStartError(
            f"{key}.study={conf.study!r} in {where}: no configuration to start from ({reasons})"
        )
    return WarmStart(f"{conf.study}@{where}", tuple(configs), tuple(skipped))


def enqueue_warm_start(study: optuna.Study, warm: WarmStart) -> bool:
    """Queue the warm start's configurations as the study's next trials, once per study (a
    resumed sweep finds the study's record of it and queues nothing); False when already done."""
    if WARM_START_FROM in study.user_attrs:
        return False
    for params in warm.configs:
        study.enqueue_trial(params, user_attrs={WARM_START_FROM: warm.source})
    record = {"source": warm.source, "configs": len(warm.configs), "skipped": list(warm.skipped)}
    study.set_user_attr(WARM_START_FROM, record)
    for reason in warm.skipped:
        log.info("warm start from %s skipped %s", warm.source, reason)
    log.info("warm start: %d configurations of %s queued first", len(warm.configs), warm.source)
    return True


def heartbeat(storage: BaseStorage, study_name: str, number: int) -> rdb.Heartbeat:
    """The heartbeat of a running trial (one that records nothing where the storage keeps none)."""
    beats = rdb.uses_heartbeats(storage)
    return rdb.Heartbeat(storage, trial_id(storage, study_name, number) if beats else None)


def fail_lost(storage: BaseStorage, study: optuna.Study, runs: Any) -> None:
    """Trials whose worker stopped beating (its machine died) fail and re-queue; their MLflow
    runs (`runs`: the sweep's SweepRuns, or None) end KILLED."""
    for run_id in rdb.fail_stale(storage, study):
        if runs is not None:
            runs.close_stale(run_id)


def reports_due(
    storage: BaseStorage, url: str, study: optuna.Study, ran_here: int, runs: Any
) -> bool:
    """Whether this process writes the study's reports: the one that ends it. With trials still
    running elsewhere, their process will; a state another worker has already reported is not
    reported again (a process that ran no trial, a user regenerating them, always reports). This
    process is no longer listed among the workers on the sweep's MLflow run (`runs`) either way."""
    if runs is not None:
        runs.leave()
    with ask_lock(storage, url, study.study_name):
        fail_lost(storage, study, runs)
        trials = study.get_trials(deepcopy=False)
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        if running:
            log.info("trials %s still run in another process: it writes the reports", running)
            return False
        if ran_here and study.user_attrs.get("reported_trials") == len(trials):
            return False
        study.set_user_attr("reported_trials", len(trials))
    return True
