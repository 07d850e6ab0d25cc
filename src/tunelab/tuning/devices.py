"""One GPU per concurrent trial: with several GPUs on a node and `hydra.sweeper.n_jobs` trials at
once, each trial slot trains on its own device (`trainer.device=cuda:k`, tagged `device` on its
runs); `trials_per_gpu` lets several trials share one GPU, round-robin by slot. Concurrency beyond
GPUs x trials_per_gpu is capped, so no GPU runs more trials than that."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def gpu_count(gpus: int | None) -> int:
    """hydra.sweeper.gpus when set (a limit, or a count to plan for), else the node's CUDA GPUs."""
    if gpus is not None:
        return int(gpus)
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(
    gpus: int | None, trials_per_gpu: int, config: Any, n_jobs: int
) -> tuple[int, list[str] | None]:
    """(n_jobs, the device of each trial slot) or (n_jobs, None) where devices are not assigned:
    no GPU, or a task whose config has no trainer.device to set."""
    gpus = gpu_count(gpus)
    requested = OmegaConf.select(config, "trainer.device", default=None)
    if gpus <= 0 or requested is None or str(requested) in ("cpu", "mps"):
        return n_jobs, None
    per_gpu = max(1, trials_per_gpu)
    if n_jobs > gpus * per_gpu:
        log.warning(
            "n_jobs=%d trials at once but %d GPU(s) x trials_per_gpu=%d: running %d",
            n_jobs,
            gpus,
            per_gpu,
            gpus * per_gpu,
        )
        n_jobs = gpus * per_gpu
    return n_jobs, [f"cuda:{slot // per_gpu}" for slot in range(n_jobs)]


def overrides(devices: list[str] | None, slot: int) -> list[str]:
    return [f"trainer.device={devices[slot]}"] if devices else []


def tags(devices: list[str] | None, slot: int) -> dict[str, str]:
    """The trial's device as a tag on its runs."""
    return {"assigned_device": devices[slot]} if devices else {}
