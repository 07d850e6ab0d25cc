"""What every MLflow write obeys, whoever makes it: one retry policy for the errors concurrent
writers cause and a retry resolves, MLflow's limits on values and batches, and tag filters that
quote any value."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# MLflow's limits on one log_batch call and on a param or tag value.
MAX_PARAMS, MAX_TAGS, MAX_METRICS = 100, 100, 1000
VALUE_CHARS = 6000

# Errors that a retry resolves: concurrent SQLite writers, two jobs registering the same dataset
# (MLflow checks, then inserts), and a tracking server that is restarting or overloaded.
TRANSIENT = (
    "database is locked",
    "unique constraint failed: datasets",
    "temporarily unavailable",
    "connection refused",
    "connection aborted",
    "max retries exceeded",
    "remote end closed connection",
)
TRANSIENT_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if getattr(exc, "error_code", None) in TRANSIENT_CODES:
        return True
    return transient_text(str(exc))


def transient_text(message: str) -> bool:
    """An error message that says a server or database was away or busy, not that input was bad."""
    return any(t in message.lower() for t in TRANSIENT)


def retry(fn: Callable[[], T], *, attempts: int = 12) -> T:
    """Call fn, retrying transient errors with jittered exponential backoff (capped at 2 s)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # sqlalchemy, mlflow and requests wrap the cause differently
            if not is_transient(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def clip(value: Any) -> str:
    """A param or tag value as MLflow stores it: text, at most VALUE_CHARS long."""
    return str(value)[:VALUE_CHARS]


def finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow search filter matching every `tags` value exactly (any characters in values)."""

    def literal(v: str) -> str:
        return f'"{v}"' if "'" in v else f"'{v}'"

    return " and ".join(f"tags.`{k}` = {literal(str(v))}" for k, v in tags.items())
