"""Keras files in and out: `dlrun import`, `model.weights:`, fine-tuning a frozen base, and the
`.keras` writer. Real Keras-made files (tests/fixtures/keras/import/, made by make.py there) and
hand-built Keras 2 / hostile files; Keras itself is never needed."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

h5py = pytest.importorskip("h5py")

from dlrun import api  # noqa: E402
from dlrun.cli import app  # noqa: E402
from dlrun.errors import ConfigError, DlrunError  # noqa: E402
from dlrun.interop import keras_format  # noqa: E402
from dlrun.interop.keras_format import keras_groups, keras_weight_names, keras_weight_paths  # noqa: E402
from dlrun.interop.keras_reader import KerasFileError, import_keras  # noqa: E402
from dlrun.interop.keras_writer import KerasExportError, write_keras  # noqa: E402
from dlrun.runs import checkpoint as ckpt_mod  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "keras" / "import"
EXPECTED = np.load(FIX / "expected.npz")
runner = CliRunner()


def _model(config: dict) -> api.Setup:
    return api.prepare({"data": {"dataset": "synthetic"}, "loss": "mse", **config}, device="cpu")


FUNCTIONAL = {
    "model": {
        "inputs": {"x": [6]},
        "layers": [
            {"Dense": {"name": "a", "units": 8, "activation": "relu", "inputs": "x"}},
            {"Dense": {"name": "b", "units": 8, "inputs": "x"}},
            {"Add": {"name": "s", "inputs": ["a", "b"]}},
            {"Concatenate": {"name": "c", "inputs": ["s", "a"]}},
            {"BatchNormalization": {"name": "bn", "inputs": "c"}},
            {"Dense": {"name": "out", "units": 3, "activation": "softmax", "inputs": "bn"}},
        ],
        "outputs": "out",
    }
}


# -- naming ------------------------------------------------------------------------------------------
def test_keras_weight_names_and_groups_count_classes_in_layer_order_not_names():
    model = _model(FUNCTIONAL).model
    assert keras_weight_names(model) == {
        "a/kernel": "a/kernel",
        "a/bias": "a/bias",
        "b/kernel": "b/kernel",
        "b/bias": "b/bias",
        "bn/gamma": "bn/gamma",
        "bn/beta": "bn/beta",
        "bn/moving_mean": "bn/moving_mean",
        "bn/moving_variance": "bn/moving_variance",
        "out/kernel": "out/kernel",
        "out/bias": "out/bias",
    }
    assert keras_groups(model) == {
        "x": "layers/input_layer",
        "a": "layers/dense",
        "b": "layers/dense_1",
        "s": "layers/add",
        "c": "layers/concatenate",
        "bn": "layers/batch_normalization",
        "out": "layers/dense_2",
    }
    assert keras_weight_paths(model)["bn/moving_variance"] == "layers/batch_normalization/vars/3"
    assert keras_weight_paths(model)["out/bias"] == "layers/dense_2/vars/1"


def test_the_table_covers_every_dlrun_layer():
    from dlrun.graph.layer import LAYERS

    assert set(LAYERS.names()) == set(keras_format.BY_DLRUN)


# -- import ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["seq_cnn", "functional"])
@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_import_predicts_what_keras_predicted(name, ext):
    imported = import_keras(FIX / f"{name}{ext}")
    y = imported.model.forward(EXPECTED[f"{name}_x"])
    np.testing.assert_allclose(y, EXPECTED[f"{name}_y"], atol=1e-5, rtol=0)
    # Keras's parameter counts: Conv2D 40, BN 16 (8 non-trainable), Dense 370 / the Functional model's
    counts = {"seq_cnn": (40 + 8 + 370, 8), "functional": (56 + 56 + 32 + 51, 32)}
    assert imported.model.param_counts() == counts[name]


def test_functional_weights_follow_groups_not_layer_names():
    # Keras named the layers dense_2.. dense_4; their groups are layers/dense, dense_1, dense_2.
    imported = import_keras(FIX / "functional.keras")
    names = [entry[0] for entry in imported.plan.layers]
    assert names[:2] == ["dense_2", "dense_3"]
    with h5py.File(io.BytesIO(zipfile.ZipFile(FIX / "functional.keras").read("model.weights.h5"))) as f:
        np.testing.assert_array_equal(imported.model.get_weights()["dense_2/kernel"], f["layers/dense/vars/0"][()])
        np.testing.assert_array_equal(
            imported.model.get_weights()["batch_normalization_1/moving_variance"],
            f["layers/batch_normalization/vars/3"][()],
        )


def test_import_config_sections():
    imported = import_keras(FIX / "seq_cnn.keras")
    cfg = imported.config({"dataset": "synthetic"})
    assert [next(iter(e)) for e in cfg["model"]["layers"]] == [
        "Conv2D",
        "BatchNormalization",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
    ]
    assert cfg["model"]["input_shape"] == [12, 12, 1]
    dense = cfg["model"]["layers"][-1]["Dense"]
    assert dense == {
        "name": "dense",
        "units": 10,
        "activation": "softmax",
        "kernel_regularizer": {"type": "l2", "l2": 0.01},
    }
    assert cfg["loss"] == "sparse_categorical_crossentropy"
    assert cfg["optimizer"]["type"] == "adam" and cfg["optimizer"]["learning_rate"] == 0.002
    assert cfg["metrics"] == ["accuracy"]
    functional = import_keras(FIX / "functional.h5").config({"dataset": "synthetic"})
    assert functional["model"]["inputs"] == {"features": [6]}
    assert functional["model"]["outputs"] == "dense_4"
    add = next(e["Add"] for e in functional["model"]["layers"] if "Add" in e)
    assert add["inputs"] == ["dense_2", "dense_3"]
    assert functional["optimizer"]["type"] == "adagrad" and functional["loss"] == "categorical_crossentropy"


def test_unsupported_items_are_one_error_and_nothing_is_written(tmp_path):
    out = tmp_path / "out.npz"
    res = runner.invoke(
        app, ["import", str(FIX / "unsupported.keras"), "-o", str(out), "--config", str(tmp_path / "c.yaml")]
    )
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    text = res.output
    for item in (
        "layer 'lambda' (Lambda): layer type Lambda",
        "layer 'lstm' (LSTM): layer type LSTM",
        "layer 'scale' (Scale): custom layer class (registered as 'mypkg>Scale')",
        "layer 'dense_5' (Dense): activation 'selu'",
        "layer 'dense_6' (Dense): argument kernel_constraint=",
    ):
        assert item in text
    assert "5 things" in text
    assert list(tmp_path.iterdir()) == []


def _write_keras2_h5(path: Path, dense_kernel: np.ndarray, dense_bias: np.ndarray) -> None:
    """A Keras 2 model.save('x.h5'): Keras 2's config schema and `name:0` weight names."""
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32"}},
                {
                    "class_name": "Dense",
                    "config": {
                        "name": "dense",
                        "trainable": True,
                        "dtype": "float32",
                        "units": 3,
                        "activation": "linear",
                        "use_bias": True,
                        "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                        "bias_initializer": {"class_name": "Zeros", "config": {}},
                        "kernel_regularizer": None,
                        "bias_regularizer": None,
                        "activity_regularizer": None,
                        "kernel_constraint": None,
                        "bias_constraint": None,
                    },
                },
                {"class_name": "LeakyReLU", "config": {"name": "leaky_re_lu", "trainable": True, "alpha": 0.2}},
            ],
        },
    }
    training = {
        "loss": "mse",
        "metrics": [["mae"]],
        "optimizer_config": {"class_name": "SGD", "config": {"name": "SGD", "learning_rate": 0.05, "momentum": 0.5}},
    }
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["training_config"] = json.dumps(training)
        f.attrs["keras_version"] = "2.15.0"
        w = f.create_group("model_weights")
        w.attrs["layer_names"] = [b"dense", b"leaky_re_lu"]
        g = w.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        g.create_dataset("dense/kernel:0", data=dense_kernel)
        g.create_dataset("dense/bias:0", data=dense_bias)
        w.create_group("leaky_re_lu").attrs["weight_names"] = np.array([], dtype="S1")


def test_keras2_h5_imports(tmp_path):
    rng = np.random.default_rng(0)
    kernel, bias = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    _write_keras2_h5(tmp_path / "k2.h5", kernel, bias)
    imported = import_keras(tmp_path / "k2.h5")
    x = rng.standard_normal((5, 4)).astype(np.float32)
    z = x @ kernel + bias
    np.testing.assert_allclose(imported.model.forward(x), np.where(z > 0, z, 0.2 * z), rtol=1e-6)
    cfg = imported.config({"dataset": "synthetic"})
    assert cfg["model"]["layers"][1] == {"LeakyReLU": {"name": "leaky_re_lu", "negative_slope": 0.2}}
    assert cfg["optimizer"]["type"] == "sgd" and cfg["optimizer"]["momentum"] == 0.5
    assert cfg["loss"] == "mean_squared_error" and cfg["metrics"] == ["mean_absolute_error"]


# -- hostile and broken files --------------------------------------------------------------------------
def test_hostile_and_broken_files_are_refused(tmp_path, monkeypatch):
    def refused(path: Path, *words: str) -> None:
        with pytest.raises(KerasFileError) as err:
            import_keras(path)
        for w in words:
            assert w in str(err.value), str(err.value)

    (tmp_path / "pickle.keras").write_bytes(b"\x80\x04\x95" + b"\0" * 20)
    refused(tmp_path / "pickle.keras", "neither")
    with zipfile.ZipFile(tmp_path / "noconfig.keras", "w") as z:
        z.writestr("metadata.json", "{}")
    refused(tmp_path / "noconfig.keras", "no config.json")
    # A member that declares more than the limit is refused from its header, before inflating it.
    monkeypatch.setattr("dlrun.interop.keras_reader.MAX_CONFIG_BYTES", 1000)
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", " " * 100_000)
    refused(tmp_path / "bomb.keras", "config.json declares 100,000 bytes")
    monkeypatch.undo()
    # HDF5 links out of the file and non-numeric datasets.
    src = zipfile.ZipFile(FIX / "seq_cnn.keras")
    weights = io.BytesIO(src.read("model.weights.h5"))
    with h5py.File(weights, "a") as f:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.ExternalLink("/etc/passwd", "/x")
    with zipfile.ZipFile(tmp_path / "link.keras", "w") as z:
        z.writestr("config.json", src.read("config.json"))
        z.writestr("model.weights.h5", weights.getvalue())
    refused(tmp_path / "link.keras", "ExternalLink", "refusing")
    weights = io.BytesIO(src.read("model.weights.h5"))
    with h5py.File(weights, "a") as f:
        del f["layers/dense/vars/1"]
        f["layers/dense/vars/1"] = np.array([b"not numbers"] * 10, dtype=object)
    with zipfile.ZipFile(tmp_path / "strings.keras", "w") as z:
        z.writestr("config.json", src.read("config.json"))
        z.writestr("model.weights.h5", weights.getvalue())
    refused(tmp_path / "strings.keras", "not plain numbers")
    refused(FIX / "seq_cnn.weights.h5", "weights only")


# -- dlrun import: checkpoint and config that the other commands accept --------------------------------
@pytest.fixture
def imported(tmp_path):
    """seq_cnn imported with an npz dataset of random 12x12 images, its YAML beside it."""
    rng = np.random.default_rng(3)
    data = tmp_path / "data.npz"
    np.savez(
        data,
        x_train=rng.uniform(0, 1, (64, 12, 12, 1)).astype(np.float32),
        y_train=rng.integers(0, 10, 64),
        x_test=rng.uniform(0, 1, (32, 12, 12, 1)).astype(np.float32),
        y_test=rng.integers(0, 10, 32),
    )
    out, cfg = tmp_path / "model.npz", tmp_path / "model.yaml"
    args = ["import", str(FIX / "seq_cnn.keras"), "-o", str(out), "--config", str(cfg)]
    res = runner.invoke(app, [*args, "--dataset", "npz", "--data-path", str(data)])
    assert res.exit_code == 0, res.output
    assert "Sequential, 6 layers, 426 parameters (8 non-trainable)" in res.output
    return out, cfg, data


def test_imported_checkpoint_works_with_summary_predict_evaluate(imported, tmp_path):
    out, cfg, _ = imported
    ckpt = ckpt_mod.load(out)
    assert ckpt.meta["imported_from"]["format"] == "keras" and not ckpt.resumable
    assert ckpt.config["data"]["normalize"] == "none"
    _, summary = api.summary(out)
    assert (summary["trainable_params"], summary["non_trainable_params"]) == (418, 8)
    x = EXPECTED["seq_cnn_x"]
    np.savez(tmp_path / "x.npz", x=x)
    rows = api.predict(out, tmp_path / "x.npz", top_k=1)
    keras_y = EXPECTED["seq_cnn_y"]
    assert [int(r[0][0]) for r in rows] == list(keras_y.argmax(axis=1))
    np.testing.assert_allclose([r[0][1] for r in rows], keras_y.max(axis=1), atol=1e-6)
    scores = api.evaluate(out)
    assert set(scores) == {"loss", "accuracy"} and np.isfinite(scores["loss"])
    res = runner.invoke(app, ["summary", str(out)])
    assert res.exit_code == 0 and "conv2d (Conv2D)" in res.output


def test_imported_yaml_trains_from_the_imported_weights_and_resumes(imported, tmp_path):
    out, cfg, _ = imported
    text = cfg.read_text()
    assert "weights: model.npz" in text and text.startswith("# Imported from seq_cnn.keras")
    runs = tmp_path / "runs"
    # One epoch of SGD at learning rate 1e-9: the run ends where it started, at the imported weights.
    sgd = "optimizer={type: sgd, learning_rate: 1.0e-9}"
    result = api.train(cfg, runs_dir=runs, overrides=["training.epochs=1", sgd])
    imported_weights = ckpt_mod.load(out).weights
    for key, value in imported_weights.items():
        if "moving" not in key:  # BatchNormalization's statistics move in training mode
            np.testing.assert_allclose(result.weights[key], value, rtol=1e-6, atol=1e-7)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    [(path, digest)] = manifest["initial_weights"].items()
    assert Path(path) == out.resolve() and digest == ckpt_mod_sha(out)
    run_cfg = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert run_cfg["model"]["weights"] == str(out.resolve())
    # Resume takes the weights from the run's checkpoint: the weights file may be gone.
    out.rename(tmp_path / "moved.npz")
    again = api.resume(result.run_dir, overrides=["training.epochs=2"])
    assert len(again.history["loss"]) == 2


def ckpt_mod_sha(path: Path) -> str:
    from dlrun.runs.manifest import sha256

    return sha256(path)


def test_frozen_base_fine_tune(imported, tmp_path):
    out, cfg, _ = imported
    config = yaml.safe_load(cfg.read_text())
    for entry in config["model"]["layers"]:
        (kind, args) = next(iter(entry.items()))
        if kind in ("Conv2D", "BatchNormalization"):
            args["trainable"] = False
    config["model"]["weights"] = str(out)
    config["training"] = {"epochs": 2, "batch_size": 16}
    frozen_cfg = tmp_path / "frozen.yaml"
    frozen_cfg.write_text(yaml.safe_dump(config))
    result = api.train(frozen_cfg, runs_dir=tmp_path / "runs")
    before = ckpt_mod.load(out).weights
    for key in before:
        if key.startswith(("conv2d/", "batch_normalization/")):
            np.testing.assert_array_equal(result.weights[key], before[key])  # bit-identical
        else:
            assert not np.array_equal(result.weights[key], before[key]), key  # the head trained
    _, summary = api.summary(result.run_dir / "checkpoints" / "last.npz")
    assert summary["trainable_params"] == 370


# -- model.weights from Keras files and its errors -----------------------------------------------------
SEQ_CNN_YAML = """\
data: {dataset: synthetic}
model:
  input_shape: [12, 12, 1]
  layers:
    - Conv2D: {name: c, filters: 4, kernel_size: 3, strides: 2, padding: same, activation: relu}
    - BatchNormalization: {name: n}
    - MaxPooling2D
    - Dropout: {rate: 0.25}
    - Flatten
    - Dense: {name: head, units: %(units)d, activation: softmax}
  weights: %(weights)s
loss: sparse_categorical_crossentropy
"""


@pytest.mark.parametrize("source", ["seq_cnn.keras", "seq_cnn.weights.h5", "seq_cnn.h5"])
def test_model_weights_from_keras_files_match_by_group_not_name(tmp_path, source):
    from dlrun.interop.weights_file import load_initial_weights

    path = tmp_path / "c.yaml"
    path.write_text(SEQ_CNN_YAML % {"units": 10, "weights": FIX / source})
    setup = api.prepare(path, device="cpu")
    setup.model.allocate()
    assert load_initial_weights(setup.config, setup.model) == FIX / source
    y = setup.model.forward(EXPECTED["seq_cnn_x"])
    np.testing.assert_allclose(y, EXPECTED["seq_cnn_y"], atol=1e-5, rtol=0)


def test_model_weights_mismatch_is_a_config_error_at_the_weights_line(tmp_path, synth_config):
    from dlrun.interop.weights_file import load_initial_weights

    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    (tmp_path / "sub" / "w.keras").write_bytes((FIX / "seq_cnn.keras").read_bytes())
    path.write_text(SEQ_CNN_YAML % {"units": 7, "weights": "w.keras"})  # relative to the config file
    setup = api.prepare(path, device="cpu")
    with pytest.raises(ConfigError) as err:
        load_initial_weights(setup.config, setup.model)
    e = err.value
    assert e.line == 11 and e.path == "model.weights" and e.exit_code == 2
    assert "layer 'head' (Dense): kernel has shape (36, 10) in the file, the model's is (36, 7)" in e.message
    assert "layer 'head' (Dense): bias has shape (10,) in the file, the model's is (7,)" in e.message
    # From a dlrun checkpoint: by layer name, so a missing and an extra layer are both listed.
    res = runner.invoke(app, ["train", str(synth_config), "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert res.exit_code == 0, res.output
    last = next((tmp_path / "runs").glob("synth/*/checkpoints/last.npz"))
    other = tmp_path / "other.yaml"
    other.write_text(
        "data: {dataset: synthetic, features: 12, classes: 3}\n"
        "model:\n  layers:\n    - Dense: {units: 16, activation: relu}\n    - Dense: {name: top, units: 3}\n"
        "loss: sparse_categorical_crossentropy\n"
    )
    res = runner.invoke(
        app, ["train", str(other), "--set", f"model.weights={last}", "--runs-dir", str(tmp_path / "r2")]
    )
    assert res.exit_code == 2
    assert "the file has weights for layer 'dense_1', which the model lacks" in res.output
    assert "layer 'top' (Dense): the file has no kernel" in res.output and "(16, 3)" in res.output
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").rglob("*.npz"))
    res = runner.invoke(app, ["validate", str(other), "--set", f"model.weights={last}"])  # validate checks it too
    assert res.exit_code == 2 and "which the model lacks" in res.output


def test_schema_has_model_weights():
    props = api.json_schema()["properties"]["model"]["properties"]
    assert "weights" in props


# -- the .keras writer ---------------------------------------------------------------------------------
def test_write_keras_round_trips_and_matches_the_keras_layout(tmp_path):
    imported = import_keras(FIX / "functional.keras")
    write_keras(imported.model, tmp_path / "again.keras", config=imported.config({"dataset": "synthetic"}))
    back = import_keras(tmp_path / "again.keras")
    x = EXPECTED["functional_x"]
    np.testing.assert_array_equal(back.model.forward(x), imported.model.forward(x))
    assert back.compiled.optimizer == imported.compiled.optimizer and back.compiled.loss == imported.compiled.loss

    def layout(path: Path) -> set[str]:
        with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
            names: set[str] = set()
            f.visit(names.add)
            assert {"metadata.json", "config.json", "model.weights.h5"} <= set(z.namelist())
            return {n for n in names if not n.startswith("optimizer")}

    assert layout(tmp_path / "again.keras") == layout(FIX / "functional.keras")


def test_write_keras_every_layer_round_trips(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_export", FIX.parent / "check_export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    for name, cfg in module.MODELS.items():
        model = _model({**cfg, "name": name}).model
        write_keras(model, tmp_path / f"{name}.keras")
        x = rng.standard_normal((4, *next(iter(model.inputs.values())))).astype(np.float32)
        np.testing.assert_array_equal(import_keras(tmp_path / f"{name}.keras").model.forward(x), model.forward(x))


def test_write_keras_refuses_what_keras_cannot_express_and_leaves_no_file(tmp_path, monkeypatch):
    model = _model(FUNCTIONAL).model
    monkeypatch.delitem(keras_format.BY_DLRUN, "Concatenate")
    with pytest.raises(KerasExportError) as err:
        write_keras(model, tmp_path / "m.keras")
    assert "layer 'c' (Concatenate): Keras has no such layer" in str(err.value)
    assert isinstance(err.value, DlrunError)
    assert list(tmp_path.iterdir()) == []


def test_model_weights_from_a_keras_file_names_missing_and_extra_layers(tmp_path):
    from dlrun.interop.weights_file import load_initial_weights

    extra_layer = SEQ_CNN_YAML.replace(
        "    - Dense: {name: head", "    - Dense: {name: mid, units: 36}\n    - Dense: {name: head"
    )
    path = tmp_path / "c.yaml"
    path.write_text(extra_layer % {"units": 10, "weights": FIX / "seq_cnn.weights.h5"})
    setup = api.prepare(path, device="cpu")
    with pytest.raises(ConfigError) as err:
        load_initial_weights(setup.config, setup.model)
    message = err.value.message
    # Groups count Dense layers in order: mid takes layers/dense, head layers/dense_1 (absent).
    assert "layer 'mid' (Dense): kernel has shape (36, 10) in the file, the model's is (36, 36)" in message
    assert "layer 'head' (Dense): the file has no kernel (layers/dense_1/vars/0); the model needs (36, 10)" in message
    fewer = SEQ_CNN_YAML.replace("    - BatchNormalization: {name: n}\n", "")
    path.write_text(fewer % {"units": 10, "weights": FIX / "seq_cnn.weights.h5"})
    setup = api.prepare(path, device="cpu")
    with pytest.raises(ConfigError, match="layers/batch_normalization holds weights for a layer the model lacks"):
        load_initial_weights(setup.config, setup.model)


def test_import_without_dataset_and_without_h5py(tmp_path, monkeypatch):
    result = api.import_model(FIX / "functional.keras", tmp_path / "f.npz", config_out=tmp_path / "f.yaml")
    assert any("synthetic placeholder" in n for n in result.notes)
    config = yaml.safe_load((tmp_path / "f.yaml").read_text())
    assert config["model"]["outputs"] == "dense_4" and config["model"]["weights"] == "f.npz"
    assert api.summary(tmp_path / "f.yaml")[1]["trainable_params"] == 195
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    res = runner.invoke(app, ["import", str(FIX / "seq_cnn.keras"), "-o", str(tmp_path / "x.npz")])
    assert res.exit_code == 1 and "needs h5py" in res.output and "pip install 'dlrun[interop]'" in res.output
    assert not (tmp_path / "x.npz").exists()


def test_weights_path_is_relative_to_the_config_file_or_to_the_working_directory_for_set(tmp_path, monkeypatch):
    from dlrun.interop.weights_file import weights_path

    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "c.yaml"
    path.write_text(SEQ_CNN_YAML % {"units": 10, "weights": "w.npz"})
    assert weights_path(api.as_config(path)) == tmp_path / "cfg" / "w.npz"
    monkeypatch.chdir(tmp_path)
    assert weights_path(api.as_config(path, ["model.weights=w.npz"])) == tmp_path / "w.npz"
