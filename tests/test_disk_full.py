"""A full disk mid-run: one message saying what could not be written and which checkpoint is intact."""

from __future__ import annotations

import errno
import re
import subprocess
import sys

import pytest

from dlrun import api
from dlrun.errors import CheckpointError
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training.loop import SilentListener

CONFIG = {
    "name": "full",
    "seed": 4,
    "data": {"dataset": "synthetic", "samples": 200, "features": 8, "classes": 3, "validation_split": 0.25},
    "model": {
        "layers": [{"Dense": {"units": 8, "activation": "relu"}}, {"Dense": {"units": 3, "activation": "softmax"}}]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "metrics": ["accuracy"],
    "training": {"epochs": 4, "batch_size": 32},
}


class DiskFullAfter(SilentListener):
    """The disk fills up once `epochs` epochs (and their files) are done: later fsyncs fail."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.full = epochs, False

    def on_epoch_end(self, epoch, logs, seconds):
        self.full = epoch + 1 >= self.epochs


def test_disk_full_after_two_epochs_names_the_file_and_the_intact_checkpoint(tmp_path, monkeypatch):
    import dlrun.atomic as atomic

    real_fsync, listener = atomic.os.fsync, DiskFullAfter(2)

    def fsync(fd):
        if listener.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(CheckpointError) as err:
        api.train(CONFIG, runs_dir=tmp_path / "runs", listener=listener)
    message = str(err.value)
    # Epoch 3's first write: best.npz when the epoch improved (it goes before last.npz), else last.npz.
    assert re.search(r"could not write \S+/checkpoints/(best|last)\.npz: No space left on device", message), message
    assert "last.npz (after epoch 2) is intact" in message and "dlrun train --resume" in message
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    [run] = list((tmp_path / "runs" / "full").iterdir())
    assert ckpt_mod.load(run / "checkpoints" / "last.npz").epoch == 2
    assert not list(run.rglob(".*.tmp"))
    assert len(api.resume(run).history["loss"]) == 4  # space again: the run goes on


def test_the_cli_says_it_in_one_message_with_exit_1(tmp_path):
    script = f"""
import errno, sys, json
import dlrun.atomic as atomic
from pathlib import Path
real = atomic.os.fsync
runs = Path({str(tmp_path / "runs")!r})
def fsync(fd):
    if any(len(json.loads(p.read_text() or "{{}}").get("loss", [])) >= 1 for p in runs.rglob("history.json")):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(fd)
atomic.os.fsync = fsync
from dlrun.cli import main
sys.argv = ["dlrun", "train", {str(tmp_path / "c.yaml")!r}, "--runs-dir", str(runs), "-q"]
main()
"""
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
    assert "is intact" in proc.stderr


def test_a_full_disk_before_the_first_write_leaves_no_folder(tmp_path, monkeypatch):
    import dlrun.runs.folder as folder

    real_fdopen = folder.os.fdopen

    class Full:
        def __init__(self, fd):
            self.f = real_fdopen(fd, "w")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder.os, "fdopen", lambda fd, mode="r": Full(fd))
    with pytest.raises(CheckpointError, match="cannot lock the run folder .No space left on device"):
        api.train(CONFIG, runs_dir=tmp_path / "runs")
    assert not list((tmp_path / "runs").rglob("*"))  # no folder, no lock left
