"""kill -9 never leaves an unreadable history.json or checkpoint, and a killed run resumes exactly.

Deterministic first: a real `python -m dlrun train` subprocess kills itself with SIGKILL at a chosen
write point (`DLRUN_FAULT=<point>:<file name>:<n>`, see dlrun/atomic.py): before a temporary file
is written, after it is written but before the rename, after the rename; in the start-up writes, the
checkpoint saves, the history.json writes, metrics.json and history.png. After every kill the run
folder must hold a readable history.json and, once the first epoch ended, a loadable last.npz; the
run is resumed from there (to its next fault), and at the end it equals an uninterrupted run bit for
bit. Then one real kill at random moments, with a capped number of attempts, marked slow.
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
import pytest
import yaml

from dlrun import api
from dlrun.api.training import RunResult
from dlrun.errors import CheckpointError
from dlrun.runs import checkpoint as ckpt_mod

ROOT = Path(__file__).resolve().parents[1]
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
    "training": {"epochs": 3, "batch_size": 32},
    "callbacks": [
        # CSVLogger first: its row is appended before any checkpoint of the epoch, so kills in those
        # writes leave rows that resume must cut off.
        "CSVLogger",
        {"EarlyStopping": {"patience": 1000, "restore_best_weights": True}},
        {"ReduceLROnPlateau": {"patience": 1, "factor": 0.5}},
        {"ModelCheckpoint": {"filepath": "checkpoints/epoch{epoch}.npz", "verbose": 0}},
    ],
}
# The random kills need epochs to land in; at most this many attempts, each must make progress.
RANDOM_CONFIG = {
    **CONFIG,
    "name": "k9r",
    "training": {"epochs": 40, "batch_size": 32},
    "callbacks": CONFIG["callbacks"][:3],
}
MAX_ATTEMPTS = 3
PROGRESS_TIMEOUT_S = 60.0
BASE = [sys.executable, "-m", "dlrun", "train", "--quiet"]


def _env(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DLRUN_FAULT"}
    env["NO_COLOR"] = "1"
    if fault is not None:
        env["DLRUN_FAULT"] = fault
    return env


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
    for other in (run / "checkpoints").glob("*.npz"):
        ckpt_mod.load(other)  # best.npz and ModelCheckpoint's files too
    return ck.epoch


def _killed(proc: subprocess.CompletedProcess | subprocess.Popen, err: str) -> None:
    assert proc.returncode == -signal.SIGKILL, f"not killed (rc {proc.returncode}): {err}"


def _run_with_fault(cmd: list[str], fault: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(fault), timeout=120)
    _killed(proc, proc.stderr)


def _assert_same_run(run: Path, reference: RunResult) -> None:
    """`run` equals the uninterrupted `reference` bit for bit, and no temporary file is left."""
    assert json.loads((run / "history.json").read_text()) == reference.history
    assert (run / "history.csv").read_text() == (reference.run_dir / "history.csv").read_text()
    assert json.loads((run / "metrics.json").read_text()) == reference.metrics
    a = ckpt_mod.load(run / "checkpoints" / "last.npz")
    b = ckpt_mod.load(reference.run_dir / "checkpoints" / "last.npz")
    assert a.epoch == b.epoch
    for name in b.weights:
        assert np.array_equal(a.weights[name], b.weights[name]), name
    for folder in (run, run / "checkpoints"):
        assert not list(folder.glob(".*.tmp")), "resume leaves no temporary file behind"


def _new_run(runs: Path, known: set[Path]) -> Path:
    [run] = [p for p in runs.glob("*/*") if p not in known]
    return run


# Kills before the first checkpoint: each in its own fresh run (started together), each refused by --resume.
START_FAULTS = [
    "open:history.json:1",  # the folder exists, history.json does not yet
    "renamed:history.json:1",
    "written:config.yaml:1",
    "renamed:manifest.json:1",
    "written:epoch1.npz:1",  # ModelCheckpoint in epoch 1, before the run's own last.npz
    "written:last.npz:1",  # complete but not yet renamed: not there
]

# One run killed again and again, each process at the fault beside it. Counts are per process: a
# resume writes history.json (#1) and manifest.json before its first epoch.
CHAIN = [
    ("train", "renamed:last.npz:1"),  # epoch 1 saved, history.json still {}, no best.npz yet
    ("resume", "written:history.json:1"),  # resume's own history rewrite cut short
    ("resume", "open:last.npz:1"),  # epoch 2 done, its CSV row, epoch2.npz and best.npz written, no last.npz
    ("resume", "written:history.json:2"),  # epoch 2 saved, its history.json write cut short
    # Epoch 3 (the best) saved, history.json one epoch behind, training finished: best.npz must be
    # epoch 3's already, as no resume recomputes an epoch after this.
    ("resume", "renamed:last.npz:1"),
    ("resume", "open:metrics.json:1"),  # the results after training
    ("resume", "written:history.png:1"),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunResult:
    return api.train(CONFIG, runs_dir=tmp_path_factory.mktemp("reference"))


def test_fault_points_are_killed_at_and_the_run_resumes_exactly(tmp_path, reference):
    cfg_path = tmp_path / "k9.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    train = [*BASE, str(cfg_path), "--runs-dir", str(tmp_path / "runs")]

    # Start-up kills, all at once, each in its own runs folder.
    runs_root = tmp_path / "runs"
    started: list[tuple[str, subprocess.Popen, Path]] = []
    for i, fault in enumerate(START_FAULTS):
        cmd = [*BASE, str(cfg_path), "--runs-dir", str(tmp_path / f"start{i}")]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(fault)
        )
        started.append((fault, proc, tmp_path / f"start{i}"))
    for fault, proc, root in started:
        _, err = proc.communicate(timeout=120)
        _killed(proc, f"{fault}: {err}")
        run = _new_run(root, set())
        assert _check_run(run) is None, fault
        with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
            api.resume(run)
    proc = subprocess.run([*BASE, "--resume", str(run)], capture_output=True, text=True, cwd=ROOT, env=_env())
    assert proc.returncode == 1 and "no checkpoint to resume from" in proc.stderr

    run = None
    epochs = []
    for command, fault in CHAIN:
        if command == "train":
            _run_with_fault(train, fault)
            run = _new_run(runs_root, set())
        else:
            assert run is not None
            _run_with_fault([*BASE, "--resume", str(run)], fault)
        epochs.append(_check_run(run))
    assert epochs == [1, 1, 1, 2, 3, 3, 3]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3  # written by the last process
    assert list(run.glob(".history.png.*.tmp")) and not (run / "history.png").exists()
    # The hook counts passes: a finished run's resume writes no last.npz, so this fault never fires.
    proc = subprocess.run(
        [*BASE, "--resume", str(run)], capture_output=True, text=True, cwd=ROOT, env=_env("open:last.npz:1")
    )
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(run, reference)


def _wait_for_progress(proc: subprocess.Popen, runs: Path, known: set[Path], run: Path | None, start: int) -> Path:
    """Until the process's run has finished at least one more epoch than `start`; fails on timeout."""
    end = time.monotonic() + PROGRESS_TIMEOUT_S
    while time.monotonic() < end:
        folder = run or next((p for p in sorted(runs.glob("*/*")) if p not in known), None)
        try:
            if folder is not None and len(_history(folder).get("loss", [])) > start:
                return folder
        except (OSError, ValueError):
            pass  # not written yet (json.JSONDecodeError is a ValueError: a torn file would fail _check_run)
        if proc.poll() is not None:
            if folder is not None and proc.returncode == 0:
                return folder  # finished before it was seen between epochs
            pytest.fail(f"the run ended (rc {proc.returncode}) before an epoch was seen: {proc.stderr.read()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no epoch finished within {PROGRESS_TIMEOUT_S} s: {proc.communicate()[1]}")


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts_a_run(tmp_path):
    rnd = random.Random(20260)
    cfg_path = tmp_path / "k9r.yaml"
    cfg_path.write_text(yaml.safe_dump(RANDOM_CONFIG))
    runs = tmp_path / "runs"
    run: Path | None = None
    epoch = 0
    kills = 0
    for _ in range(MAX_ATTEMPTS):
        cmd = [*BASE, str(cfg_path), "--runs-dir", str(runs)] if run is None else [*BASE, "--resume", str(run)]
        known = set(runs.glob("*/*"))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
        run = _wait_for_progress(proc, runs, known, run, epoch)
        time.sleep(rnd.uniform(0.0, 0.15))  # somewhere in the epochs after that, writes included
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break  # it finished before the kill
        _killed(proc, err)
        kills += 1
        new_epoch = _check_run(run)
        assert new_epoch is not None and new_epoch > epoch, "each attempt was killed after an epoch ended"
        epoch = new_epoch
    assert kills >= 1
    assert run is not None
    api.resume(run)  # in this process: the CLI's resume to the end is the test above's
    _assert_same_run(run, api.train(RANDOM_CONFIG, runs_dir=tmp_path / "reference"))


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


def test_the_fault_hook_kills_only_at_its_point(tmp_path, monkeypatch):
    from dlrun import atomic

    monkeypatch.setenv("DLRUN_FAULT", "renamed:other.json:1")  # another file: this write passes
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    monkeypatch.setenv("DLRUN_FAULT", "closed:a.json:1")
    with pytest.raises(ValueError, match="DLRUN_FAULT point must be one of open, written, renamed"):
        atomic.write_json(tmp_path / "a.json", {})
    assert not list(tmp_path.glob(".*.tmp"))
