"""The Keras 3 file format as data: each dlrun layer's Keras class, how their arguments translate
both ways, and the order in which Keras stores their weights. The reader (keras_reader) and the
writer (keras_writer) both work from this one table.

Keras's argument names are dlrun's by design, so most arguments copy across; what differs is
translated here: initializers and regularizers (Keras writes `{"class_name": "GlorotUniform", ...}`
dicts), activations given by name, `dtype` policies (float32 only), `data_format` (channels_last
only) and the arguments Keras has and dlrun lacks, which are accepted at the one value whose
behaviour dlrun has (`groups: 1`, constraints `None`, ...) and are unsupported at any other.

Weight groups in `model.weights.h5` are `layers/<snake_case(ClassName)>[_N]/vars/<i>`: the counter
runs over the model's layers in `model.layers` order (not by layer name), and `<i>` follows the
order in which the layer creates its variables (`weights` below).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dlrun.graph.layers  # noqa: F401  (registers the layers the table names)
from dlrun.graph.layer import snake_case
from dlrun.graph.model import Model

#: An argument accepted at any value (it changes nothing dlrun computes, e.g. Dropout's seed).
ANY = object()


@dataclass(frozen=True)
class LayerMap:
    """One row of the table: a dlrun layer type and the Keras class it is."""

    dlrun: str
    keras: str
    #: dlrun arguments with the same name (and meaning) in Keras.
    args: tuple[str, ...] = ()
    #: Keras's variable order; a layer stores the ones it has (Dense without bias: kernel only).
    weights: tuple[str, ...] = ()
    #: Keras-only arguments and the value dlrun's behaviour equals (ANY: every value).
    fixed: dict[str, Any] = field(default_factory=dict)
    #: Older Keras spellings of an argument -> dlrun's name (Keras 2's LeakyReLU `alpha`).
    aliases: dict[str, str] = field(default_factory=dict)
    #: Whether the Keras constructor takes `trainable` (SpatialDropout2D's does not).
    takes_trainable: bool = True


_KERNEL = ("activation", "use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer", "bias_regularizer")
_KERNEL_FIXED = {"activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None, "lora_rank": None}
_AFFINE = (
    "epsilon",
    "center",
    "scale",
    "beta_initializer",
    "gamma_initializer",
    "beta_regularizer",
    "gamma_regularizer",
)
_AFFINE_FIXED = {"beta_constraint": None, "gamma_constraint": None}
_IMAGE = {"data_format": "channels_last"}
_MERGE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

TABLE: tuple[LayerMap, ...] = (
    LayerMap(
        "Dense",
        "Dense",
        ("units", *_KERNEL),
        ("kernel", "bias"),
        {**_KERNEL_FIXED, "quantization_config": None, "lora_alpha": ANY},
    ),
    LayerMap(
        "Conv2D",
        "Conv2D",
        ("filters", "kernel_size", "strides", "padding", "dilation_rate", *_KERNEL),
        ("kernel", "bias"),
        {**_KERNEL_FIXED, **_IMAGE, "groups": 1, "lora_alpha": ANY},
    ),
    LayerMap(
        "BatchNormalization",
        "BatchNormalization",
        ("axis", "momentum", *_AFFINE, "moving_mean_initializer", "moving_variance_initializer", "synchronized"),
        ("gamma", "beta", "moving_mean", "moving_variance"),
        {**_AFFINE_FIXED, "renorm": False, "renorm_clipping": None, "renorm_momentum": ANY},
    ),
    LayerMap(
        "LayerNormalization",
        "LayerNormalization",
        ("axis", *_AFFINE),
        ("gamma", "beta"),
        {**_AFFINE_FIXED, "rms_scaling": False},
    ),
    LayerMap("Flatten", "Flatten", (), (), dict(_IMAGE)),
    LayerMap("Reshape", "Reshape", ("target_shape",)),
    LayerMap("Activation", "Activation", ("activation",)),
    LayerMap("Dropout", "Dropout", ("rate", "noise_shape"), (), {"seed": ANY}),
    LayerMap("SpatialDropout2D", "SpatialDropout2D", ("rate",), (), {"seed": ANY, **_IMAGE}, takes_trainable=False),
    *(LayerMap(name, name) for name in _MERGE),
    LayerMap("Concatenate", "Concatenate", ("axis",)),
    LayerMap("MaxPooling2D", "MaxPooling2D", ("pool_size", "strides", "padding"), (), dict(_IMAGE)),
    LayerMap("AveragePooling2D", "AveragePooling2D", ("pool_size", "strides", "padding"), (), dict(_IMAGE)),
    LayerMap("GlobalAveragePooling2D", "GlobalAveragePooling2D", ("keepdims",), (), dict(_IMAGE)),
    LayerMap("GlobalMaxPooling2D", "GlobalMaxPooling2D", ("keepdims",), (), dict(_IMAGE)),
    LayerMap("ZeroPadding2D", "ZeroPadding2D", ("padding",), (), dict(_IMAGE)),
    LayerMap("UpSampling2D", "UpSampling2D", ("size", "interpolation"), (), dict(_IMAGE)),
    LayerMap("ReLU", "ReLU", ("max_value", "negative_slope", "threshold")),
    LayerMap("LeakyReLU", "LeakyReLU", ("negative_slope",), (), {}, {"alpha": "negative_slope"}),
    LayerMap("ELU", "ELU", ("alpha",)),
    LayerMap("Softmax", "Softmax", ("axis",)),
)

BY_DLRUN: dict[str, LayerMap] = {m.dlrun: m for m in TABLE}
#: Keras class names, with the older aliases Keras still reads.
BY_KERAS: dict[str, LayerMap] = {
    **{m.keras: m for m in TABLE},
    "Convolution2D": BY_DLRUN["Conv2D"],
    "MaxPool2D": BY_DLRUN["MaxPooling2D"],
    "AvgPool2D": BY_DLRUN["AveragePooling2D"],
    "GlobalAvgPool2D": BY_DLRUN["GlobalAveragePooling2D"],
    "GlobalMaxPool2D": BY_DLRUN["GlobalMaxPooling2D"],
}

#: Every layer's own arguments: present in each Keras layer config.
COMMON_ARGS = ("name", "trainable")
FLOAT32 = "float32"


# -- naming ------------------------------------------------------------------------------------------
def keras_layer_order(model: Model) -> list[str]:
    """The model's layer names in Keras's `model.layers` order (which numbers the weight groups).

    Sequential: the layers in order. Functional: Keras's graph order, input layers included: by
    depth from the output (deepest first), ties in the order a depth-first walk from the output
    first reaches them, as `keras.src.ops.function.map_graph` orders `Functional.layers`.
    """
    if not model.functional:
        return [n.name for n in model.nodes]
    index: dict[str, int] = {}
    finished: list[str] = []

    def walk(name: str) -> None:
        if name in finished:
            return
        index.setdefault(name, len(index))
        if name not in model.inputs:
            for src in model.node(name).inputs:
                walk(src)
        finished.append(name)

    walk(model.output)
    depth: dict[str, int] = {}
    for name in reversed(finished):  # from the output back to the inputs
        d = depth.setdefault(name, 0)
        if name not in model.inputs:
            for src in model.node(name).inputs:
                depth[src] = max(depth.get(src, 0), d + 1)
    unreached = [n.name for n in model.nodes if n.name not in index]
    ordered = sorted(index, key=lambda n: (-depth[n], index[n]))
    return ordered + unreached


def group_names(classes: list[str]) -> list[str]:
    """The weight group of each layer, given the layers' Keras classes in `model.layers` order:
    `layers/<snake_case(class)>`, then `_1`, `_2`, ... for later layers of the same class."""
    counters: dict[str, int] = {}
    out = []
    for cls in classes:
        base = snake_case(cls)
        n = counters.get(base, 0)
        counters[base] = n + 1
        out.append(f"layers/{base}" if n == 0 else f"layers/{base}_{n}")
    return out


def keras_groups(model: Model) -> dict[str, str]:
    """Layer name -> its weight group in a `.keras` file (`layers/dense_1`), in Keras's layer order.

    Input layers of a Functional model have a group too (`layers/input_layer`), as Keras writes it.
    """
    names = keras_layer_order(model)
    classes = ["InputLayer" if n in model.inputs else keras_class(model.node(n).layer.type_name) for n in names]
    return dict(zip(names, group_names(classes)))


def keras_class(dlrun_type: str) -> str:
    """The Keras class of a dlrun layer type (KeyError for one the table lacks)."""
    return BY_DLRUN[dlrun_type].keras


def keras_weight_order(model: Model, layer_name: str) -> list[str]:
    """The layer's weights (dlrun names) in the order Keras stores its variables."""
    layer = model.node(layer_name).layer
    have = [w.name for w in layer.weight_specs]
    order = BY_DLRUN[layer.type_name].weights
    return [w for w in order if w in have] + [w for w in have if w not in order]


def keras_weight_names(model: Model) -> dict[str, str]:
    """Each dlrun weight's Keras name: `"layer/weight"` keys (as `Model.weights()`) -> Keras's
    variable path (`"dense/kernel"`, `"batch_normalization/moving_mean"`), in Keras's order.

    dlrun names weights as Keras names its variables, so the paths equal the keys; this function
    is the one place that says so (the safetensors export and the Keras writer use it).
    """
    out: dict[str, str] = {}
    for name in keras_layer_order(model):
        if name in model.inputs:
            continue
        for w in keras_weight_order(model, name):
            out[f"{name}/{w}"] = f"{name}/{w}"
    return out


def keras_weight_paths(model: Model) -> dict[str, str]:
    """Each dlrun weight's dataset in a `.keras` file's model.weights.h5 (or a `.weights.h5` file):
    `"dense/kernel"` -> `"layers/dense/vars/0"`, in Keras's order."""
    groups = keras_groups(model)
    out: dict[str, str] = {}
    for name, group in groups.items():
        if name in model.inputs:
            continue
        for i, w in enumerate(keras_weight_order(model, name)):
            out[f"{name}/{w}"] = f"{group}/vars/{i}"
    return out


# -- argument values, Keras -> dlrun -------------------------------------------------------------------
class Unsupported(ValueError):
    """A value dlrun has no equivalent for; the message says what it is."""


_REGULARIZERS = {"L1": "l1", "L2": "l2", "L1L2": "l1_l2"}
_REGULARIZERS_BACK = {v: k for k, v in _REGULARIZERS.items()}


def builtin(spec: dict[str, Any]) -> bool:
    """A Keras built-in object, not a custom registered one (`registered_name` "package>Name")."""
    module = spec.get("module")
    registered = spec.get("registered_name")
    ok_module = module is None or (isinstance(module, str) and module.split(".")[0] == "keras")
    return ok_module and (registered is None or registered == spec.get("class_name"))


def initializer_from_keras(value: Any) -> Any:
    """`{"class_name": "GlorotUniform", "config": {"seed": null}}` -> `"glorot_uniform"`;
    with arguments -> `{type: ..., **args}`. Seeds are dropped: dlrun seeds from the run's seed."""
    from dlrun.engine import initializers

    if isinstance(value, str):
        spec: Any = value
    elif isinstance(value, dict) and isinstance(value.get("class_name"), str) and builtin(value):
        name = snake_case(value["class_name"])
        config = dict(value.get("config") or {})
        config.pop("seed", None)
        for key in ("input_axes", "output_axes"):  # Keras 3.15's fan axes: the default fans only
            if config.get(key) is not None:
                raise Unsupported(f"initializer {value['class_name']} with {key}={config[key]!r}")
            config.pop(key, None)
        if name == "variance_scaling" and config.get("distribution") == "normal":
            config["distribution"] = "truncated_normal"  # Keras 2's spelling
        spec = {"type": name, **config} if config else name
    else:
        raise Unsupported(f"initializer {_describe(value)}")
    try:
        return initializers.get(spec).spec()
    except (TypeError, ValueError) as exc:
        raise Unsupported(f"initializer {_describe(value)} ({exc})") from None


def regularizer_from_keras(value: Any) -> Any:
    from dlrun.engine import regularizers

    if value is None:
        return None
    if isinstance(value, dict) and value.get("class_name") in _REGULARIZERS and builtin(value):
        config = {k: float(v) for k, v in (value.get("config") or {}).items() if isinstance(v, (int, float))}
        spec: Any = {"type": _REGULARIZERS[value["class_name"]], **config}
    elif isinstance(value, str):
        spec = value
    else:
        raise Unsupported(f"regularizer {_describe(value)}")
    try:
        return regularizers.get(spec).spec()
    except (TypeError, ValueError) as exc:
        raise Unsupported(f"regularizer {_describe(value)} ({exc})") from None


def activation_from_keras(value: Any) -> str | None:
    """A built-in activation's name (`None` for linear); anything else is Unsupported."""
    from dlrun.engine import activations

    if isinstance(value, dict) and value.get("class_name") == "function" and isinstance(value.get("config"), str):
        value = value["config"]  # Keras 3 writes a non-string built-in so; customs fail the lookup
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unsupported(f"activation {_describe(value)}")
    try:
        return activations.get(value).name
    except ValueError:
        raise Unsupported(f"activation {value!r}") from None


def dtype_ok(value: Any) -> bool:
    """Only float32 layers: a `dtype` of "float32", `None`, or a float32 DTypePolicy."""
    if value is None or value == FLOAT32:
        return True
    return (
        isinstance(value, dict)
        and value.get("class_name") in ("DTypePolicy", "Policy")
        and (value.get("config") or {}).get("name") == FLOAT32
    )


def float32_value(value: float) -> float:
    """The shortest decimal of a float32 (Keras stores 1e-3 as 0.0010000000474974513)."""
    import numpy as np

    return float(str(np.float32(value))) if math.isfinite(value) else value


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "class_name" in value:
        reg = value.get("registered_name")
        return f"{value['class_name']}" + (f" (registered as {reg!r})" if reg and reg != value["class_name"] else "")
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: Argument name -> how a Keras value becomes dlrun's (other arguments copy as they are).
FROM_KERAS: dict[str, Callable[[Any], Any]] = {
    "activation": activation_from_keras,
    **dict.fromkeys(("kernel_initializer", "bias_initializer"), initializer_from_keras),
    **{f"{p}_initializer": initializer_from_keras for p in ("beta", "gamma", "moving_mean", "moving_variance")},
    **{f"{p}_regularizer": regularizer_from_keras for p in ("kernel", "bias", "beta", "gamma")},
}


# -- argument values, dlrun -> Keras -------------------------------------------------------------------
def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def initializer_to_keras(spec: Any) -> dict[str, Any]:
    """dlrun's `"glorot_uniform"` / `{type: ..., **args}` -> Keras's serialized initializer."""
    name, args = (spec, {}) if isinstance(spec, str) else (spec["type"], {k: v for k, v in spec.items() if k != "type"})
    config = dict(args)
    if name not in ("zeros", "ones", "constant"):
        config["seed"] = None
    return {"module": "keras.initializers", "class_name": _camel(name), "config": config, "registered_name": None}


def regularizer_to_keras(spec: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    args = {k: v for k, v in spec.items() if k != "type"}
    return {
        "module": "keras.regularizers",
        "class_name": _REGULARIZERS_BACK[spec["type"]],
        "config": args,
        "registered_name": None,
    }


def dtype_policy() -> dict[str, Any]:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": FLOAT32}, "registered_name": None}


TO_KERAS: dict[str, Callable[[Any], Any]] = {
    "activation": lambda v: "linear" if v is None else v,
    **{k: initializer_to_keras for k in FROM_KERAS if k.endswith("_initializer")},
    **{k: regularizer_to_keras for k in FROM_KERAS if k.endswith("_regularizer")},
}


__all__ = [
    "ANY",
    "BY_DLRUN",
    "BY_KERAS",
    "COMMON_ARGS",
    "FROM_KERAS",
    "TABLE",
    "TO_KERAS",
    "LayerMap",
    "Unsupported",
    "builtin",
    "dtype_ok",
    "dtype_policy",
    "float32_value",
    "group_names",
    "keras_class",
    "keras_groups",
    "keras_layer_order",
    "keras_weight_names",
    "keras_weight_order",
    "keras_weight_paths",
]
