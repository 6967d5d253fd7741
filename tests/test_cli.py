"""The command line, run the way users run it: exit codes, output, run folders."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dlrun.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_summary_totals_match_keras():
    res = runner.invoke(app, ["summary", str(ROOT / "configs/fashion_mnist_mlp.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["total_params"] == 79_510 and data["trainable_params"] == 79_510 and data["non_trainable_params"] == 0
    assert [layer["output_shape"] for layer in data["layers"]] == [[None, 784], [None, 100], [None, 10]]
    res = runner.invoke(app, ["summary", str(ROOT / "configs/fashion_mnist_logreg.yaml"), "--json"])
    assert json.loads(res.output)["total_params"] == 7_850


def test_summary_table_is_keras_shaped():
    res = runner.invoke(app, ["summary", str(ROOT / "configs/fashion_mnist_mlp.yaml")])
    assert res.exit_code == 0
    assert "│ dense (Dense)                   │ (None, 100)            │        78,500 │" in res.output
    assert " Total params: 79,510 (310.59 KB)" in res.output


def test_train_passes_on_a_note_about_slow_blas_kernels(tmp_path, synth_config, monkeypatch):
    from dlrun.api import training

    monkeypatch.setattr(training, "forced_kernels_note", lambda: "OPENBLAS_CORETYPE=Haswell makes ...")
    args = ["train", str(synth_config), "--runs-dir", str(tmp_path), "--progress", "plain"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "note: OPENBLAS_CORETYPE=Haswell makes ..." in res.stderr
    assert "note:" not in runner.invoke(app, [*args, "-q"]).stderr


def test_train_writes_run_folder_and_evaluate_reads_it(tmp_path, synth_config):
    runs = tmp_path / "runs"
    res = runner.invoke(app, ["train", str(synth_config), "--runs-dir", str(runs), "--progress", "plain"])
    assert res.exit_code == 0, res.output
    [run] = list((runs / "synth").iterdir())
    for f in (
        "config.yaml",
        "history.json",
        "metrics.json",
        "summary.txt",
        "checkpoints/best.npz",
        "checkpoints/last.npz",
    ):
        assert (run / f).is_file(), f
    history = json.loads((run / "history.json").read_text())
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert all(len(v) == 2 for v in history.values())
    assert "Epoch 2/2" in res.output and str(run) in res.output
    res = runner.invoke(app, ["evaluate", str(run / "checkpoints/last.npz"), "--json"])
    assert res.exit_code == 0, res.output
    scores = json.loads(res.output)
    metrics = json.loads((run / "metrics.json").read_text())
    assert scores["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert scores["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)
    res = runner.invoke(app, ["evaluate", str(run / "checkpoints/last.npz"), "--split", "val", "--json"])
    assert json.loads(res.output)["accuracy"] == pytest.approx(history["val_accuracy"][-1])


def test_same_seed_same_history(tmp_path, synth_config):
    histories = []
    for i in range(2):
        runs = tmp_path / f"runs{i}"
        assert runner.invoke(app, ["train", str(synth_config), "--runs-dir", str(runs), "-q"]).exit_code == 0
        [run] = list((runs / "synth").iterdir())
        histories.append(json.loads((run / "history.json").read_text()))
    assert histories[0] == histories[1]


def test_failure_while_setting_up_the_run_folder_leaves_no_folder(tmp_path, synth_config, monkeypatch):
    from dlrun import api

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dlrun.api.training.write_config", disk_full)
    from dlrun.errors import CheckpointError

    with pytest.raises(CheckpointError, match="No space left on device"):  # a message, not a traceback
        api.train(synth_config, runs_dir=tmp_path / "runs")
    assert list((tmp_path / "runs").rglob("*")) == []


def test_config_error_exit_code_2_no_traceback_no_run_folder(tmp_path, synth_config):
    bad = tmp_path / "bad.yaml"
    bad.write_text(synth_config.read_text().replace("units: 16", "units: -16"))
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "dlrun", "train", str(bad), "--runs-dir", str(runs)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{bad}:6:15" in proc.stderr and "units=-16" in proc.stderr
    assert not runs.exists()


def test_missing_config_file_is_a_clean_error(tmp_path):
    res = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "not found" in res.output


def test_corrupt_checkpoint_is_a_clean_error(tmp_path):
    bad = tmp_path / "best.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    res = runner.invoke(app, ["evaluate", str(bad)])
    assert res.exit_code == 1 and "checkpoint" in res.output and "Traceback" not in res.output


def test_plain_progress_has_no_control_characters(tmp_path, synth_config):
    proc = subprocess.run(
        [sys.executable, "-m", "dlrun", "train", str(synth_config), "--runs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout and "\b" not in proc.stdout
    assert proc.stdout.count("Epoch ") == 2


def test_help_works_via_python_m():
    proc = subprocess.run([sys.executable, "-m", "dlrun", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout


def test_weights_after_training_are_float32(tmp_path, synth_config):
    from dlrun.runs.checkpoint import load

    runner.invoke(app, ["train", str(synth_config), "--runs-dir", str(tmp_path), "-q"])
    [run] = list((tmp_path / "synth").iterdir())
    ck = load(run / "checkpoints/last.npz")
    assert ck.weights and all(w.dtype == np.float32 for w in ck.weights.values())
    assert textwrap.dedent(ck.config["loss"]) == "sparse_categorical_crossentropy"


def test_runs_dir_that_is_a_file_is_a_clean_error(tmp_path, synth_config):
    not_a_folder = tmp_path / "runs"
    not_a_folder.write_text("")
    before = sorted(tmp_path.rglob("*"))
    res = runner.invoke(app, ["train", str(synth_config), "--runs-dir", str(not_a_folder), "-q"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"{not_a_folder}: is a file" in res.output
    assert sorted(tmp_path.rglob("*")) == before


def test_version_needs_no_command():
    from dlrun import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"dlrun {__version__}\n"
    assert runner.invoke(app, ["--debug", "--version"]).exit_code == 0


def test_no_command_shows_usage():
    res = runner.invoke(app, [])
    assert res.exit_code == 2 and "Usage" in res.output
    res = runner.invoke(app, ["--debug"])
    assert res.exit_code == 2 and "Missing command" in res.output


def test_debug_adds_the_traceback_but_keeps_the_exit_code(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    res = runner.invoke(app, ["--debug", "summary", str(empty)])
    assert res.exit_code == 2
    assert "Traceback" in res.output and "the config file is empty" in res.output


def test_json_progress_with_quiet_prints_only_the_end_object(tmp_path, synth_config):
    res = runner.invoke(app, ["train", str(synth_config), "--runs-dir", str(tmp_path), "--progress", "json", "-q"])
    assert res.exit_code == 0
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and json.loads(lines[0])["event"] == "end"
