"""Who owns what: exclusive file locks between processes, and the owner stamp of a process
(host, pid and the process's start time) that tells a live owner from a dead one, even after the
operating system has given the pid to another process."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from tunelab import environment

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: no cross-process protection
    fcntl = None


def identity(hostname: str, namespace: str, boot_id: str) -> str:
    """A machine as owner stamps name it: its hostname, its pid namespace (containers sharing a
    hostname differ) and its boot id (cloned VMs, which share hostname and namespace inode, differ;
    so does one machine before and after a reboot, when every pid it stamped is gone)."""
    return "~".join(part for part in (hostname, namespace, boot_id) if part).replace(":", "_")


def _host() -> str:
    """This machine: `$TUNELAB_HOST`, else identity() of this hostname, pid namespace and boot id."""
    named = environment.host_name()
    if named:
        return named.replace(":", "_")
    try:
        namespace = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        namespace = ""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    return identity(socket.gethostname(), namespace, boot_id)


HOST = _host()


@contextlib.contextmanager
def file_lock(path: Path | str | None) -> Iterator[None]:
    """Exclusive advisory lock on `path` (created if needed); None locks nothing."""
    if path is None or fcntl is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def me() -> str:
    """This process's owner stamp: host:pid:start."""
    return f"{HOST}:{os.getpid()}:{_start_time(os.getpid()) or '-'}"


def is_dead(owner: str) -> bool:
    """True when `owner` (a stamp from `me()`) is a process of this host that no longer runs.
    Owners on other hosts, and stamps that cannot be read, are never called dead."""
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start not in ("", "-") and _start_time(int(pid)) not in (None, start)
