"""The Layer base: shapes in `build`, weights declared with `add_weight`, forward/backward on `xp` arrays.

Shapes never include the batch dimension. Weights are declared during `build` and allocated by the
Model afterwards (as views of one flat buffer), so a layer never allocates its own parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dlrun.checks import BOOL, NON_EMPTY_STR, checked, declare, nullable
from dlrun.engine import activations, initializers, regularizers
from dlrun.engine.backend import xp_of
from dlrun.engine.conv_ops import PADDINGS
from dlrun.errors import ArgumentError, short
from dlrun.registry import Registry

LAYERS: Registry[type[Layer]] = Registry("layer")

Shape = tuple[int, ...]


def snake_case(name: str) -> str:
    """Keras's automatic layer names: Dense -> dense, MaxPooling2D -> max_pooling2d, ReLU -> re_lu."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def padding_arg(value: Any) -> str:
    """`valid` or `same`, in any case (Keras lower-cases it)."""
    if not isinstance(value, str) or value.lower() not in PADDINGS:
        raise ArgumentError(f"padding must be 'valid' or 'same'. Received: padding={short(value)}", "padding", value)
    return value.lower()


@dataclass
class WeightSpec:
    """A weight a layer asked for; the Model turns it into an array view."""

    name: str
    shape: Shape
    initializer: initializers.Initializer
    trainable: bool = True
    regularizer: regularizers.Regularizer | None = None
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = 1
        for d in self.shape:
            self.size *= d


class ShapeError(ValueError):
    """A layer cannot take the shape it is given; the message says what it expects and the fix."""


class Layer:
    """Base class. Subclasses set `n_inputs` (None: two or more, for merge layers), and declare
    their arguments' bounds in `bounds` (read by the constructor check and the JSON Schema)."""

    n_inputs: int | None = 1
    #: True for layers whose forward draws random numbers in training (Dropout).
    stochastic = False
    bounds = declare(name=nullable(NON_EMPTY_STR), trainable=BOOL)

    def __init__(self, name: str | None = None, trainable: bool = True) -> None:
        self.name = checked(self, "name", name) or ""
        self.trainable = checked(self, "trainable", trainable)
        self.weight_specs: list[WeightSpec] = []
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.needs_input_grad = True
        self.rng: Any = None
        #: The processes training together (set by the Model); layers that reduce over the batch
        #: (a synchronized BatchNormalization) sum through it.
        self.comm: Any = None
        # Set by `build`; the graph's Node reads them from here.
        self.input_shape: Any = None
        self.output_shape: Shape = ()

    @property
    def type_name(self) -> str:
        return type(self).__name__

    # -- construction --------------------------------------------------------------------------------
    def build(self, input_shape: Any) -> Shape:
        """Declare weights for `input_shape`, return the output shape (without the batch dimension)."""
        self.input_shape = input_shape
        self.output_shape = tuple(self.compute_output_shape(input_shape))
        return self.output_shape

    def compute_output_shape(self, input_shape: Any) -> Shape:
        return input_shape

    def add_weight(
        self, name: str, shape: Shape, initializer: Any = "zeros", trainable: bool = True, regularizer: Any = None
    ) -> None:
        self.weight_specs.append(
            WeightSpec(
                name,
                tuple(shape),
                initializers.get(initializer),
                trainable and self.trainable,
                regularizers.get(regularizer),
            )
        )

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: `type(layer)(**layer.get_config())` rebuilds the layer."""
        return {"name": self.name or None, "trainable": self.trainable}

    # -- computation ---------------------------------------------------------------------------------
    def forward(self, x: Any, training: bool) -> Any:
        """The output for a batch. Layers with a final activation also take `logits=True`: for that
        call they return the output before the activation (a loss then applies it)."""
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        """Gradient w.r.t. the input(s); writes parameter gradients into `self.grads` (overwriting)."""
        raise NotImplementedError

    # -- helpers for layers with a kernel and a bias (Dense, Conv2D) ----------------------------------
    def _set_kernel_options(
        self,
        use_bias: bool,
        kernel_initializer: Any,
        bias_initializer: Any,
        kernel_regularizer: Any,
        bias_regularizer: Any,
    ) -> None:
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def _add_kernel_and_bias(self, kernel_shape: Shape) -> None:
        self.add_weight("kernel", kernel_shape, self.kernel_initializer, regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("bias", (kernel_shape[-1],), self.bias_initializer, regularizer=self.bias_regularizer)

    def _kernel_config(self) -> dict[str, Any]:
        return {
            "activation": self.activation_name,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer.spec(),
            "bias_initializer": self.bias_initializer.spec(),
            "kernel_regularizer": self.kernel_regularizer and self.kernel_regularizer.spec(),
            "bias_regularizer": self.bias_regularizer and self.bias_regularizer.spec(),
        }

    # -- helpers for layers with an `activation` argument --------------------------------------------
    def _set_activation(self, activation: Any) -> None:
        self.activation = activations.get(activation)
        self.activation_name = None if activation is None else self.activation.name

    def _activate(self, z: Any, logits: bool = False, bias: Any = None) -> Any:
        """activation(z + bias), z updated in place by the bias."""
        # Remembered for this call only: its backward then starts after the activation.
        self._z, self._logits = z, logits
        if bias is not None and not logits and self.activation_name == "relu":
            self._a = activations.relu_with_bias(z, bias, xp_of(z).empty_like(z))
            return self._a
        if bias is not None:
            z += bias
        self._a = z if logits else self.activation.forward(z)
        return self._a

    def _activate_backward(self, dy: Any) -> Any:
        if self._logits:
            return dy
        return self.activation.backward(self._z, self._a, dy)

    @property
    def output_activation(self) -> str | None:
        """The activation this layer applies last (which `forward(..., logits=True)` leaves out), or None."""
        return getattr(self, "activation_name", None)

    def param_count(self) -> tuple[int, int]:
        trainable = sum(w.size for w in self.weight_specs if w.trainable)
        return trainable, sum(w.size for w in self.weight_specs) - trainable


def image_shape(layer: Layer, input_shape: Any) -> tuple[int, int, int]:
    """(H, W, C) or a ShapeError saying what the layer expects and how to get there."""
    if len(input_shape) != 3:
        shape = "(None, " + ", ".join(map(str, input_shape)) + ")"
        hint = ""
        if len(input_shape) == 2:
            hint = f"; add a channel axis first: Reshape: {{target_shape: [{input_shape[0]}, {input_shape[1]}, 1]}}"
        elif len(input_shape) == 1:
            hint = "; a flat input must be reshaped to an image first, e.g. Reshape: {target_shape: [28, 28, 1]}"
        raise ShapeError(
            f"{layer.type_name} expects 4-D input (batch, height, width, channels), i.e. a "
            f"per-sample shape (H, W, C), but got {len(input_shape) + 1}-D input of shape {shape}{hint}"
        )
    return tuple(input_shape)  # type: ignore[return-value]
