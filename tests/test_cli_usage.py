"""The command line as a newcomer types it: usage errors, --debug anywhere, --set where it helps,
extending a finished run, and compare's path-level diff."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from dlrun import api
from dlrun.cli import app
from dlrun.runs.compare import config_diff, yaml_text

runner = CliRunner()

CONFIG = {
    "name": "usage",
    "seed": 3,
    "data": {"dataset": "synthetic", "samples": 200, "features": 8, "classes": 3, "validation_split": 0.25},
    "model": {
        "layers": [{"Dense": {"units": 8, "activation": "relu"}}, {"Dense": {"units": 3, "activation": "softmax"}}]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "metrics": ["accuracy"],
    "training": {"epochs": 2, "batch_size": 32},
}


def _config_file(tmp_path, config=CONFIG):
    path = tmp_path / "usage.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_usage_errors_exit_2(tmp_path):
    cfg = _config_file(tmp_path)
    assert runner.invoke(app, ["train"]).exit_code == 2
    assert runner.invoke(app, ["train", str(cfg), "--resume", str(tmp_path)]).exit_code == 2
    res = runner.invoke(app, ["evaluate", str(cfg), "--split", "train"])
    assert res.exit_code == 2 and "--split must be test or val" in res.output


def test_debug_works_after_the_command(tmp_path):
    missing = tmp_path / "missing.yaml"
    res = runner.invoke(app, ["validate", str(missing), "--debug"])
    assert res.exit_code == 2
    assert "Traceback" in res.output and "config file not found" in res.output
    res = runner.invoke(app, ["validate", str(missing)])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_summary_takes_set(tmp_path):
    cfg = _config_file(tmp_path)
    res = runner.invoke(app, ["summary", str(cfg), "--json", "--set", "model.layers[0].Dense.units=5"])
    assert res.exit_code == 0, res.output
    layers = json.loads(res.output)["layers"]
    assert layers[0]["output_shape"] == [None, 5]
    assert json.loads(res.output)["total_params"] == 8 * 5 + 5 + 5 * 3 + 3


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path):
    first = api.train(CONFIG, runs_dir=tmp_path / "a")
    assert len(first.history["loss"]) == 2
    extended = api.resume(first.run_dir, overrides=["training.epochs=4"])
    assert extended.run_dir == first.run_dir
    straight = api.train({**CONFIG, "training": {"epochs": 4, "batch_size": 32}}, runs_dir=tmp_path / "b")
    assert extended.history == straight.history  # the same as training 4 epochs at once
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["training"]["epochs"] == 4
    res = runner.invoke(app, ["train", "--resume", str(first.run_dir), "--set", "optimizer=sgd"])
    assert res.exit_code == 2 and "only --set training.epochs" in res.output
    res = runner.invoke(app, ["train", "--resume", str(first.run_dir), "--set", "training.epochs=3"])
    assert res.exit_code == 2 and "already trained 4 epochs" in res.output


def test_compare_shows_an_inserted_layer_as_one_row():
    a = {"model": {"layers": [{"Flatten": {}}, {"Dense": {"units": 100}}, {"Dense": {"units": 10}}]}, "seed": 1}
    b = {
        "model": {
            "layers": [{"Flatten": {}}, {"Dense": {"units": 100}}, {"Dropout": {"rate": 0.3}}, {"Dense": {"units": 10}}]
        },
        "seed": 1,
    }
    assert config_diff(a, b) == [("model.layers[2]", None, {"Dropout": {"rate": 0.3}})]
    c = {"model": {"layers": [{"Flatten": {}}, {"Dense": {"units": 64}}, {"Dense": {"units": 10}}]}, "seed": 2}
    assert config_diff(a, c) == [("model.layers[1].Dense.units", 100, 64), ("seed", 1, 2)]
    assert yaml_text({"Dropout": {"rate": 0.3}}) == "{Dropout: {rate: 0.3}}"
    assert yaml_text("relu") == "relu" and yaml_text(None) == "-" and yaml_text(True) == "true"


def test_compare_renders_yaml_and_keeps_brackets(tmp_path):
    a = api.train(CONFIG, runs_dir=tmp_path / "a")
    cfg = {
        **CONFIG,
        "model": {"layers": [CONFIG["model"]["layers"][0], {"Dropout": {"rate": 0.5}}, CONFIG["model"]["layers"][1]]},
    }
    b = api.train(cfg, runs_dir=tmp_path / "b")
    res = CliRunner().invoke(app, ["compare", str(a.run_dir), str(b.run_dir)])
    assert res.exit_code == 0, res.output
    assert "model.layers[1]" in res.output and "{Dropout: {name: dropout" in res.output and "rate: 0.5" in res.output
    assert "None" not in res.output and "'relu'" not in res.output


def test_the_end_of_training_prints_the_best_weights_scores(tmp_path):
    """Training past its best epoch: the printed scores are best.npz's, which evaluate RUN_DIR reports."""
    cfg = {
        **CONFIG,
        "seed": 1,
        "data": {"dataset": "synthetic", "samples": 300, "features": 8, "classes": 3, "validation_split": 0.3},
        "model": {
            "layers": [{"Dense": {"units": 32, "activation": "relu"}}, {"Dense": {"units": 3, "activation": "softmax"}}]
        },
        "optimizer": {"type": "adam", "learning_rate": 0.1},
        "training": {"epochs": 8},
    }
    res = runner.invoke(app, ["train", str(_config_file(tmp_path, cfg)), "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert res.exit_code == 0, res.output
    [run] = list((tmp_path / "runs" / "usage").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best"]["epoch"] == metrics["best_epoch"] < metrics["epochs"] == 8
    evaluated = api.evaluate(run)
    assert metrics["best"]["test"] == evaluated
    assert f"best weights: epoch {metrics['best_epoch']} (checkpoints/best.npz)" in res.output
    assert f"test: loss {evaluated['loss']:.4f}" in res.output.split("final weights")[0]
    assert "final weights: epoch 8" in res.output
    listed = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert json.loads(listed.output)[0]["test"] == ["accuracy", evaluated["accuracy"]]


def test_an_empty_runs_dir_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", str(_config_file(tmp_path)), "--runs-dir", ""])
    assert res.exit_code == 2 and "--runs-dir is empty" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usage.yaml"]


def test_class_names_that_look_like_markup_are_printed_as_they_are(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = ["[/]", "[none]", "[bold]x"]
    rows = ["a,b,label"]
    for i in range(90):
        k = i % 3
        rows.append(f"{rng.normal() + 3 * k:.3f},{rng.normal():.3f},{labels[k]}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "markup",
        "data": {"dataset": "csv", "path": str(tmp_path / "t.csv"), "target": "label", "test_split": 0.3},
        "model": {"layers": [{"Dense": {"units": 3, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "adam", "learning_rate": 0.1},
        "metrics": ["accuracy"],
        "training": {"epochs": 3},
    }
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    res = runner.invoke(app, ["evaluate", str(result.run_dir)])
    assert res.exit_code == 0, res.output
    for name in labels:
        assert name in res.output
    np.savez(tmp_path / "x.npz", x=np.array([[0.0, 0.0], [6.0, 0.0]], np.float32))
    res = runner.invoke(app, ["predict", str(result.run_dir), "-i", str(tmp_path / "x.npz"), "--json"])
    assert res.exit_code == 0, res.output
    shown = {c["class"] for row in json.loads(res.output) for c in row}
    assert shown <= set(labels) and shown  # the csv's class names, not numbers


def test_set_takes_list_items_as_dot_numbers_too(tmp_path):
    """MLflow param keys (no brackets allowed there) are `--set` paths as well."""
    cfg = _config_file(tmp_path)
    for path in ("model.layers[0].Dense.units=5", "model.layers.0.Dense.units=5"):
        res = runner.invoke(app, ["summary", str(cfg), "--json", "--set", path])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["layers"][0]["output_shape"] == [None, 5]


def test_a_bad_epochs_value_on_resume_names_the_set(tmp_path):
    first = api.train(CONFIG, runs_dir=tmp_path / "a")
    for value in ("8.5", "abc", "-1"):
        res = runner.invoke(app, ["train", "--resume", str(first.run_dir), "--set", f"training.epochs={value}"])
        assert res.exit_code == 2, res.output
        assert f"--set training.epochs={value}" in res.output and "last.npz" not in res.output


def test_data_path_for_a_dataset_without_files_is_a_usage_error(tmp_path):
    run = api.train(CONFIG, runs_dir=tmp_path / "a").run_dir
    res = runner.invoke(app, ["evaluate", str(run), "--data-path", str(tmp_path)])
    assert res.exit_code == 2 and "--data-path does not apply to the synthetic dataset" in res.output
