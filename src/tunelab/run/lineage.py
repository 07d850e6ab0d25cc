"""Where a number came from: git state, package versions, host and device."""

from __future__ import annotations

import platform
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch


def _git(*args: str, cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


CODE = Path(__file__).resolve().parent  # the git state recorded is that of the code that runs


@lru_cache(maxsize=4)
def git_state(cwd: str | None = None) -> dict[str, str]:
    """Commit SHA, dirty flag and the diff against HEAD of the repository holding this code
    (or `cwd`); empty when clean or not in a repository."""
    cwd = cwd or str(CODE)
    sha = _git("rev-parse", "HEAD", cwd=cwd)
    if sha is None:
        return {"git_sha": "unknown", "git_dirty": "unknown", "diff": ""}
    diff = _git("diff", "HEAD", cwd=cwd) or ""
    return {"git_sha": sha.strip(), "git_dirty": str(bool(diff.strip())).lower(), "diff": diff}


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "mlflow", "optuna", "hydra-core", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def resolve_device(requested: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; asking for an absent device is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "trainer.device='cuda' but no CUDA device is available (use auto or cpu)"
        )
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("trainer.device='mps' but MPS is not available (use auto or cpu)")
    return torch.device(requested)


def lineage_tags(device: torch.device) -> dict[str, str]:
    git = git_state()
    tags = {
        "git_sha": git["git_sha"],
        "git_dirty": git["git_dirty"],
        "mlflow.source.git.commit": git["git_sha"],
        "hostname": socket.gethostname(),
        "device": str(device),
        "threads": str(torch.get_num_threads()),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
    }
    tags.update({f"version.{k}": v for k, v in versions().items()})
    return tags
