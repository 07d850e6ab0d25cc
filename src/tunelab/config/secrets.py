"""Passwords inside URLs (`postgresql://user:PASSWORD@host/db`, `http://user:PASSWORD@host`) are
masked before a URL reaches a log line, an MLflow param or tag, a logged config or overrides file,
a report or an exception message."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:password@  (the password: anything up to the last @ before the host)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<pw>\S+)@")


def mask(text: str) -> str:
    """The text with every password of a URL in it replaced by ***."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text)


def masked(value: Any) -> Any:
    """mask() applied to every string of a nested dict/list value."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked(v) for v in value)
    return value


def host_of(url: str) -> str:
    """`host:port/db` of a URL, for messages that must not carry credentials."""
    rest = url.split("://", 1)[-1]
    return rest.rsplit("@", 1)[-1]
