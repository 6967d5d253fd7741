"""The run folder: `runs/<name>/<timestamp>/` with config.yaml, summary.txt, history.json,
checkpoints/{best,last}.npz and metrics.json. Every file is written atomically."""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import yaml

from dlrun.errors import CheckpointError
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.runs.atomic import write_json, write_text
from dlrun.training.callbacks import Callback


def new_run_dir(runs_root: str | Path, name: str) -> Path:
    """A fresh `runs_root/name/YYYYmmdd-HHMMSS[-N]` folder (created).

    Raises CheckpointError (creating nothing) when a file stands where a folder must go."""
    base = Path(runs_root) / name
    blocker = _nearest_existing(base)
    if blocker is not None and not blocker.is_dir():
        raise CheckpointError("is a file, so no run folder can be created in it", path=str(blocker),
                              hint="pass --runs-dir a folder (or a path where one can be created)")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as exc:  # permissions, read-only disk: the user's to fix, no traceback
            raise CheckpointError(f"cannot create a run folder ({exc.strerror or exc})", path=str(path)) from None
    raise CheckpointError("cannot create a run folder: 1000 names for this second are taken", path=str(base))


def _nearest_existing(path: Path) -> Path | None:
    """`path` or its closest ancestor that exists: where mkdir(parents=True) would start creating."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)




class RunRecorder(Callback):
    """Writes the last/best checkpoints and history.json after every epoch.

    "Best" follows `monitor` (val_loss when there is a validation split, else loss), lower is better
    unless the name says accuracy. Order within an epoch's end: the best value is updated first (so
    last.npz carries it), then last.npz, then best.npz, then history.json: a kill at any moment
    leaves a last.npz from which `--resume` recomputes whatever came after it, identically.
    It must be the last callback, so its checkpoint holds every other callback's end-of-epoch state.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], monitor: str) -> None:
        self.run_dir, self.config, self.monitor = run_dir, config, monitor
        self.mode_max = "acc" in monitor
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self, path: Path) -> None:
        ckpt_mod.save_training_state(path, self.trainer)

    def on_train_begin(self) -> None:
        self.best, self.best_epoch = None, None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = logs.get(self.monitor)
        better = value is not None and math.isfinite(value) and (
            self.best is None or (value > self.best if self.mode_max else value < self.best))
        if better:
            self.best, self.best_epoch = value, epoch + 1
        self.save_checkpoint(self.checkpoints / "last.npz")
        if better:
            self.save_checkpoint(self.checkpoints / "best.npz")
        write_json(self.run_dir / "history.json", self.trainer.history)

    def on_interrupt(self) -> None:
        """A resumable checkpoint of the state after the last finished batch, and the history."""
        self.save_checkpoint(self.checkpoints / "last.npz")
        write_json(self.run_dir / "history.json", self.trainer.history)

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text(run_dir / "config.yaml", dump_config(config))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    write_json(run_dir / "metrics.json", metrics)
