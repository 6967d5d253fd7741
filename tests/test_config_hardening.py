"""Config hardening: short messages whatever the value's size, run names, non-finite arguments,
validate running every static check train runs, and the reserved layer name `input`."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dlrun import api
from dlrun.errors import ConfigError, short

BASE: dict[str, Any] = {
    "name": "hard",
    "data": {"dataset": "synthetic", "samples": 64, "features": 6, "classes": 3},
    "model": {"layers": [{"Dense": {"units": 8, "activation": "relu"}}, {"Dense": {"units": 3}}]},
    "loss": {"type": "sparse_categorical_crossentropy", "from_logits": True},
    "optimizer": "adam",
    "training": {"epochs": 1, "batch_size": 16},
}

HUGE_LIST = list(range(10_000))
HUGE_STR = "x" * 5_000


def config(**changes: Any) -> dict[str, Any]:
    """BASE with `changes` applied at dotted paths (`model.layers`: a replacement)."""
    cfg = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = cfg
        *parents, last = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def write(tmp_path: Path, cfg: dict[str, Any], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def validate_error(tmp_path: Path, cfg: dict[str, Any], name: str = "c.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as err:
        api.validate(write(tmp_path, cfg, name))
    return err.value


# -- 1. every quoted value is short ------------------------------------------------------------------


def test_short_summarises_without_expanding():
    assert short(HUGE_LIST).startswith("[0, 1, 2") and len(short(HUGE_LIST)) <= 60
    assert len(short(HUGE_STR)) <= 60
    assert len(short(10**5000)) <= 60  # repr() itself would raise ValueError
    tree: list[Any] = [1]
    for _ in range(60):  # a shared-subtree tree: 10**60 leaves if expanded
        tree = [tree] * 10
    assert len(short(tree)) <= 60
    assert short("abc") == "'abc'" and short(0.5) == "0.5" and short(True) == "True"


HUGE_CASES = {
    "schema type": {"seed": HUGE_LIST},
    "schema bounds": {"name": HUGE_STR},
    "schema string list": {"name": [HUGE_STR] * 3},
    "unknown key": {HUGE_STR: 1},
    "section not a mapping": {"training": HUGE_LIST},
    "layer units list": {"model__layers": [{"Dense": {"units": HUGE_LIST}}]},
    "layer units string": {"model__layers": [{"Dense": {"units": HUGE_STR}}]},
    "layer type": {"model__layers": [{HUGE_STR: {}}]},
    "layer entry": {"model__layers": [HUGE_LIST]},
    "layer args": {"model__layers": [{"Dense": HUGE_LIST}]},
    "layer argument name": {"model__layers": [{"Dense": {"units": 3, HUGE_STR: 1}}]},
    "layer inputs": {"model__layers": [{"Dense": {"units": 3, "inputs": HUGE_LIST}}]},
    "undefined input": {"model__layers": [{"Dense": {"units": 3, "inputs": HUGE_STR}}]},
    "layer activation": {"model__layers": [{"Dense": {"units": 3, "activation": HUGE_STR}}]},
    "optimizer name": {"optimizer": HUGE_STR},
    "optimizer spec": {"optimizer": {"type": HUGE_LIST}},
    "optimizer argument": {"optimizer": {"type": "adam", "learning_rate": HUGE_STR}},
    "loss name": {"loss": HUGE_STR},
    "metric": {"metrics": [HUGE_STR]},
    "callback name": {"callbacks": [HUGE_STR]},
    "callback entry": {"callbacks": [HUGE_LIST]},
    "callback args": {"callbacks": [{"EarlyStopping": HUGE_LIST}]},
    "callback monitor": {"callbacks": [{"EarlyStopping": {"monitor": HUGE_STR}}]},
    "callback filename": {"callbacks": [{"CSVLogger": {"filename": HUGE_STR}}]},
    "checkpoint filepath": {"callbacks": [{"ModelCheckpoint": {"filepath": HUGE_STR + ".npz"}}]},
    "schedule": {"callbacks": [{"LearningRateScheduler": {"schedule": {"type": HUGE_STR}}}]},
}


@pytest.mark.parametrize("changes", HUGE_CASES.values(), ids=HUGE_CASES.keys())
def test_huge_values_give_short_messages(tmp_path, changes):
    err = validate_error(tmp_path, config(**changes))
    assert_short(str(err).replace(str(tmp_path), ""))


def assert_short(text: str) -> None:
    """No quoted value is long: under 300 characters, beyond the list of valid names some errors give."""
    assert "x" * 61 not in text and "9999" not in text, text
    assert len(text) < (700 if "Valid:" in text else 300), text


def test_huge_set_values_give_short_messages(synth_config):
    for override in (f"seed={HUGE_LIST}", f"{HUGE_STR}=1", f"training.{HUGE_STR}=1", f"model..{HUGE_STR}=1"):
        with pytest.raises(ConfigError) as err:
            api.validate(synth_config, overrides=[override])
        assert_short(str(err.value))


# -- 6. `input` is the model's input name ---------------------------------------------------------


def test_a_layer_named_input_is_told_why(tmp_path):
    err = validate_error(tmp_path, config(model__layers=[{"Dense": {"units": 3, "name": "input"}}]))
    assert "model's input" in err.message and "another name" in err.message and "used twice" not in err.message
    assert err.line is not None


def test_a_layer_named_like_a_graph_input_is_told_why(tmp_path):
    layers = [{"Dense": {"units": 3, "name": "a", "inputs": "a"}}]
    err = validate_error(tmp_path, config(model={"inputs": {"a": [6], "b": [6]}, "layers": layers}))
    assert "model's inputs" in err.message and "another name" in err.message


def test_two_layers_of_one_name_are_still_used_twice(tmp_path):
    layers = [{"Dense": {"units": 3, "name": "d"}}, {"Dense": {"units": 3, "name": "d"}}]
    assert "used twice" in validate_error(tmp_path, config(model__layers=layers)).message


# -- 4. one rule for run names, explicit or from the file stem ------------------------------------


@pytest.mark.parametrize(
    ("stem", "name"), [("модель", "модель"), ("my config (1)", "my_config_1"), ("_draft", "draft")]
)
def test_file_stems_become_run_names_by_the_rule(tmp_path, stem, name):
    cfg = config()
    del cfg["name"]
    setup = api.validate(write(tmp_path, cfg, f"{stem}.yaml"))
    assert setup.config.name == name
    api.validate(write(tmp_path, {**cfg, "name": name}))  # what a stem becomes is a valid explicit name


def test_a_run_is_written_under_its_non_ascii_name(tmp_path):
    cfg = config()
    del cfg["name"]
    result = api.train(write(tmp_path, cfg, "модель.yaml"), runs_dir=tmp_path / "runs")
    assert result.run_dir.parent == tmp_path / "runs" / "модель"


@pytest.mark.parametrize("name", ["модель", "模型_v1.2", "a" * 100, "x+y-z"])
def test_explicit_names_follow_the_same_rule(tmp_path, name):
    assert api.validate(write(tmp_path, config(name=name))).config.name == name


@pytest.mark.parametrize("name", ["my config", "(1)", "_x", "a" * 101, "a" * 300, "漢" * 90, "a/b", ".."])
def test_names_outside_the_rule_are_refused(tmp_path, name):
    err = validate_error(tmp_path, config(name=name))
    assert "folder name" in err.message and err.line == 1


def test_a_long_name_is_refused_by_the_command_line_too(tmp_path):
    path = write(tmp_path, config(name="n" * 300))
    proc = subprocess.run([sys.executable, "-m", "dlrun", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "folder name" in proc.stderr + proc.stdout


# -- 5. non-finite arguments ----------------------------------------------------------------------

INF, NAN = math.inf, math.nan


def dense(**args: Any) -> dict[str, Any]:
    return {"model__layers": [{"Dense": {"units": 3, **args}}]}


NON_FINITE = {
    "learning_rate inf": {"optimizer": {"type": "adam", "learning_rate": INF}},
    "learning_rate nan": {"optimizer": {"type": "sgd", "learning_rate": NAN}},
    "momentum nan": {"optimizer": {"type": "sgd", "momentum": NAN}},
    "epsilon inf": {"optimizer": {"type": "adam", "epsilon": INF}},
    "rho nan": {"optimizer": {"type": "rmsprop", "rho": NAN}},
    "weight_decay inf": {"optimizer": {"type": "adamw", "weight_decay": INF}},
    "clipnorm inf": {"optimizer": {"type": "adam", "clipnorm": INF}},
    "clipvalue inf": {"optimizer": {"type": "adam", "clipvalue": INF}},
    "truncated_normal stddev 1e308": dense(kernel_initializer={"type": "truncated_normal", "stddev": 1e308}),
    "random_normal mean 1e38": dense(kernel_initializer={"type": "random_normal", "mean": 1e38}),
    "random_uniform maxval inf": dense(kernel_initializer={"type": "random_uniform", "maxval": INF}),
    "constant value 1e300": dense(bias_initializer={"type": "constant", "value": 1e300}),
    "variance_scaling scale 1e300": dense(kernel_initializer={"type": "variance_scaling", "scale": 1e300}),
    "l2 inf": dense(kernel_regularizer={"type": "l2", "l2": INF}),
    "l1 nan": dense(kernel_regularizer={"type": "l1", "l1": NAN}),
    "negative_slope inf": {"model__layers": [{"Dense": {"units": 3}}, {"LeakyReLU": {"negative_slope": INF}}]},
    "EarlyStopping min_delta inf": {"callbacks": [{"EarlyStopping": {"monitor": "loss", "min_delta": INF}}]},
    "EarlyStopping baseline nan": {"callbacks": [{"EarlyStopping": {"monitor": "loss", "baseline": NAN}}]},
    "ReduceLROnPlateau min_lr inf": {"callbacks": [{"ReduceLROnPlateau": {"monitor": "loss", "min_lr": INF}}]},
    "ReduceLROnPlateau factor nan": {"callbacks": [{"ReduceLROnPlateau": {"monitor": "loss", "factor": NAN}}]},
    "exponential_decay decay_rate inf": {
        "callbacks": [
            {"LearningRateScheduler": {"schedule": {"type": "exponential_decay", "decay_steps": 2, "decay_rate": INF}}}
        ]
    },
    "cosine_decay alpha nan": {
        "callbacks": [{"LearningRateScheduler": {"schedule": {"type": "cosine_decay", "decay_steps": 2, "alpha": NAN}}}]
    },
}


@pytest.mark.parametrize("changes", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_non_finite_arguments_are_refused_at_their_line(tmp_path, changes):
    err = validate_error(tmp_path, config(**changes))
    assert err.line is not None and err.line > 1
    text = str(err)
    if "inf" in text.split("Received:")[-1] or "nan" in text.split("Received:")[-1]:
        assert "not infinite" in text or "not NaN" in text, text


def test_large_but_finite_initializer_arguments_give_finite_weights(tmp_path):
    cfg = config(**dense(kernel_initializer={"type": "truncated_normal", "stddev": 1e30}))
    weights = api.prepare(write(tmp_path, cfg)).model.get_weights()
    assert all(np.isfinite(w).all() for w in weights.values())


# -- 3. validate runs every static check train runs -----------------------------------------------


def _npz(tmp_path: Path) -> Path:
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((20, 5)), y_train=rng.integers(0, 3, 20))
    return path


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "d.csv"
    path.write_text("a,b,c,label\n" + "".join(f"{i},{i + 1},{i + 2},{i % 3}\n" for i in range(20)))
    return path


SHAPE_MISMATCHES = {
    "fashion_mnist": lambda tmp_path: {"data": {"dataset": "fashion_mnist"}, "model__input_shape": [784]},
    "synthetic features": lambda tmp_path: {"model__input_shape": [5]},
    "npz header": lambda tmp_path: {"data": {"dataset": "npz", "path": str(_npz(tmp_path))}, "model__input_shape": [4]},
    "csv header": lambda tmp_path: {
        "data": {"dataset": "csv", "path": str(_csv(tmp_path)), "target": "label"},
        "model__input_shape": [4],
    },
}


@pytest.mark.parametrize("changes", SHAPE_MISMATCHES.values(), ids=SHAPE_MISMATCHES.keys())
def test_validate_refuses_an_input_shape_the_dataset_does_not_provide(tmp_path, changes):
    path = write(tmp_path, config(**changes(tmp_path)))
    with pytest.raises(ConfigError, match="the model expects inputs of shape") as err:
        api.validate(path)
    assert err.value.line is not None
    proc = subprocess.run([sys.executable, "-m", "dlrun", "validate", str(path)], capture_output=True, text=True)
    assert (
        proc.returncode == 2
        and "Traceback" not in proc.stderr
        and "expects inputs of shape" in proc.stderr + proc.stdout
    )


def test_what_validate_refuses_train_refuses_too(tmp_path):
    path = write(tmp_path, config(model__input_shape=[5]))
    with pytest.raises(ConfigError, match="the model expects inputs of shape"):
        api.train(path, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("dataset", ["npz", "csv"])
def test_validate_passes_a_shape_the_file_provides(tmp_path, dataset):
    path = _npz(tmp_path) if dataset == "npz" else _csv(tmp_path)
    features = 5 if dataset == "npz" else 3
    data = {"dataset": dataset, "path": str(path), **({"target": "label"} if dataset == "csv" else {})}
    api.validate(write(tmp_path, config(data=data, model__input_shape=[features])))
