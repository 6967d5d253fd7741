"""The TensorBoard and MLflow callbacks, read back with the real readers: TensorBoard's own
EventAccumulator and MLflow's MlflowClient on a SQLite store."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dlrun import api
from dlrun.cli import app
from dlrun.errors import ArgumentError, ConfigError, TrainingInterrupted
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training.loop import SilentListener
from dlrun.training.tracking import MLflow, TensorBoard, config_params

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
# MLflow's own SQLAlchemy models use a deprecated loader option: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

CONFIG = {
    "name": "track",
    "seed": 5,
    "data": {"dataset": "synthetic", "samples": 250, "features": 8, "classes": 3, "validation_split": 0.2},
    "model": {
        "layers": [
            {"Dense": {"units": 16, "activation": "relu"}},
            {"Dense": {"name": "out", "units": 3, "activation": "softmax"}},
        ]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": {"type": "adam", "learning_rate": 0.01},
    "metrics": ["accuracy"],
    "training": {"epochs": 4, "batch_size": 32},  # 200 training samples: 7 batches
    "callbacks": [],
}
BATCHES = 7


class Listener(SilentListener):
    """Collects messages; sends SIGINT to this process at the end of epoch `stop_after` (0-based)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.messages: list[str] = []

    def message(self, text):
        self.messages.append(text)

    def on_epoch_end(self, epoch, logs, seconds):
        if epoch == self.stop_after:
            os.kill(os.getpid(), signal.SIGINT)


def config(*callbacks, epochs: int = 4) -> dict:
    cfg = copy.deepcopy(CONFIG)
    cfg["callbacks"] = list(callbacks)
    cfg["training"]["epochs"] = epochs
    return cfg


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> tuple[list[int], list[float]]:
    items = acc.Scalars(tag)
    return [e.step for e in items], [e.value for e in items]


def f32(values) -> list[float]:
    return [float(np.float32(v)) for v in values]


def history(run: Path) -> dict[str, list[float]]:
    return json.loads((run / "history.json").read_text())


@pytest.fixture
def mlflow_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# -- TensorBoard ----------------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_history_in_keras_layout(tmp_path):
    cb = {"TensorBoard": {"histogram_freq": 2, "update_freq": "batch"}}
    run = api.train(config(cb), runs_dir=tmp_path, listener=Listener()).run_dir
    hist = history(run)
    train, val = events(run / "logs" / "train"), events(run / "logs" / "validation")
    epochs = list(range(4))
    for key in ("loss", "accuracy", "learning_rate"):
        assert scalars(train, f"epoch_{key}") == (epochs, f32(hist[key]))
    for key in ("loss", "accuracy"):  # val_ dropped inside validation
        assert scalars(val, f"epoch_{key}") == (epochs, f32(hist[f"val_{key}"]))
    assert set(val.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy"}
    # Batch scalars: the epoch's running means, so each epoch's last batch equals its epoch value.
    batch = events(run / "logs" / "train_batch")
    steps, values = scalars(batch, "batch_loss")
    assert steps == list(range(1, 4 * BATCHES + 1))
    assert [values[(e + 1) * BATCHES - 1] for e in epochs] == f32(hist["loss"])
    assert "batch_learning_rate" not in batch.Tags()["scalars"]
    # Histograms every 2 epochs, gradient norms beside them, the graph and the summary text.
    assert [h.step for h in train.Histograms("out/kernel")] == [1, 3]
    assert {"dense/kernel", "dense/bias", "out/kernel", "out/bias"} <= set(train.Tags()["histograms"])
    steps, norms = scalars(train, "gradient_norm/out/kernel")
    assert steps == [1, 3] and all(n > 0 for n in norms)
    graph = train.Graph()
    assert [(n.name, n.op, list(n.input)) for n in graph.node] == [
        ("input", "InputLayer", []),
        ("dense", "Dense", ["input"]),
        ("out", "Dense", ["dense"]),
    ]
    assert [d.size for d in graph.node[2].attr["_output_shapes"].list.shape[0].dim] == [-1, 3]
    assert "model_summary/text_summary" in train.Tags()["tensors"]
    out = CliRunner().invoke(app, ["runs", str(tmp_path)]).output
    assert f"tensorboard --logdir {tmp_path}" in out and "mlflow ui" not in out


def test_tensorboard_update_freq_n_log_dir_and_no_graph(tmp_path):
    cb = {"TensorBoard": {"log_dir": "tb/here", "update_freq": 3, "write_graph": False}}
    run = api.train(config(cb, epochs=2), runs_dir=tmp_path)
    assert not (run.run_dir / "logs").exists()  # a relative log_dir is inside the run folder
    batch = events(run.run_dir / "tb" / "here" / "train_batch")
    assert scalars(batch, "batch_accuracy")[0] == [3, 6, 9, 12]
    train = events(run.run_dir / "tb" / "here" / "train")
    assert not train.Tags()["graph"] and not train.Tags()["tensors"] and not train.Tags()["histograms"]


def test_tensorboard_arguments_round_trip_and_bad_values_are_config_errors(tmp_path):
    cb = TensorBoard(log_dir="tb", histogram_freq=3, write_graph=False, update_freq=10)
    assert TensorBoard(**cb.get_config()).get_config() == cb.get_config()
    for bad in ("sometimes", 0, True):
        with pytest.raises(ArgumentError, match="update_freq"):
            TensorBoard(update_freq=bad)
    with pytest.raises(ConfigError, match="histogram_freq"):
        api.prepare(config({"TensorBoard": {"histogram_freq": -1}}))
    ml = MLflow(tracking_uri="sqlite:///x.db", experiment_name="e", run_name="r", log_checkpoints="all")
    assert MLflow(**ml.get_config()).get_config() == ml.get_config()
    with pytest.raises(ConfigError, match="log_checkpoints"):
        api.prepare(config({"MLflow": {"log_checkpoints": "some"}}))


@pytest.mark.parametrize(
    "entry,module,extra",
    [("TensorBoard", "tensorboardX", "tensorboard"), ("MLflow", "mlflow", "mlflow"), ("MLflow", "alembic", "mlflow")],
)
def test_a_missing_library_is_a_config_error_at_validate_time(tmp_path, monkeypatch, mlflow_env, entry, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what an import of a package that is not installed sees
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config(entry)))  # JSON is YAML
    with pytest.raises(ConfigError) as info:
        api.validate(path)
    assert f"pip install 'dlrun[{extra}]'" in str(info.value) and "callbacks[0]" in str(info.value)


def test_only_the_chief_writes(tmp_path):
    trainer = SimpleNamespace(run_dir=tmp_path, is_chief=False, config={"name": "x"}, history={}, epoch=0)
    tb, ml = TensorBoard(), MLflow()
    for cb in (tb, ml):
        cb.set_trainer(trainer)
        cb.on_train_begin()
    assert not tb.writers and ml.client is None and not list(tmp_path.iterdir())


# -- MLflow ---------------------------------------------------------------------------------------------


def client_for(runs: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")


def only_run(client, name: str = "track"):
    experiment = client.get_experiment_by_name(name)
    [run] = client.search_runs([experiment.experiment_id])
    return run


def metric_histories(client, run_id: str, keys) -> dict[str, tuple[list[int], list[float]]]:
    out = {}
    for key in keys:
        items = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        out[key] = ([m.step for m in items], [m.value for m in items])
    return out


def test_mlflow_logs_params_metrics_tags_and_artifacts(tmp_path, mlflow_env):
    result = api.train(config("MLflow"), runs_dir=tmp_path, listener=Listener())
    run_dir, hist = result.run_dir, history(result.run_dir)
    client = client_for(tmp_path)  # the default store: the runs folder's mlflow.db
    run = only_run(client)
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    params = run.data.params
    assert params["optimizer.learning_rate"] == "0.01"
    assert params["model.layers.1.Dense.units"] == "3" and params["model.layers.1.Dense.name"] == "out"
    assert params["callbacks.0.MLflow.tracking_uri"] == "null"
    assert params == config_params(yaml.safe_load((run_dir / "config.yaml").read_text()))[0]
    assert metric_histories(client, run.info.run_id, hist) == {k: (list(range(4)), v) for k, v in hist.items()}
    tags = run.data.tags
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert tags["dlrun.seed"] == "5" and tags["dlrun.device"] == manifest["device"]
    assert tags["dlrun.run_folder"] == str(run_dir.resolve()) and "dlrun.version" in tags
    assert "dlrun.sweep" not in tags  # not a sweep's trial
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "history.json", "metrics.json", "manifest.json", "history.png", "checkpoints"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.npz"]
    local = Path(client.download_artifacts(run.info.run_id, "history.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text()) == hist
    assert str(tmp_path / "mlartifacts") in run.info.artifact_uri  # beside the store, not in the cwd
    out = CliRunner().invoke(app, ["runs", str(tmp_path)]).output
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in out and "tensorboard" not in out


def test_resume_continues_the_same_mlflow_run_and_tensorboard_steps_without_duplicates(tmp_path, mlflow_env):
    cfg = config(
        {"ModelCheckpoint": {"filepath": "checkpoints/e{epoch}.npz", "verbose": 0}},
        {"TensorBoard": {"update_freq": 2}},
        {"MLflow": {"log_checkpoints": "all"}},
        epochs=6,
    )
    with pytest.raises(TrainingInterrupted) as info:
        api.train(cfg, runs_dir=tmp_path, listener=Listener(stop_after=3))
    run_dir = info.value.run_dir
    client = client_for(tmp_path)
    first = only_run(client)
    assert first.info.status == "KILLED"
    assert {a.path for a in client.list_artifacts(first.info.run_id)} >= {"config.yaml", "history.json", "checkpoints"}
    # A kill after epoch 4 was logged but before its checkpoint was written: resume from epoch 2's.
    shutil.copy(run_dir / "checkpoints" / "e2.npz", run_dir / "checkpoints" / "last.npz")
    assert ckpt_mod.load(run_dir / "checkpoints" / "last.npz").epoch == 2
    api.resume(run_dir, listener=Listener())
    hist = history(run_dir)
    run = only_run(client)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert metric_histories(client, run.info.run_id, hist) == {k: (list(range(6)), v) for k, v in hist.items()}
    for folder, prefix in (("train", ""), ("validation", "val_")):
        acc = events(run_dir / "logs" / folder)
        for tag in acc.Tags()["scalars"]:
            assert scalars(acc, tag) == (list(range(6)), f32(hist[prefix + tag.removeprefix("epoch_")])), tag
    steps, _ = scalars(events(run_dir / "logs" / "train_batch"), "batch_loss")
    assert steps == list(range(2, 6 * BATCHES + 1, 2))


def test_an_unreachable_tracking_server_is_a_warning_and_training_finishes(tmp_path, mlflow_env):
    listener = Listener()
    start = time.perf_counter()
    result = api.train(config({"MLflow": {"tracking_uri": "http://127.0.0.1:9"}}), runs_dir=tmp_path, listener=listener)
    assert time.perf_counter() - start < 60  # the bounded retry, not MLflow's minutes
    assert (result.run_dir / "metrics.json").is_file() and len(result.history["loss"]) == 4
    [warning] = [m for m in listener.messages if m.startswith("MLflow")]
    assert "http://127.0.0.1:9" in warning and "training goes on" in warning


def test_config_params_respect_mlflow_limits():
    params, skipped = config_params({"a": {"b": "x" * 7000, "k" * 300: 1, "bad[key]x": 2}, "l": [{"D": {"u": 3}}]})
    assert len(params["a.b"]) == 6000 and params["a.b"].endswith("...")
    assert params["l.0.D.u"] == "3"
    assert skipped == [f"a.{'k' * 300}", "a.bad[key]x"]


@pytest.mark.parametrize("log_dir", ["/tmp/elsewhere", "../../up", "checkpoints", "history.json"])
def test_a_log_dir_outside_the_run_folder_is_a_config_error(tmp_path, log_dir):
    from dlrun import api
    from dlrun.errors import ConfigError

    pytest.importorskip("tensorboardX")
    cfg = {
        "name": "tb",
        "data": {"dataset": "synthetic", "samples": 50, "features": 4, "classes": 2},
        "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "callbacks": [{"TensorBoard": {"log_dir": log_dir}}],
    }
    with pytest.raises(ConfigError, match="log_dir"):
        api.validate(cfg)


def test_a_sweep_trial_is_tagged_with_its_sweep_and_number(tmp_path, mlflow_env):
    api.train(config("MLflow"), runs_dir=tmp_path, listener=Listener(), context={"sweep": "mlp_sweep", "trial": 7})
    tags = only_run(client_for(tmp_path)).data.tags
    assert tags["dlrun.sweep"] == "mlp_sweep" and tags["dlrun.trial"] == "7"


def test_a_run_that_fails_marks_its_mlflow_run_failed(tmp_path, mlflow_env):
    class Crash(Listener):
        def on_epoch_end(self, epoch, logs, seconds):
            if epoch == 1:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        api.train(config("MLflow"), runs_dir=tmp_path, listener=Crash())
    run = only_run(client_for(tmp_path))
    assert run.info.status == "FAILED"  # not left RUNNING


def test_runs_starting_at_once_on_a_fresh_store_are_all_tracked(tmp_path, mlflow_env):
    """A parallel sweep's trials create the SQLite store together: none may end up untracked."""
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config("MLflow", epochs=1)))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dlrun", "train", str(cfg), "--runs-dir", str(tmp_path), "-q"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert not any("untracked" in out for out in outs), outs
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("track").experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
