"""Per-configuration checkpoint directory: resume after a crash, keep the best weights.

The directory is keyed by a hash of the resolved config (minus tracking and resume settings), so
re-running the same command finds the same checkpoints and continues the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tunelab.checkpoint import (
    CheckpointError,
    load_model_state,
    load_safe,
    restore_rng_state,
    rng_state,
    save_atomic,
)
from tunelab.loop import TrainState

log = logging.getLogger(__name__)
VOLATILE = (
    "tracking",
    "trainer.resume",
    "trainer.checkpoint_dir",
    "trainer.checkpoint_every_epochs",
    "trainer.num_threads",
    "experiment",
)


def config_key(cfg: DictConfig) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True)
    for dotted in VOLATILE:
        *parents, leaf = dotted.split(".")
        node = plain
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.last_path, self.best_path = directory / "last.pt", directory / "best.pt"
        self.done_path = directory / "done.json"
        self.run_id: str | None = None

    @classmethod
    def for_config(cls, cfg: DictConfig) -> RunStore:
        return cls(Path(cfg.trainer.checkpoint_dir) / config_key(cfg))

    def resume(
        self,
        mode: str,
        model: torch.nn.Module,
        optimizer: Any,
        schedule: Any,
        generator: torch.Generator,
    ) -> tuple[TrainState, str | None]:
        """Restore from last.pt when an unfinished run left one; else start fresh."""
        unfinished = self.last_path.exists() and not self.done_path.exists()
        if mode == "must" and not unfinished:
            raise CheckpointError(
                f"trainer.resume=must but there is no unfinished checkpoint at {self.last_path}"
            )
        if mode == "never" or not unfinished:
            self._clear()
            return TrainState(), None
        ckpt = load_safe(self.last_path)
        load_model_state(model, ckpt["model"], self.last_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        restore_rng_state(ckpt["rng"], generator)
        state = TrainState(**ckpt["state"])
        log.info("resuming from %s at epoch %d", self.last_path, state.epoch)
        return state, ckpt.get("run_id")

    def _clear(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def attach(self, run_id: str | None) -> None:
        self.run_id = run_id

    def on_epoch_end(
        self,
        state: TrainState,
        improved: bool,
        *,
        model: torch.nn.Module,
        optimizer: Any,
        schedule: Any,
        generator: torch.Generator,
        every: int,
    ) -> None:
        if improved:
            save_atomic({"model": model.state_dict(), "epoch": state.epoch - 1}, self.best_path)
        if every and (state.epoch % every == 0 or state.stopped_early):
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": rng_state(generator),
                    "state": state.state_dict(),
                    "run_id": self.run_id,
                },
                self.last_path,
            )

    def load_best(self, model: torch.nn.Module) -> None:
        if self.best_path.exists():
            load_model_state(model, load_safe(self.best_path)["model"], self.best_path)

    def mark_done(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done_path.write_text(json.dumps({"run_id": self.run_id}))
