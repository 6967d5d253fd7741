"""The run recorder: the callback that keeps a run folder's checkpoints and history.json current."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dlrun.atomic import write_json
from dlrun.engine.metrics import direction
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training.callbacks import Callback


class RunRecorder(Callback):
    """Writes the last/best checkpoints and history.json after every epoch.

    "Best" follows `monitor` (val_loss when there is a validation split, else loss), higher is better
    where the name says so (`direction`), else lower. Order within an epoch's end: the best value is
    updated first (so last.npz carries it), then best.npz, then last.npz, then history.json: a kill at
    any moment leaves a last.npz from which `--resume` recomputes whatever came after it,
    identically. best.npz goes first because a resume rewrites it only when a recomputed epoch is
    better: written after last.npz, a kill between the two would leave a best.npz older than the
    best epoch that last.npz records, for good.
    It must be the last callback, so its checkpoint holds every other callback's end-of-epoch state.
    """

    writes_files = True

    def __init__(self, run_dir: Path, config: dict[str, Any], monitor: str) -> None:
        self.run_dir, self.config, self.monitor = run_dir, config, monitor
        self.mode_max = direction(monitor) == "max"
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self, path: Path) -> None:
        ckpt_mod.save(path, self.trainer.checkpoint())

    def on_train_begin(self) -> None:
        self.best, self.best_epoch = None, None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = logs.get(self.monitor)
        better = (
            value is not None
            and math.isfinite(value)
            and (self.best is None or (value > self.best if self.mode_max else value < self.best))
        )
        if better:
            self.best, self.best_epoch = value, epoch + 1
            self.save_checkpoint(self.checkpoints / "best.npz")
        self.save_checkpoint(self.checkpoints / "last.npz")
        write_json(self.run_dir / "history.json", self.trainer.history)

    def on_interrupt(self) -> None:
        """A resumable checkpoint of the state after the last finished batch, and the history."""
        self.save_checkpoint(self.checkpoints / "last.npz")
        write_json(self.run_dir / "history.json", self.trainer.history)

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
