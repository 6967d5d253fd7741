"""Keras 3's callbacks with Keras's names, arguments, defaults, rules and messages.

EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, LearningRateScheduler, TerminateOnNaN and
CSVLogger. Differences from Keras, all deliberate:
- `verbose` defaults to 1 for EarlyStopping, ModelCheckpoint and ReduceLROnPlateau (Keras: 0): their
  rare actions are worth a line. Messages go to the trainer's listener, never to stdout directly.
- Bad arguments (an unknown `mode`, a monitor that will never exist) are errors, not warnings.
- File paths are inside the run folder (dlrun/runs/paths.py: no absolute paths, no `..`, not the
  run's own files; filepath fields are plain names with a format); checkpoints are dlrun `.npz` files.
- Every callback returns its counters and best values from `get_state` for exact resume.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlrun.checks import (
    ANY_NUMBER,
    BOOL,
    NON_EMPTY_STR,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    NUMBER,
    Bounds,
    check,
    checked,
    choices,
    declare,
    nullable,
)
from dlrun.engine.metrics import direction
from dlrun.errors import ArgumentError, DlrunError, short
from dlrun.registry import Registry, build_from_spec
from dlrun.runs.paths import run_path, run_path_pattern
from dlrun.training.callbacks import Callback
from dlrun.training.schedules import SCHEDULES, Schedule

CALLBACKS: Registry[type[Callback]] = Registry("callback")

MODES = ("auto", "min", "max")


def canonical_monitor(monitor: Any) -> str:
    """`lr` (Keras 2's name) is accepted for `learning_rate`."""
    monitor = check("monitor", monitor, NON_EMPTY_STR)
    return "learning_rate" if monitor == "lr" else monitor


class MonitorCallback(Callback):
    """Shared `monitor` / `mode` / `min_delta` logic of EarlyStopping and ModelCheckpoint."""

    bounds = declare(monitor=NON_EMPTY_STR, mode=choices(*MODES), min_delta=ANY_NUMBER, verbose=NON_NEGATIVE_INT)

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        self.monitor = canonical_monitor(monitor)
        self.mode = checked(self, "mode", mode)
        op = mode if mode != "auto" else direction(self.monitor)
        if op is None:
            raise ArgumentError(
                f"{type(self).__name__} callback received monitor={short(self.monitor)}, but dlrun cannot "
                "tell whether it should be maximized or minimized. Pass `mode: max` to use the "
                "highest value or `mode: min` to use the lowest. Received: mode='auto'",
                "mode",
                mode,
            )
        self.lower_is_better = op == "min"
        self.min_delta = abs(checked(self, "min_delta", min_delta))

    def is_improvement(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.lower_is_better:
            return value + self.min_delta < reference
        return value - self.min_delta > reference


@CALLBACKS.register("EarlyStopping")
class EarlyStopping(MonitorCallback):
    """Stop training when `monitor` has not improved for `patience` epochs.

    Args:
        monitor: quantity to watch. Defaults to "val_loss".
        min_delta: smaller changes do not count as an improvement. Defaults to 0.
        patience: epochs without improvement before stopping. Defaults to 0.
        verbose: 1 prints `Epoch N: early stopping` (and the restore). Defaults to 1 (Keras: 0).
        mode: "auto" (min for losses, max for accuracies), "min" or "max". Defaults to "auto".
        baseline: the value to beat; the wait counter only resets when it is beaten. Defaults to None.
        restore_best_weights: at the end of training, put back the best epoch's weights, whether or
            not training stopped early. Defaults to False.
        start_from_epoch: epochs of warm-up before monitoring starts. Defaults to 0.
    """

    bounds = declare(
        patience=NON_NEGATIVE_INT,
        baseline=nullable(ANY_NUMBER),
        restore_best_weights=BOOL,
        start_from_epoch=NON_NEGATIVE_INT,
    )

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 1,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = checked(self, "patience", patience)
        self.verbose = checked(self, "verbose", verbose)
        self.baseline = checked(self, "baseline", baseline)
        self.restore_best_weights = checked(self, "restore_best_weights", restore_best_weights)
        self.start_from_epoch = checked(self, "start_from_epoch", start_from_epoch)
        self.on_train_begin()

    def get_config(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "min_delta": self.min_delta,
            "patience": self.patience,
            "verbose": self.verbose,
            "mode": self.mode,
            "baseline": self.baseline,
            "restore_best_weights": self.restore_best_weights,
            "start_from_epoch": self.start_from_epoch,
        }

    def on_train_begin(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_weights: dict[str, Any] | None = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        current = logs.get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.trainer.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self.is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.trainer.model.get_weights()
            # The wait only restarts when both the previous best and the baseline are beaten.
            if self.baseline is None or self.is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs: dict[str, float]) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            self.message(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                self.message(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.trainer.model.set_weights(self.best_weights)

    def get_state(self) -> dict[str, Any]:
        return {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.wait, self.stopped_epoch = int(state["wait"]), int(state["stopped_epoch"])
        self.best, self.best_epoch = state["best"], int(state["best_epoch"])
        self.best_weights = state.get("best_weights")


@CALLBACKS.register("ModelCheckpoint")
class ModelCheckpoint(MonitorCallback):
    """Save the model (a dlrun checkpoint) every epoch, or only when `monitor` improves.

    Args:
        filepath: where to save; `{epoch}` (from 1), `{batch}` (with an integer save_freq) and any
            logged value (`{val_loss:.4f}`) are filled in (plain names and formats only). A path inside
            the run folder (no absolute paths, `..`, or the run's own files).
            Must end in `.npz`. Defaults to "checkpoints/epoch{epoch:03d}-{<monitor>:.4f}.npz"
            (without the monitor part when the run does not produce it).
        monitor: the quantity that decides "best". Defaults to "val_loss".
        verbose: 1 prints Keras's "improved from X to Y, saving model to P" lines. Defaults to 1 (Keras: 0).
        save_best_only: only save when the monitored value improves. Defaults to False.
        save_weights_only: save weights and config only (enough for evaluate/predict, not to resume).
            Defaults to False.
        mode: "auto", "min" or "max". Defaults to "auto".
        save_freq: "epoch", or save every that many batches. Defaults to "epoch".
        initial_value_threshold: the value a first save must beat (with save_best_only). Defaults to None.
    """

    writes_files = True

    bounds = declare(
        filepath=nullable(NON_EMPTY_STR),
        save_best_only=BOOL,
        save_weights_only=BOOL,
        initial_value_threshold=nullable(ANY_NUMBER),
    )

    def __init__(
        self,
        filepath: str | None = None,
        monitor: str = "val_loss",
        verbose: int = 1,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ) -> None:
        super().__init__(monitor, mode)
        self.filepath = checked(self, "filepath", filepath) or "checkpoints/epoch{epoch:03d}.npz"
        if not self.filepath.endswith(".npz"):
            raise ArgumentError(
                "ModelCheckpoint saves dlrun checkpoints: the filepath must end in `.npz`. "
                f"Received: filepath={short(self.filepath)}",
                "filepath",
                filepath,
            )
        if Path(self.filepath) in (Path("checkpoints/last.npz"), Path("checkpoints/best.npz")):
            raise ArgumentError(
                "checkpoints/last.npz and checkpoints/best.npz are the run's own checkpoints; "
                f"choose another name. Received: filepath={short(self.filepath)}",
                "filepath",
                filepath,
            )
        _, self.fields = run_path_pattern(self.filepath, "filepath")
        self.verbose = checked(self, "verbose", verbose)
        self.save_best_only = checked(self, "save_best_only", save_best_only)
        self.save_weights_only = checked(self, "save_weights_only", save_weights_only)
        if save_freq != "epoch" and (not isinstance(save_freq, int) or isinstance(save_freq, bool) or save_freq < 1):
            raise ArgumentError(
                f"save_freq must be 'epoch' or a positive number of batches. Received: save_freq={short(save_freq)}",
                "save_freq",
                save_freq,
            )
        self.save_freq = save_freq
        self.initial_value_threshold = checked(self, "initial_value_threshold", initial_value_threshold)
        self.on_train_begin()

    def get_config(self) -> dict[str, Any]:
        return {
            "filepath": self.filepath,
            "monitor": self.monitor,
            "verbose": self.verbose,
            "save_best_only": self.save_best_only,
            "save_weights_only": self.save_weights_only,
            "mode": self.mode,
            "save_freq": self.save_freq,
            "initial_value_threshold": self.initial_value_threshold,
        }

    def on_train_begin(self) -> None:
        threshold = self.initial_value_threshold
        self.best = threshold if threshold is not None else (math.inf if self.lower_is_better else -math.inf)
        self.batches_since_save = 0

    def on_batch_end(self, batch: int, loss: Any) -> None:
        if self.save_freq == "epoch":
            return
        self.batches_since_save += 1
        if self.batches_since_save >= self.save_freq:
            self.batches_since_save = 0
            self._save(self.trainer.epoch, self.trainer.running_logs(), batch)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.save_freq == "epoch":
            self._save(epoch, logs, None)

    def _save(self, epoch: int, logs: dict[str, float], batch: int | None) -> None:
        from dlrun.runs import checkpoint as ckpt_mod

        values = {**logs, "lr": logs.get("learning_rate")}
        if batch is not None:
            values["batch"] = batch + 1
        try:
            path = self.output_path(run_path(self.filepath.format(**{**values, "epoch": epoch + 1}), "filepath"))
        except (KeyError, ValueError, IndexError) as exc:
            raise DlrunError(
                f'ModelCheckpoint cannot fill in its filepath "{self.filepath}" ({exc!r}); '
                f"available: epoch, {', '.join(values)}"
            ) from None
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                return
            if not self.is_improvement(current, self.best):
                if self.verbose > 0:
                    self.message(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose > 0:
                self.message(
                    f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                    f"saving model to {path}"
                )
            self.best = current
        elif self.verbose > 0:
            self.message(f"Epoch {epoch + 1}: saving model to {path}")
        ckpt_mod.save(path, self.trainer.checkpoint(weights_only=self.save_weights_only))

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "batches_since_save": self.batches_since_save}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best, self.batches_since_save = state["best"], int(state["batches_since_save"])


@CALLBACKS.register("ReduceLROnPlateau")
class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` after `patience` epochs without improvement.

    Args:
        monitor: quantity to watch. Defaults to "val_loss".
        factor: new_lr = lr * factor; must be below 1. Defaults to 0.1.
        patience: epochs without improvement before reducing. Defaults to 10.
        verbose: 1 prints each reduction. Defaults to 1 (Keras: 0).
        mode: "auto" (max for accuracies, else min: `direction`), "min" or "max". Defaults to "auto".
        min_delta: threshold for a new optimum. Defaults to 1e-4.
        cooldown: epochs to wait after a reduction before counting again. Defaults to 0.
        min_lr: lower bound on the learning rate. Defaults to 0.
    """

    bounds = declare(
        monitor=NON_EMPTY_STR,
        factor=Bounds(NUMBER, exclusive_minimum=0, exclusive_maximum=1, finite=True),
        patience=NON_NEGATIVE_INT,
        verbose=NON_NEGATIVE_INT,
        mode=choices(*MODES),
        min_delta=ANY_NUMBER,
        cooldown=NON_NEGATIVE_INT,
        min_lr=NON_NEGATIVE,
    )

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 1,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        self.monitor = canonical_monitor(monitor)
        if isinstance(factor, (int, float)) and not isinstance(factor, bool):  # Keras's own words
            if factor >= 1.0:
                raise ArgumentError(
                    f"ReduceLROnPlateau does not support a factor >= 1.0. Received: factor={factor}", "factor", factor
                )
            if factor <= 0:
                raise ArgumentError(
                    f"ReduceLROnPlateau needs a factor > 0. Received: factor={factor}", "factor", factor
                )
        self.factor = checked(self, "factor", factor)
        self.patience = checked(self, "patience", patience)
        self.verbose = checked(self, "verbose", verbose)
        self.mode = checked(self, "mode", mode)
        self.min_delta = checked(self, "min_delta", min_delta)
        self.cooldown = checked(self, "cooldown", cooldown)
        self.min_lr = checked(self, "min_lr", min_lr)
        self.lower_is_better = mode == "min" or (mode == "auto" and "acc" not in self.monitor)
        self.on_train_begin()

    def get_config(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "factor": self.factor,
            "patience": self.patience,
            "verbose": self.verbose,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "cooldown": self.cooldown,
            "min_lr": self.min_lr,
        }

    def on_train_begin(self) -> None:
        self.best = math.inf if self.lower_is_better else -math.inf
        self.cooldown_counter = 0
        self.wait = 0

    def _better(self, current: float) -> bool:
        if self.lower_is_better:
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        current = logs.get(self.monitor)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._better(current):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                optimizer = self.trainer.optimizer
                old_lr = float(optimizer.learning_rate)
                if old_lr > self.min_lr:
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    optimizer.learning_rate = new_lr
                    if self.verbose > 0:
                        self.message(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.cooldown_counter = state["best"], int(state["wait"]), int(state["cooldown_counter"])


@CALLBACKS.register("LearningRateScheduler")
class LearningRateScheduler(Callback):
    """Set the learning rate at the start of every epoch from a schedule.

    Args:
        schedule: a built-in schedule, `{type: cosine_decay, decay_steps: 20, warmup_target: 0.01,
            warmup_steps: 2}`, `{type: exponential_decay, decay_steps: 5, decay_rate: 0.5}` or
            `{type: piecewise_constant_decay, boundaries: [10, 20], values: [0.01, 0.001, 0.0001]}`
            (steps count epochs); from Python also a function `(epoch, lr) -> lr`.
        verbose: 1 prints the rate set each epoch. Defaults to 0.
    """

    bounds = declare(verbose=NON_NEGATIVE_INT)

    def __init__(self, schedule: Any, verbose: int = 0) -> None:
        if isinstance(schedule, (str, dict)):
            schedule = build_from_spec(SCHEDULES, schedule)
        if not callable(schedule):
            raise ArgumentError(
                f"schedule must be a schedule such as {{type: cosine_decay, decay_steps: 10}}. "
                f"Received: schedule={short(schedule)}",
                "schedule",
                schedule,
            )
        self.schedule: Schedule | Callable[..., float] = schedule
        self.verbose = checked(self, "verbose", verbose)

    def get_config(self) -> dict[str, Any]:
        spec = self.schedule.spec() if isinstance(self.schedule, Schedule) else repr(self.schedule)
        return {"schedule": spec, "verbose": self.verbose}

    def on_train_begin(self) -> None:
        if isinstance(self.schedule, Schedule) and self.schedule.initial_learning_rate is None:
            self.schedule.initial_learning_rate = float(self.trainer.optimizer.learning_rate)

    def on_epoch_begin(self, epoch: int) -> None:
        optimizer = self.trainer.optimizer
        if isinstance(self.schedule, Schedule):
            lr = self.schedule(epoch)
        else:
            try:
                lr = self.schedule(epoch, float(optimizer.learning_rate))
            except TypeError:
                lr = self.schedule(epoch)
        if isinstance(lr, bool) or (not isinstance(lr, (int, float)) and not hasattr(lr, "__float__")):
            raise DlrunError(f"The output of the `schedule` function should be a float. Got: {short(lr)}")
        if not math.isfinite(float(lr)) or float(lr) < 0:  # e.g. a decay_rate above 1 overflowing
            raise DlrunError(
                f"the schedule gave the learning rate {float(lr)} for epoch {epoch + 1}",
                hint="a learning rate is a finite number >= 0; check the schedule's arguments",
            )
        optimizer.learning_rate = float(lr)
        if self.verbose > 0:
            self.message(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr)}.")

    def get_state(self) -> dict[str, Any]:
        return {"initial_learning_rate": getattr(self.schedule, "initial_learning_rate", None)}

    def set_state(self, state: dict[str, Any]) -> None:
        if isinstance(self.schedule, Schedule) and state.get("initial_learning_rate") is not None:
            self.schedule.initial_learning_rate = float(state["initial_learning_rate"])


@CALLBACKS.register("TerminateOnNaN")
class TerminateOnNaN(Callback):
    """Stop training when a batch's loss is NaN or infinite. Reads the loss after every batch: one
    device sync per batch, the price of this callback only.

    Args:
        raise_error: fail at once with an error instead of ending training gracefully. Defaults to False.
    """

    bounds = declare(raise_error=BOOL)

    def __init__(self, raise_error: bool = False) -> None:
        self.raise_error = checked(self, "raise_error", raise_error)

    def get_config(self) -> dict[str, Any]:
        return {"raise_error": self.raise_error}

    def on_batch_end(self, batch: int, loss: Any) -> None:
        value = float(loss)  # the sync point
        if math.isfinite(value):
            return
        if self.raise_error:
            raise DlrunError(
                f"NaN or Inf loss encountered at batch {batch}. Loss value: {value}. Terminating training immediately."
            )
        self.message(f"Batch {batch}: Invalid loss, terminating training")
        self.trainer.stop_training = True


@CALLBACKS.register("CSVLogger")
class CSVLogger(Callback):
    """Stream each epoch's values to a CSV file: `epoch` (from 0, as Keras) then the sorted keys.

    Args:
        filename: the CSV file, a path inside the run folder (no absolute paths, `..`, or the run's own
            files). Defaults to "history.csv".
        separator: the field separator. Defaults to ",".
        append: add to an existing file instead of replacing it. Defaults to False.
    """

    writes_files = True

    bounds = declare(
        filename=NON_EMPTY_STR,
        separator=Bounds((str,), pattern=r"[\s\S]", text="one character"),
        append=BOOL,
    )

    def __init__(self, filename: str = "history.csv", separator: str = ",", append: bool = False) -> None:
        self.filename = run_path(checked(self, "filename", filename), "filename")
        self.separator = checked(self, "separator", separator)
        self.append = checked(self, "append", append)
        self.keys: list[str] | None = None
        self.size = 0

    def get_config(self) -> dict[str, Any]:
        return {"filename": self.filename, "separator": self.separator, "append": self.append}

    @property
    def path(self) -> Path:
        return self.output_path(run_path(self.filename, "filename"))

    def on_train_begin(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.append or not path.is_file():
            path.write_text("")
        self.size = path.stat().st_size
        self.keys = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.keys is None:
            self.keys = sorted(logs)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=self.separator)
            if self.size == 0:
                writer.writerow(["epoch", *self.keys])
            writer.writerow([epoch, *[logs.get(k, "NA") for k in self.keys]])
            f.flush()
            self.size = f.tell()

    def get_state(self) -> dict[str, Any]:
        return {"keys": self.keys, "size": self.size}

    def set_state(self, state: dict[str, Any]) -> None:
        # Rows written after the checkpoint (a kill between the two) are cut off: they come again.
        self.keys, self.size = state.get("keys"), int(state.get("size", 0))
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            if f.seek(0, 2) > self.size:
                f.truncate(self.size)


from dlrun.training import tracking  # noqa: E402, F401  (registers TensorBoard and MLflow)
