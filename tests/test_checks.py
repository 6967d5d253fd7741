"""One argument-checking mechanism: bounds declared as data give the check (an ArgumentError that
names the argument) and the JSON Schema constraint; the resolved config is assembled in `prepare`."""

from __future__ import annotations

import copy
import inspect

import pytest

from dlrun import api
from dlrun.api.schema import json_schema
from dlrun.checks import FRACTION, POSITIVE_INT, Bounds, check, declared, int_tuple
from dlrun.config.schema import SCHEMA
from dlrun.engine.initializers import INITIALIZERS
from dlrun.engine.losses import LOSSES
from dlrun.engine.optimizers import OPTIMIZERS, Adam
from dlrun.engine.regularizers import REGULARIZERS
from dlrun.errors import ArgumentError, ConfigError, UnknownArgumentError
from dlrun.graph.builder import build_model
from dlrun.graph.layer import LAYERS
from dlrun.graph.layers.core import Dense
from dlrun.registry import check_kwargs
from dlrun.training.callbacks_builtin import CALLBACKS
from dlrun.training.schedules import SCHEDULES
from dlrun.training.setup import make_callbacks, make_loss, make_metrics, make_optimizer

jsonschema = pytest.importorskip("jsonschema")


def _config(units=4, rate=0.5):
    return {
        "data": {"dataset": "synthetic", "features": 4, "classes": 3, "validation_split": 0.25},
        "model": {"layers": [{"Dense": {"units": units}}, {"Dropout": {"rate": rate}}, {"Dense": {"units": 3}}]},
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "adam", "learning_rate": 0.01},
        "callbacks": [{"EarlyStopping": {"patience": 2}}],
    }


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft202012Validator(json_schema())


# -- ArgumentError ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory, name, value",
    [
        (lambda: Dense(0), "units", 0),
        (lambda: Dense(2, trainable="yes"), "trainable", "yes"),
        (lambda: Adam(beta_1=1.5), "beta_1", 1.5),
        (lambda: CALLBACKS.lookup("EarlyStopping")[1](patience=-1), "patience", -1),
        (lambda: SCHEDULES.lookup("cosine_decay")[1](decay_steps=0), "decay_steps", 0),
        (lambda: REGULARIZERS.lookup("l2")[1](l2=-1), "l2", -1),
    ],
)
def test_argument_errors_carry_the_argument_name_and_value(factory, name, value):
    with pytest.raises(ArgumentError) as err:
        factory()
    assert isinstance(err.value, ValueError)  # `except ValueError` keeps working
    assert (err.value.name, err.value.value) == (name, value)
    assert f"Received: {name}={value!r}" in str(err.value)


def test_unknown_and_missing_arguments_name_the_argument():
    with pytest.raises(UnknownArgumentError) as err:
        check_kwargs(Dense, {"units": 2, "unitz": 3}, "Dense")
    assert isinstance(err.value, TypeError) and err.value.name == "unitz"
    with pytest.raises(UnknownArgumentError) as err:
        check_kwargs(Dense, {}, "Dense")
    assert err.value.name == "units"


def test_a_config_error_points_at_the_argument_the_exception_names():
    cfg = _config()
    cfg["callbacks"] = [{"EarlyStopping": {"monitor": "val_loss", "patience": -1}}]
    with pytest.raises(ConfigError) as err:
        api.prepare(cfg)
    assert err.value.path == "callbacks[0].EarlyStopping.patience"
    cfg = _config(units=0)
    with pytest.raises(ConfigError) as err:
        api.prepare(cfg)
    assert err.value.path == "model.layers[0].Dense.units"


# -- bounds ----------------------------------------------------------------------------------------
def test_bounds_check_describe_and_convert():
    assert check("rate", 0, FRACTION) == 0.0 and isinstance(check("rate", 0, FRACTION), float)
    assert check("units", 3, POSITIVE_INT) == 3
    assert int_tuple("kernel_size", 3, 2) == (3, 3) and int_tuple("kernel_size", [1, 2], 2) == (1, 2)
    for bad in (True, 1.0, float("nan"), 1, -0.5, "0.5", None):
        assert not FRACTION.accepts(bad), bad
    assert POSITIVE_INT.describe() == "a positive integer"
    assert FRACTION.describe() == "a number in [0, 1)"
    assert Bounds((int,), minimum=2).describe() == "an integer >= 2"
    assert FRACTION.problem(1.5) == "must be in [0, 1)" and FRACTION.problem(0.5) is None


def test_every_declared_bound_names_a_constructor_argument():
    """A bound for an argument the class does not take would check nothing and mislead the schema."""
    for registry in (LAYERS, OPTIMIZERS, CALLBACKS, SCHEDULES, INITIALIZERS, REGULARIZERS, LOSSES):
        for name in registry.names():
            cls = registry.lookup(name)[1]
            if not inspect.isclass(cls):
                continue
            params = {
                p for klass in cls.__mro__ if "__init__" in vars(klass) for p in inspect.signature(klass).parameters
            }
            assert set(declared(cls)) <= params, (name, set(declared(cls)) - params)


@pytest.mark.parametrize(
    "units, rate, path",
    [(0, 0.5, "model.layers[0].Dense.units"), (4, 1.0, "model.layers[1].Dropout.rate")],
)
def test_a_declared_bound_is_enforced_by_dlrun_and_by_the_json_schema(validator, units, rate, path):
    cfg = _config(units=units, rate=rate)
    errors = list(validator.iter_errors(cfg))
    assert errors, "the JSON Schema accepts what dlrun refuses"
    with pytest.raises(ConfigError) as err:
        api.prepare(cfg)
    assert err.value.path == path
    assert list(validator.iter_errors(_config())) == []


def test_config_key_bounds_give_the_check_and_the_schema_constraint(validator):
    seed = json_schema()["properties"]["seed"]
    assert seed["minimum"] == SCHEMA["seed"].bounds.minimum == 0
    cfg = {**_config(), "seed": -1}
    assert list(validator.iter_errors(cfg))
    with pytest.raises(ConfigError, match="zero or more; got -1"):
        api.as_config(cfg)


# -- the resolved config is assembled in one place -------------------------------------------------
def test_builders_return_their_resolved_parts_and_leave_the_config_alone():
    cfg = api.as_config(_config())
    before = copy.deepcopy(cfg.resolved)
    model, model_part = build_model(cfg, (4,))
    loss, loss_part = make_loss(cfg)
    optimizer, optimizer_part = make_optimizer(cfg)
    callbacks, callbacks_part = make_callbacks(cfg, make_metrics(cfg, loss), optimizer)
    assert cfg.resolved == before
    assert model_part["input_shape"] == [4] and model_part["layers"][0]["Dense"]["units"] == 4
    assert loss_part == "sparse_categorical_crossentropy"  # no arguments: the name alone
    assert optimizer_part["learning_rate"] == 0.01 and "beta_1" in optimizer_part
    assert callbacks_part[0]["EarlyStopping"]["patience"] == 2 and len(callbacks) == 1
    resolved = api.prepare(cfg).config.resolved
    assert (resolved["model"], resolved["loss"], resolved["optimizer"], resolved["callbacks"]) == (
        model_part,
        loss_part,
        optimizer_part,
        callbacks_part,
    )
    assert list(resolved) == list(before)  # the sections keep the schema's order in config.yaml
