"""Reports users read every day: summary extras, evaluate details, predict, runs, compare, plot, output modes."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dlrun import api
from dlrun.cli import app
from dlrun.cli.progress import RichProgress

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_config):
    cfg = synth_config
    runs = tmp_path_factory.mktemp("reports") / "runs"
    first = api.train(cfg, runs_dir=runs)
    second = api.train(cfg, runs_dir=runs, overrides=["training.epochs=3", "optimizer.learning_rate=0.01"])
    return cfg, first.run_dir, second.run_dir, runs


def test_summary_reports_optimizer_state_and_activation_memory(trained):
    cfg = trained[0]
    text, data = api.summary(cfg)
    params = data["trainable_params"]
    assert params == 12 * 16 + 16 + 16 * 3 + 3
    assert data["memory"]["optimizer_values"] == 2 * params  # adam: momentum + velocity
    assert data["memory"]["activation_bytes_per_batch"] == (12 + 16 + 3) * 16 * 4
    assert "Optimizer state: 518 values" in text and "Activations per batch of 16" in text


def test_summary_dot_describes_the_graph(trained, tmp_path):
    out = tmp_path / "g.dot"
    res = runner.invoke(app, ["summary", str(trained[0]), "--dot", str(out)])
    assert res.exit_code == 0, res.output
    dot = out.read_text()
    assert dot.startswith('digraph "synth"') and '"input" -> "dense"' in dot and '"dense" -> "dense_1"' in dot
    assert "output: (None, 3)" in dot


def test_evaluate_json_has_confusion_matrix(trained):
    res = runner.invoke(app, ["evaluate", str(trained[1] / "checkpoints" / "last.npz"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    matrix = np.array(report["confusion"])
    assert matrix.shape == (3, 3) and matrix.sum() == report["samples"] == 60
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert set(report["per_class_accuracy"]) == {"0", "1", "2"}


def test_predict_top_k_from_npz(trained, tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    res = runner.invoke(
        app,
        [
            "predict",
            str(trained[1] / "checkpoints" / "best.npz"),
            "--input",
            str(tmp_path / "in.npz"),
            "-k",
            "2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 4 and all(len(r) == 2 for r in rows)
    for r in rows:
        assert r[0]["probability"] >= r[1]["probability"] and 0 <= r[1]["probability"] <= 1


def test_predict_rejects_wrong_shape(trained, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 5), np.float32))
    res = runner.invoke(
        app, ["predict", str(trained[1] / "checkpoints" / "best.npz"), "--input", str(tmp_path / "bad.npz")]
    )
    assert res.exit_code == 1 and "expects [12]" in res.output


def test_runs_lists_status_and_metrics(trained, tmp_path):
    runs = trained[3]
    # A run that was interrupted: no metrics.json but a checkpoint.
    (trained[2] / "metrics.json").rename(tmp_path / "saved.json")
    try:
        res = runner.invoke(app, ["runs", str(runs), "--json"])
    finally:
        (tmp_path / "saved.json").rename(trained[2] / "metrics.json")
    rows = {r["path"]: r for r in json.loads(res.output)}
    assert rows[str(trained[1])]["status"] == "finished" and rows[str(trained[1])]["epochs"] == 2
    assert rows[str(trained[2])]["status"] == "interrupted" and rows[str(trained[2])]["epochs"] == 3


def test_compare_shows_config_differences(trained):
    res = runner.invoke(app, ["compare", str(trained[1]), str(trained[2])])
    assert res.exit_code == 0, res.output
    assert "training.epochs" in res.output and "optimizer.learning_rate" in res.output
    assert "val_loss" in res.output


def test_config_diff_treats_a_missing_key_as_none():
    from dlrun.runs import compare as reports

    a = {"layer": {"units": 3, "bias_regularizer": None}, "lr": 0.1}
    b = {"layer": {"units": 4}, "lr": 0.1}
    assert reports.config_diff(a, b) == [("layer.units", 3, 4)]


def test_compare_keeps_metrics_only_one_run_has(trained, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained[2], other)
    history = json.loads((other / "history.json").read_text())
    (other / "history.json").write_text(json.dumps({"loss": history["loss"]}))
    res = runner.invoke(app, ["compare", str(trained[1]), str(other)])
    assert res.exit_code == 0, res.output
    assert "val_loss" in res.output and "accuracy" in res.output


def test_plot_writes_png(trained, tmp_path):
    pytest.importorskip("matplotlib")
    assert (trained[1] / "history.png").is_file()  # written by training itself
    out = tmp_path / "curves.png"
    res = runner.invoke(app, ["plot", str(trained[1]), str(trained[2]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_progress_lines_parse(trained, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dlrun", "train", str(trained[0]), "--runs-dir", str(tmp_path), "--progress", "json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and "val_accuracy" in epochs[0]
    assert events[-1]["event"] == "end" and "test_accuracy" in events[-1]


def test_quiet_prints_only_the_result(trained, tmp_path):
    res = runner.invoke(app, ["train", str(trained[0]), "--runs-dir", str(tmp_path), "-q"])
    assert res.exit_code == 0 and "Epoch" not in res.output and "run folder:" in res.output


def test_rich_view_renders_at_fixed_width(trained, tmp_path):
    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=True, color_system=None)
    api.train(trained[0], runs_dir=tmp_path, listener=RichProgress(console))
    out = buf.getvalue()
    assert "val_accuracy" in out and "learning_rate" in out
    # Visible width: a live display's cursor moves and line clears (ANSI codes, carriage returns)
    # land between rendered lines depending on when a refresh happens; they take no columns.
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).replace("\r", "\n")
    assert max(len(line) for line in visible.splitlines()) <= 100


@pytest.mark.parametrize(
    "command", ["train", "summary", "evaluate", "validate", "predict", "plot", "runs", "compare", "schema"]
)
def test_every_command_help_has_an_example(command):
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0 and "Example" in res.output


def test_help_is_fast():
    # Heavy modules are imported lazily: `--help` must not import NumPy or the engine.
    code = "import sys; import dlrun.cli; print('numpy' in sys.modules, 'dlrun.engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    assert out == ["False", "False"]


def test_summary_dot_creates_missing_folders(trained, tmp_path):
    out = tmp_path / "graphs" / "deep" / "g.dot"
    res = runner.invoke(app, ["summary", str(trained[0]), "--dot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith('digraph "synth"')


def test_summary_dot_to_a_folder_is_a_clean_error(trained, tmp_path):
    res = runner.invoke(app, ["summary", str(trained[0]), "--dot", str(tmp_path)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"{tmp_path}: is a folder" in res.output and res.stdout == ""


def test_summary_json_with_dot_keeps_stdout_json(trained, tmp_path):
    out = tmp_path / "g.dot"
    res = runner.invoke(app, ["summary", str(trained[0]), "--json", "--dot", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["trainable_params"] == 12 * 16 + 16 + 16 * 3 + 3
    assert f"graph: {out}" in res.stderr


@pytest.mark.parametrize("k", ["0", "-1"])
def test_predict_rejects_top_k_below_one(trained, tmp_path, k):
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 12), np.float32))
    res = runner.invoke(
        app, ["predict", str(trained[1] / "checkpoints" / "best.npz"), "--input", str(tmp_path / "in.npz"), "-k", k]
    )
    assert res.exit_code == 2 and "top-k" in res.output


def test_plot_of_a_run_without_finished_epochs_is_a_clean_error(trained, tmp_path):
    run = tmp_path / "synth" / "20260101-120000"  # stopped during epoch 1: history.json is {}
    run.mkdir(parents=True)
    (run / "config.yaml").write_text((trained[1] / "config.yaml").read_text())
    (run / "history.json").write_text("{}")
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "no finished epoch to plot yet" in res.output and not (run / "history.png").exists()


def test_evaluate_and_runs_take_a_run_folder(trained, tmp_path):
    res = runner.invoke(app, ["evaluate", str(trained[1]), "--json"])
    assert res.exit_code == 0, res.output
    assert "accuracy" in json.loads(res.stdout)
    res = runner.invoke(app, ["runs", str(trained[1]), "--json"])
    assert res.exit_code == 0 and [r["path"] for r in json.loads(res.output)] == [str(trained[1])]
    res = runner.invoke(app, ["runs", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "no such folder" in res.output
