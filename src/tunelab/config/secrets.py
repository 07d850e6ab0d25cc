"""Secrets are masked before text leaves the machine: a log line, an MLflow param or tag, a logged
config, overrides or git diff, Hydra's own output files, a report or an exception message.

mask() replaces the password of a URL (`postgresql://user:PASSWORD@host/db`,
`http://user:PASSWORD@host`) and the value of a secret-named query parameter
(`?password=…`, `&sslpassword=…`, `passwd`, `pwd`, `token`, `secret`, any case) with ***."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

MASK = "***"
# scheme://user:password@  (the password: anything up to the last @ before the host)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<pw>\S+)@")
# ?password=…  &token=…  ;Pwd=…  (the value: up to the next &, #, ;, quote or white space)
_QUERY = re.compile(
    r"(?P<head>[?&;](?:ssl)?(?:password|passwd|pwd|token|secret)=)(?P<value>[^&#;'\"\s]+)",
    re.IGNORECASE,
)
# password = "…", PGPASSWORD=…, api_token: '…', SECRET_KEY=…  (a name ending in a secret word)
_ASSIGNMENT = re.compile(
    r"(?P<head>\b\w*(?:password|passwd|pwd|secret|token)(?:_?key)?\b[\"']?\]?\s*[:=]\s*)"
    r"(?P<quote>[\"']?)(?P<value>[^\"'\s,;)]+)(?P=quote)",
    re.IGNORECASE,
)


def mask(text: str) -> str:
    """The text with every password of a URL in it, and every secret query value, replaced by ***."""
    text = _CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def masked(value: Any) -> Any:
    """mask() applied to every string of a nested dict/list value."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked(v) for v in value)
    return value


def mask_diff(diff: str) -> str:
    """A unified diff with the secrets of its added lines masked: mask()'s forms, and the value of
    an assignment to a secret-named variable (`password = "…"`, `PGPASSWORD=…`, `api_token: …`).
    Context and removed lines stay as they are (they are committed, and the diff still applies)."""
    lines = diff.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("+") and not line.startswith("+++"):
            line = mask(line)
            lines[i] = _ASSIGNMENT.sub(lambda m: f"{m['head']}{m['quote']}{MASK}{m['quote']}", line)
    return "".join(lines)


def mask_file(path: str | Path) -> bool:
    """Rewrite a text file with mask() applied, in place and atomically (its mode kept); whether
    it held anything to mask. A missing file is left missing."""
    path = Path(path)
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    clean = mask(text)
    if clean == text:
        return False
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(clean)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return True


def mask_logs() -> None:
    """Every log record this process makes from now on, Hydra's own included (its launchers log
    each job's overrides), carries its message masked. Idempotent."""
    make = logging.getLogRecordFactory()
    if getattr(make, "masks", False):
        return

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        rec = make(*args, **kwargs)
        with contextlib.suppress(Exception):  # a message that cannot format stays as it is
            text = rec.getMessage()
            if mask(text) != text:
                rec.msg, rec.args = mask(text), ()
        return rec

    record.masks = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record)


def host_of(url: str) -> str:
    """`host:port/db` of a URL, for messages that must not carry credentials."""
    rest = url.split("://", 1)[-1]
    return rest.rsplit("@", 1)[-1]
