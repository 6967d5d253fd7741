"""One process per run folder: a lock file with the PID, taken over when its process is gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dlrun.errors import CheckpointError
from dlrun.runs.folder import LOCK, run_lock


def test_the_lock_is_held_and_released(tmp_path):
    with run_lock(tmp_path):
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())
    assert not (tmp_path / LOCK).exists()


def test_a_live_owner_refuses_a_second_process(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(f"{sleeper.pid}\n")
        match = f"in use by another dlrun process \\(PID {sleeper.pid}\\)"
        with pytest.raises(CheckpointError, match=match), run_lock(tmp_path):
            pass
        assert (tmp_path / LOCK).read_text().strip() == str(sleeper.pid)  # not taken from its owner
    finally:
        sleeper.kill()
        sleeper.wait()
    with run_lock(tmp_path):  # its owner is gone now: stale, taken over
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())


def test_an_unreadable_lock_is_stale(tmp_path):
    (tmp_path / LOCK).write_text("not a pid")
    with run_lock(tmp_path):
        pass
    assert not (tmp_path / LOCK).exists()


CONFIG = {
    "name": "locked",
    "data": {"dataset": "synthetic", "samples": 100, "features": 4, "classes": 2},
    "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
    "loss": "sparse_categorical_crossentropy",
    "training": {"epochs": 1},
}


def test_resume_refuses_a_folder_another_process_holds(tmp_path):
    from dlrun import api

    run = api.train(CONFIG, runs_dir=tmp_path).run_dir
    assert not (run / LOCK).exists()  # released at the end
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(f"{sleeper.pid}\n")
        before = (run / "manifest.json").read_text()
        with pytest.raises(CheckpointError, match="in use by another dlrun process"):
            api.resume(run)
        assert (run / "manifest.json").read_text() == before  # nothing written, no resume recorded
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_new_run_clears_what_kills_left_in_earlier_runs(tmp_path):
    from dlrun import api

    run = api.train(CONFIG, runs_dir=tmp_path).run_dir
    junk = [run / ".last.npz.abc.tmp", run / "checkpoints" / ".best.npz.x.tmp", run / ".history.json.y.tmp"]
    for path in junk:
        path.write_bytes(b"0" * 1000)
    api.train(CONFIG, runs_dir=tmp_path)
    assert not any(p.exists() for p in junk)
