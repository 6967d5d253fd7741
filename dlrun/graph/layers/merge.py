"""Merge layers: combine two or more inputs (named with `inputs: [a, b]` in a config)."""

from __future__ import annotations

from typing import Any

from dlrun.checks import INT, checked, declare
from dlrun.engine.backend import xp_of
from dlrun.graph.layer import LAYERS, Layer, ShapeError


def _shape_text(shape: Any) -> str:
    return "(None, " + ", ".join(map(str, shape)) + ")"


class _Merge(Layer):
    """Element-wise merge of inputs that all have the same shape; receives and returns lists."""

    n_inputs = None

    def compute_output_shape(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ShapeError(
                f"{self.type_name} needs inputs of the same shape, got "
                f"{', '.join(_shape_text(s) for s in shapes)}; make them match (e.g. a 1x1 Conv2D "
                f"or Dense to change the channels, pooling or strides to change the size)"
            )
        return shapes[0]


@LAYERS.register("Add")
class Add(_Merge):
    """Sum of the inputs."""

    def forward(self, xs, training):
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        self._n = len(xs)
        return out

    def backward(self, dy):
        return [dy] * self._n


@LAYERS.register("Subtract")
class Subtract(_Merge):
    """inputs[0] - inputs[1] (exactly two inputs)."""

    def compute_output_shape(self, input_shapes):
        if len(input_shapes) != 2:
            raise ShapeError(f"Subtract takes exactly 2 inputs, got {len(input_shapes)}")
        return super().compute_output_shape(input_shapes)

    def forward(self, xs, training):
        return xs[0] - xs[1]

    def backward(self, dy):
        return [dy, -dy]


@LAYERS.register("Multiply")
class Multiply(_Merge):
    """Element-wise product of the inputs."""

    def forward(self, xs, training):
        self._xs = xs
        out = xs[0] * xs[1]
        for x in xs[2:]:
            out *= x
        return out

    def backward(self, dy):
        grads = []
        for i in range(len(self._xs)):
            g = dy
            for j, x in enumerate(self._xs):
                if j != i:
                    g = g * x
            grads.append(g)
        return grads


@LAYERS.register("Average")
class Average(_Merge):
    """Element-wise mean of the inputs."""

    def forward(self, xs, training):
        self._n = len(xs)
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        out *= 1.0 / self._n
        return out

    def backward(self, dy):
        g = dy * (1.0 / self._n)
        return [g] * self._n


class _Extremum(_Merge):
    """Element-wise max/min; the gradient goes to the first input holding the extremum (as TF)."""

    _take_max = True

    def forward(self, xs, training):
        xp = xp_of(xs[0])
        best = xs[0].copy()
        arg = xp.zeros(best.shape, dtype=xp.uint8 if len(xs) < 256 else xp.int32)
        for k, x in enumerate(xs[1:], start=1):
            better = x > best if self._take_max else x < best
            # Indices only grow, so max(arg, k * better) sets k exactly where x is a new strict extremum.
            xp.maximum(arg, better.astype(arg.dtype) * arg.dtype.type(k), out=arg)
            (xp.maximum if self._take_max else xp.minimum)(best, x, out=best)
        self._arg, self._n = arg, len(xs)
        return best

    def backward(self, dy):
        xp = xp_of(dy)
        zero = xp.zeros((), dtype=dy.dtype)
        return [xp.where(self._arg == k, dy, zero) for k in range(self._n)]


@LAYERS.register("Maximum")
class Maximum(_Extremum):
    """Element-wise maximum of the inputs."""


@LAYERS.register("Minimum")
class Minimum(_Extremum):
    """Element-wise minimum of the inputs."""

    _take_max = False


@LAYERS.register("Concatenate")
class Concatenate(Layer):
    """Joins the inputs along `axis` (counting the batch axis; -1, the channels, by default).

    All other dimensions must match.
    """

    n_inputs = None
    bounds = declare(axis=INT)

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = checked(self, "axis", axis)

    def compute_output_shape(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        rank = len(shapes[0]) + 1
        if any(len(s) != len(shapes[0]) for s in shapes):
            raise ShapeError(
                f"Concatenate needs inputs of the same rank, got {', '.join(_shape_text(s) for s in shapes)}"
            )
        ax = self.axis + rank if self.axis < 0 else self.axis
        if not 1 <= ax < rank:
            raise ShapeError(
                f"Concatenate axis={self.axis} is out of range for inputs of rank {rank} "
                f"(the batch axis 0 cannot be joined); use 1 to {rank - 1}, or -1"
            )
        i = ax - 1
        if any(s[:i] + s[i + 1 :] != shapes[0][:i] + shapes[0][i + 1 :] for s in shapes):
            raise ShapeError(
                f"Concatenate on axis {self.axis} needs inputs that match on every other axis, got "
                f"{', '.join(_shape_text(s) for s in shapes)}"
            )
        self._ax = ax
        return (*shapes[0][:i], sum(s[i] for s in shapes), *shapes[0][i + 1 :])

    def forward(self, xs, training):
        self._sizes = [x.shape[self._ax] for x in xs]
        return xp_of(xs[0]).concatenate(xs, axis=self._ax)

    def backward(self, dy):
        grads, start = [], 0
        lead = (slice(None),) * self._ax
        for size in self._sizes:
            grads.append(dy[(*lead, slice(start, start + size))])
            start += size
        return grads

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
