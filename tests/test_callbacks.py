"""Callbacks against Keras 3's documented semantics: counting, thresholds, modes, messages, state.

Unit tests drive each callback with chosen per-epoch values through a small stand-in trainer; the
config tests check that every mistake is a ConfigError at the entry's line.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dlrun import api
from dlrun.cli import app
from dlrun.errors import ConfigError, DlrunError
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training.callbacks_builtin import (
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from dlrun.training.loop import SilentListener
from dlrun.training.schedules import CosineDecay, ExponentialDecay, PiecewiseConstantDecay


class Listener:
    def __init__(self):
        self.messages: list[str] = []

    def message(self, text):
        self.messages.append(text)


class Recorder(SilentListener):
    def __init__(self):
        self.messages: list[str] = []

    def message(self, text):
        self.messages.append(text)


class Model:
    """Its one weight holds the number of the epoch that produced it."""

    def __init__(self):
        self.w = {"dense/kernel": np.zeros(3, np.float32)}

    def get_weights(self):
        return {k: v.copy() for k, v in self.w.items()}

    def set_weights(self, values):
        self.w = {k: np.array(v) for k, v in values.items()}


class Optimizer:
    def __init__(self, lr=0.1):
        self.learning_rate = lr


class FakeTrainer:
    def __init__(self, run_dir=None, lr=0.1):
        self.model, self.optimizer, self.listener = Model(), Optimizer(lr), Listener()
        self.stop_training, self.run_dir, self.epoch, self.config = False, run_dir, 0, {"name": "t"}

    def checkpoint(self, weights_only=False):
        return ckpt_mod.Checkpoint(
            self.config, self.model.get_weights(), {}, {"epoch": self.epoch, "weights_only": True}
        )


def drive(cb, values, monitor="val_loss", trainer=None, fresh=True):
    """Epoch ends with `values` of `monitor` until the callback stops training; returns
    (trainer, epochs run, learning rate used in each epoch)."""
    trainer = trainer or FakeTrainer()
    cb.set_trainer(trainer)
    if fresh:
        cb.on_train_begin()
    lrs = []
    epochs = 0
    for epoch, value in enumerate(values):
        cb.on_epoch_begin(epoch)
        lrs.append(trainer.optimizer.learning_rate)
        trainer.model.w["dense/kernel"][:] = epoch
        trainer.epoch = epoch + 1
        cb.on_epoch_end(epoch, {monitor: value, "learning_rate": trainer.optimizer.learning_rate})
        epochs += 1
        if trainer.stop_training:
            break
    cb.on_train_end({})
    return trainer, epochs, lrs


# -- EarlyStopping ---------------------------------------------------------------------------------
def test_early_stopping_keras_docstring_example():
    """Keras: EarlyStopping(monitor='loss', patience=3) on a loss that never changes runs 4 epochs."""
    trainer, epochs, _ = drive(EarlyStopping(monitor="loss", patience=3), [1.0] * 10, "loss")
    assert epochs == 4
    assert trainer.listener.messages == ["Epoch 4: early stopping"]


def test_early_stopping_patience_counts_epochs_without_improvement():
    # improvement resets the wait; it stops once `patience` epochs in a row did not improve
    _, epochs, _ = drive(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.8, 0.85, 0.86, 0.7])
    assert epochs == 6
    # patience 0 stops at the first epoch without improvement, never at the first epoch
    _, epochs, _ = drive(EarlyStopping(patience=0), [1.0, 0.9, 0.95, 0.5])
    assert epochs == 3


def test_early_stopping_min_delta():
    # improvements smaller than min_delta do not count
    _, epochs, _ = drive(EarlyStopping(min_delta=0.1, patience=2), [1.0, 0.95, 0.93, 0.5])
    assert epochs == 3
    _, epochs, _ = drive(EarlyStopping(min_delta=0.01, patience=2), [1.0, 0.95, 0.93, 0.91, 0.9, 0.895])
    assert epochs == 6
    assert EarlyStopping(min_delta=-0.1).min_delta == 0.1  # Keras takes abs()


def test_early_stopping_mode_auto_min_for_losses_max_for_accuracy():
    assert EarlyStopping(monitor="val_accuracy").lower_is_better is False
    assert EarlyStopping(monitor="accuracy").lower_is_better is False
    assert EarlyStopping(monitor="val_loss").lower_is_better is True
    assert EarlyStopping(monitor="val_mae").lower_is_better is True
    _, epochs, _ = drive(EarlyStopping(monitor="val_accuracy", patience=0), [0.5, 0.6, 0.7, 0.8], "val_accuracy")
    assert epochs == 4
    _, epochs, _ = drive(EarlyStopping(monitor="val_accuracy", patience=0), [0.8, 0.7, 0.6], "val_accuracy")
    assert epochs == 2
    _, epochs, _ = drive(EarlyStopping(monitor="val_loss", mode="max", patience=0), [0.5, 0.6, 0.4], "val_loss")
    assert epochs == 3
    with pytest.raises(ValueError, match="cannot tell whether it should be maximized or minimized"):
        EarlyStopping(monitor="learning_rate")
    with pytest.raises(ValueError, match="Received: mode='mx'"):
        EarlyStopping(mode="mx")


def test_early_stopping_baseline():
    # the wait only resets when the baseline is beaten too: improving but above it still counts
    _, epochs, _ = drive(EarlyStopping(patience=2, baseline=0.5), [0.8, 0.9, 0.9, 0.9])
    assert epochs == 2
    _, epochs, _ = drive(EarlyStopping(patience=2, baseline=0.5), [0.8, 0.4, 0.45, 0.46, 0.47])
    assert epochs == 4


def test_early_stopping_restores_best_weights_at_the_end_even_without_stopping():
    trainer, epochs, _ = drive(EarlyStopping(patience=5, restore_best_weights=True), [3.0, 1.0, 2.0, 2.5])
    assert epochs == 4 and not trainer.stop_training
    assert np.all(trainer.model.w["dense/kernel"] == 1)  # the weights of epoch 2 (index 1)
    assert trainer.listener.messages == ["Restoring model weights from the end of the best epoch: 2."]
    trainer, _, _ = drive(EarlyStopping(patience=5), [3.0, 1.0, 2.0, 2.5])
    assert np.all(trainer.model.w["dense/kernel"] == 3)  # not asked: the last weights stay


def test_early_stopping_start_from_epoch_and_verbose():
    trainer, epochs, _ = drive(EarlyStopping(patience=0, start_from_epoch=2, verbose=0), [1.0, 2.0, 3.0, 4.0])
    assert epochs == 4 and trainer.listener.messages == []


def test_early_stopping_state_survives_a_checkpoint(tmp_path):
    values = [3.0, 1.0, 2.0, 2.5, 2.6, 0.5, 0.7, 0.8]
    ref, ref_epochs, _ = drive(EarlyStopping(patience=2, restore_best_weights=True), values)
    cb = EarlyStopping(patience=2, restore_best_weights=True)
    trainer = FakeTrainer()
    cb.set_trainer(trainer)
    cb.on_train_begin()
    for epoch, v in enumerate(values[:3]):
        trainer.model.w["dense/kernel"][:] = epoch
        cb.on_epoch_end(epoch, {"val_loss": v})
    ckpt_mod.save(
        tmp_path / "c.npz", ckpt_mod.Checkpoint({}, trainer.model.get_weights(), {}, {"callbacks": [cb.get_state()]})
    )
    state = ckpt_mod.load(tmp_path / "c.npz").meta["callbacks"][0]
    assert state["wait"] == 1 and state["best"] == 1.0 and isinstance(state["best_weights"]["dense/kernel"], np.ndarray)
    cb2 = EarlyStopping(patience=2, restore_best_weights=True)
    cb2.set_trainer(trainer)
    cb2.set_state(state)
    epochs = 3
    for epoch, v in list(enumerate(values))[3:]:
        trainer.model.w["dense/kernel"][:] = epoch
        cb2.on_epoch_end(epoch, {"val_loss": v})
        epochs += 1
        if trainer.stop_training:
            break
    cb2.on_train_end({})
    assert epochs == ref_epochs and np.array_equal(trainer.model.w["dense/kernel"], ref.model.w["dense/kernel"])


# -- ReduceLROnPlateau -----------------------------------------------------------------------------
def test_reduce_lr_patience_factor_and_message():
    trainer, _, lrs = drive(ReduceLROnPlateau(factor=0.5, patience=2), [1.0] * 6)
    assert lrs == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025]
    assert trainer.listener.messages == [
        "Epoch 3: ReduceLROnPlateau reducing learning rate to 0.05.",
        "Epoch 5: ReduceLROnPlateau reducing learning rate to 0.025.",
    ]
    assert ReduceLROnPlateau().factor == 0.1 and ReduceLROnPlateau().patience == 10
    assert ReduceLROnPlateau().min_delta == 1e-4


def test_reduce_lr_cooldown():
    """After a reduction the cooldown counter runs down, resetting the wait; as in Keras it is
    decremented before the check, so the epoch that brings it to 0 already counts."""
    _, _, lrs = drive(ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2), [1.0] * 8)
    # reductions at the end of epoch indices 1, 3 and 5 (index 2 is the quiet cooldown epoch)
    assert lrs == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125]
    _, _, lrs = drive(ReduceLROnPlateau(factor=0.5, patience=1, cooldown=3), [1.0] * 8)
    assert lrs == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025]
    _, _, lrs = drive(ReduceLROnPlateau(factor=0.5, patience=1, cooldown=0), [1.0] * 4)
    assert lrs == [0.1, 0.1, 0.05, 0.025]


def test_reduce_lr_min_lr_min_delta_and_mode():
    trainer, _, lrs = drive(ReduceLROnPlateau(factor=0.1, patience=1, min_lr=0.005), [1.0] * 5)
    assert lrs[-1] == 0.005 and len(trainer.listener.messages) == 2
    _, _, lrs = drive(ReduceLROnPlateau(factor=0.5, patience=1), [1.0, 0.99995, 0.9999])
    assert lrs == [0.1, 0.1, 0.05]  # 0.99995 is within min_delta 1e-4: no improvement
    _, _, lrs = drive(
        ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1), [0.5, 0.6, 0.7], "val_accuracy"
    )
    assert lrs == [0.1, 0.1, 0.1]  # "acc" in the name: higher is better


def test_reduce_lr_rejects_factor_1_or_more():
    with pytest.raises(ValueError, match="does not support a factor >= 1.0. Received: factor=1.0"):
        ReduceLROnPlateau(factor=1.0)


def test_reduce_lr_state_round_trip():
    cb = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1)
    trainer, _, _ = drive(cb, [1.0, 1.0, 1.0, 1.0])
    state = cb.get_state()
    assert state == {"best": 1.0, "wait": 1, "cooldown_counter": 0}
    other = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1)
    other.set_state({"best": 0.5, "wait": 1, "cooldown_counter": 1})
    assert (other.best, other.wait, other.cooldown_counter) == (0.5, 1, 1)


# -- ModelCheckpoint -------------------------------------------------------------------------------
def test_model_checkpoint_best_only_messages_and_files(tmp_path):
    cb = ModelCheckpoint("ck/e{epoch:02d}-{val_loss:.2f}.npz", save_best_only=True, save_weights_only=True)
    trainer, _, _ = drive(cb, [0.5, 0.25, 0.75], trainer=FakeTrainer(tmp_path))
    assert trainer.listener.messages == [
        f"Epoch 1: val_loss improved from inf to 0.50000, saving model to {tmp_path / 'ck/e01-0.50.npz'}",
        f"Epoch 2: val_loss improved from 0.50000 to 0.25000, saving model to {tmp_path / 'ck/e02-0.25.npz'}",
        "Epoch 3: val_loss did not improve from 0.25000",
    ]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["e01-0.50.npz", "e02-0.25.npz"]
    ck = ckpt_mod.load(tmp_path / "ck/e02-0.25.npz")
    assert ck.epoch == 2 and ck.meta["weights_only"] and np.all(ck.weights["dense/kernel"] == 1)


def test_model_checkpoint_every_epoch_max_mode_and_threshold(tmp_path):
    cb = ModelCheckpoint("m{epoch}.npz", save_weights_only=True, verbose=0)
    drive(cb, [1.0, 2.0], trainer=FakeTrainer(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("m*.npz")) == ["m1.npz", "m2.npz"]
    cb = ModelCheckpoint(
        "a{epoch}.npz", monitor="val_accuracy", save_best_only=True, save_weights_only=True, initial_value_threshold=0.6
    )
    trainer, _, _ = drive(cb, [0.5, 0.7, 0.65], "val_accuracy", trainer=FakeTrainer(tmp_path))
    assert [p.name for p in tmp_path.glob("a*.npz")] == ["a2.npz"]
    assert trainer.listener.messages[0] == "Epoch 1: val_accuracy did not improve from 0.60000"


def test_model_checkpoint_argument_checks():
    with pytest.raises(ValueError, match="must end in `.npz`"):
        ModelCheckpoint("model.keras")
    with pytest.raises(ValueError, match="run's own checkpoints"):
        ModelCheckpoint("checkpoints/last.npz")
    with pytest.raises(ValueError, match="save_freq"):
        ModelCheckpoint(save_freq="batch")
    assert ModelCheckpoint().filepath == "checkpoints/epoch{epoch:03d}.npz"


# -- LearningRateScheduler and schedules -----------------------------------------------------------
def test_schedules_follow_keras_formulas():
    pw = PiecewiseConstantDecay(boundaries=[2, 4], values=[1.0, 0.5, 0.1])
    assert [pw(e) for e in range(6)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.1]
    ex = ExponentialDecay(initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5)
    assert [ex(e) for e in range(3)] == pytest.approx([0.1, 0.1 * 0.5**0.5, 0.05])
    st = ExponentialDecay(initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5, staircase=True)
    assert [st(e) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    cos = CosineDecay(initial_learning_rate=1.0, decay_steps=2)
    assert [cos(e) for e in range(4)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    cos = CosineDecay(initial_learning_rate=1.0, decay_steps=4, alpha=0.1)
    assert cos(4) == pytest.approx(0.1) and cos(2) == pytest.approx(0.55)
    warm = CosineDecay(initial_learning_rate=0.0, decay_steps=4, warmup_target=0.1, warmup_steps=2)
    expected = [
        0.0,
        0.05,
        0.1,
        0.05 * (1 + math.cos(math.pi / 4)),
        0.05,
        0.05 * (1 + math.cos(3 * math.pi / 4)),
        0.0,
        0.0,
    ]
    assert [warm(e) for e in range(8)] == pytest.approx(expected)
    with pytest.raises(ValueError, match="one longer than boundaries"):
        PiecewiseConstantDecay(boundaries=[2], values=[1.0])


def test_learning_rate_scheduler_sets_the_rate_each_epoch():
    cb = LearningRateScheduler({"type": "exponential_decay", "decay_steps": 1, "decay_rate": 0.5}, verbose=1)
    trainer, _, lrs = drive(cb, [1.0, 1.0, 1.0], trainer=FakeTrainer(lr=0.2))
    assert lrs == [0.2, 0.1, 0.05]  # initial_learning_rate defaults to the optimizer's
    assert trainer.listener.messages[1] == "Epoch 2: LearningRateScheduler setting learning rate to 0.1."
    cb = LearningRateScheduler(lambda epoch, lr: lr * 0.5)  # from Python: Keras's (epoch, lr) function
    _, _, lrs = drive(cb, [1.0, 1.0], trainer=FakeTrainer(lr=0.2))
    assert lrs == [0.1, 0.05]


# -- TerminateOnNaN and CSVLogger ------------------------------------------------------------------
def test_terminate_on_nan_checks_every_batch():
    cb, trainer = TerminateOnNaN(), FakeTrainer()
    cb.set_trainer(trainer)
    cb.on_batch_end(0, np.float32(0.5))
    assert not trainer.stop_training
    cb.on_batch_end(3, np.float32("inf"))
    assert trainer.stop_training and trainer.listener.messages == ["Batch 3: Invalid loss, terminating training"]
    cb = TerminateOnNaN(raise_error=True)
    cb.set_trainer(FakeTrainer())
    with pytest.raises(DlrunError, match="NaN or Inf loss encountered at batch 2"):
        cb.on_batch_end(2, np.float32("nan"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_in_a_real_run(tmp_path):
    cfg = {
        "name": "nan",
        "data": {"dataset": "synthetic", "samples": 256, "features": 4, "task": "regression"},
        "model": {"layers": [{"Dense": {"units": 1}}]},
        "loss": "mse",
        "optimizer": {"type": "sgd", "learning_rate": 1e12},
        "training": {"epochs": 5, "batch_size": 8},
        "callbacks": ["TerminateOnNaN"],
    }
    listener = Recorder()
    result = api.train(cfg, runs_dir=tmp_path, listener=listener)
    assert len(result.history["loss"]) == 1
    assert any("Invalid loss, terminating training" in m for m in listener.messages)


def test_csv_logger_keras_layout_append_and_resume_truncation(tmp_path):
    cb = CSVLogger()
    trainer, _, _ = drive(cb, [0.5, 0.25], trainer=FakeTrainer(tmp_path))
    assert (tmp_path / "history.csv").read_text().splitlines() == [
        "epoch,learning_rate,val_loss",
        "0,0.1,0.5",
        "1,0.1,0.25",
    ]
    state = cb.get_state()
    cb.on_epoch_end(2, {"val_loss": 0.125, "learning_rate": 0.1})  # written, then "killed" before a checkpoint
    resumed = CSVLogger()
    resumed.set_trainer(trainer)
    resumed.set_state(state)
    resumed.on_epoch_end(2, {"val_loss": 0.2, "learning_rate": 0.1})
    assert (tmp_path / "history.csv").read_text().splitlines()[1:] == ["0,0.1,0.5", "1,0.1,0.25", "2,0.1,0.2"]
    appended = CSVLogger(append=True, separator=";")
    drive(appended, [0.9], trainer=FakeTrainer(tmp_path))
    assert (tmp_path / "history.csv").read_text().splitlines()[-1] == "0;0.1;0.9"
    drive(CSVLogger(), [0.9], trainer=FakeTrainer(tmp_path))  # append False: replaced
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 2


# -- config entries --------------------------------------------------------------------------------
BASE = """\
name: cbtest
data: {dataset: synthetic, samples: 100, features: 4, classes: 2, validation_split: 0.2}
model:
  layers:
    - Dense: {units: 2, activation: softmax}
loss: sparse_categorical_crossentropy
metrics: [accuracy]
callbacks:
"""


def _prepare(tmp_path, callbacks: str, base: str = BASE):
    path = tmp_path / "c.yaml"
    path.write_text(base + textwrap.indent(textwrap.dedent(callbacks), "  "))
    return api.prepare(path, device="cpu")


def _error(tmp_path, callbacks: str, base: str = BASE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _prepare(tmp_path, callbacks, base)
    return info.value


def test_entries_like_layer_entries_and_resolved_config(tmp_path):
    setup = _prepare(
        tmp_path,
        """\
        - EarlyStopping: {monitor: val_loss, patience: 3}
        - TerminateOnNaN
        - early_stopping: {monitor: val_accuracy}
        - ReduceLROnPlateau: {monitor: lr, mode: min}
        - LearningRateScheduler: {schedule: {type: cosine_decay, decay_steps: 10, warmup_target: 0.01, warmup_steps: 2}}
        - ModelCheckpoint
        - CSVLogger: {filename: log.csv}
        """,
    )
    kinds = [type(cb).__name__ for cb in setup.callbacks]
    assert kinds == [
        "EarlyStopping",
        "TerminateOnNaN",
        "EarlyStopping",
        "ReduceLROnPlateau",
        "LearningRateScheduler",
        "ModelCheckpoint",
        "CSVLogger",
    ]
    resolved = setup.config.resolved["callbacks"]
    assert resolved[0] == {
        "EarlyStopping": {
            "monitor": "val_loss",
            "min_delta": 0.0,
            "patience": 3,
            "verbose": 1,
            "mode": "auto",
            "baseline": None,
            "restore_best_weights": False,
            "start_from_epoch": 0,
        }
    }
    assert resolved[3]["ReduceLROnPlateau"]["monitor"] == "learning_rate"  # `lr` is an alias
    assert resolved[4]["LearningRateScheduler"]["schedule"]["initial_learning_rate"] == 0.001  # rmsprop's
    assert resolved[5]["ModelCheckpoint"]["filepath"] == "checkpoints/epoch{epoch:03d}-{val_loss:.4f}.npz"


@pytest.mark.parametrize(
    "entry,line,needle",
    [
        ("- EarlyStoping: {patience: 3}", 9, "did you mean 'EarlyStopping'"),
        ("- EarlyStopping:\n    patiance: 3", 10, "did you mean 'patience'"),
        ("- EarlyStopping:\n    monitor: val_loss\n    patience: -1", 11, "Received: patience=-1"),
        ("- ReduceLROnPlateau: {factor: 2}", 9, "does not support a factor >= 1.0"),
        ("- EarlyStopping: {mode: maximum}", 9, "Received: mode='maximum'"),
        (
            "- EarlyStopping:\n    monitor: val_acc",
            10,
            "Values it logs: loss, accuracy, val_loss, val_accuracy, learning_rate",
        ),
        ("- ModelCheckpoint: {filepath: 'm-{val_los:.4f}.npz'}", 9, "{val_loss}"),
        ("- LearningRateScheduler: {schedule: {type: cosine_decy, decay_steps: 3}}", 9, "did you mean 'cosine_decay'"),
        ("- LearningRateScheduler", 9, "missing the required argument 'schedule'"),
        ("- EarlyStopping: 3", 9, "must be a mapping"),
    ],
)
def test_config_errors_point_at_the_entry(tmp_path, entry, line, needle):
    exc = _error(tmp_path, entry)
    assert exc.line == line, str(exc)
    assert needle in str(exc)
    assert exc.file == str(tmp_path / "c.yaml")


def test_monitoring_a_value_the_run_will_not_have(tmp_path):
    no_val = BASE.replace(", validation_split: 0.2", "")
    exc = _error(tmp_path, "- EarlyStopping", no_val)  # monitor val_loss by default
    assert "'val_loss', which this run will not log. Values it logs: loss, accuracy, learning_rate" in str(exc)
    assert "validation_split" in exc.hint
    exc = _error(tmp_path, "- ReduceLROnPlateau: {monitor: mae}", no_val)
    assert "Values it logs: loss, accuracy, learning_rate" in str(exc)
    # ModelCheckpoint saves every epoch without a monitor unless save_best_only asks for one
    setup = _prepare(tmp_path, "- ModelCheckpoint", no_val)
    assert setup.config.resolved["callbacks"][0]["ModelCheckpoint"]["filepath"] == "checkpoints/epoch{epoch:03d}.npz"
    assert "will not log" in str(_error(tmp_path, "- ModelCheckpoint: {save_best_only: true}", no_val))
    setup = _prepare(tmp_path, "- EarlyStopping: {monitor: loss}", no_val)
    assert setup.callbacks[0].monitor == "loss"


def test_validate_command_reports_callback_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "  - EarlyStopping: {patience: -2}\n")
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and f"{path}:9" in res.output and "patience=-2" in res.output


def test_callbacks_appear_in_a_run_and_its_files(tmp_path):
    cfg = {
        "name": "files",
        "seed": 1,
        "data": {"dataset": "synthetic", "samples": 120, "features": 4, "classes": 2, "validation_split": 0.25},
        "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
        "training": {"epochs": 3},
        "callbacks": [
            "CSVLogger",
            {"ModelCheckpoint": {"filepath": "ck/{epoch}-{val_accuracy:.3f}.npz", "save_weights_only": True}},
        ],
    }
    result = api.train(cfg, runs_dir=tmp_path)
    rows = (result.run_dir / "history.csv").read_text().splitlines()
    assert rows[0] == "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss" and len(rows) == 4
    files = sorted(p.name for p in (result.run_dir / "ck").iterdir())
    assert [f.split("-")[0] for f in files] == ["1", "2", "3"]
    res = CliRunner().invoke(app, ["evaluate", str(result.run_dir / "ck" / files[-1]), "--json"])
    assert res.exit_code == 0, res.output  # a weights-only checkpoint is enough for evaluate
    manifest = (result.run_dir / "manifest.json").read_text()
    assert '"seed": 1' in manifest and '"numpy"' in manifest
    assert Path(result.run_dir / "history.json").is_file()


def test_model_checkpoint_every_few_batches_is_a_resumable_mid_epoch_state(tmp_path):
    cfg = {
        "name": "freq",
        "seed": 2,
        "data": {"dataset": "synthetic", "samples": 100, "features": 4, "classes": 2},
        "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "training": {"epochs": 2, "batch_size": 20},
        "callbacks": [
            {"ModelCheckpoint": {"filepath": "b/{epoch}-{batch}-{loss:.3f}.npz", "save_freq": 3, "verbose": 0}}
        ],
    }
    result = api.train(cfg, runs_dir=tmp_path)
    files = sorted(p.name.rsplit("-", 1)[0] for p in (result.run_dir / "b").iterdir())
    assert files == ["1-3", "2-1", "2-4"]  # every 3 batches, counting across epochs (5 batches each)
    c = ckpt_mod.load(next((result.run_dir / "b").glob("2-4-*.npz")))
    assert c.resumable and c.epoch == 1 and c.meta["partial_epoch"]["batch"] == 4
    exc = _error(tmp_path, "- ModelCheckpoint: {filepath: 'x{val_loss}.npz', save_freq: 2}")
    assert "when saving every few batches" in str(exc)
