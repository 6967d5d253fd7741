"""Core layers: Dense, Flatten, Reshape, Activation, Dropout, SpatialDropout2D."""

from __future__ import annotations

import math
from typing import Any

from dlrun.checks import FRACTION, POSITIVE_INT, Bounds, checked, declare
from dlrun.engine.threads import matmul
from dlrun.errors import ArgumentError, short
from dlrun.graph.layer import LAYERS, Layer, ShapeError, image_shape


@LAYERS.register("Dense")
class Dense(Layer):
    """`activation(x @ kernel + bias)` over the last axis.

    Args:
        units: positive integer, the output size.
        activation: activation name. Defaults to None (linear).
        use_bias: whether to add a bias. Defaults to True.
        kernel_initializer: Defaults to "glorot_uniform".
        bias_initializer: Defaults to "zeros".
        kernel_regularizer, bias_regularizer: l1 / l2 / l1_l2 penalties. Default to None.

    Input shape (..., input_dim); output shape (..., units).
    """

    bounds = declare(units=POSITIVE_INT)

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = checked(self, "units", units)
        self._set_activation(activation)
        self._set_kernel_options(use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ShapeError(f"Dense needs an input with a feature axis, got shape {input_shape}")
        return (*input_shape[:-1], self.units)

    def build(self, input_shape):
        if len(input_shape) > 1:
            raise ShapeError(
                f"Dense expects a flat input (batch, features) but got {len(input_shape) + 1}-D "
                f"input of shape (None, {', '.join(map(str, input_shape))}); "
                f"add a Flatten layer before it"
            )
        out = super().build(input_shape)
        self._add_kernel_and_bias((input_shape[-1], self.units))
        return out

    def forward(self, x, training, logits=False):
        self._x = x
        z = matmul(x, self.params["kernel"])
        return self._activate(z, logits, bias=self.params["bias"] if self.use_bias else None)

    def backward(self, dy):
        dz = self._activate_backward(dy)
        if "kernel" in self.grads:
            matmul(self._x.T, dz, out=self.grads["kernel"])
            if self.use_bias:
                dz.sum(axis=0, out=self.grads["bias"])
        if not self.needs_input_grad:
            return None
        return matmul(dz, self.params["kernel"].T)

    def get_config(self):
        return {**super().get_config(), "units": self.units, **self._kernel_config()}


@LAYERS.register("Flatten")
class Flatten(Layer):
    """Flattens everything but the batch axis: (None, 28, 28, 1) -> (None, 784)."""

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


@LAYERS.register("Reshape")
class Reshape(Layer):
    """Reshapes to `target_shape` (without the batch axis; one entry may be -1)."""

    def __init__(self, target_shape: list[int] | tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ok = (
            isinstance(target_shape, (list, tuple))
            and target_shape
            and all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in target_shape)
        )
        if not ok or list(target_shape).count(-1) > 1:
            raise ArgumentError(
                "target_shape must be a list of positive integers with at most one -1. "
                f"Received: target_shape={short(target_shape)}",
                "target_shape",
                target_shape,
            )
        self.target_shape = tuple(target_shape)

    def compute_output_shape(self, input_shape):
        total, known = math.prod(input_shape), math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if total % known:
                raise ShapeError(f"cannot reshape {total} values into {list(self.target_shape)}")
            return tuple(total // known if d == -1 else d for d in self.target_shape)
        if total != known:
            raise ShapeError(
                f"cannot reshape input of shape {tuple(input_shape)} ({total} values) into "
                f"{tuple(self.target_shape)} ({known} values)"
            )
        return self.target_shape

    def forward(self, x, training):
        return x.reshape((x.shape[0], *self.output_shape))

    def backward(self, dy):
        return dy.reshape((dy.shape[0], *self.input_shape))

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


@LAYERS.register("Activation")
class Activation(Layer):
    """Applies an activation function by name."""

    def __init__(self, activation: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._set_activation(activation)

    def forward(self, x, training, logits=False):
        return self._activate(x, logits)

    def backward(self, dy):
        return self._activate_backward(dy)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation_name}


@LAYERS.register("Dropout")
class Dropout(Layer):
    """Inverted dropout: at training, zero a `rate` fraction and scale the rest by 1 / (1 - rate);
    identity at inference.

    Args:
        rate: fraction of the inputs to drop, in [0, 1).
        noise_shape: optional shape (without batch axis; 1 broadcasts) of the mask. Defaults to None.

    The mask comes from the run's seeded noise generator (so resume is exact), not a per-layer seed.
    """

    stochastic = True
    bounds = declare(rate=FRACTION, noise_shape=Bounds((list, tuple), items=POSITIVE_INT, nullable=True))

    def __init__(self, rate: float, noise_shape: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = checked(self, "rate", rate)
        noise_shape = checked(self, "noise_shape", noise_shape)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)

    def compute_output_shape(self, input_shape):
        if self.noise_shape is not None and len(self.noise_shape) != len(input_shape):
            raise ShapeError(
                f"noise_shape {list(self.noise_shape)} must have one entry per input axis "
                f"(input shape {tuple(input_shape)})"
            )
        return input_shape

    def _mask_shape(self, x: Any) -> tuple[int, ...]:
        return x.shape if self.noise_shape is None else (x.shape[0], *self.noise_shape)

    def forward(self, x, training):
        if not training or self.rate == 0:
            self._mask = None
            return x
        keep = 1.0 - self.rate
        # A scalar of x's dtype keeps the mask float32 (a Python float would make it float64).
        self._mask = self.rng.bernoulli(self._mask_shape(x), keep) * x.dtype.type(1.0 / keep)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def get_config(self):
        return {
            **super().get_config(),
            "rate": self.rate,
            "noise_shape": None if self.noise_shape is None else list(self.noise_shape),
        }


@LAYERS.register("SpatialDropout2D")
class SpatialDropout2D(Dropout):
    """Dropout of whole channels: one keep/drop draw per (sample, channel), scaled by 1 / (1 - rate).

    Args:
        rate: fraction of the channels to drop, in [0, 1).

    Input (None, H, W, C); identity at inference. The masks come from the run's seeded noise stream.
    """

    def __init__(self, rate: float, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)

    def compute_output_shape(self, input_shape):
        image_shape(self, input_shape)
        return input_shape

    def _mask_shape(self, x: Any) -> tuple[int, ...]:
        return (x.shape[0], 1, 1, x.shape[3])

    def get_config(self):
        config = super().get_config()
        del config["noise_shape"]
        return config
