"""An ordered background writer: slow I/O (SQLite commits, fsynced checkpoints) overlaps training."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
_writers: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


class BackgroundWriter:
    """One worker thread that runs submitted writes in order (MLflow records, checkpoint files), so
    their I/O waits overlap with training. `flush()` waits and re-raises the first error. Whatever
    is still queued when the process exits normally (or by SystemExit) is written first: the
    thread is a daemon, and the interpreter would otherwise drop it."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="tunelab-writer", daemon=True)
        self._thread.start()
        self._pid = os.getpid()
        _writers.add(self)

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                if self._error is None:
                    fn()
            except BaseException as exc:  # kept for the training thread to raise
                self._error = exc
            finally:
                self._queue.task_done()

    def submit(self, fn: Callable[[], Any]) -> None:
        self._raise()
        self._queue.put(fn)

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush_quietly(self) -> None:
        """Wait for pending writes; log instead of raising (used while another error unwinds)."""
        try:
            self.flush()
        except Exception as exc:
            log.error("a background write failed: %s", exc)


def flush_all() -> None:
    """Wait for the pending writes of every writer in this process (a job's worker process before
    it takes the next job or exits); errors are logged."""
    for writer in list(_writers):
        if writer._pid == os.getpid():  # a forked child has the queue but not its thread
            writer.flush_quietly()


atexit.register(flush_all)
