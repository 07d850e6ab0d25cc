"""Per-configuration checkpoint directory: resume after a crash, keep the best weights, know the run.

The directory is keyed by a hash of the resolved config (minus tracking and resume settings), so
re-running the same command finds the same checkpoints and continues the same MLflow run. A lock
file beside it is held (flock) for the whole run: the kernel drops it when the process dies, so a
held lock means a live run and a free one means any run recorded in run.json is dead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tunelab.background import BackgroundWriter
from tunelab.config.identity import config_key
from tunelab.run.checkpoint import (
    CheckpointError,
    clone_state,
    load_model_state,
    load_safe,
    restore_rng_state,
    rng_state,
    serialize,
    write_atomic,
)
from tunelab.run.loop import TrainState

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: no cross-process protection
    fcntl = None

log = logging.getLogger(__name__)
RESUME_KEYS = ("model", "optimizer", "schedule", "rng", "state")
START_OVER = "delete it or pass trainer.resume=never to start this configuration over"


class RunStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.last_path, self.best_path = directory / "last.pt", directory / "best.pt"
        self.done_path, self.run_path = directory / "done.json", directory / "run.json"
        self.lock_path = directory.parent / f"{directory.name}.lock"
        self.run_id: str | None = None
        self._lock: Any = None
        self._writer: BackgroundWriter | None = None  # checkpoint I/O off the training thread
        self._best: dict[str, torch.Tensor] | None = None  # what best.pt holds, in memory

    @classmethod
    def for_config(cls, cfg: DictConfig) -> RunStore:
        return cls(Path(cfg.trainer.checkpoint_dir).expanduser().absolute() / config_key(cfg))

    def acquire(self) -> None:
        """Hold the per-config lock for the run; a second live process on the same config is refused."""
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.lock_path, "a+")  # noqa: SIM115 (held until release())
        except OSError as exc:
            raise CheckpointError(
                f"cannot use checkpoint directory {self.dir.parent}: {exc.strerror or exc}",
                reason="checkpoint_write_failed",
            ) from exc
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise CheckpointError(
                    f"{self.dir} is in use by a live run ({holder}): "
                    "the same configuration is already training",
                    reason="config_in_use",
                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._lock = fh

    def release(self) -> None:
        self.flush(quietly=True)
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    @contextmanager
    def locked(self) -> Iterator[RunStore]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def unfinished_run_id(self) -> str | None:
        """The MLflow run of a previous attempt that never finished (its process is gone)."""
        if self.done_path.exists() or not self.run_path.exists():
            return None
        try:
            return json.loads(self.run_path.read_text()).get("run_id")
        except (OSError, ValueError):
            return None

    def resume(
        self,
        mode: str,
        model: torch.nn.Module,
        optimizer: Any,
        schedule: Any,
        generator: torch.Generator,
    ) -> tuple[TrainState, str | None]:
        """Restore from last.pt when an unfinished run left one; else start fresh."""
        if not self._continues(mode, self.last_path):
            return TrainState(), None
        try:
            ckpt = load_safe(self.last_path)
            self._restore(ckpt, model, optimizer, schedule, generator)
            state = TrainState(**ckpt["state"])
            if state.best_epoch > 0:
                load_safe(self.best_path)  # the selected weights must survive too
        except FileNotFoundError as exc:
            raise CheckpointError(f"cannot resume: {exc}; {START_OVER}") from exc
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; {START_OVER}") from exc
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot resume from checkpoint {self.last_path}: it does not match this "
                f"configuration ({type(exc).__name__}: {str(exc)[:300]}); {START_OVER}"
            ) from exc
        log.info("resuming from %s at epoch %d", self.last_path, state.epoch)
        return state, ckpt.get("run_id")

    def _continues(self, mode: str, path: Path) -> bool:
        """Whether this start continues the unfinished run that left `path` (trainer.resume:
        auto | never | must); a fresh start clears the directory first."""
        unfinished = path.exists() and not self.done_path.exists()
        if self.done_path.exists() and mode != "must":
            self._note_done()
        if mode == "must" and not unfinished:
            raise CheckpointError(
                f"trainer.resume=must but there is no unfinished checkpoint at {path}"
            )
        if mode == "never" or not unfinished:
            self._clear()
            return False
        return True

    def _note_done(self) -> None:
        """Say so when this config already ran to its end: the same command trains a new run."""
        try:
            done = json.loads(self.done_path.read_text())
        except (OSError, ValueError):
            return
        log.info(
            "this configuration already ran to its end (run %s, %s): training a new run; the "
            "earlier run's record stays",
            done.get("run_id"),
            done.get("outcome", "finished"),
        )

    def _restore(
        self, ckpt: dict, model: torch.nn.Module, optimizer: Any, schedule: Any, generator: Any
    ) -> None:
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"cannot resume from checkpoint {self.last_path}: not a resume checkpoint "
                f"(missing {missing})"
            )
        load_model_state(model, ckpt["model"], self.last_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        restore_rng_state(ckpt["rng"], generator)

    def _clear(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def attach(self, run_id: str | None) -> None:
        """Remember which MLflow run this directory belongs to, before the first epoch."""
        self.run_id = run_id
        if run_id is None:
            return
        tmp = self.run_path.with_name(f".run.json.{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"run_id": run_id, "pid": os.getpid()}))
            os.replace(tmp, self.run_path)
        except OSError as exc:
            raise CheckpointError(
                f"cannot write to checkpoint directory {self.dir}: {exc.strerror or exc}",
                reason="checkpoint_write_failed",
            ) from exc

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
            self._best = clone_state(model.state_dict())
            self._write_later({"model": self._best, "epoch": state.best_epoch}, self.best_path)
        if every and (state.epoch % every == 0 or state.stopped_early):
            self._write_later(
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

    def save(self, obj: dict[str, Any], name: str) -> None:
        """Write a checkpoint `name` in this run's directory, in the background as last.pt is."""
        self._write_later(obj, self.dir / name)

    def resume_saved(self, mode: str, name: str) -> dict[str, Any] | None:
        """The checkpoint `name` an unfinished run left (trainer.resume modes as resume()), or
        None to start fresh (the directory cleared)."""
        path = self.dir / name
        if not self._continues(mode, path):
            return None
        try:
            saved = load_safe(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; {START_OVER}") from exc
        log.info("resuming from %s", path)
        return saved

    def _write_later(self, obj: dict[str, Any], path: Path) -> None:
        """Serialise now (a consistent snapshot: Python work stays on this thread, where it does
        not contend for the GIL); write (fsync, rename) on the background thread. A failed write
        is raised at the next checkpoint or flush."""
        if self._writer is None:
            self._writer = BackgroundWriter()
        data = serialize(obj)
        self._writer.submit(lambda: write_atomic(data, path))

    def flush(self, quietly: bool = False) -> None:
        """Wait until every submitted checkpoint is on disk."""
        if self._writer is not None:
            self._writer.flush_quietly() if quietly else self._writer.flush()

    def load_best(self, model: torch.nn.Module) -> None:
        """The selected weights: this process's snapshot of them, else (resumed) best.pt."""
        self.flush()
        if self._best is not None:
            model.load_state_dict(self._best)
        elif self.best_path.exists():
            load_model_state(model, load_safe(self.best_path)["model"], self.best_path)

    def mark_done(self, outcome: str = "finished") -> None:
        """No later start resumes this directory: finished, pruned and diverged runs are final."""
        self.flush(quietly=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done_path.write_text(json.dumps({"run_id": self.run_id, "outcome": outcome}))
