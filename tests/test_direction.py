"""One rule for "higher is better" (engine.metrics.direction): callbacks, the run recorder and the
progress table all follow it."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from dlrun.cli.progress import RichProgress
from dlrun.engine.metrics import direction
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training.callbacks_builtin import EarlyStopping, ReduceLROnPlateau
from dlrun.training.recorder import RunRecorder


@pytest.mark.parametrize(
    "name, expected",
    [
        ("loss", "min"),
        ("val_loss", "min"),
        ("mae", "min"),
        ("val_mean_squared_error", "min"),
        ("accuracy", "max"),
        ("val_acc", "max"),
        ("sparse_categorical_accuracy", "max"),
        ("val_top_acc", "max"),  # not a metric dlrun knows, but the name says accuracy (Keras's auto)
        ("learning_rate", None),
        ("val_f1", None),
    ],
)
def test_direction_follows_keras_auto_mode(name, expected):
    assert direction(name) == expected


def test_callbacks_follow_the_rule():
    assert EarlyStopping(monitor="val_acc").lower_is_better is False
    assert ReduceLROnPlateau(monitor="val_accuracy").lower_is_better is False
    assert ReduceLROnPlateau(monitor="val_mae").lower_is_better is True
    # A plateau in a quantity the name says nothing about is a plateau of its minimum, as in Keras.
    assert ReduceLROnPlateau(monitor="learning_rate").lower_is_better is True
    with pytest.raises(ValueError, match="cannot tell whether it should be maximized or minimized"):
        EarlyStopping(monitor="val_f1")


class _Trainer:
    """What the recorder reads from a trainer: a checkpoint of the state and the history."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}

    def checkpoint(self) -> ckpt_mod.Checkpoint:
        return ckpt_mod.Checkpoint(config={}, weights={}, meta={"epoch": len(self.history.get("loss", []))})


@pytest.mark.parametrize(
    "monitor, values, best_epoch",
    [("val_accuracy", [0.5, 0.7, 0.6], 2), ("val_loss", [0.5, 0.7, 0.4], 3), ("val_loss", [0.5, 0.7, 0.6], 1)],
)
def test_the_recorders_best_epoch_follows_the_monitor_direction(tmp_path, monitor, values, best_epoch):
    recorder = RunRecorder(tmp_path, {}, monitor)
    recorder.set_trainer(_Trainer())
    recorder.on_train_begin()
    best_saves = []
    for epoch, value in enumerate(values):
        recorder.trainer.history = {"loss": [1.0] * (epoch + 1), monitor: values[: epoch + 1]}
        recorder.on_epoch_end(epoch, {"loss": 1.0, monitor: value})
        best_saves.append(ckpt_mod.load(tmp_path / "checkpoints" / "best.npz").epoch)
    assert recorder.best_epoch == best_epoch and recorder.best == values[best_epoch - 1]
    assert best_saves[-1] == best_epoch  # best.npz is the checkpoint of that epoch


def test_the_progress_table_highlights_the_best_of_each_column():
    buf = io.StringIO()
    progress = RichProgress(Console(file=buf, width=100, force_terminal=True, color_system="standard"))
    progress.on_train_begin(None)
    rows = [(0.4, 0.6, 0.2), (0.9, 0.8, 0.1), (0.6, 0.7, 0.3)]
    for epoch, (loss, accuracy, mae) in enumerate(rows):
        progress.on_epoch_begin(epoch, len(rows), 1)
        progress.on_epoch_end(epoch, {"loss": loss, "accuracy": accuracy, "val_mae": mae, "learning_rate": 1e-3}, 1.0)
    progress.on_train_end({})
    final = buf.getvalue().rsplit("\x1b[?25l", 1)[-1]  # the last frame: the finished table
    highlighted = re.findall(r"\x1b\[1;32m([0-9.]+)\x1b\[0m", final)
    # Lowest loss (epoch 1), highest accuracy and lowest mae (epoch 2); the learning rate never.
    assert highlighted == ["0.4000", "0.8000", "0.1000"]
