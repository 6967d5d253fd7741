"""kill -9 at random moments never leaves an unreadable history.json or checkpoint.

A real `python -m dlrun train` subprocess is killed with SIGKILL again and again (seeded random
moments: during start-up, training, checkpoint and history writes); each time the run folder must
hold a readable history.json and, once the first epoch ended, a loadable last.npz from which
`dlrun train --resume` goes on. The run is resumed after every kill, so at the end one run has
survived many kills: it must then equal an uninterrupted run bit for bit.

What is checked does not depend on the machine's speed; only how far each attempt gets does.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from dlrun import api
from dlrun.errors import CheckpointError
from dlrun.runs import checkpoint as ckpt_mod

ROOT = Path(__file__).resolve().parents[1]
KILLS = 22
CONFIG = {
    "name": "k9",
    "seed": 9,
    "data": {"dataset": "synthetic", "samples": 256, "features": 8, "classes": 3, "validation_split": 0.25},
    "model": {
        "layers": [
            {"Dense": {"units": 16, "activation": "relu"}},
            {"Dropout": {"rate": 0.2}},
            {"Dense": {"units": 3, "activation": "softmax"}},
        ]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "metrics": ["accuracy"],
    "training": {"epochs": 120, "batch_size": 32},
    "callbacks": [
        {"EarlyStopping": {"patience": 1000, "restore_best_weights": True}},
        {"ReduceLROnPlateau": {"patience": 4, "factor": 0.5}},
        "CSVLogger",
    ],
}


def _history(run: Path) -> dict[str, list[float]]:
    history = json.loads((run / "history.json").read_text())  # must always parse
    assert isinstance(history, dict)
    assert len({len(v) for v in history.values()}) <= 1, "history lists of different lengths"
    return history


def _check_run(run: Path) -> int | None:
    """The invariants after a kill; returns the last checkpoint's epoch (None before the first)."""
    if not (run / "history.json").exists():
        # Killed between creating the folder and its first write: nothing to resume, nothing torn.
        assert not (run / "checkpoints").exists()
        return None
    epochs_in_history = len(next(iter(_history(run).values()), []))
    last = run / "checkpoints" / "last.npz"
    if not last.exists():
        assert epochs_in_history == 0
        return None
    ck = ckpt_mod.load(last)  # must always load
    assert ck.resumable and "partial_epoch" not in ck.meta
    # last.npz is written before history.json: the history is at most one epoch behind it
    assert epochs_in_history in (ck.epoch - 1, ck.epoch)
    assert len(ck.meta["history"]["loss"]) == ck.epoch
    if (run / "checkpoints" / "best.npz").exists():
        ckpt_mod.load(run / "checkpoints" / "best.npz")
    return ck.epoch


def _wait_for_progress(run: Path | None, runs: Path, known: set[Path], start_epoch: int, timeout: float) -> None:
    """Until the process has finished at least one more epoch (or `timeout`)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        folder = run or next((p for p in sorted(runs.glob("k9/*")) if p not in known), None)
        try:
            if folder is not None and len(_history(folder).get("loss", [])) > start_epoch:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)


def test_sigkill_at_random_moments_never_corrupts_a_run(tmp_path):
    rnd = random.Random(20260)
    cfg_path = tmp_path / "k9.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    runs = tmp_path / "runs"
    base = [sys.executable, "-m", "dlrun", "train", "--quiet"]
    env = {**os.environ, "NO_COLOR": "1"}
    run: Path | None = None
    kills = resumed_after_kill = 0
    while kills < KILLS:
        known = set(runs.glob("k9/*"))
        epoch = _check_run(run) if run is not None else None
        if run is not None and epoch is None:
            # Nothing to resume: --resume says so clearly, and a new run starts.
            proc = subprocess.run([*base, "--resume", str(run)], capture_output=True, text=True, cwd=ROOT, env=env)
            assert proc.returncode == 1 and "no checkpoint to resume from" in proc.stderr
            run = None
        cmd = [*base, str(cfg_path), "--runs-dir", str(runs)] if run is None else [*base, "--resume", str(run)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env)
        if rnd.random() < 0.25:
            time.sleep(rnd.uniform(0.0, 0.6))  # anywhere, start-up included
        else:
            _wait_for_progress(run, runs, known, epoch or 0, timeout=10)
            time.sleep(rnd.uniform(0.0, 0.25))  # somewhere in the epochs after that
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        if proc.returncode == 0:  # it finished before the kill: start over
            run = None
            continue
        assert proc.returncode == -signal.SIGKILL, err
        kills += 1
        if run is not None and epoch is not None and (_check_run(run) or 0) > epoch:
            resumed_after_kill += 1  # a resume from a killed run made progress
        if run is None:
            new = [p for p in runs.glob("k9/*") if p not in known]
            assert len(new) <= 1
            run = new[0] if new else None
        if run is not None:
            _check_run(run)
    assert resumed_after_kill >= 3, f"only {resumed_after_kill} resumes made progress"

    # The survivor of many kills, resumed to the end, equals a run that was never interrupted.
    if run is None or _check_run(run) is None:  # the last kill came before a first checkpoint
        known = set(runs.glob("k9/*"))
        proc = subprocess.Popen(
            [*base, str(cfg_path), "--runs-dir", str(runs)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        _wait_for_progress(None, runs, known, 0, timeout=20)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        [run] = [p for p in runs.glob("k9/*") if p not in known]
        assert _check_run(run) is not None
    proc = subprocess.run([*base, "--resume", str(run)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    reference = api.train(CONFIG, runs_dir=tmp_path / "reference")
    assert json.loads((run / "history.json").read_text()) == reference.history
    assert (run / "history.csv").read_text() == (reference.run_dir / "history.csv").read_text()
    assert json.loads((run / "metrics.json").read_text()) == reference.metrics
    a = ckpt_mod.load(run / "checkpoints" / "last.npz")
    b = ckpt_mod.load(reference.run_dir / "checkpoints" / "last.npz")
    for name in b.weights:
        assert np.array_equal(a.weights[name], b.weights[name]), name
    assert not list((run / "checkpoints").glob(".*.tmp"))  # resume cleaned what kills left


def test_resume_refuses_a_damaged_last_checkpoint(tmp_path):
    result = api.train({**CONFIG, "training": {"epochs": 2, "batch_size": 32}}, runs_dir=tmp_path)
    last = result.run_dir / "checkpoints" / "last.npz"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    try:
        api.resume(result.run_dir)
    except CheckpointError as exc:
        assert "last.npz" in str(exc)
    else:
        raise AssertionError("a truncated checkpoint was accepted")
