"""Writing a dlrun model as a Keras 3 `.keras` file: the zip of config.json, metadata.json and
model.weights.h5 that `keras.saving.load_model` reads, laid out as Keras 3.15 writes it.

Every layer config is written from the table in keras_format (the reader's, read backwards), the
weights under `layers/<snake_case(class)>[_N]/vars/<i>` in Keras's layer order. Whatever the format
cannot express is one error listing each item, raised before anything is written; the file itself
is written atomically (complete or absent).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from dlrun import __version__
from dlrun.atomic import atomic_open
from dlrun.errors import DlrunError, short
from dlrun.graph.model import Model
from dlrun.interop.keras_format import (
    BY_DLRUN,
    TO_KERAS,
    dtype_policy,
    keras_class,
    keras_groups,
    keras_layer_order,
    keras_weight_order,
)
from dlrun.interop.keras_reader import h5py_module

#: The Keras release whose file layout this writer follows (and was checked against).
KERAS_LAYOUT_VERSION = "3.15.1"
#: Keras-only arguments written out (with the value dlrun's behaviour equals) because every Keras 3
#: release takes them; the newer ones (quantization_config, renorm, ...) are left to their defaults.
_WRITTEN_FIXED = ("data_format", "groups")


class KerasExportError(DlrunError):
    """The model cannot be written as a `.keras` file."""


def write_keras(model: Model, path: str | Path, *, config: dict[str, Any] | None = None) -> None:
    """Write `model` (its current weights) to `path` as a Keras 3 `.keras` file.

    `config`, a dlrun config (e.g. a checkpoint's), adds its name and its loss, optimizer and
    metrics as Keras's compile config. Raises KerasExportError listing every layer or argument
    Keras cannot express; nothing is written then.
    """
    name = str((config or {}).get("name") or ("functional" if model.functional else "sequential"))
    problems: list[str] = []
    layers = [_layer_spec(model, n, problems) for n in keras_layer_order(model)]
    if problems:
        raise KerasExportError(
            f"the model cannot be written as a .keras file ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}); nothing was written:\n" + "\n".join(f"  - {p}" for p in problems),
            hint="these layers or arguments have no Keras equivalent; use --format onnx or safetensors",
        )
    shape = [None, *next(iter(model.inputs.values()))]
    if model.functional:
        outputs = [model.output, 0, 0]
        inputs = [[n, 0, 0] for n in model.inputs]
        top: dict[str, Any] = {
            "module": "keras.src.models.functional",
            "class_name": "Functional",
            "config": {
                "name": name,
                "trainable": True,
                "layers": layers,
                "input_layers": inputs[0] if len(inputs) == 1 else inputs,
                "output_layers": outputs,
            },
            "registered_name": "Functional",
            "build_config": {"input_shape": None},
        }
    else:
        input_layer = _input_spec(next(iter(model.inputs)), model.inputs[next(iter(model.inputs))])
        top = {
            "module": "keras",
            "class_name": "Sequential",
            "config": {
                "name": name,
                "trainable": True,
                "dtype": dtype_policy(),
                "layers": [input_layer, *layers],
                "build_input_shape": shape,
            },
            "registered_name": None,
            "build_config": {"input_shape": shape},
        }
    if config is not None:
        compiled = compile_config(config)
        if compiled:
            top["compile_config"] = compiled
    metadata = {
        "keras_version": KERAS_LAYOUT_VERSION,
        "date_saved": _dt.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "written_by": f"dlrun {__version__}",
    }
    weights = _weights_h5(model, name)
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w") as z:
        z.writestr("metadata.json", json.dumps(metadata), compress_type=zipfile.ZIP_STORED)
        z.writestr("config.json", json.dumps(top), compress_type=zipfile.ZIP_STORED)
        z.writestr("model.weights.h5", weights, compress_type=zipfile.ZIP_STORED)


def _input_spec(name: str, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {"batch_shape": [None, *shape], "dtype": "float32", "sparse": False, "ragged": False, "name": name},
        "registered_name": None,
    }


def _tensor(model: Model, name: str) -> dict[str, Any]:
    shape = model.inputs[name] if name in model.inputs else model.node(name).output_shape
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [None, *shape], "dtype": "float32", "keras_history": [name, 0, 0]},
    }


def _layer_spec(model: Model, name: str, problems: list[str]) -> dict[str, Any]:
    if name in model.inputs:
        return {**_input_spec(name, model.inputs[name]), "name": name, "inbound_nodes": []}
    node = model.node(name)
    layer = node.layer
    where = f"layer {name!r} ({layer.type_name})"
    row = BY_DLRUN.get(layer.type_name)
    if row is None:
        problems.append(f"{where}: Keras has no such layer")
        return {}
    config: dict[str, Any] = {"name": name, "trainable": bool(layer.trainable), "dtype": dtype_policy()}
    if not row.takes_trainable:
        del config["trainable"]
    for key, value in layer.get_config().items():
        if key in ("name", "trainable"):
            continue
        if key not in row.args:
            problems.append(f"{where}: argument {key}={short(value)} has no Keras equivalent")
            continue
        config[key] = _value_to_keras(row.dlrun, key, value)
    for key in _WRITTEN_FIXED:
        if key in row.fixed:
            config[key] = row.fixed[key]
    in_shapes = [[None, *(model.inputs[i] if i in model.inputs else model.node(i).output_shape)] for i in node.inputs]
    spec: dict[str, Any] = {
        "module": "keras.layers",
        "class_name": keras_class(layer.type_name),
        "config": config,
        "registered_name": None,
        "build_config": {"input_shape": in_shapes[0] if layer.n_inputs == 1 else in_shapes},
    }
    if model.functional:
        tensors = [_tensor(model, i) for i in node.inputs]
        spec["name"] = name
        spec["inbound_nodes"] = [{"args": [tensors[0] if layer.n_inputs == 1 else tensors], "kwargs": {}}]
    return spec


def _value_to_keras(dlrun_type: str, key: str, value: Any) -> Any:
    if key == "noise_shape" and value is not None:
        return [None, *value]  # Keras's includes the batch axis
    convert = TO_KERAS.get(key)
    if convert is not None:
        return convert(value)
    return value


def _weights_h5(model: Model, name: str) -> bytes:
    """model.weights.h5 in memory: `layers/<group>/vars/<i>` for every layer (empty for layers
    without weights and for input layers, as Keras writes them), and the model's own `vars`."""
    h5py = h5py_module()
    weights = model.get_weights()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_group("layers")
        for layer_name, group in keras_groups(model).items():
            g = f.create_group(group).create_group("vars")
            g.attrs["name"] = layer_name
            if layer_name in model.inputs:
                continue
            for i, w in enumerate(keras_weight_order(model, layer_name)):
                g.create_dataset(str(i), data=np.asarray(weights[f"{layer_name}/{w}"], dtype=np.float32))
        f.create_group("vars").attrs["name"] = name
    return buffer.getvalue()


# -- compile config ------------------------------------------------------------------------------------
_LOSS_CLASSES = {
    "categorical_crossentropy": "CategoricalCrossentropy",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
    "mean_squared_error": "MeanSquaredError",
    "mean_absolute_error": "MeanAbsoluteError",
    "mean_absolute_percentage_error": "MeanAbsolutePercentageError",
}
_OPTIMIZER_CLASSES = {"sgd": "SGD", "rmsprop": "RMSprop", "adagrad": "Adagrad", "adam": "Adam", "adamw": "AdamW"}


def compile_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """A dlrun config's loss, optimizer and metrics as Keras's compile config (None when the
    config has no loss)."""
    from dlrun.engine import losses, optimizers

    if not config.get("loss"):
        return None
    loss = losses.get(config["loss"])
    loss_spec = loss.spec()
    loss_name = loss_spec if isinstance(loss_spec, str) else loss_spec["type"]
    loss_args = {} if isinstance(loss_spec, str) else {k: v for k, v in loss_spec.items() if k != "type"}
    keras_loss: Any = (
        loss_name
        if not loss_args
        else {
            "module": "keras.losses",
            "class_name": _LOSS_CLASSES[loss_name],
            "config": {"name": loss_name, "reduction": "sum_over_batch_size", **loss_args},
            "registered_name": None,
        }
    )
    opt = optimizers.spec(optimizers.get(config.get("optimizer") or "rmsprop"))
    opt_name = opt.pop("type")
    return {
        "optimizer": {
            "module": "keras.optimizers",
            "class_name": _OPTIMIZER_CLASSES[opt_name],
            "config": {"name": opt_name, **opt},
            "registered_name": None,
        },
        "loss": keras_loss,
        "loss_weights": None,
        "metrics": list(config.get("metrics") or []) or None,
        "weighted_metrics": None,
        "run_eagerly": False,
        "steps_per_execution": 1,
        "jit_compile": True,
    }


__all__ = ["KERAS_LAYOUT_VERSION", "KerasExportError", "compile_config", "write_keras"]
