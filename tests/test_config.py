"""Config loading: safe YAML, schema checks with file/line, defaults, the resolved config."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dlrun import api
from dlrun.config import load_config, load_yaml_text, parse_config
from dlrun.errors import ConfigError
from dlrun.runs.folder import dump_config

BASE = """\
data:
  dataset: synthetic
model:
  layers:
    - Dense: {units: 4, activation: relu}
    - Dense: {units: 2, activation: softmax}
loss: sparse_categorical_crossentropy
"""


def write(tmp_path, text: str, name: str = "c.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        api.prepare(write(tmp_path, text))
    return info.value


def test_defaults_are_filled_and_name_defaults_to_file_stem(tmp_path):
    cfg = load_config(write(tmp_path, BASE, "my_exp.yaml"))
    r = cfg.resolved
    assert r["name"] == "my_exp" and r["seed"] == 42 and r["device"] == "auto"
    assert r["training"] == {"epochs": 1, "batch_size": 32, "shuffle": True, "warmup_epochs": 0}
    assert r["optimizer"] == "rmsprop" and r["metrics"] == [] and r["callbacks"] == []


def test_resolved_config_spells_out_layers_and_optimizer(tmp_path):
    setup = api.prepare(write(tmp_path, BASE + "optimizer: Adam\n"))
    r = setup.config.resolved
    assert r["optimizer"]["type"] == "adam" and r["optimizer"]["epsilon"] == 1e-7
    dense = r["model"]["layers"][0]["Dense"]
    assert dense["name"] == "dense" and dense["kernel_initializer"] == "glorot_uniform"
    assert r["model"]["layers"][1]["Dense"]["name"] == "dense_1"


def test_unknown_top_level_key_names_line_and_suggests(tmp_path):
    err = error_of(tmp_path, BASE + "trainin:\n  epochs: 3\n")
    assert err.line == 8 and "trainin" in str(err) and "training" in str(err)
    assert err.exit_code == 2


def test_wrong_type_names_key_path_and_line(tmp_path):
    err = error_of(tmp_path, BASE + "training:\n  epochs: three\n")
    assert err.line == 9 and err.path == "training.epochs" and "integer" in err.message


def test_out_of_range_layer_argument_points_at_the_argument(tmp_path):
    text = BASE.replace("{units: 4, activation: relu}", "{units: 0, activation: relu}")
    err = error_of(tmp_path, text)
    assert err.line == 5 and "units=0" in err.message


def test_unknown_layer_type_suggests_the_closest(tmp_path):
    err = error_of(tmp_path, BASE.replace("- Dense: {units: 4", "- Dens: {units: 4"))
    assert err.line == 5 and "Dense" in err.message


def test_unknown_layer_argument_suggests(tmp_path):
    err = error_of(tmp_path, BASE.replace("{units: 4, activation: relu}", "{unit: 4, activation: relu}"))
    assert err.line == 5 and "'unit'" in err.message and "units" in err.message


def test_unknown_optimizer_and_loss(tmp_path):
    err = error_of(tmp_path, BASE + "optimizer: adamm\n")
    assert err.line == 8 and "adam" in err.message
    err = error_of(tmp_path, BASE.replace("sparse_categorical_crossentropy", "sparse_categorical_crossentropi"))
    assert err.line == 7 and "sparse_categorical_crossentropy" in err.message


def test_bad_optimizer_argument_value(tmp_path):
    err = error_of(tmp_path, BASE + "optimizer: {type: adam, learning_rate: -0.1}\n")
    assert "learning_rate=-0.1" in err.message and err.line == 8


def test_dense_on_image_input_suggests_flatten(tmp_path):
    text = BASE.replace("dataset: synthetic", "dataset: fashion_mnist")
    err = error_of(tmp_path, text)
    assert "Flatten" in err.message and err.line == 5


def test_yaml_syntax_error_has_line(tmp_path):
    err = error_of(tmp_path, BASE + "training: {epochs: 3\n")
    assert "YAML" in err.message and err.line is not None


def test_duplicate_keys_are_refused(tmp_path):
    err = error_of(tmp_path, BASE + "seed: 1\nseed: 2\n")
    assert "twice" in err.message and err.line == 9


def test_yaml_is_safe_loaded():
    with pytest.raises(ConfigError):
        load_yaml_text("x: !!python/object/apply:os.system ['echo pwned']\n")


def test_missing_required_section(tmp_path):
    err = error_of(tmp_path, "model:\n  layers: [Flatten]\nloss: mse\n")
    assert "data" in err.message


def test_layer_entry_forms(tmp_path):
    cfg = parse_config(
        load_yaml_text(
            textwrap.dedent("""\
        data: {dataset: fashion_mnist}
        model:
          layers:
            - Flatten
            - Dense: {name: hidden, units: 8}
            - Dropout: {rate: 0.5}
            - Dense:
                units: 10
        loss: mse
        """)
        )
    )
    setup = api.prepare(cfg)
    assert [n.name for n in setup.model.nodes] == ["flatten", "hidden", "dropout", "dense"]


def test_readme_config_reference_is_a_valid_config(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Config reference")[1].split("```yaml")[1].split("```")[0]
    setup = api.prepare(write(tmp_path, block))
    assert setup.model.param_counts() == (79_510, 0)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_resolve_to_yaml_that_builds_the_same_model(tmp_path, path):
    """What `dlrun train` writes as the run's config.yaml (graph `inputs:` lists included) is plain
    YAML, and training from it again gives the same model and the same resolved config."""
    setup = api.prepare(path, device="cpu")
    again = tmp_path / "config.yaml"
    again.write_text(dump_config(setup.config.resolved))
    rebuilt = api.prepare(again, device="cpu")
    assert rebuilt.config.resolved == setup.config.resolved
    assert rebuilt.model.param_counts() == setup.model.param_counts()
    assert [n.inputs for n in rebuilt.model.nodes] == [n.inputs for n in setup.model.nodes]


def _synthetic(loss, units, classes=3, activation="softmax", task="classification"):
    return {
        "seed": 1,
        "data": {"dataset": "synthetic", "samples": 60, "features": 4, "classes": classes, "task": task},
        "model": {"layers": [{"Dense": {"units": units, "activation": activation}}]},
        "loss": loss,
        "optimizer": "adam",
        "training": {"epochs": 1, "batch_size": 16},
    }


@pytest.mark.parametrize(
    "loss, units, classes, activation, task, needle",
    [
        ("mse", 3, 3, "softmax", "classification", "compares one output with each label"),
        ("binary_crossentropy", 3, 3, "sigmoid", "classification", "is for two classes"),
        ("binary_crossentropy", 2, 2, "sigmoid", "classification", "needs one output per sample"),
        ("sparse_categorical_crossentropy", 1, 2, "sigmoid", "classification", r"needs one output per class \(2\)"),
        ("categorical_crossentropy", 3, 3, "softmax", "regression", "needs class labels"),
    ],
)
def test_a_loss_that_does_not_fit_the_output_is_a_config_error_before_any_run_folder(
    tmp_path, loss, units, classes, activation, task, needle
):
    with pytest.raises(ConfigError, match=needle) as err:
        api.train(_synthetic(loss, units, classes, activation, task), runs_dir=tmp_path / "runs")
    assert err.value.exit_code == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "loss, units, classes, activation",
    [
        ("sparse_categorical_crossentropy", 3, 3, "softmax"),
        ("categorical_crossentropy", 3, 3, "softmax"),
        ("binary_crossentropy", 1, 2, "sigmoid"),
        ("mse", 1, 2, "sigmoid"),
    ],
)
def test_losses_that_fit_the_output_train(tmp_path, loss, units, classes, activation):
    cfg = _synthetic(loss, units, classes, activation)
    initial = api.prepare(cfg).model.get_weights()  # the same seeded initial weights the run starts from
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    assert len(result.history["loss"]) == 1 and math.isfinite(result.history["loss"][0])
    assert result.metrics["epochs"] == 1 and (result.run_dir / "checkpoints" / "last.npz").is_file()
    assert any(not np.array_equal(initial[k], result.weights[k]) for k in initial), "no weight was trained"


@pytest.mark.parametrize("name", ["../../escape", "a/b", "", ".hidden", "run name"])
def test_run_names_that_would_leave_the_runs_folder_are_refused(tmp_path, name):
    cfg = {**_synthetic("sparse_categorical_crossentropy", 3), "name": name}
    with pytest.raises(ConfigError, match="plain folder name"):
        api.prepare(cfg)
    assert not (tmp_path / "escape").exists()


def test_an_unknown_device_is_refused():
    from dlrun.engine.backend import get_backend
    from dlrun.errors import DlrunError

    with pytest.raises(DlrunError, match="unknown device 'tpu'"):
        get_backend("tpu")
    with pytest.raises(DlrunError, match="unknown device 'CPU'"):
        get_backend("CPU")


def test_validate_catches_what_needs_only_the_known_class_count():
    with pytest.raises(ConfigError, match="compares one output with each label"):
        api.validate(CONFIGS / "fashion_mnist_mlp.yaml", overrides=["loss=mse"])
    with pytest.raises(ConfigError, match="outputs 3 values per sample but fashion_mnist has 10 classes"):
        api.validate(CONFIGS / "fashion_mnist_mlp.yaml", overrides=["model.layers[2].Dense.units=3"])
    assert api.validate(CONFIGS / "fashion_mnist_cnn.yaml").model.param_counts() == (1_676_650, 384)


def test_a_yaml_list_is_not_a_config(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections .* got a list$"):
        load_config(path)
