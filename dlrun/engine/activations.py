"""Element-wise activations: each a forward and, next to it, its local gradient.

`backward(x, y, dy)` gets the input, the output and the upstream gradient, so each activation
uses whichever is cheaper (relu and sigmoid reuse y; gelu needs x). Written against the array
module of the input, so they run on NumPy and CuPy alike, and keep the input's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dlrun.engine import compiled
from dlrun.engine.backend import xp_of
from dlrun.errors import ArgumentError, short
from dlrun.registry import Registry

ACTIVATIONS: Registry[Activation] = Registry("activation")
_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _fused_for(*arrays: Any) -> Any:
    """The compiled kernels when they can take these arrays (NumPy, C-contiguous, one shape and
    one dtype, float32 or float64: numba has no float16), else None."""
    first = arrays[0]
    if xp_of(first).__name__ != "numpy" or first.dtype not in _COMPILED_DTYPES:
        return None
    if not all(a.flags.c_contiguous and a.dtype == first.dtype and a.shape == first.shape for a in arrays):
        return None
    return compiled.kernels()


def _run(kernel: Any, y: Any, dy: Any, constant: float) -> Any:
    """A compiled gradient kernel's result for (y, dy), `constant` in their dtype."""
    out = xp_of(dy).empty_like(dy)
    kernel(y, dy, dy.dtype.type(constant), out)
    return out


class Activation:
    name = "linear"

    def forward(self, x: Any) -> Any:
        return x

    def backward(self, x: Any, y: Any, dy: Any) -> Any:
        return dy


def _register(cls: type[Activation], *aliases: str) -> type[Activation]:
    ACTIVATIONS.add(cls(), cls.name, *aliases)
    return cls


class Linear(Activation):
    name = "linear"


class ReLU(Activation):
    name = "relu"

    def forward(self, x):
        return xp_of(x).maximum(x, 0)

    def backward(self, x, y, dy):
        fused = _fused_for(y, dy)
        if fused is not None:  # one pass instead of a mask, its cast and a product: 2.5x faster
            return _run(fused.relu_grad, y, dy, 0)
        return dy * (y > 0)


def relu_with_bias(z: Any, bias: Any, out: Any) -> Any:
    """z += bias, then out = relu(z) (`out` may be `z`): the bits of the two NumPy passes, in one
    compiled pass when numba is there (a layer's bias and activation while its output is in cache)."""
    fused = _fused_for(z, out)
    if fused is not None and z.ndim == 2 and bias.dtype == z.dtype and bias.shape == z.shape[1:]:
        fused.bias_relu(z, bias, z.dtype.type(0), out)
        return out
    z += bias
    return xp_of(z).maximum(z, 0, out=out)


class LeakyReLU(Activation):
    """The activation function's slope is 0.2 (the LeakyReLU *layer* defaults to 0.3, as Keras)."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.2) -> None:
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return xp_of(x).where(x > 0, x, x * self.negative_slope)

    def backward(self, x, y, dy):
        return xp_of(x).where(x > 0, dy, dy * self.negative_slope)


class ELU(Activation):
    name = "elu"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)

    def forward(self, x):
        xp = xp_of(x)
        return xp.where(x > 0, x, self.alpha * xp.expm1(xp.minimum(x, 0)))

    def backward(self, x, y, dy):
        return xp_of(x).where(x > 0, dy, dy * (y + self.alpha))


class Sigmoid(Activation):
    name = "sigmoid"

    def forward(self, x):
        xp = xp_of(x)
        # Split by sign so exp never overflows.
        e = xp.exp(-xp.abs(x))
        return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def backward(self, x, y, dy):
        fused = _fused_for(y, dy)
        if fused is not None:  # one pass instead of three
            return _run(fused.sigmoid_grad, y, dy, 1)
        return dy * y * (1 - y)


class Tanh(Activation):
    name = "tanh"

    def forward(self, x):
        return xp_of(x).tanh(x)

    def backward(self, x, y, dy):
        fused = _fused_for(y, dy)
        if fused is not None:  # one pass instead of three
            return _run(fused.tanh_grad, y, dy, 1)
        return dy * (1 - y * y)


class Softmax(Activation):
    """Softmax over the last axis."""

    name = "softmax"

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis

    def forward(self, x):
        xp = xp_of(x)
        e = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        e /= e.sum(axis=self.axis, keepdims=True)
        return e

    def backward(self, x, y, dy):
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


class Swish(Activation):
    name = "swish"

    def forward(self, x):
        return x * Sigmoid().forward(x)

    def backward(self, x, y, dy):
        s = Sigmoid().forward(x)
        return dy * (s + y * (1 - s))


def _erf(x):
    """erf to ~1.5e-7 absolute error (Abramowitz & Stegun 7.1.26): NumPy has no erf of its own."""
    xp = xp_of(x)
    a = xp.abs(x)
    t = 1 / (1 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return xp.sign(x) * (1 - poly * xp.exp(-a * a))


class GELU(Activation):
    """Keras's default exact GELU, x * Phi(x); `approximate=True` is the tanh form."""

    name = "gelu"
    _C = math.sqrt(2 / math.pi)

    def __init__(self, approximate: bool = False) -> None:
        self.approximate = approximate

    def forward(self, x):
        xp = xp_of(x)
        if self.approximate:
            return 0.5 * x * (1 + xp.tanh(self._C * (x + 0.044715 * x**3)))
        return (0.5 * x * (1 + _erf(x * (1 / math.sqrt(2))))).astype(x.dtype, copy=False)

    def backward(self, x, y, dy):
        xp = xp_of(x)
        if self.approximate:
            inner = self._C * (x + 0.044715 * x**3)
            th = xp.tanh(inner)
            d_inner = self._C * (1 + 3 * 0.044715 * x * x)
            return dy * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * d_inner)
        cdf = 0.5 * (1 + _erf(x * (1 / math.sqrt(2))))
        pdf = xp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return (dy * (cdf + x * pdf)).astype(x.dtype, copy=False)


for _cls, _aliases in [
    (Linear, ("none",)),
    (ReLU, ()),
    (LeakyReLU, ()),
    (ELU, ()),
    (Sigmoid, ()),
    (Tanh, ()),
    (Softmax, ()),
    (Swish, ("silu",)),
    (GELU, ()),
]:
    _register(_cls, *_aliases)


def get(identifier: str | None) -> Activation:
    """An activation by Keras name (`None` means linear)."""
    if identifier is None:
        return ACTIVATIONS.lookup("linear")[1]
    if isinstance(identifier, Activation):
        return identifier
    if not isinstance(identifier, str):
        raise ArgumentError(
            f"activation must be a name such as 'relu'. Received: activation={short(identifier)}",
            "activation",
            identifier,
        )
    return ACTIVATIONS.lookup(identifier)[1]
