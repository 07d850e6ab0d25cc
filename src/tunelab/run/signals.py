"""Signals as exceptions while a run records: SIGTERM -> Terminated, SIGINT -> KeyboardInterrupt.
A sweep's process uses `on_signals` instead: a signal there stops the sweep (see tuning/sweep.py)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
STOPPING = (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):
    """SIGTERM arrived: the run ends KILLED after recording what it has. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (logging, MLflow) swallows it."""


class Preempted(BaseException):
    """A cluster's warning signal before a time limit or a preemption (launcher=slurm): the run
    ends KILLED, tagged preempted, its checkpoint kept, so that the requeued job resumes it."""


def raise_for(signum: int) -> None:
    """The exception a signal stands for: SIGINT -> KeyboardInterrupt, SIGTERM -> Terminated."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"signal {signum} (SIGTERM)")


def signal_of(exc: BaseException) -> int | None:
    """The signal an exception stands for (KeyboardInterrupt, Terminated, or the exit status
    130/143 that a stopped run exits with), else None."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, Terminated):
        return signal.SIGTERM
    if isinstance(exc, SystemExit) and exc.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return int(exc.code) - 128
    return None


@contextmanager
def on_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call handler(signum) while inside. Main thread only; signals ignored by
    the parent stay ignored; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        s: signal.signal(s, lambda signum, frame: handler(signum))
        for s in STOPPING
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    # a mask inherited blocked (a parent that forked while it held them) would keep them pending
    signal.pthread_sigmask(signal.SIG_UNBLOCK, list(previous))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM -> Terminated, SIGINT -> KeyboardInterrupt, once; later signals are ignored while the
    run records its status. Main thread only; signals ignored by the parent stay ignored."""
    fired: list[int] = []

    def handler(signum: int) -> None:
        if fired:
            log.warning("signal %d ignored: still recording the run status", signum)
            return
        fired.append(signum)
        raise_for(signum)

    with on_signals(handler):
        yield


@contextmanager
def preemption_raises(signum: int) -> Iterator[Callable[..., object] | None]:
    """signum raises Preempted, once, while inside (later copies are ignored while the run records
    its status); yields the handler it replaced (submitit's requeue). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            fired.append(signum)
            raise Preempted(signal.Signals(signum).name)

    previous = signal.signal(signum, handler)
    try:
        yield previous if callable(previous) else None
    finally:
        signal.signal(signum, previous)
