"""A study on a database server (PostgreSQL) shared by many sweep processes on many machines:
Optuna's RDBStorage with heartbeats, a database lock in place of the file lock that serialises
ask() on one machine, and errors that name the server, never its password.

Heartbeats: every running trial's process records a heartbeat every `heartbeat_interval_s`; a
trial whose heartbeat is older than `grace_period_s` (at least three intervals: its machine died, its
job was preempted) is failed by the next process that asks, and Optuna's
RetryHeartbeatStaleTrialCallback queues it again (at most `max_retries` times), so the study still
ends with n_trials trials. A beat that cannot be recorded is logged and retried at the next one; a
trial that finishes after it was failed this way still has its result recorded (storage.tell_late).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tunelab.config.secrets import host_of, mask

log = logging.getLogger(__name__)
# Optuna warns on every ask/tell of a heartbeat storage outside Study.optimize; here the sweep
# records the heartbeats itself (Heartbeat below).
warnings.filterwarnings(
    "ignore", message="Heartbeat of storage is supposed to be used with", category=UserWarning
)
SERVER_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql+pymysql")


class StorageUnavailable(RuntimeError):
    """The study's database cannot be reached or refuses us; the message carries no password."""


def scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else ""


def open_server_storage(
    url: str, heartbeat_interval_s: int, grace_period_s: int, max_retries: int
) -> RDBStorage:
    """RDBStorage with heartbeats and retries of stale trials; a clear error when unreachable."""
    with warnings.catch_warnings():  # Optuna marks its heartbeats experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _open(url, heartbeat_interval_s, grace_period_s, max_retries)


def _open(url: str, heartbeat_interval_s: int, grace_period_s: int, max_retries: int) -> RDBStorage:
    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)
    try:
        with _schema_lock(url):  # workers starting together would race to create the tables
            return RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_interval_s,
                grace_period=grace_period_s,
                heartbeat_stale_trial_callback=retry,
            )
    except Exception as exc:
        raise StorageUnavailable(
            f"cannot open the Optuna storage at {host_of(url)}: {_reason(exc)}"
        ) from None


def locks_in_database(url: str) -> bool:
    """Whether the server gives advisory locks (PostgreSQL) to serialise workers with."""
    return url.startswith("postgresql")


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    if not locks_in_database(url):
        yield
        return
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with _locked(engine, "tunelab:optuna-schema"):
            yield
    finally:
        engine.dispose()


def _reason(exc: BaseException) -> str:
    """The first meaningful line of a driver error, with any URL's password masked."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask(text[0] if text else type(exc).__name__)[:300]


def advisory_lock(storage: RDBStorage, name: str) -> contextlib.AbstractContextManager[None]:
    """PostgreSQL's session advisory lock on `name`: one holder across every machine."""
    return _locked(storage.engine, name)


@contextlib.contextmanager
def _locked(engine: Any, name: str) -> Iterator[None]:
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def uses_heartbeats(storage: Any) -> bool:
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def fail_stale(storage: Any, study: optuna.Study) -> list[str]:
    """Fail (and, through the callback, re-queue) trials whose heartbeat stopped; the MLflow runs
    of the trials it failed."""
    if not uses_heartbeats(storage):
        return []
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return [
        str(t.user_attrs["mlflow_run_id"])
        for t in failed
        if t.number in running and t.user_attrs.get("mlflow_run_id")
    ]


class Heartbeat:
    """Records a running trial's heartbeat in the background, from start() to stop()."""

    def __init__(self, storage: Any, trial_id: int | None) -> None:
        """trial_id: the storage's id of the trial; None where the storage keeps no heartbeats."""
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        if self.trial_id is not None:
            self.storage.record_heartbeat(self.trial_id)
            interval = float(self.storage.get_heartbeat_interval() or 60)
            self._thread = threading.Thread(
                target=self._beat, args=(interval,), name="heartbeat", daemon=True
            )
            self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # retried at the next beat; the grace period spans several
                log.warning(
                    "heartbeat of trial id %s not recorded (retried in %g s): %s",
                    self.trial_id,
                    interval,
                    _reason(exc),
                )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
