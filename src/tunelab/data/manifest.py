"""The digest of a data folder: (relative path, size, sha256) of every file, cached beside the data
(or under the user's cache directory when the data folder is read-only) and re-hashed only for
files whose size or modification time changed, so a second run reads no file contents."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_NAME = ".tunelab-manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    """Every file's (relative path, size, sha256), their digest, and how many were hashed now."""

    entries: tuple[tuple[str, int, str], ...]
    digest: str
    hashed: int  # files read to build this manifest (0 when every entry came from the cache)
    cache_path: Path | None

    @property
    def files(self) -> int:
        return len(self.entries)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def user_cache_dir() -> Path:
    """Where manifests of read-only data folders go: $XDG_CACHE_HOME/tunelab or ~/.cache/tunelab."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunelab" / "manifests"


def cache_path_for(root: Path) -> Path:
    """Beside the data when the folder is writable, else keyed by the folder's absolute path."""
    if os.access(root, os.W_OK):
        return root / CACHE_NAME
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
    return user_cache_dir() / f"{key}.json"


def build_manifest(root: str | Path, relpaths: list[str]) -> Manifest:
    """The manifest of `relpaths` under `root`, reusing cached hashes of unchanged files."""
    root = Path(root)
    cache = cache_path_for(root)
    cached = _read_cache(cache)
    entries, fresh, hashed = [], {}, 0
    for rel in sorted(relpaths):
        st = (root / rel).stat()
        old = cached.get(rel)
        if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
            sha = old["sha256"]
        else:
            sha, hashed = file_sha256(root / rel), hashed + 1
        fresh[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        entries.append((rel, st.st_size, sha))
    h = hashlib.sha256()
    for rel, size, sha in entries:
        h.update(f"{rel}\t{size}\t{sha}\n".encode())
    if hashed or set(cached) != set(fresh):
        cache = _write_cache(cache, fresh)
    return Manifest(tuple(entries), h.hexdigest(), hashed, cache)


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return {}
    files = doc.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(path: Path, files: dict[str, dict]) -> Path | None:
    """Atomic write; a cache that cannot be written costs a re-hash next time, never the run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "files": files}))
        tmp.replace(path)
        return path
    except OSError as exc:
        log.warning("data manifest not cached at %s (%s): the next run hashes again", path, exc)
        return None
