"""The one rule language for config values: a check takes a value and returns None when it is
allowed, else the text of what is allowed. The key rules (config/schema.py) and the scheduler
knob rules are written in it, so every message reads the same."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], str | None]


def is_number(v: Any) -> bool:
    """A finite real number (bool excluded, so YAML strings and `true` are caught)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number(
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> Check:
    kind = "an integer" if integer else "a number"
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
    allowed = f"{kind} in {lb}{lo:g}, {hi:g}{rb}" + (" or null" if optional else "")

    def check(v: Any) -> str | None:
        if v is None:
            return None if optional else allowed
        if not is_number(v) or (integer and not float(v).is_integer()):
            return allowed
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            return allowed
        return None

    return check


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else f"one of {list(choices)}"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def optional(check: Check) -> Check:
    """None, or what `check` allows."""

    def allowed(v: Any) -> str | None:
        if v is None:
            return None
        problem = check(v)
        return None if problem is None else f"{problem} or null"

    return allowed


def optional_text(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v) else "a non-empty string or null"


def texts(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)
    return None if ok else "a list of strings"


def anything(v: Any) -> str | None:
    return None


def positive_ints(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(POSITIVE_INT(x) is None for x in v)
    return None if ok else "a non-empty list of integers >= 1"


def positive_numbers(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(POSITIVE(x) is None for x in v)
    return None if ok else "a non-empty list of numbers > 0"


# Schemes MLflow's tracking client can write to (a file store is refused by MLflow >= 3.13).
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def tracking_uri(v: Any) -> str | None:
    allowed = f"a tracking URI with a scheme in {list(TRACKING_SCHEMES)}, e.g. sqlite:///mlflow.db"
    if not isinstance(v, str) or ("://" not in v and not v.startswith("databricks")):
        return allowed
    scheme = v.split(":", 1)[0].split("+", 1)[0].lower()
    return None if scheme in TRACKING_SCHEMES else allowed


def experiment_name(v: Any) -> str | None:
    ok = isinstance(v, str) and 0 < len(v) <= 250 and v.strip() == v and "\n" not in v
    return None if ok else "a non-empty name of at most 250 characters"


def betas(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(FRACTION(b) is None for b in v)
    return None if ok else "two numbers in [0, 1), e.g. [0.9, 0.999]"


def increasing_epochs(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and all(is_number(x) and x > 0 for x in v)
    ok = ok and list(v) == sorted(set(v))
    return None if ok else "a list of strictly increasing epochs > 0"


POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
FRACTION = number(0, 1, hi_open=True)  # [0, 1)
UNIT = number(0, 1)  # [0, 1]
OPEN_UNIT = number(0, 1, lo_open=True, hi_open=True)  # (0, 1)
SHARE = number(0, 1, lo_open=True)  # (0, 1]
AT_LEAST_ONE = number(1)
INTEGER = number(integer=True)
POSITIVE_INT = number(1, integer=True)
NON_NEGATIVE_INT = number(0, integer=True)
OPTIONAL_POSITIVE = number(0, lo_open=True, optional=True)
OPTIONAL_NON_NEGATIVE = number(0, optional=True)
OPTIONAL_POSITIVE_INT = number(1, integer=True, optional=True)


def seed_list(v: Any) -> str | None:
    """trainer.replicas: a count of seeds (>= 1) or a non-empty list of distinct integer seeds."""
    allowed = "a count of seeds >= 1 or a non-empty list of distinct integer seeds"
    if isinstance(v, list):
        ints = all(is_number(s) and float(s).is_integer() for s in v)
        return None if v and ints and len(set(v)) == len(v) else allowed
    return None if is_number(v) and float(v).is_integer() and v >= 1 else allowed


def auto_or_boolean(v: Any) -> str | None:
    return None if v == "auto" or isinstance(v, bool) else "auto, true or false"
