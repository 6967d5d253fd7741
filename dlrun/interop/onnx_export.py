"""A dlrun model as an ONNX graph, built with the `onnx` package's helper API.

The graph takes the model's inputs as dlrun does, channels-last (NHWC), with a dynamic batch
dimension. ONNX's Conv and pooling are channels-first (NCHW), so a tensor is transposed to NCHW
only where one of them reads it, and back to NHWC only where a layer needs dlrun's axis order
(Flatten, Reshape, the model's output): element-wise layers, BatchNormalization, Concatenate and
Softmax run in whichever order their input already has, their axes and constants permuted to match.

A value is tracked as views: `perm -> ONNX name`, where the ONNX tensor is the dlrun tensor
transposed by `perm` ((0, 1, 2, 3) is NHWC, (0, 3, 1, 2) NCHW).

Layer -> ONNX (opset 17):
    Dense                      Gemm (MatMul without a bias), then its activation
    Conv2D                     Conv (kernel HWIO -> OIHW; `same` -> auto_pad SAME_UPPER), then its activation
    MaxPooling2D               MaxPool (`same` -> auto_pad SAME_UPPER)
    AveragePooling2D           AveragePool (count_include_pad=0: padded pixels are not counted, as dlrun)
    GlobalAverage/MaxPooling2D ReduceMean / ReduceMax over height and width (keepdims as the layer)
    BatchNormalization         Mul + Add with the folded inference constants (moving statistics)
    LayerNormalization         ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Reciprocal, Mul (+ Mul, Add)
    Dropout, SpatialDropout2D  Identity (inference)
    Flatten                    Flatten (after a Transpose back to NHWC, so Dense kernels see dlrun's order)
    Reshape                    Reshape [0, *target_shape]
    ZeroPadding2D              Pad (constant 0)
    UpSampling2D               Reshape, Expand, Reshape (nearest: each pixel repeated)
    Add, Subtract, Multiply    Add, Sub, Mul (chained, in dlrun's order)
    Average                    Add (chained), Mul by 1/n
    Maximum, Minimum           Max, Min
    Concatenate                Concat
    Activation, Softmax, ReLU, LeakyReLU, ELU, and the `activation:` of Dense/Conv2D:
        relu Relu, sigmoid Sigmoid, tanh Tanh, softmax Softmax (on its axis), elu Elu(alpha),
        leaky_relu LeakyRelu(alpha explicit: ONNX's default 0.01 is neither Keras's 0.2 nor 0.3),
        swish/silu Mul(x, Sigmoid(x)), gelu 0.5*x*(1+Erf(x/sqrt 2)) (tanh form with approximate),
        ReLU(max_value, negative_slope, threshold) Relu, Clip, or Where/Greater/Sub/Mul/Min
    input normalization        (x - mean) * (1 / std) for standardised inputs; Cast + Mul by 1/255
                               for uint8 inputs of a model trained on scaled pixels
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlrun import __version__
from dlrun.data.normalize import Normalization
from dlrun.engine import activations as acts
from dlrun.engine.conv_ops import padding_amounts
from dlrun.errors import DlrunError
from dlrun.graph.layer import Layer
from dlrun.graph.model import Model, Node

OPSET = 17
# The IR version of the onnx release that introduced opset 17 (1.12), set explicitly: onnx stamps its
# own, newest IR by default (onnx.IR_VERSION), which older runtimes refuse; ONNX Runtime 1.16.3, for
# one, says "Unsupported model IR version: ..., max supported IR version: 9" to an onnx 1.23 default.
# IR 8 loads in every ONNX Runtime that implements opset 17 (1.13, October 2022, and later).
IR_VERSION = 8
BATCH = "batch"  # the name of the dynamic batch dimension

INSTALL_HINT = "pip install 'dlrun[interop]'"

Perm = tuple[int, ...]


def _identity(rank: int) -> Perm:
    return tuple(range(rank))


NCHW: Perm = (0, 3, 1, 2)


def require_onnx() -> Any:
    """The onnx module, or one DlrunError naming the pip command."""
    try:
        import onnx
    except ImportError:
        raise DlrunError("exporting to ONNX needs the onnx package", hint=INSTALL_HINT) from None
    return onnx


@dataclass
class _Value:
    """A dlrun tensor (its rank counts the batch axis) and the ONNX names it is available under."""

    rank: int
    views: dict[Perm, str] = field(default_factory=dict)
    #: The dlrun layer (or input) it is the output of: the ONNX name of its NHWC view.
    name: str = ""

    @property
    def perm(self) -> Perm:
        """The order it was produced in (the first view)."""
        return next(iter(self.views))


class _Graph:
    """Nodes, initializers and unique names for one export."""

    def __init__(self, onnx: Any) -> None:
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.used: set[str] = set()
        #: dlrun names (reserved in `used` from the start) already given to an ONNX value.
        self.claimed: set[str] = set()

    def fresh(self, hint: str) -> str:
        name, n = hint, 1
        while name in self.used:
            n += 1
            name = f"{hint}_{n}"
        self.used.add(name)
        return name

    def const(self, hint: str, array: Any, dtype: Any = np.float32) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, out: str | None = None, **attrs: Any) -> str:
        """One node with one output (named `out`, else a fresh name from `hint`)."""
        output = out if out is not None else self.fresh(hint)
        self.claimed.add(output)
        self.nodes.append(
            self.helper.make_node(op_type, inputs, [output], name=self.fresh(f"{hint}/{op_type}"), **attrs)
        )
        return output

    def view(self, value: _Value, perm: Perm, name_hint: str) -> str:
        """`value` in the order `perm`, transposed (once, then remembered) when it is not yet there."""
        if perm not in value.views:
            src_perm, src = next(iter(value.views.items()))
            # dlrun.transpose(perm) == (dlrun.transpose(src_perm)).transpose(r), r[i] = src_perm.index(perm[i])
            r = [src_perm.index(p) for p in perm]
            own = value.name and perm == _identity(value.rank) and value.name not in self.claimed
            value.views[perm] = self.op(
                "Transpose", [src], f"{name_hint}/transpose", out=value.name if own else None, perm=r
            )
        return value.views[perm]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _broadcast(values: Any, axes: list[int], rank: int, perm: Perm) -> np.ndarray:
    """Per-axis constants (shape of dlrun's `axes`, in order) shaped to broadcast over a tensor of
    `rank` held in the order `perm`."""
    shape = [1] * rank
    arr = np.asarray(values, dtype=np.float32)
    sizes = iter(arr.shape if arr.ndim == len(axes) else (arr.size,))
    for a in axes:
        shape[a] = next(sizes)
    return arr.reshape(shape).transpose(perm)


# -- activations ------------------------------------------------------------------------------------


def _activation(g: _Graph, act: Any, x: str, rank: int, perm: Perm, hint: str, out: str | None = None) -> str:
    """The activation object `act` (dlrun.engine.activations) applied to `x`."""
    if isinstance(act, acts.ReLU):
        return g.op("Relu", [x], hint, out)
    if isinstance(act, acts.Sigmoid):
        return g.op("Sigmoid", [x], hint, out)
    if isinstance(act, acts.Tanh):
        return g.op("Tanh", [x], hint, out)
    if isinstance(act, acts.Softmax):
        return g.op("Softmax", [x], hint, out, axis=perm.index(_axis(act.axis, rank)))
    if isinstance(act, acts.LeakyReLU):
        return g.op("LeakyRelu", [x], hint, out, alpha=float(act.negative_slope))
    if isinstance(act, acts.ELU):
        return g.op("Elu", [x], hint, out, alpha=float(act.alpha))
    if isinstance(act, acts.Swish):
        return g.op("Mul", [x, g.op("Sigmoid", [x], hint)], hint, out)
    if isinstance(act, acts.GELU):
        half = g.const(f"{hint}/half", 0.5)
        if act.approximate:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = g.op("Mul", [x, g.op("Mul", [x, x], hint)], hint)
            inner = g.op("Add", [x, g.op("Mul", [cube, g.const(f"{hint}/c", 0.044715)], hint)], hint)
            t = g.op("Tanh", [g.op("Mul", [inner, g.const(f"{hint}/k", math.sqrt(2 / math.pi))], hint)], hint)
        else:  # 0.5 x (1 + erf(x / sqrt 2))
            t = g.op("Erf", [g.op("Mul", [x, g.const(f"{hint}/k", 1 / math.sqrt(2))], hint)], hint)
        one_plus = g.op("Add", [t, g.const(f"{hint}/one", 1.0)], hint)
        return g.op("Mul", [g.op("Mul", [x, half], hint), one_plus], hint, out)
    if type(act) is acts.Linear:
        return g.op("Identity", [x], hint, out) if out is not None else x
    raise DlrunError(f"internal: no ONNX form for activation {act.name}")  # `unsupported` lists these first


_ACTIVATIONS = (acts.Linear, acts.ReLU, acts.Sigmoid, acts.Tanh, acts.Softmax, acts.LeakyReLU, acts.ELU)
_ACTIVATIONS += (acts.Swish, acts.GELU)


# -- layers -----------------------------------------------------------------------------------------

# Each emitter gets the graph, the node, its input values, and the name its NHWC output should carry;
# it returns the output value.
Emitter = Callable[[_Graph, Node, list[_Value], str], _Value]
EMITTERS: dict[str, Emitter] = {}


def _emits(*type_names: str) -> Callable[[Emitter], Emitter]:
    def register(fn: Emitter) -> Emitter:
        for t in type_names:
            EMITTERS[t] = fn
        return fn

    return register


def _same_order(g: _Graph, srcs: list[_Value], hint: str) -> tuple[Perm, list[str]]:
    """The inputs of a merge in one order: the one needing the fewest transposes (NHWC on ties)."""
    rank = srcs[0].rank
    candidates = [_identity(rank), *(p for s in srcs for p in s.views if p != _identity(rank))]
    perm = min(candidates, key=lambda p: sum(p not in s.views for s in srcs))
    return perm, [g.view(s, perm, f"{hint}/in{i}") for i, s in enumerate(srcs)]


def _named(perm: Perm, rank: int, out: str) -> str | None:
    """The layer's name for its output when that output is in dlrun's order (else a fresh name)."""
    return out if perm == _identity(rank) else None


def _elementwise(op_type: str, **attrs: Any) -> Emitter:
    def emit(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
        x = srcs[0]
        perm = x.perm
        y = g.op(op_type, [x.views[perm]], node.name, _named(perm, x.rank, out), **attrs)
        return _Value(x.rank, {perm: y})

    return emit


EMITTERS["Dropout"] = EMITTERS["SpatialDropout2D"] = _elementwise("Identity")


@_emits("LeakyReLU")
def _leaky_relu(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    return _elementwise("LeakyRelu", alpha=float(node.layer.negative_slope))(g, node, srcs, out)


@_emits("Activation", "ELU", "Softmax")
def _activation_layer(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    x = srcs[0]
    perm = x.perm
    y = _activation(g, node.layer.activation, x.views[perm], x.rank, perm, node.name, _named(perm, x.rank, out))
    return _Value(x.rank, {perm: y})


@_emits("ReLU")
def _relu(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    layer, x = node.layer, srcs[0]
    perm, name = x.perm, _named(x.perm, x.rank, out)
    xin, h = x.views[perm], node.name
    if not layer.negative_slope and not layer.threshold:
        if layer.max_value is None:
            return _Value(x.rank, {perm: g.op("Relu", [xin], h, name)})
        lo, hi = g.const(f"{h}/min", 0.0), g.const(f"{h}/max", layer.max_value)
        return _Value(x.rank, {perm: g.op("Clip", [xin, lo, hi], h, name)})
    # where(x > threshold, x, (x - threshold) * negative_slope), then min(., max_value)
    thr = g.const(f"{h}/threshold", layer.threshold)
    below = g.op("Mul", [g.op("Sub", [xin, thr], h), g.const(f"{h}/slope", layer.negative_slope)], h)
    last = layer.max_value is None
    y = g.op("Where", [g.op("Greater", [xin, thr], h), xin, below], h, name if last else None)
    if not last:
        y = g.op("Min", [y, g.const(f"{h}/max", layer.max_value)], h, name)
    return _Value(x.rank, {perm: y})


@_emits("Dense")
def _dense(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    layer, x = node.layer, srcs[0]
    xin = g.view(x, _identity(2), f"{node.name}/input")
    kernel = g.const(f"{node.name}/kernel", _host(layer, "kernel"))
    if layer.use_bias:
        bias = g.const(f"{node.name}/bias", _host(layer, "bias"))
        z = g.op("Gemm", [xin, kernel, bias], node.name, _final(layer, out))
    else:
        z = g.op("MatMul", [xin, kernel], node.name, _final(layer, out))
    return _Value(
        2, {_identity(2): _activation(g, layer.activation, z, 2, _identity(2), node.name, _out_if(layer, out))}
    )


def _final(layer: Layer, out: str | None) -> str | None:
    """The layer's output name for its last op: the matmul/conv when no activation follows."""
    return out if layer.activation_name in (None, "linear") else None


def _out_if(layer: Layer, out: str | None) -> str | None:
    return None if layer.activation_name in (None, "linear") else out


@_emits("Conv2D")
def _conv(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    layer, x = node.layer, srcs[0]
    xin = g.view(x, NCHW, f"{node.name}/input")
    kernel = g.const(f"{node.name}/kernel", _host(layer, "kernel").transpose(3, 2, 0, 1))  # HWIO -> OIHW
    inputs = [xin, kernel]
    if layer.use_bias:
        inputs.append(g.const(f"{node.name}/bias", _host(layer, "bias")))
    z = g.op(
        "Conv",
        inputs,
        node.name,
        kernel_shape=list(layer.kernel_size),
        strides=list(layer.strides),
        dilations=list(layer.dilation_rate),
        **_conv_padding(layer),
    )
    return _Value(4, {NCHW: _activation(g, layer.activation, z, 4, NCHW, node.name)})


def _conv_padding(layer: Layer) -> dict[str, Any]:
    if layer.padding == "same" and max(layer.dilation_rate) > 1:
        # onnxruntime refuses auto_pad with dilations: dlrun's own amounts, written out.
        (h, w, _), (kh, kw), (sh, sw), (dh, dw) = (
            layer.input_shape,
            layer.kernel_size,
            layer.strides,
            layer.dilation_rate,
        )
        (top, bottom), (left, right) = padding_amounts(h, kh, sh, "same", dh), padding_amounts(w, kw, sw, "same", dw)
        return {"pads": [top, left, bottom, right]}
    return _padding(layer.padding)


def _padding(padding: str) -> dict[str, Any]:
    # SAME_UPPER puts the odd pixel of padding at the bottom/right, as Keras and dlrun do.
    return {"auto_pad": "SAME_UPPER"} if padding == "same" else {"auto_pad": "VALID"}


@_emits("MaxPooling2D", "AveragePooling2D")
def _pool(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    layer = node.layer
    xin = g.view(srcs[0], NCHW, f"{node.name}/input")
    attrs = dict(kernel_shape=list(layer.pool_size), strides=list(layer.strides), **_padding(layer.padding))
    if layer.type_name == "AveragePooling2D":
        y = g.op("AveragePool", [xin], node.name, count_include_pad=0, **attrs)
    else:
        y = g.op("MaxPool", [xin], node.name, **attrs)
    return _Value(4, {NCHW: y})


@_emits("GlobalAveragePooling2D", "GlobalMaxPooling2D")
def _global_pool(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    x, keep = srcs[0], node.layer.keepdims
    perm = x.perm
    op_type = "ReduceMean" if node.layer.type_name == "GlobalAveragePooling2D" else "ReduceMax"
    axes = sorted([perm.index(1), perm.index(2)])
    out_perm = perm if keep else _identity(2)
    y = g.op(op_type, [x.views[perm]], node.name, _named(out_perm, len(out_perm), out), axes=axes, keepdims=int(keep))
    return _Value(len(out_perm), {out_perm: y})


@_emits("Flatten")
def _flatten(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    xin = g.view(srcs[0], _identity(srcs[0].rank), f"{node.name}/input")
    return _Value(2, {_identity(2): g.op("Flatten", [xin], node.name, out, axis=1)})


@_emits("Reshape")
def _reshape(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    xin = g.view(srcs[0], _identity(srcs[0].rank), f"{node.name}/input")
    target = node.layer.output_shape
    shape = g.const(f"{node.name}/shape", [0, *target], np.int64)  # 0: keep the batch dimension
    rank = len(target) + 1
    return _Value(rank, {_identity(rank): g.op("Reshape", [xin, shape], node.name, out)})


@_emits("ZeroPadding2D")
def _zero_padding(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    x = srcs[0]
    perm = x.perm
    top, bottom, left, right = (p for pair in node.layer.padding for p in pair)
    begin, end = [0, top, left, 0], [0, bottom, right, 0]  # per dlrun axis (N, H, W, C)
    pads = g.const(f"{node.name}/pads", [begin[a] for a in perm] + [end[a] for a in perm], np.int64)
    return _Value(4, {perm: g.op("Pad", [x.views[perm], pads], node.name, _named(perm, 4, out), mode="constant")})


@_emits("UpSampling2D")
def _upsampling(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    x, layer = srcs[0], node.layer
    perm = x.perm
    dims = (None, *layer.input_shape)  # dlrun's (N, H, W, C)
    repeat = {1: layer.size[0], 2: layer.size[1]}
    spread, expanded, final = [0], [1], [0]  # 0: keep the batch dimension (Reshape); 1: broadcast (Expand)
    for a in perm[1:]:
        spread += [dims[a], 1] if a in repeat else [dims[a]]
        expanded += [dims[a], repeat[a]] if a in repeat else [dims[a]]
        final.append(dims[a] * repeat.get(a, 1))
    h = node.name
    y = g.op("Reshape", [x.views[perm], g.const(f"{h}/spread", spread, np.int64)], h)
    y = g.op("Expand", [y, g.const(f"{h}/repeat", expanded, np.int64)], h)
    y = g.op("Reshape", [y, g.const(f"{h}/shape", final, np.int64)], h, _named(perm, 4, out))
    return _Value(4, {perm: y})


def _merge(op_type: str, chained: bool, scale_by_count: bool = False) -> Emitter:
    def emit(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
        perm, xs = _same_order(g, srcs, node.name)
        name = _named(perm, srcs[0].rank, out)
        if not chained:
            return _Value(srcs[0].rank, {perm: g.op(op_type, xs, node.name, name)})
        y = xs[0]
        for i, x in enumerate(xs[1:], start=2):
            last = i == len(xs) and not scale_by_count
            y = g.op(op_type, [y, x], node.name, name if last else None)
        if scale_by_count:
            y = g.op("Mul", [y, g.const(f"{node.name}/inverse_count", 1.0 / len(xs))], node.name, name)
        return _Value(srcs[0].rank, {perm: y})

    return emit


EMITTERS["Add"] = _merge("Add", chained=True)
EMITTERS["Subtract"] = _merge("Sub", chained=True)
EMITTERS["Multiply"] = _merge("Mul", chained=True)
EMITTERS["Average"] = _merge("Add", chained=True, scale_by_count=True)
EMITTERS["Maximum"] = _merge("Max", chained=False)
EMITTERS["Minimum"] = _merge("Min", chained=False)


@_emits("Concatenate")
def _concatenate(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    perm, xs = _same_order(g, srcs, node.name)
    rank = srcs[0].rank
    axis = perm.index(_axis(node.layer.axis, rank))
    return _Value(rank, {perm: g.op("Concat", xs, node.name, _named(perm, rank, out), axis=axis)})


@_emits("BatchNormalization")
def _batch_norm(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    layer, x = node.layer, srcs[0]
    perm = x.perm
    # The inference form, folded as dlrun computes it (float32): y = x * a + (beta - mean * a),
    # a = gamma / sqrt(moving_variance + epsilon).
    inv = 1.0 / np.sqrt(_host(layer, "moving_variance") + np.float32(layer.epsilon))
    a = inv * _host(layer, "gamma") if layer.scale else inv
    shift = -_host(layer, "moving_mean") * a
    if layer.center:
        shift += _host(layer, "beta")
    axes = [_axis(layer.axis, x.rank)]
    h = node.name
    y = g.op("Mul", [x.views[perm], g.const(f"{h}/scale", _broadcast(a, axes, x.rank, perm))], h)
    y = g.op("Add", [y, g.const(f"{h}/shift", _broadcast(shift, axes, x.rank, perm))], h, _named(perm, x.rank, out))
    return _Value(x.rank, {perm: y})


@_emits("LayerNormalization")
def _layer_norm(g: _Graph, node: Node, srcs: list[_Value], out: str) -> _Value:
    layer, x = node.layer, srcs[0]
    perm, h = x.perm, node.name
    axes = sorted(_axis(a, x.rank) for a in ([layer.axis] if isinstance(layer.axis, int) else layer.axis))
    onnx_axes = sorted(perm.index(a) for a in axes)
    xin = x.views[perm]
    centred = g.op("Sub", [xin, g.op("ReduceMean", [xin], h, axes=onnx_axes, keepdims=1)], h)
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred], h)], h, axes=onnx_axes, keepdims=1)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const(f"{h}/epsilon", layer.epsilon)], h)], h)], h)
    steps = [("Mul", "gamma")] * layer.scale + [("Add", "beta")] * layer.center
    y = g.op("Mul", [centred, inv], h, None if steps else _named(perm, x.rank, out))
    for i, (op_type, weight) in enumerate(steps, start=1):
        const = g.const(f"{h}/{weight}", _broadcast(_host(layer, weight), axes, x.rank, perm))
        y = g.op(op_type, [y, const], h, _named(perm, x.rank, out) if i == len(steps) else None)
    return _Value(x.rank, {perm: y})


def _host(layer: Layer, weight: str) -> np.ndarray:
    return np.asarray(layer.params[weight], dtype=np.float32)


# -- the model --------------------------------------------------------------------------------------


def unsupported(model: Model) -> list[str]:
    """`name (Type)` of every layer (or activation) ONNX export cannot express, in graph order."""
    problems = []
    for node in model.nodes:
        layer = node.layer
        if layer.type_name not in EMITTERS:
            problems.append(f"{node.name} ({layer.type_name})")
        elif hasattr(layer, "activation") and not isinstance(layer.activation, _ACTIVATIONS):
            problems.append(f"{node.name} ({layer.type_name} with activation {layer.activation_name})")
    return problems


def _normalized_input(g: _Graph, name: str, normalization: Normalization, uint8: bool) -> str:
    """The graph input as the model's first layer sees it: cast and normalised as dlrun's predict does."""
    x = g.op("Cast", [name], f"{name}/cast", to=g.onnx.TensorProto.FLOAT) if uint8 else name
    if normalization.kind == "scale":
        return g.op("Mul", [x, g.const(f"{name}/scale", normalization.scale)], f"{name}/scale")
    if normalization.kind == "standardize":
        # dlrun subtracts the float32 means, then multiplies by float32(1 / std) computed in float64.
        mean = g.const(f"{name}/mean", normalization.mean)
        inv = g.const(f"{name}/inverse_std", (1.0 / np.asarray(normalization.std, np.float64)).astype(np.float32))
        return g.op("Mul", [g.op("Sub", [x, mean], f"{name}/standardize"), inv], f"{name}/standardize")
    return x


def to_onnx(
    model: Model,
    normalization: Normalization | None = None,
    *,
    uint8_input: bool = False,
    graph_name: str = "dlrun",
    metadata: dict[str, str] | None = None,
) -> Any:
    """The model (its current weights, inference mode) as a checked onnx.ModelProto.

    `normalization` is applied to the inputs first, as `dlrun predict` does; `uint8_input` makes the
    input uint8 (cast to float inside). Raises DlrunError listing every layer ONNX cannot express.
    """
    onnx = require_onnx()
    problems = unsupported(model)
    if problems:
        raise DlrunError(
            f"ONNX cannot express {len(problems)} layer{'s' if len(problems) != 1 else ''} of this model: "
            + ", ".join(problems),
            hint="export to another format (--format keras or safetensors), or replace those layers",
        )
    normalization = normalization or Normalization("none")
    if normalization.kind != "none" and len(model.inputs) > 1:
        raise DlrunError("ONNX export applies input normalization to single-input models only")
    g = _Graph(onnx)
    g.used.update(model.inputs)
    g.used.update(n.name for n in model.nodes)
    elem = onnx.TensorProto.UINT8 if uint8_input else onnx.TensorProto.FLOAT
    values: dict[str, _Value] = {}
    graph_inputs = []
    for name, shape in model.inputs.items():
        graph_inputs.append(onnx.helper.make_tensor_value_info(name, elem, [BATCH, *shape]))
        rank = len(shape) + 1
        values[name] = _Value(rank, {_identity(rank): _normalized_input(g, name, normalization, uint8_input)})
    for node in model.nodes:
        values[node.name] = EMITTERS[node.layer.type_name](g, node, [values[i] for i in node.inputs], node.name)
        values[node.name].name = node.name
    result = values[model.output]
    out = g.view(result, _identity(result.rank), model.output)
    if out != model.output:  # produced under another name (a Linear activation, an input passed through)
        out = g.op("Identity", [out], model.output, out=model.output)
    graph_output = onnx.helper.make_tensor_value_info(
        model.output, onnx.TensorProto.FLOAT, [BATCH, *model.output_node.output_shape]
    )
    graph = onnx.helper.make_graph(g.nodes, graph_name, graph_inputs, [graph_output], g.initializers)
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="dlrun",
        producer_version=__version__,
    )
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug in this module, not the user's doing
        raise DlrunError(f"internal: the ONNX graph fails onnx.checker: {exc}") from None
    return proto


# Protobuf refuses messages over 2 GiB; such a model would need ONNX's external-data files.
_PROTOBUF_LIMIT = 2**31 - 1


def serialize(proto: Any) -> bytes:
    """The file's bytes, or a DlrunError for a model too big for one ONNX file."""
    size = proto.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise DlrunError(
            f"the model is {size / 2**30:.1f} GiB, beyond the 2 GiB a single ONNX file can hold",
            hint="export the weights with --format safetensors",
        )
    return proto.SerializeToString()
