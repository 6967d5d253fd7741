"""`dlrun sweep`: Optuna sweeps over `--set` paths, each trial an ordinary run folder.

Real Optuna, real trial processes, real SQLite storage; synthetic data, so the file stays fast."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlrun import api
from dlrun.cli import app
from dlrun.runs.checkpoint import load as load_checkpoint
from dlrun.sweep.spec import load_sweep

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

BASE = """\
name: base
seed: 5
data: {dataset: synthetic, samples: 240, features: 12, classes: 3, validation_split: 0.25}
model:
  layers:
    - Dense: {units: 16, activation: relu}
    - Dense: {units: 3, activation: softmax}
loss: sparse_categorical_crossentropy
optimizer: {type: adam, learning_rate: 0.01}
metrics: [accuracy]
training: {epochs: EPOCHS, batch_size: 32}
callbacks: [TerminateOnNaN]
"""


def write_sweep(folder: Path, body: str, epochs: int = 2, name: str = "sweep.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(BASE.replace("EPOCHS", str(epochs)))
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_value(run_dir: str, metric: str = "val_loss") -> float:
    """The metric at the run's best epoch, read back from the run folder itself."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    history = json.loads((Path(run_dir) / "history.json").read_text())
    return history[metric][metrics["best_epoch"] - 1]


TPE = """\
config: base.yaml
method: tpe
metric: {name: val_loss, goal: minimize}
trials: 8
parallel: 2
seed: 1
parameters:
  optimizer.learning_rate: {min: 1.0e-3, max: 1.0e-1, log: true}
  model.layers[0].Dense.units: {min: 4, max: 32, step: 4}
  training.batch_size: {values: [16, 32]}
"""


@pytest.fixture(scope="module")
def tpe_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tpe")
    path = write_sweep(folder, TPE)
    res = runner.invoke(app, ["sweep", str(path), "--runs-dir", str(folder / "runs"), "--json"])
    assert res.exit_code == 0, res.output
    return folder, json.loads(res.output.strip().splitlines()[-1])


def test_tpe_sweep_values_are_the_runs_best_epochs(tpe_sweep):
    folder, summary = tpe_sweep
    sweep_dir = Path(summary["dir"])
    assert sweep_dir.parent == folder / "runs" / "sweep"
    assert (summary["completed"], summary["pruned"], summary["failed"]) == (8, 0, 0)
    trials = json.loads((sweep_dir / "trials.json").read_text())
    assert [t["number"] for t in trials] == list(range(8))
    for t in trials:
        assert t["state"] == "COMPLETE" and t["seconds"] > 0
        assert Path(t["run_dir"]) == (sweep_dir / "trials" / str(t["number"])).resolve()
        assert t["value"] == run_value(t["run_dir"])  # exactly: the value is read, not recomputed
        # The parameters reached the run's config as --set would put them.
        config = api.as_config(Path(t["run_dir"]) / "config.yaml").resolved
        assert config["optimizer"]["learning_rate"] == t["params"]["optimizer.learning_rate"]
        assert config["model"]["layers"][0]["Dense"]["units"] == t["params"]["model.layers[0].Dense.units"]
        assert t["params"]["model.layers[0].Dense.units"] in range(4, 33, 4)
    best = min(trials, key=lambda t: t["value"])
    assert summary["best"] == {k: best[k] for k in ("number", "value", "params", "run_dir")}
    with open(sweep_dir / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["value"]) for r in rows] == [t["value"] for t in trials]
    assert json.loads(rows[0]["params"]) == trials[0]["params"]
    assert load_sweep(sweep_dir / "sweep.yaml").trials == 8  # the resolved file is itself a sweep file
    assert (sweep_dir / "study.db").is_file() and (sweep_dir / "sweep.yaml").is_file()
    assert (sweep_dir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # Every trial is an ordinary run folder: evaluate reads it.
    report = api.evaluate_report(Path(best["run_dir"]), split="val")
    assert report["scores"]["loss"] == pytest.approx(best["value"], rel=1e-5)


def test_best_yaml_validates_and_trains(tpe_sweep, tmp_path):
    _, summary = tpe_sweep
    best_yaml = Path(summary["dir"]) / "best.yaml"
    res = runner.invoke(app, ["validate", str(best_yaml)])
    assert res.exit_code == 0, res.output
    result = api.train(best_yaml, runs_dir=tmp_path)
    again = result.history["val_loss"][result.best_epoch - 1]
    assert again == pytest.approx(summary["best"]["value"], rel=1e-4)


def test_resume_reaches_ten_trials(tpe_sweep):
    _, summary = tpe_sweep
    res = runner.invoke(app, ["sweep", "--resume", summary["dir"], "--trials", "10", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["completed"] == 10 and out["dir"] == summary["dir"]
    trials = json.loads((Path(summary["dir"]) / "trials.json").read_text())
    assert [t["number"] for t in trials] == list(range(10))
    assert out["best"]["value"] == min(t["value"] for t in trials) <= summary["best"]["value"]
    assert all((Path(summary["dir"]) / "trials" / str(n) / "metrics.json").is_file() for n in range(10))
    # The resumed sampler does not draw the first trials' parameters again.
    params = [json.dumps(t["params"], sort_keys=True) for t in trials]
    assert len(set(params)) == len(params), params


def test_median_pruner_stops_bad_trials(tmp_path):
    # Two learning rates learn, three barely move: once two trials have finished, the slow ones
    # are worse than the median after their first epochs and are stopped there.
    path = write_sweep(
        tmp_path,
        """\
        config: base.yaml
        method: grid
        metric: {name: val_loss}
        pruner: median
        parallel: 1
        seed: 0
        parameters:
          optimizer.learning_rate: {values: [0.05, 0.03, 1.0e-6, 2.0e-6, 3.0e-6]}
        """,
        epochs=4,
    )
    result = api.sweep(path, runs_dir=tmp_path / "runs")
    pruned = [t for t in result.trials if t.state == "PRUNED"]
    assert pruned, [(t.params, t.state, t.value) for t in result.trials]
    for t in pruned:
        assert t.params["optimizer.learning_rate"] < 1e-5
        history = json.loads((Path(t.run_dir) / "history.json").read_text())
        assert 1 <= len(history["val_loss"]) < 4  # kept, with the epochs it ran
        assert t.value == run_value(t.run_dir)
    assert result.best is not None and result.best.params["optimizer.learning_rate"] > 0.01


def test_grid_covers_the_grid_once_and_failures_go_on(tmp_path):
    # 1e30 with plain SGD diverges at once: TerminateOnNaN stops it, the trial is FAIL, the sweep goes on.
    path = write_sweep(
        tmp_path,
        """\
        config: base.yaml
        method: grid
        metric: {name: val_accuracy}
        parallel: 2
        parameters:
          optimizer.type: {values: [sgd]}
          optimizer.learning_rate: {values: [0.05, 1.0e+30]}
          model.layers[0].Dense.units: {values: [4, 8, 12]}
        """,
        epochs=1,
    )
    result = api.sweep(path, runs_dir=tmp_path / "runs")
    assert result.goal == "maximize"
    assert len(result.trials) == 6
    seen = sorted((t.params["optimizer.learning_rate"], t.params["model.layers[0].Dense.units"]) for t in result.trials)
    assert seen == sorted(itertools.product([0.05, 1.0e30], [4, 8, 12]))
    for t in result.trials:
        if t.params["optimizer.learning_rate"] > 1:
            assert t.state == "FAIL" and "diverged" in t.message
        else:
            assert t.state == "COMPLETE"
    assert result.best.value == max(t.value for t in result.trials if t.state == "COMPLETE")


def test_two_processes_share_one_study(tmp_path):
    path = write_sweep(
        tmp_path,
        """\
        name: shared
        config: base.yaml
        method: random
        metric: {name: val_loss}
        trials: 6
        parallel: 1
        parameters:
          optimizer.learning_rate: {min: 1.0e-3, max: 1.0e-1, log: true}
        """,
        epochs=1,
    )
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dlrun", "sweep", str(path), "--storage", storage, "--runs-dir", str(tmp_path / r)],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ("a", "b")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    assert 6 <= len(numbers) <= 7  # the last ask of each may race: at most one over
    folders = {r: {int(p.name) for p in (tmp_path / r).glob("shared/*/trials/*")} for r in ("a", "b")}
    assert folders["a"] and folders["b"] and not folders["a"] & folders["b"]  # both worked, never twice
    assert folders["a"] | folders["b"] == set(numbers)
    lrs = [t.params["optimizer.learning_rate"] for t in study.trials]
    assert len(set(lrs)) == len(lrs), lrs  # the two processes do not draw the same values


def test_ctrl_c_stops_trials_resumably(tmp_path):
    path = write_sweep(
        tmp_path,
        """\
        config: base.yaml
        method: random
        metric: {name: val_loss}
        trials: 3
        parallel: 2
        parameters:
          optimizer.learning_rate: {min: 1.0e-3, max: 1.0e-1, log: true}
        """,
        epochs=400,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlrun", "sweep", str(path), "--runs-dir", str(tmp_path / "runs")],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("runs/sweep/*/trials/*/checkpoints/last.npz")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "dlrun sweep --resume" in err and "Traceback" not in err
    [sweep_dir] = tmp_path.glob("runs/sweep/*")
    trials = json.loads((sweep_dir / "trials.json").read_text())
    interrupted = [t for t in trials if t["state"] == "FAIL" and "interrupted" in (t["message"] or "")]
    assert interrupted
    for t in interrupted:  # each a run that `dlrun train --resume` continues
        assert (Path(t["run_dir"]) / "checkpoints" / "last.npz").is_file()
        assert not (Path(t["run_dir"]) / ".lock").exists()
    # The study requeued them: a resumed sweep runs their parameters again.
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t["number"] for t in interrupted)
    # A run stopped by the sweep's Ctrl-C continues as any run does.
    run_dir = interrupted[0]["run_dir"]
    epochs = load_checkpoint(Path(run_dir) / "checkpoints" / "last.npz").epoch + 1
    res = runner.invoke(app, ["train", "--resume", run_dir, "--set", f"training.epochs={epochs}"])
    assert res.exit_code == 0, res.output
    assert len(json.loads((Path(run_dir) / "history.json").read_text())["loss"]) == epochs


BAD = [
    # (sweep file body, line, words)
    ("parameters:\n  model.layers[0].Dense.unitz: {values: [8]}\n", 6, "did you mean 'model.layers[0].Dense.units'"),
    ("parameters:\n  training.epoch: {min: 1, max: 3}\n", 6, "did you mean 'training.epochs'"),
    ("parameters:\n  data.validation_split: {values: [0.2, 1.5]}\n", 6, "data.validation_split=1.5"),
    ("parameters:\n  model.layers[0].Dense.units: {min: -4, max: 8}\n", 6, "units"),
    ("parameters:\n  model.layers[7].Dense.units: {values: [8]}\n", 6, "does not exist"),
    ("method: bayes\nparameters:\n  training.batch_size: {values: [8]}\n", 5, "must be one of grid, random, tpe"),
    ("method: grid\nparameters:\n  training.batch_size: {min: 8, max: 16}\n", 7, "grid search takes `values"),
    ("paramters:\n  training.batch_size: {values: [8]}\n", 5, "did you mean 'parameters'"),
    ("parameters:\n  training.batch_size: {values: [8], min: 2}\n", 6, "not both"),
    ("parameters:\n  optimizer.learning_rate: {min: 0.0, max: 0.1, log: true}\n", 6, "log scale needs min > 0"),
    ("parameters:\n  training.batch_size: {min: 16, max: 8}\n", 6, "must be below max"),
    ("parameters:\n  training.batch_size: {mim: 8, max: 16}\n", 6, "did you mean 'min'"),
    ("method: grid\nparameters:\n  training.batch_size: {values: [8]}\n", 3, "a grid of 1 point cannot run 2 trials"),
    ("parameters: {}\n", 5, "at least one parameter"),
    ("parameters:\n  optimizer.learning_rate: {min: 0.001, max: 0.01, step: 0.1}\n", 6, "does not divide the range"),
    ("parameters:\n  model.layers[0].Dense.units: {min: 4, max: 30, step: 4}\n", 6, "does not divide the range"),
]


@pytest.mark.parametrize("body,line,words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_sweep_files_exit_2_at_their_line(tmp_path, body, line, words):
    head = "config: base.yaml\nmetric: {name: val_loss}\ntrials: 2\nseed: 0\n"
    path = write_sweep(tmp_path, head + body)
    res = runner.invoke(app, ["sweep", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    assert f"sweep.yaml:{line}:" in res.output, res.output
    assert words in res.output, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()  # nothing ran, no folder


def test_metric_must_be_logged(tmp_path):
    path = write_sweep(
        tmp_path, "config: base.yaml\nmetric: {name: val_acc}\nparameters:\n  training.batch_size: {values: [8]}\n"
    )
    res = runner.invoke(app, ["sweep", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "sweep.yaml:2:" in res.output and "val_accuracy" in res.output, res.output


def test_sweep_schema_accepts_the_example_and_refuses_typos():
    jsonschema = pytest.importorskip("jsonschema")
    res = runner.invoke(app, ["schema", "--sweep"])
    assert res.exit_code == 0
    schema = json.loads(res.output)
    import yaml

    example = yaml.safe_load((ROOT / "configs/sweeps/fashion_mnist_mlp.yaml").read_text())
    jsonschema.validate(example, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "method": "bayes"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "parameters": {"a.b": {"uppper": 3}}}, schema)
    # And the example sweep checks out against its base config (no data is needed for that).
    assert api.check_sweep(load_sweep(ROOT / "configs/sweeps/fashion_mnist_mlp.yaml")) == "minimize"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P (no working directory on the path) is 3.11+")
def test_files_in_the_working_directory_do_not_shadow_the_trials_modules(tmp_path, monkeypatch):
    path = write_sweep(
        tmp_path,
        """\
        config: base.yaml
        method: random
        metric: {name: val_loss, goal: minimize}
        trials: 2
        parallel: 2
        seed: 0
        parameters:
          optimizer.learning_rate: {min: 1.0e-3, max: 1.0e-1, log: true}
        """,
    )
    (tmp_path / "timeit.py").write_text("raise SystemExit('the standard library was shadowed')\n")
    monkeypatch.chdir(tmp_path)
    result = api.sweep(path, runs_dir=tmp_path / "runs")
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE"], [t.message for t in result.trials]


def test_a_storage_without_its_driver_is_one_message_and_leaves_no_folder(tmp_path):
    path = write_sweep(
        tmp_path,
        """\
        config: base.yaml
        method: random
        metric: {name: val_loss}
        trials: 1
        parameters:
          optimizer.learning_rate: {min: 1.0e-3, max: 1.0e-1, log: true}
        """,
    )
    res = runner.invoke(
        app, ["sweep", str(path), "--storage", "mysql://127.0.0.1:9/db", "--runs-dir", str(tmp_path / "r")]
    )
    assert res.exit_code == 1 and "cannot open the Optuna storage" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*"))


def test_a_sweep_whose_every_trial_fails_exits_1(tmp_path):
    path = write_sweep(
        tmp_path,
        """\
        config: base.yaml
        method: grid
        metric: {name: val_loss}
        trials: 1
        parallel: 1
        parameters:
          optimizer.learning_rate: {values: [1.0e30]}
        """,
        epochs=1,
    )
    base = tmp_path / "base.yaml"  # plain SGD at 1e30 diverges at once: TerminateOnNaN fails the trial
    base.write_text(base.read_text().replace("{type: adam, learning_rate: 0.01}", "{type: sgd, learning_rate: 0.01}"))
    res = runner.invoke(app, ["sweep", str(path), "--runs-dir", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 1, res.output
    [line] = [x for x in res.output.splitlines() if x.startswith("{")]
    assert json.loads(line)["failed"] == 1
    assert "no trial of the sweep completed (1 failed" in res.output
