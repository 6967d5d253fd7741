"""Exact resume: an interrupted-and-resumed run equals the uninterrupted one bit for bit.

The interruptions are real signals sent to this process (SIGINT, SIGTERM) from the progress
listener, at an epoch boundary and in the middle of an epoch.
"""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dlrun import api
from dlrun.cli import app
from dlrun.engine import compiled
from dlrun.errors import CheckpointError, TrainingInterrupted
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training.loop import SilentListener

CONFIG = {
    "name": "resume",
    "seed": 12,
    "data": {"dataset": "synthetic", "samples": 400, "features": 12, "classes": 3, "validation_split": 0.25},
    "model": {
        "layers": [
            {"Dense": {"units": 24, "activation": "relu"}},
            {"Dropout": {"rate": 0.3}},
            {"Dense": {"units": 3, "activation": "softmax"}},
        ]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": {"type": "adam", "learning_rate": 0.05},
    "metrics": ["accuracy"],
    "training": {"epochs": 6, "batch_size": 32, "shuffle": True},  # 300 training samples: 10 batches
    "callbacks": [
        {"EarlyStopping": {"monitor": "val_loss", "patience": 2, "restore_best_weights": True}},
        {"ReduceLROnPlateau": {"monitor": "val_loss", "patience": 1, "factor": 0.5, "cooldown": 1}},
        {"ModelCheckpoint": {"monitor": "val_accuracy", "save_best_only": True}},
        "CSVLogger",
        "TerminateOnNaN",
    ],
}


class SignalAt(SilentListener):
    """Sends `signum` to this process after batch `batch` (0-based) of epoch `epoch` (0-based), or at
    the end of that epoch when `batch` is None; `times` signals at once test the second Ctrl-C."""

    def __init__(self, epoch: int, batch: int | None, signum: int = signal.SIGINT, times: int = 1) -> None:
        self.epoch, self.batch, self.signum, self.times = epoch, batch, signum, times
        self.current = -1
        self.messages: list[str] = []

    def message(self, text):
        self.messages.append(text)

    def on_epoch_begin(self, epoch, epochs, batches):
        self.current = epoch

    def _fire(self):
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)

    def on_batch_end(self, batch, batches, samples, running):
        if self.current == self.epoch and batch == self.batch:
            self._fire()

    def on_epoch_end(self, epoch, logs, seconds):
        if epoch == self.epoch and self.batch is None:
            self._fire()


def _run_files(run: Path) -> dict[str, object]:
    """What must be identical between runs: history, metrics, CSV log, checkpoint contents."""
    names = ("history.json", "metrics.json", "history.csv")
    out: dict[str, object] = {name: (run / name).read_text() for name in names}
    for ck in sorted((run / "checkpoints").glob("*.npz")):
        c = ckpt_mod.load(ck)
        out[ck.name] = (
            c.weights,
            c.optimizer,
            {k: v for k, v in c.meta.items() if k != "callbacks"},
            c.meta.get("callbacks"),
        )
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], str):
            assert a[key] == b[key], key
            continue
        (wa, oa, ma, ca), (wb, ob, mb, cb) = a[key], b[key]
        for x, y in ((wa, wb), (oa, ob)):
            assert set(x) == set(y)
            for name in x:
                assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), (key, name)
        assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True), key
        assert repr(ca) == repr(cb), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    result = api.train(copy.deepcopy(CONFIG), runs_dir=root)
    return result


@pytest.mark.parametrize(
    "epoch,batch,signum",
    [
        (2, None, signal.SIGINT),  # "run 3 epochs, stop, resume to 6"
        (3, 4, signal.SIGINT),  # in the middle of epoch 4, after its 5th batch
        (1, 0, signal.SIGTERM),  # after the first batch of epoch 2
        (4, 9, signal.SIGINT),  # during the last batch of epoch 5: that epoch ends, then it stops
    ],
)
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, reference, epoch, batch, signum):
    listener = SignalAt(epoch, batch, signum)
    with pytest.raises(TrainingInterrupted) as info:
        api.train(copy.deepcopy(CONFIG), runs_dir=tmp_path, listener=listener)
    exc = info.value
    assert exc.exit_code == 128 + signum
    run = exc.run_dir
    assert f"dlrun train --resume {run}" in exc.hint and signal.Signals(signum).name in exc.message
    assert not (run / "metrics.json").exists()
    ck = ckpt_mod.load(run / "checkpoints" / "last.npz")
    assert ck.resumable
    if batch is None or batch == 9:
        assert ck.epoch == epoch + 1 and "partial_epoch" not in ck.meta
    else:
        assert ck.epoch == epoch and ck.meta["partial_epoch"]["batch"] == batch + 1
    assert len(json.loads((run / "history.json").read_text())["loss"]) == ck.epoch

    resumed = api.resume(run, listener=listener)
    assert any(m.startswith(f"Resuming {run}") for m in listener.messages)
    assert resumed.history == reference.history
    assert resumed.metrics == reference.metrics and resumed.best_epoch == reference.best_epoch
    for name, w in reference.weights.items():
        assert np.array_equal(resumed.weights[name], w), name
    _assert_same(_run_files(run), _run_files(reference.run_dir))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumes"][0]["from_epoch"] == ck.epoch


def test_the_reference_run_used_every_callback(reference):
    """The config is chosen so that every callback acts: otherwise the equality would prove less."""
    h = reference.history
    assert len(h["loss"]) == 6 and h["learning_rate"][-1] < h["learning_rate"][0]  # ReduceLROnPlateau
    assert reference.best_epoch == 4 and min(h["val_loss"]) < h["val_loss"][-1]  # restored weights
    assert (reference.run_dir / "history.csv").read_text().count("\n") == len(h["loss"]) + 1
    assert list((reference.run_dir / "checkpoints").glob("epoch*-*.npz"))


def test_resume_of_a_finished_run_changes_nothing(tmp_path, reference):
    result = api.train(copy.deepcopy(CONFIG), runs_dir=tmp_path)
    before = _run_files(result.run_dir)
    again = api.resume(result.run_dir)
    assert again.history == reference.history
    for name, w in reference.weights.items():
        assert np.array_equal(again.weights[name], w)
    _assert_same(_run_files(result.run_dir), before)


def test_second_ctrl_c_stops_at_once_and_leaves_readable_files(tmp_path):
    listener = SignalAt(2, 3, signal.SIGINT, times=2)
    with pytest.raises(KeyboardInterrupt):
        api.train(copy.deepcopy(CONFIG), runs_dir=tmp_path, listener=listener)
    [run] = list((tmp_path / "resume").iterdir())
    json.loads((run / "history.json").read_text())
    assert ckpt_mod.load(run / "checkpoints" / "last.npz").epoch == 2  # the last completed epoch's
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers were put back


def test_cli_interrupt_exit_code_and_resume_hint(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(CONFIG))
    from dlrun.cli import output

    monkeypatch.setattr(output, "make_listener", lambda mode, quiet: SignalAt(1, 2))
    res = CliRunner().invoke(app, ["train", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 130, res.output
    [run] = list((tmp_path / "runs" / "resume").iterdir())
    assert f"dlrun train --resume {run}" in res.output
    monkeypatch.setattr(output, "make_listener", lambda mode, quiet: SilentListener())
    res = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "metrics.json").is_file()


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(Exception, match="no run folder"):
        api.resume(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        api.resume(tmp_path / "empty")
    res = CliRunner().invoke(app, ["train"])
    assert res.exit_code == 2 and "--resume" in res.output  # a usage error, like a config error


def test_weights_only_checkpoint_cannot_resume(tmp_path):
    cfg = copy.deepcopy(CONFIG)
    cfg["training"]["epochs"] = 1
    cfg["callbacks"] = [{"ModelCheckpoint": {"filepath": "w.npz", "save_weights_only": True}}]
    result = api.train(cfg, runs_dir=tmp_path)
    ck = ckpt_mod.load(result.run_dir / "w.npz")
    assert not ck.resumable and not ck.optimizer
    (result.run_dir / "checkpoints" / "last.npz").write_bytes((result.run_dir / "w.npz").read_bytes())
    with pytest.raises(CheckpointError, match="weights only"):
        api.resume(result.run_dir)


def test_manifest_records_what_reproduces_the_run(tmp_path):
    import hashlib
    import shutil
    import subprocess

    import yaml

    rng = np.random.default_rng(0)
    data = tmp_path / "repo" / "data.npz"
    data.parent.mkdir()
    np.savez(data, x_train=rng.standard_normal((60, 4)).astype(np.float32), y_train=rng.integers(0, 2, 60))
    cfg = {
        "name": "man",
        "seed": 3,
        "data": {"dataset": "npz", "path": str(data)},
        "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "training": {"epochs": 1},
    }
    path = tmp_path / "repo" / "man.yaml"
    path.write_text(yaml.safe_dump(cfg))
    commit = None
    if shutil.which("git"):
        git = ["git", "-C", str(path.parent), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-qm", "x"], check=True)
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = api.train(path, runs_dir=tmp_path / "runs", overrides=["training.batch_size=16"])
    m = json.loads((result.run_dir / "manifest.json").read_text())
    assert m["seed"] == 3 and m["overrides"] == ["training.batch_size=16"]
    assert m["versions"]["numpy"] == np.__version__ and m["versions"]["python"] and m["versions"]["dlrun"]
    # The BLAS kernels change results in the last bits, so the manifest says which ran.
    assert m["versions"]["blas"] and all(lib["library"] and lib["kernels"] for lib in m["versions"]["blas"])
    assert m["versions"].get("numba") == compiled.numba_version()  # set when its kernels ran
    assert m["backend"] == "cpu" and m["device"].startswith("cpu")
    assert m["dataset"]["files"] == {str(data.resolve()): hashlib.sha256(data.read_bytes()).hexdigest()}
    assert m["config_file"] == str(path.resolve()) and m["git_commit"] == commit and isinstance(m["argv"], list)
    outside = tmp_path / "outside.yaml"  # not in a repository: no commit, no error
    outside.write_text(path.read_text())
    result = api.train(outside, runs_dir=tmp_path / "runs")
    assert json.loads((result.run_dir / "manifest.json").read_text())["git_commit"] is None


def test_resume_mid_epoch_with_augmentation_and_prefetch(tmp_path):
    """Augmented batches are made ahead in a thread; a resumed epoch must augment them the same."""
    pytest.importorskip("dlrun.data.augment")
    rng = np.random.default_rng(1)
    data = tmp_path / "img.npz"
    np.savez(data, x_train=rng.integers(0, 256, (240, 8, 8, 1), dtype=np.uint8), y_train=rng.integers(0, 3, 240))
    cfg = {
        "name": "aug",
        "seed": 4,
        "data": {
            "dataset": "npz",
            "path": str(data),
            "validation_split": 0.2,
            "prefetch": 2,
            "augmentation": [{"RandomFlip": {"mode": "horizontal"}}, {"RandomCrop": {"padding": 2}}],
        },
        "model": {
            "layers": [
                "Flatten",
                {"Dense": {"units": 8, "activation": "relu"}},
                {"Dropout": {"rate": 0.2}},
                {"Dense": {"units": 3, "activation": "softmax"}},
            ]
        },
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
        "training": {"epochs": 3, "batch_size": 16},
    }
    reference = api.train(copy.deepcopy(cfg), runs_dir=tmp_path / "a")
    with pytest.raises(TrainingInterrupted) as info:
        api.train(copy.deepcopy(cfg), runs_dir=tmp_path / "b", listener=SignalAt(1, 4))
    resumed = api.resume(info.value.run_dir)
    assert resumed.history == reference.history
    for name, w in reference.weights.items():
        assert np.array_equal(resumed.weights[name], w), name
