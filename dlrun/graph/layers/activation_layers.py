"""Activation layers with arguments: ReLU, LeakyReLU, ELU, Softmax."""

from __future__ import annotations

from typing import Any

from dlrun.checks import ANY_NUMBER, INT, NON_NEGATIVE, checked, declare, nullable
from dlrun.engine import activations
from dlrun.engine.backend import xp_of
from dlrun.graph.layer import LAYERS, Layer, ShapeError


@LAYERS.register("ReLU")
class ReLU(Layer):
    """Rectified linear unit with Keras's options:
    f(x) = min(x, max_value) for x > threshold, negative_slope * (x - threshold) otherwise.

    Args:
        max_value: upper bound of the output, or None. Defaults to None.
        negative_slope: slope below the threshold. Defaults to 0.
        threshold: Defaults to 0.
    """

    bounds = declare(max_value=nullable(NON_NEGATIVE), negative_slope=NON_NEGATIVE, threshold=NON_NEGATIVE)

    def __init__(
        self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.max_value = checked(self, "max_value", max_value)
        self.negative_slope = checked(self, "negative_slope", negative_slope)
        self.threshold = checked(self, "threshold", threshold)

    def forward(self, x, training):
        xp = xp_of(x)
        self._x = x
        if self.max_value is None and not self.negative_slope and not self.threshold:
            return xp.maximum(x, 0)
        y = xp.where(x > self.threshold, x, (x - self.threshold) * self.negative_slope)
        if self.max_value is not None:
            xp.minimum(y, self.max_value, out=y)
        return y

    def backward(self, dy):
        x = self._x
        if self.max_value is None and not self.negative_slope and not self.threshold:
            return dy * (x > 0)
        inside = dy if self.max_value is None else dy * (x < self.max_value)
        return xp_of(dy).where(x > self.threshold, inside, dy * self.negative_slope)

    def get_config(self):
        return {
            **super().get_config(),
            "max_value": self.max_value,
            "negative_slope": self.negative_slope,
            "threshold": self.threshold,
        }


class _FunctionLayer(Layer):
    """A layer applying one configured activation function (and its local gradient)."""

    def forward(self, x, training, logits=False):
        return self._activate(x, logits)

    def backward(self, dy):
        return self._activate_backward(dy)


@LAYERS.register("LeakyReLU")
class LeakyReLU(Layer):
    """x for x > 0, negative_slope * x otherwise.

    Args:
        negative_slope: Defaults to 0.3 (the Keras 3 layer's default; the `leaky_relu` activation uses 0.2).
    """

    bounds = declare(negative_slope=NON_NEGATIVE)

    def __init__(self, negative_slope: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.negative_slope = checked(self, "negative_slope", negative_slope)

    def forward(self, x, training):
        # max(x, slope * x) (min for slopes above 1): products and maxima, not `where`, which
        # NumPy runs several times slower on unpredictable signs.
        xp = xp_of(x)
        self._x = x
        y = x * self.negative_slope
        return (xp.maximum if self.negative_slope <= 1 else xp.minimum)(x, y, out=y)

    def backward(self, dy):
        slope = self.negative_slope
        factor = (self._x > 0).astype(dy.dtype)
        factor *= 1.0 - slope
        factor += slope
        factor *= dy
        return factor

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


@LAYERS.register("ELU")
class ELU(_FunctionLayer):
    """x for x > 0, alpha * (exp(x) - 1) otherwise.

    Args:
        alpha: Defaults to 1.0.
    """

    bounds = declare(alpha=ANY_NUMBER)

    def __init__(self, alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = checked(self, "alpha", alpha)
        self._set_activation(activations.ELU(self.alpha))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@LAYERS.register("Softmax")
class Softmax(_FunctionLayer):
    """Softmax over `axis` (counting the batch axis). Defaults to -1.

    As the last layer of a model trained with a cross-entropy, it is fused with the loss like a
    Dense layer's softmax activation (when it normalizes the last axis).
    """

    bounds = declare(axis=INT)

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = checked(self, "axis", axis)
        self._set_activation(activations.Softmax(axis))

    def compute_output_shape(self, input_shape):
        rank = len(input_shape) + 1
        if not (1 <= self.axis < rank or -rank < self.axis <= -1):
            raise ShapeError(
                f"Softmax axis={self.axis} is out of range for input of shape "
                f"(None, {', '.join(map(str, input_shape))}); the batch axis 0 cannot be used"
            )
        return input_shape

    @property
    def output_activation(self) -> str | None:
        last = self.axis == -1 or (self.input_shape is not None and self.axis == len(self.input_shape))
        return "softmax" if last else None

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
