"""Reading Keras files without Keras: `.keras` (Keras 3: a zip of config.json, metadata.json and
model.weights.h5), legacy `.h5` saves (Keras 2 and Keras 3's `model.save("x.h5")`: the config in the
root attribute `model_config`, weights under `model_weights/<layer>/` named by `weight_names`), and
`.weights.h5` (Keras 3 `save_weights`). Only json, zipfile and h5py are used.

Files are not trusted: every size is checked before it is read (zip members against their declared
sizes and the zip-bomb ratio of dlrun.npzfile, h5 datasets from their shape and dtype against the
same byte budget); HDF5 soft, external and virtual links and external storage are refused, as is
any dataset that is not plain numbers. Nothing is ever unpickled.

Translation collects every layer, activation and argument dlrun lacks and raises them as one
error listing each with its layer's name, before anything is written.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlrun import npzfile
from dlrun.errors import DlrunError, short
from dlrun.graph.layer import LAYERS, ShapeError
from dlrun.graph.model import GraphError, Model, Node
from dlrun.interop.keras_format import (
    ANY,
    BY_KERAS,
    COMMON_ARGS,
    FROM_KERAS,
    TABLE,
    Unsupported,
    builtin,
    dtype_ok,
    float32_value,
    group_names,
    keras_weight_order,
)
from dlrun.registry import check_kwargs

#: config.json / metadata.json / the h5 config attributes: far beyond any real model's.
MAX_CONFIG_BYTES = 64 << 20
INSTALL_HINT = "pip install 'dlrun[interop]' (or pip install h5py)"
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class KerasFileError(DlrunError):
    """A Keras file cannot be read, or describes what dlrun cannot build."""


def h5py_module() -> Any:
    try:
        import h5py
    except ImportError:
        raise KerasFileError(
            "reading Keras .keras/.h5 files needs h5py, which is not installed", hint=INSTALL_HINT
        ) from None
    return h5py


# -- the files -----------------------------------------------------------------------------------------
@dataclass
class KerasFile:
    """A Keras file's parts: the model config, the compile config, and its weights (an open h5)."""

    path: Path
    kind: str  # "keras" | "h5" | "weights.h5"
    config: dict[str, Any] | None
    compile: dict[str, Any] | None
    keras_version: str | None
    h5: Any  # h5py.File: weights root
    _budget: list[int] = field(default_factory=lambda: [npzfile.limit()])

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> KerasFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dataset(self, path: str) -> np.ndarray | None:
        """The plain numeric array at `path` (None when absent); a hostile object is an error."""
        h5py = h5py_module()
        node = self.h5
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            if not isinstance(node, h5py.Group) or part not in node:
                return None
            link = node.get(part, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise KerasFileError(
                    f"{self.path}: {'/'.join(parts[: i + 1])} is a {type(link).__name__}; "
                    "dlrun reads only plain HDF5 objects",
                    hint="the file was not written by Keras or was altered; refusing to follow it",
                )
            node = node[part]
        if not isinstance(node, h5py.Dataset):
            raise KerasFileError(f"{self.path}: {path} is not a dataset")
        if node.external or node.is_virtual:
            raise KerasFileError(
                f"{self.path}: the dataset {path} keeps its data outside the file (external or virtual storage)",
                hint="the file was not written by Keras or was altered; refusing to read it",
            )
        dtype = node.dtype
        if dtype.kind not in "fiub" or dtype.itemsize > 8:
            raise KerasFileError(f"{self.path}: the dataset {path} holds {dtype}, not plain numbers")
        size = int(np.prod(node.shape, dtype=np.int64)) * dtype.itemsize if node.shape else dtype.itemsize
        if size > self._budget[0]:
            raise KerasFileError(
                f"{self.path}: the dataset {path} claims {size:,} bytes, beyond the {npzfile.limit():,}-byte limit",
                hint=f"raise {npzfile.__name__}'s limit with DLRUN_MAX_ARRAY_BYTES if the file is genuine",
            )
        self._budget[0] -= size
        return np.asarray(node[()])

    def members(self, path: str) -> list[str]:
        """Names inside the group at `path` ([] when absent or not a group)."""
        h5py = h5py_module()
        node = self.h5.get(path)
        return list(node.keys()) if isinstance(node, h5py.Group) else []

    def attribute(self, path: str, name: str) -> Any:
        """A (possibly chunked: name0, name1, ...) attribute, strings decoded; None when absent."""
        node = self.h5.get(path) if path else self.h5
        if node is None:
            return None
        attrs = node.attrs
        if name in attrs:
            return _decoded(attrs[name])
        if f"{name}0" in attrs:  # Keras splits attributes beyond HDF5's 64 kB header limit
            out: list[Any] = []
            i = 0
            while f"{name}{i}" in attrs:
                out.extend(_decoded(attrs[f"{name}{i}"]))
                i += 1
            return out
        return None


def _decoded(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decoded(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_decoded(v) for v in value]
    return value


def open_keras_file(path: str | Path) -> KerasFile:
    """Open a `.keras`, `.h5` or `.weights.h5` file, checking it before reading anything large."""
    h5py = h5py_module()
    path = Path(path)
    if not path.is_file():
        raise KerasFileError(
            f"Keras file not found: {path}" if not path.exists() else f"{path} is not a regular file",
            hint="pass a .keras file (model.save) or a .h5 file",
        )
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == _ZIP_MAGIC:
        return _open_zip(path, h5py)
    if head == _HDF5_MAGIC:
        return _open_h5(path, h5py)
    raise KerasFileError(
        f"{path} is neither a Keras 3 .keras archive nor an HDF5 .h5 file",
        hint="pass the file model.save('x.keras') or model.save('x.h5') wrote",
    )


def _read_member(path: Path, z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise KerasFileError(
            f"{path} has no {name}; it is a zip archive but not a Keras 3 .keras file",
            hint="save the model with model.save('x.keras') (Keras 3)",
        ) from None
    if info.file_size > limit:
        raise KerasFileError(f"{path}: {name} declares {info.file_size:,} bytes, beyond the {limit:,}-byte limit")
    if info.file_size > npzfile.BOMB_MIN_BYTES and info.file_size > npzfile.BOMB_RATIO * max(info.compress_size, 1):
        raise KerasFileError(
            f"{path}: {name} inflates {info.file_size / max(info.compress_size, 1):.0f}:1 (a zip bomb)"
        )
    try:
        with z.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise KerasFileError(
            f"{path}: {name} cannot be read ({exc})", hint="the file is truncated or damaged"
        ) from None
    if len(data) > limit:
        raise KerasFileError(f"{path}: {name} is larger than it declares")
    return data


def _json(path: Path, what: str, data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KerasFileError(f"{path}: {what} is not valid JSON ({str(exc)[:100]})") from None


def _open_zip(path: Path, h5py: Any) -> KerasFile:
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KerasFileError(f"{path} is not a readable .keras archive ({exc})") from None
    with z:
        config = _json(path, "config.json", _read_member(path, z, "config.json", MAX_CONFIG_BYTES))
        meta: Any = {}
        if "metadata.json" in z.namelist():
            meta = _json(path, "metadata.json", _read_member(path, z, "metadata.json", MAX_CONFIG_BYTES))
        weights = _read_member(path, z, "model.weights.h5", npzfile.limit())
    if not isinstance(config, dict):
        raise KerasFileError(f"{path}: config.json does not describe a model")
    try:
        h5 = h5py.File(io.BytesIO(weights), "r")
    except OSError as exc:
        raise KerasFileError(f"{path}: model.weights.h5 is not a readable HDF5 file ({exc})") from None
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    compile_cfg = config.get("compile_config")
    return KerasFile(path, "keras", config, compile_cfg if isinstance(compile_cfg, dict) else None, version, h5)


def _open_h5(path: Path, h5py: Any) -> KerasFile:
    if path.stat().st_size > npzfile.limit():
        raise KerasFileError(f"{path} is {path.stat().st_size:,} bytes, beyond the {npzfile.limit():,}-byte limit")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise KerasFileError(f"{path} is not a readable HDF5 file ({exc})") from None
    keras_file = KerasFile(path, "h5", None, None, None, h5)
    raw = keras_file.attribute("", "model_config")
    if raw is None:
        # Keras 3 save_weights ("layers/..."), else Keras 2 save_weights (layer_names at the root)
        keras_file.kind = "weights.h5" if "layers" in h5 or "vars" in h5 else "legacy-weights"
        return keras_file
    keras_file.config = _json(path, "the model_config attribute", raw)
    training = keras_file.attribute("", "training_config")
    if training is not None:
        training = _json(path, "the training_config attribute", training)
        keras_file.compile = training if isinstance(training, dict) else None
    keras_file.keras_version = keras_file.attribute("", "keras_version")
    return keras_file


# -- the model config ----------------------------------------------------------------------------------
@dataclass
class Issues:
    """What dlrun lacks, collected over the whole file: one error lists all of it."""

    items: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def raise_if_any(self, path: Path) -> None:
        if not self.items:
            return
        shown = self.items[:50]
        more = f"\n  ... and {len(self.items) - 50} more" if len(self.items) > 50 else ""
        raise KerasFileError(
            f"{path} uses {len(self.items)} thing{'s' if len(self.items) != 1 else ''} dlrun does not support; "
            "nothing was written:\n" + "\n".join(f"  - {item}" for item in shown) + more,
            hint="dlrun's layers: "
            + ", ".join(m.keras for m in TABLE)
            + "; change the model in Keras, or write it as a dlrun config",
        )


@dataclass
class Plan:
    """A Keras model config in dlrun's terms."""

    name: str
    functional: bool
    inputs: dict[str, tuple[int, ...]]
    #: (layer name, Keras class, dlrun type, dlrun args, input names), in the file's layer order.
    layers: list[tuple[str, str, str, dict[str, Any], list[str]]]
    output: str
    #: Every layer (input layers of a Functional model included) as (name, Keras class), in the
    #: file's `model.layers` order: what numbers the weight groups.
    order: list[tuple[str, str]]


def _where(name: Any, cls: Any) -> str:
    return f"layer {str(name)!r} ({cls})"


def _shape_from(batch_shape: Any) -> tuple[int, ...] | None:
    if not isinstance(batch_shape, list) or len(batch_shape) < 2:
        return None
    dims = batch_shape[1:]
    if all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        return tuple(dims)
    return None


def _input_layer(spec: dict[str, Any], issues: Issues) -> tuple[str, tuple[int, ...] | None]:
    config = spec.get("config") or {}
    name = str(config.get("name") or spec.get("name") or "input")
    raw = config.get("batch_shape", config.get("batch_input_shape"))
    shape = _shape_from(raw)
    if shape is None:
        issues.add(_where(name, "InputLayer"), f"input shape {short(raw)}: dlrun needs every dimension but the batch")
    if not dtype_ok(config.get("dtype")):
        issues.add(_where(name, "InputLayer"), f"dtype {short(config.get('dtype'))}: dlrun models take float32")
    for key in ("sparse", "ragged", "optional"):
        if config.get(key):
            issues.add(_where(name, "InputLayer"), f"argument {key}=True")
    return name, shape


def _layer_args(spec: dict[str, Any], issues: Issues) -> tuple[str, str, str | None, dict[str, Any]]:
    """(name, Keras class, dlrun type or None, dlrun args) of one Keras layer entry."""
    cls = spec.get("class_name")
    config = spec.get("config")
    if not isinstance(config, dict):
        config = {}
    name = str(config.get("name") or spec.get("name") or "?")
    if not isinstance(cls, str):
        issues.add(_where(name, "?"), f"a layer entry without a class name: {short(spec)}")
        return name, "?", None, {}
    where = _where(name, cls)
    module = spec.get("module")
    registered = spec.get("registered_name")
    custom = (isinstance(module, str) and module.split(".")[0] != "keras") or (
        isinstance(registered, str) and registered not in (cls, f"keras.layers>{cls}")
    )
    if custom or cls not in BY_KERAS:
        what = f"custom layer class (registered as {registered!r})" if custom and registered else "layer type"
        issues.add(where, f"{what} {cls} is not supported")
        return name, cls, None, {}
    row = BY_KERAS[cls]
    args: dict[str, Any] = {"name": name}
    for key, value in config.items():
        if key == "name":
            continue
        if key == "trainable":
            if value is False:
                args["trainable"] = False
        elif key == "dtype":
            if not dtype_ok(value):
                issues.add(where, f"dtype {short(value)}: dlrun layers compute in float32")
        elif key in ("batch_input_shape", "batch_shape", "input_shape", "input_dim"):
            continue  # Keras 2 puts the model's input on its first layer: read by _sequential
        elif key in row.args or key in row.aliases:
            target = row.aliases.get(key, key)
            try:
                args[target] = _value_from_keras(row.dlrun, target, value)
            except Unsupported as exc:
                issues.add(where, str(exc))
        elif key in row.fixed:
            want = row.fixed[key]
            if want is not ANY and value != want and not (key == "data_format" and value is None):
                issues.add(where, f"argument {key}={short(value)} (dlrun has only {key}={short(want)})")
        elif key in COMMON_ARGS:
            continue
        else:
            issues.add(where, f"argument {key}={short(value)}")
    if row.dlrun in ("Dense", "Conv2D") and args.get("activation") in (None, "linear"):
        args.pop("activation", None)
    return name, cls, row.dlrun, args


def _value_from_keras(dlrun_type: str, key: str, value: Any) -> Any:
    convert = FROM_KERAS.get(key)
    if convert is not None:
        if key == "activation" and dlrun_type == "Activation":
            return convert(value) or "linear"
        return convert(value)
    if key == "axis" and isinstance(value, list) and len(value) == 1:
        return value[0]  # BatchNormalization's and LayerNormalization's one axis
    if key == "noise_shape" and value is not None:
        if not (isinstance(value, list) and value and all(isinstance(d, int) for d in value[1:])):
            raise Unsupported(f"argument noise_shape={short(value)} (dlrun needs every dimension but the batch)")
        return value[1:]  # Keras's includes the batch axis
    if isinstance(value, float) and key in ("epsilon", "momentum", "rate", "alpha", "negative_slope"):
        return float32_value(value) if abs(value - float32_value(value)) < 1e-12 else value
    return value


def _tensor_sources(arg: Any, out: list[tuple[str, int, int]]) -> None:
    """The (layer, node, tensor) of every Keras 3 `__keras_tensor__` in a call's arguments."""
    if isinstance(arg, dict):
        if arg.get("class_name") == "__keras_tensor__":
            history = (arg.get("config") or {}).get("keras_history")
            if isinstance(history, list) and len(history) == 3:
                out.append((str(history[0]), history[1], history[2]))
        return
    if isinstance(arg, list):
        for item in arg:
            _tensor_sources(item, out)


def _inbound(spec: dict[str, Any], where: str, issues: Issues) -> list[str]:
    nodes = spec.get("inbound_nodes") or []
    if not isinstance(nodes, list):
        issues.add(where, "unreadable inbound_nodes")
        return []
    if len(nodes) > 1:
        issues.add(where, f"a shared layer (called {len(nodes)} times); dlrun layers are called once")
    if not nodes:
        return []
    node = nodes[0]
    sources: list[tuple[str, int, int]] = []
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        _tensor_sources(node.get("args", []), sources)
        for key, value in (node.get("kwargs") or {}).items():
            # `training` fixed at call time: dlrun runs layers in the mode fit/predict asks for
            if value is not None and key != "training":
                issues.add(where, f"call argument {key}={short(value)}")
    elif isinstance(node, list):  # Keras 2: [[layer, node, tensor, kwargs], ...]
        for entry in node:
            if isinstance(entry, list) and len(entry) >= 3:
                sources.append((str(entry[0]), entry[1], entry[2]))
                if len(entry) > 3 and entry[3]:
                    issues.add(where, f"call arguments {short(entry[3])}")
    for layer, node_index, tensor_index in sources:
        if node_index != 0 or tensor_index != 0:
            issues.add(where, f"takes output {tensor_index} of call {node_index} of {layer!r} (shared or multi-output)")
    if not sources:
        issues.add(where, "no inputs found in inbound_nodes")
    return [s[0] for s in sources]


def _endpoints(value: Any) -> list[str]:
    """`["x", 0, 0]` (Keras 3, one) or `[["a", 0, 0], ...]` -> layer names."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [value[0]]
    if isinstance(value, list):
        return [str(v[0]) for v in value if isinstance(v, list) and v]
    return []


def translate(path: Path, model_config: dict[str, Any], issues: Issues) -> Plan:
    """A Keras model config as a Plan; what dlrun lacks goes into `issues`."""
    cls = model_config.get("class_name")
    config = model_config.get("config")
    if cls == "Sequential":
        return _sequential(path, config, issues)
    if cls in ("Functional", "Model") and isinstance(config, dict) and "input_layers" in config:
        return _functional(path, config, issues)
    raise KerasFileError(
        f"{path} holds a {cls!s:.60} model; dlrun imports Sequential and Functional models",
        hint="a subclassed model has no layer graph in its file: rebuild it as a Functional model in Keras",
    )


def _sequential(path: Path, config: Any, issues: Issues) -> Plan:
    specs = config if isinstance(config, list) else (config or {}).get("layers")
    if not isinstance(specs, list) or not specs:
        raise KerasFileError(f"{path}: the Sequential model has no layers")
    name = str((config or {}).get("name", "sequential")) if isinstance(config, dict) else "sequential"
    shape: tuple[int, ...] | None = None
    if isinstance(specs[0], dict) and specs[0].get("class_name") == "InputLayer":
        _, shape = _input_layer(specs[0], issues)
        specs = specs[1:]
    else:
        first = (specs[0].get("config") or {}) if isinstance(specs[0], dict) else {}
        raw = first.get("batch_shape", first.get("batch_input_shape"))
        if raw is None and isinstance(config, dict):
            raw = config.get("build_input_shape")
        shape = _shape_from(raw)
        if shape is None:
            issues.add("the model", f"input shape {short(raw)}: dlrun needs every dimension but the batch")
    layers = []
    previous = "input"
    for spec in specs:
        if not isinstance(spec, dict):
            issues.add("a layer", f"unreadable entry {short(spec)}")
            continue
        layer_name, cls, dlrun_type, args = _layer_args(spec, issues)
        if dlrun_type is not None:
            layers.append((layer_name, cls, dlrun_type, args, [previous]))
        previous = layer_name
    order = [(entry[0], entry[1]) for entry in layers]
    return Plan(name, False, {"input": shape or (1,)}, layers, previous, order)


def _functional(path: Path, config: dict[str, Any], issues: Issues) -> Plan:
    specs = config.get("layers")
    if not isinstance(specs, list) or not specs:
        raise KerasFileError(f"{path}: the Functional model has no layers")
    inputs: dict[str, tuple[int, ...]] = {}
    layers = []
    order: list[tuple[str, str]] = []
    for spec in specs:
        if not isinstance(spec, dict):
            issues.add("a layer", f"unreadable entry {short(spec)}")
            continue
        if spec.get("class_name") == "InputLayer":
            name, shape = _input_layer(spec, issues)
            inputs[name] = shape or (1,)
            order.append((name, "InputLayer"))
            continue
        name, cls, dlrun_type, args = _layer_args(spec, issues)
        order.append((name, cls))
        sources = _inbound(spec, _where(name, cls), issues)
        if dlrun_type is not None:
            layers.append((name, cls, dlrun_type, args, sources))
    outputs = _endpoints(config.get("output_layers"))
    if len(outputs) != 1:
        issues.add("the model", f"{len(outputs)} outputs ({', '.join(outputs)}); dlrun models have one output")
    declared_inputs = _endpoints(config.get("input_layers"))
    missing = [n for n in declared_inputs if n not in inputs]
    if missing:
        issues.add("the model", f"inputs {missing} are not input layers")
    ordered_inputs = {n: inputs[n] for n in declared_inputs if n in inputs} or inputs
    name = str(config.get("name") or "functional")
    return Plan(name, True, ordered_inputs, layers, outputs[0] if outputs else "", order)


def build(path: Path, plan: Plan, issues: Issues) -> Model | None:
    """The dlrun Model of a Plan (weights not allocated); None when `issues` has items (the
    layers' own refusals of arguments join them)."""
    nodes = []
    for name, cls, dlrun_type, args, sources in plan.layers:
        layer_cls = LAYERS.lookup(dlrun_type)[1]
        try:
            check_kwargs(layer_cls, args, dlrun_type)
            layer = layer_cls(**args)
        except (TypeError, ValueError) as exc:
            issues.add(_where(name, cls), str(exc))
            continue
        nodes.append(Node(name, layer, sources))
    if issues.items:
        return None
    try:
        return Model(plan.inputs, nodes, plan.output, functional=plan.functional, allocate=False)
    except (GraphError, ShapeError) as exc:
        raise KerasFileError(f"{path}: the model cannot be built in dlrun: {exc}") from None


# -- weights -------------------------------------------------------------------------------------------
class WeightsMismatch(ValueError):
    """The weights in a file do not fit a model; `problems` lists every difference."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def fit_weights(
    model: Model, found: dict[str, np.ndarray | None], where: dict[str, str], problems: list[str] | None = None
) -> dict[str, np.ndarray]:
    """`found` (dlrun key -> array or None when the file lacks it) checked against the model: every
    difference, after the caller's own `problems`, is one WeightsMismatch."""
    problems = list(problems or [])
    out: dict[str, np.ndarray] = {}
    specs = {f"{n.name}/{w.name}": (n, w) for n in model.nodes for w in n.layer.weight_specs}
    for key, (node, spec) in specs.items():
        arr = found.get(key)
        layer = f"layer {node.name!r} ({node.layer.type_name})"
        if arr is None:
            problems.append(
                f"{layer}: the file has no {spec.name} ({where.get(key, key)}); the model needs {spec.shape}"
            )
        elif tuple(arr.shape) != tuple(spec.shape):
            problems.append(
                f"{layer}: {spec.name} has shape {tuple(arr.shape)} in the file, the model's is {tuple(spec.shape)}"
            )
        elif arr.dtype.kind != "f":
            problems.append(f"{layer}: {spec.name} holds {arr.dtype} in the file, not floats")
        else:
            out[key] = np.ascontiguousarray(arr, dtype=np.float32)
    if problems:
        raise WeightsMismatch(problems)
    return out


def _group_weights(kf: KerasFile, group: str) -> list[np.ndarray]:
    names = kf.members(f"{group}/vars")
    arrays = []
    for i in range(len(names)):
        arr = kf.dataset(f"{group}/vars/{i}")
        if arr is None:
            raise KerasFileError(f"{kf.path}: {group}/vars lacks variable {i} (it has {sorted(names)[:8]})")
        arrays.append(arr)
    return arrays


def keras3_weights(kf: KerasFile, model: Model, groups: dict[str, str]) -> dict[str, np.ndarray]:
    """Weights from a Keras 3 weights file, `groups` naming each layer's group (layer -> layers/x):
    the file's own layer order when importing it, the model's (keras_groups) for `model.weights`."""
    found: dict[str, np.ndarray | None] = {}
    where: dict[str, str] = {}
    problems = []
    used = set()
    for node in model.nodes:
        order = keras_weight_order(model, node.name)
        group = groups.get(node.name)
        if group is None:
            continue
        arrays = _group_weights(kf, group) if order or kf.members(f"{group}/vars") else []
        used.add(group)
        if len(arrays) not in (0, len(order)) or (arrays and not order):
            problems.append(
                f"layer {node.name!r} ({node.layer.type_name}): the file's {group} holds {len(arrays)} "
                f"weights, the model has {len(order)} ({', '.join(order) or 'none'})"
            )
            continue
        for i, w in enumerate(order):
            found[f"{node.name}/{w}"] = arrays[i] if arrays else None
            where[f"{node.name}/{w}"] = f"{group}/vars/{i}"
    extra = [
        f"layers/{g}"
        for g in kf.members("layers")
        if f"layers/{g}" not in used and kf.members(f"layers/{g}/vars") and not g.startswith("input_layer")
    ]
    problems += [f"the file's {g} holds weights for a layer the model lacks" for g in extra]
    return fit_weights(model, found, where, problems)


def _legacy_root(kf: KerasFile) -> str:
    return "model_weights" if "model_weights" in kf.h5 else ""


def legacy_weights_by_layer(kf: KerasFile) -> dict[str, dict[str, np.ndarray]]:
    """A legacy .h5's weights: layer name -> {weight name (kernel, bias, ...) -> array}, in the
    file's layer order (`layer_names`), each layer's in its `weight_names` order."""
    root = _legacy_root(kf)
    names = kf.attribute(root, "layer_names")
    if not isinstance(names, list):
        raise KerasFileError(f"{kf.path} holds no Keras weights (no layer_names attribute)")
    out: dict[str, dict[str, np.ndarray]] = {}
    for layer in names:
        group = f"{root}/{layer}" if root else str(layer)
        weight_names = kf.attribute(group, "weight_names") or []
        weights: dict[str, np.ndarray] = {}
        for wname in weight_names:
            arr = kf.dataset(f"{group}/{wname}")
            if arr is None:
                raise KerasFileError(f"{kf.path}: {group} lists {wname!r} but does not hold it")
            # "sequential/dense/kernel" (Keras 3), "dense/kernel:0" (Keras 2) -> "kernel"
            weights[str(wname).split("/")[-1].split(":")[0]] = arr
        out[str(layer)] = weights
    return out


def legacy_weights(kf: KerasFile, model: Model, by_name: bool) -> dict[str, np.ndarray]:
    """Weights from a legacy .h5: by layer name (a whole-model save, whose config named them), or
    in order over the layers that have weights, as Keras 2's `load_weights` matches them."""
    layers = legacy_weights_by_layer(kf)
    found: dict[str, np.ndarray | None] = {}
    where: dict[str, str] = {}
    problems: list[str] = []
    if by_name:
        pairs = [(n.name, layers.get(n.name, {})) for n in model.nodes if n.layer.weight_specs]
    else:
        weighted_file = [(k, v) for k, v in layers.items() if v]
        weighted_model = [n.name for n in model.nodes if n.layer.weight_specs]
        if len(weighted_file) != len(weighted_model):
            problems.append(
                f"the file has {len(weighted_file)} layers with weights "
                f"({', '.join(k for k, _ in weighted_file[:8])}), the model {len(weighted_model)} "
                f"({', '.join(weighted_model[:8])})"
            )
        pairs = [(m, f[1]) for m, f in zip(weighted_model, weighted_file)]
    for name, weights in pairs:
        for w in model.node(name).layer.weight_specs:
            found[f"{name}/{w.name}"] = weights.get(w.name)
            where[f"{name}/{w.name}"] = f"{name}/{w.name}"
    return fit_weights(model, found, where, problems)


def file_groups(plan: Plan) -> dict[str, str]:
    """Layer name -> weight group, counted in the file's own layer order."""
    return dict(zip([n for n, _ in plan.order], group_names([c for _, c in plan.order])))


# -- the compile config --------------------------------------------------------------------------------
#: Keras-only optimizer and loss arguments at the values whose behaviour dlrun has.
_OPTIMIZER_FIXED: dict[str, Any] = {
    "name": ANY,
    "use_ema": False,
    "ema_momentum": ANY,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
    "is_legacy_optimizer": False,
    "decay": 0.0,
    "jit_compile": ANY,
}
_LOSS_FIXED: dict[str, Any] = {
    "name": ANY,
    "reduction": "sum_over_batch_size",
    "dtype": None,
    "ignore_class": None,
    "axis": -1,
    "label_smoothing": 0.0,
}


@dataclass
class Compiled:
    """The compile config in dlrun's terms: loss, optimizer and metrics specs, and notes on defaults."""

    loss: Any
    optimizer: Any
    metrics: list[str]
    notes: list[str] = field(default_factory=list)


def _keras_object(value: Any, fixed: dict[str, Any], what: str, issues: Issues) -> tuple[str, dict[str, Any]] | None:
    """`"adam"` or `{"class_name": "Adam", "config": {...}}` -> ("Adam", args dlrun takes)."""
    if isinstance(value, str):
        return value, {}
    if not (isinstance(value, dict) and isinstance(value.get("class_name"), str)):
        issues.add("the compile config", f"{what} {short(value)}")
        return None
    if not builtin(value):
        issues.add(
            "the compile config",
            f"custom {what} {value['class_name']} (registered as {value.get('registered_name')!r})",
        )
        return None
    args = {}
    for key, v in (value.get("config") or {}).items():
        if key in fixed:
            if fixed[key] is not ANY and v != fixed[key] and not (key == "reduction" and v == "auto"):
                issues.add("the compile config", f"{what} {value['class_name']} argument {key}={short(v)}")
        else:
            args[key] = v
    return value["class_name"], args


def translate_compile(config: dict[str, Any] | None, model: Model | None, issues: Issues) -> Compiled:
    """Loss, optimizer and metrics from a `.keras` compile_config or an `.h5` training_config.

    Without one, the loss follows the output activation (softmax: sparse categorical cross-entropy,
    sigmoid: binary cross-entropy, else mean squared error) and the optimizer is Keras's default."""
    from dlrun.engine import losses, metrics, optimizers

    notes: list[str] = []
    config = config or {}
    loss_spec: Any = None
    raw_loss = config.get("loss")
    if isinstance(raw_loss, list) and len(raw_loss) == 1:
        raw_loss = raw_loss[0]
    if raw_loss is None:
        activation = model.output_activation if model is not None else None
        loss_spec = {"softmax": "sparse_categorical_crossentropy", "sigmoid": "binary_crossentropy"}.get(
            activation or "", "mean_squared_error"
        )
        notes.append(f"the file has no compiled loss; the config uses {loss_spec} (for a {activation} output)")
    else:
        parsed = _keras_object(raw_loss, _LOSS_FIXED, "loss", issues)
        if parsed is not None:
            name, args = parsed
            try:
                canonical, factory = losses.LOSSES.lookup(name)
                check_kwargs(factory, args, f"loss {canonical!r}")
                loss_spec = {"type": canonical, **args} if args else canonical
                losses.get(loss_spec)
            except (TypeError, ValueError):
                issues.add("the compile config", f"loss {short(raw_loss)}")
    opt_spec: Any = "rmsprop"
    raw_opt = config.get("optimizer", config.get("optimizer_config"))
    if raw_opt is None:
        notes.append("the file has no compiled optimizer; the config uses Keras's default (rmsprop)")
    else:
        parsed = _keras_object(raw_opt, _OPTIMIZER_FIXED, "optimizer", issues)
        if parsed is not None:
            name, args = parsed
            for key, v in list(args.items()):
                if isinstance(v, dict):
                    issues.add("the compile config", f"optimizer {name} {key}={short(v)} (a schedule)")
                    args.pop(key)
                elif key == "learning_rate" and isinstance(v, float):
                    args[key] = float32_value(v)  # Keras stores it as a float32 variable
            try:
                canonical, factory = optimizers.OPTIMIZERS.lookup(name)
                check_kwargs(factory, args, f"optimizer {canonical!r}")
                opt_spec = optimizers.spec(factory(**args))
            except (TypeError, ValueError) as exc:
                issues.add("the compile config", f"optimizer {name} ({exc})")
    metric_names: list[str] = []
    raw_metrics = config.get("metrics") or []
    if isinstance(raw_metrics, dict):
        raw_metrics = [m for v in raw_metrics.values() for m in (v if isinstance(v, list) else [v])]
    flat = [m for item in raw_metrics for m in (item if isinstance(item, list) else [item])]
    for item in flat:
        name = item if isinstance(item, str) else (item.get("class_name") if isinstance(item, dict) else None)
        if isinstance(item, dict) and isinstance((item.get("config") or {}).get("name"), str):
            name = item["config"]["name"] if item["config"]["name"] in metrics.METRICS else name
        name = {"acc": "accuracy", "mse": "mean_squared_error", "mae": "mean_absolute_error"}.get(name, name)
        if not isinstance(name, str) or name not in metrics.METRICS:
            issues.add("the compile config", f"metric {short(item)}")
            continue
        metric_names.append(metrics.METRICS.lookup(name)[0] if name not in ("accuracy",) else name)
    return Compiled(loss_spec, opt_spec, list(dict.fromkeys(metric_names)), notes)


# -- a whole model -------------------------------------------------------------------------------------
@dataclass
class ImportedModel:
    """A Keras model file read into dlrun: the model (weights set) and its config."""

    path: Path
    kind: str
    keras_version: str | None
    plan: Plan
    model: Model
    compiled: Compiled

    def model_section(self) -> dict[str, Any]:
        """The config's `model:` section: a plain layer list (Sequential), or `inputs:` and each
        layer's `name:`/`inputs:` (Functional)."""
        layers = []
        for _, _, dlrun_type, args, sources in self.plan.layers:
            entry = _without_defaults(dlrun_type, args)
            if self.plan.functional:
                entry["inputs"] = sources[0] if len(sources) == 1 else list(sources)
            layers.append({dlrun_type: _plain(entry)})
        if not self.plan.functional:
            return {"input_shape": list(next(iter(self.plan.inputs.values()))), "layers": layers}
        return {
            "inputs": {k: list(v) for k, v in self.plan.inputs.items()},
            "layers": layers,
            "outputs": self.plan.output,
        }

    def config(self, data: dict[str, Any]) -> dict[str, Any]:
        """A complete dlrun config with `data` as its data section."""
        c = self.compiled
        out: dict[str, Any] = {"data": data, "model": self.model_section(), "loss": c.loss, "optimizer": c.optimizer}
        if c.metrics:
            out["metrics"] = list(c.metrics)
        return out


def _without_defaults(dlrun_type: str, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments that differ from the layer's defaults (the name always): a readable config."""
    import inspect

    cls = LAYERS.lookup(dlrun_type)[1]
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            for n, p in inspect.signature(klass.__init__).parameters.items():
                if p.default is not p.empty:
                    defaults[n] = p.default
    layer = cls(**args)
    keep = {}
    for key, value in args.items():
        default = defaults.get(key, inspect.Parameter.empty)
        if key != "name" and default is not inspect.Parameter.empty and _same(cls, key, value, default, layer):
            continue
        keep[key] = value
    return keep


def _same(cls: type, key: str, value: Any, default: Any, layer: Any) -> bool:
    """Whether `value` means the default: compared as the layer resolves both (`3` and `[3, 3]`)."""
    if value == default:
        return True
    try:
        resolved = cls(**{**layer.get_config(), key: default}).get_config()[key]
    except (TypeError, ValueError, KeyError):
        return False
    return resolved == layer.get_config().get(key)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def import_keras(path: str | Path) -> ImportedModel:
    """Read a `.keras` or legacy `.h5` model file into a dlrun Model with its weights.

    Everything dlrun lacks is one KerasFileError listing every item with its layer's name."""
    path = Path(path)
    with open_keras_file(path) as kf:
        if kf.config is None:
            raise KerasFileError(
                f"{path} holds weights only (a save_weights file), no model to import",
                hint="import the model.save('x.keras') file; or use these weights with `model.weights:` in a config",
            )
        issues = Issues()
        plan = translate(path, kf.config, issues)
        model = build(path, plan, issues)
        compiled = translate_compile(kf.compile, model, issues)
        issues.raise_if_any(path)
        assert model is not None
        model.allocate()
        try:
            if kf.kind == "keras":
                weights = keras3_weights(kf, model, file_groups(plan))
            else:
                weights = legacy_weights(kf, model, by_name=True)
        except WeightsMismatch as exc:
            raise KerasFileError(
                f"{path}: its weights do not fit its own model config:\n"
                + "\n".join(f"  - {p}" for p in exc.problems[:30]),
                hint="the file is damaged or was edited",
            ) from None
        model.set_weights(weights)
        return ImportedModel(path, kf.kind, kf.keras_version, plan, model, compiled)


__all__ = [
    "ImportedModel",
    "Issues",
    "KerasFile",
    "KerasFileError",
    "Plan",
    "WeightsMismatch",
    "build",
    "file_groups",
    "fit_weights",
    "h5py_module",
    "import_keras",
    "keras3_weights",
    "legacy_weights",
    "open_keras_file",
    "translate",
    "translate_compile",
]
