"""Signals as exceptions while a run records: SIGTERM -> Terminated, SIGINT -> KeyboardInterrupt."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM arrived: the run ends KILLED after recording what it has. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (logging, MLflow) swallows it."""


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM -> Terminated, SIGINT -> KeyboardInterrupt, once; later signals are ignored while the
    run records its status. Main thread only; signals ignored by the parent stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if fired:
            log.warning("signal %d ignored: still recording the run status", signum)
            return
        fired.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(f"signal {signum} (SIGTERM)")

    previous = {
        s: signal.signal(s, handler)
        for s in (signal.SIGTERM, signal.SIGINT)
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
