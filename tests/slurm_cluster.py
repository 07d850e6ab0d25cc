"""A single-node SLURM for the cluster tests: scripts/slurm-up.sh under a temporary directory,
scripts/slurm-down.sh afterwards. Missing binaries or not root: skipped on a workstation, a
failure under CI=true (as the browser and PostgreSQL tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UP, DOWN = ROOT / "scripts" / "slurm-up.sh", ROOT / "scripts" / "slurm-down.sh"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def _unavailable() -> str | None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)}): bash scripts/install-slurm.sh"
    if os.geteuid() != 0:
        return "the single-node SLURM runs its daemons as root"
    return None


@contextmanager
def slurm_cluster(directory: Path) -> Iterator[dict[str, str]]:
    """Start munge, slurmctld and slurmd under directory; yield the env its clients need
    (SLURM_CONF); stop every daemon afterwards, a failed test too."""
    why = _unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM tests cannot run: {why}")
        pytest.skip(why)
    proc = subprocess.run(
        ["bash", str(UP), str(directory)], capture_output=True, text=True, timeout=120
    )
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        conf = proc.stdout.strip().rpartition("SLURM_CONF=")[2]
        assert Path(conf).is_file(), proc.stdout
        yield {"SLURM_CONF": conf}
    finally:
        subprocess.run(["bash", str(DOWN), str(directory)], timeout=60, check=False)
