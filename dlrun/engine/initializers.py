"""Keras 3 weight initializers, drawn on the host from a seeded NumPy Generator.

Weights are always created on the host (then moved), so CPU and GPU runs start identical.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dlrun.checks import NUMBER, WEIGHT_SPREAD, WEIGHT_VALUE, Bounds, checked, choices, declare
from dlrun.errors import ArgumentError
from dlrun.registry import Registry, build_from_spec

INITIALIZERS: Registry[type[Initializer]] = Registry("initializer")

# Keras divides the stddev of its truncated-normal variance-scaling initializers by this constant:
# the std of a unit normal truncated to [-2, 2].
_TRUNC_STD = 0.87962566103423978


def compute_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras's fan-in/fan-out: kernels (..., in, out) multiply in/out by the receptive field."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], mean: float, std: float) -> np.ndarray:
    """Normal samples redrawn until they fall within two standard deviations (as Keras)."""
    out = rng.standard_normal(shape, dtype=np.float64)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float64)
        bad = np.abs(out) > 2.0
    return out * std + mean


class Initializer:
    """Callable `(shape, rng, dtype) -> host array`; `get_config` round-trips its arguments."""

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator, dtype: Any = np.float32) -> np.ndarray:
        return self.sample(tuple(shape), rng).astype(dtype, copy=False)

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return dict(vars(self))

    def spec(self) -> Any:
        """The identifier a resolved config writes: the name alone when all arguments are default."""
        name = type(self).keras_name
        cfg = self.get_config()
        return {"type": name, **cfg} if cfg != type(self)().get_config() else name


@INITIALIZERS.register("zeros", "zero")
class Zeros(Initializer):
    keras_name = "zeros"

    def sample(self, shape, rng):
        return np.zeros(shape)


@INITIALIZERS.register("ones", "one")
class Ones(Initializer):
    keras_name = "ones"

    def sample(self, shape, rng):
        return np.ones(shape)


@INITIALIZERS.register("constant")
class Constant(Initializer):
    keras_name = "constant"
    bounds = declare(value=WEIGHT_VALUE)

    def __init__(self, value: float = 0.0) -> None:
        self.value = checked(self, "value", value)

    def sample(self, shape, rng):
        return np.full(shape, self.value)


@INITIALIZERS.register("random_normal")
class RandomNormal(Initializer):
    keras_name = "random_normal"
    bounds = declare(mean=WEIGHT_VALUE, stddev=WEIGHT_SPREAD)

    def __init__(self, mean: float = 0.0, stddev: float = 0.05) -> None:
        self.mean, self.stddev = checked(self, "mean", mean), checked(self, "stddev", stddev)

    def sample(self, shape, rng):
        return rng.standard_normal(shape) * self.stddev + self.mean


@INITIALIZERS.register("random_uniform")
class RandomUniform(Initializer):
    keras_name = "random_uniform"
    bounds = declare(minval=WEIGHT_VALUE, maxval=WEIGHT_VALUE)

    def __init__(self, minval: float = -0.05, maxval: float = 0.05) -> None:
        self.minval, self.maxval = checked(self, "minval", minval), checked(self, "maxval", maxval)
        if maxval < minval:
            raise ArgumentError(
                f"maxval must be >= minval. Received: minval={minval}, maxval={maxval}", "maxval", maxval
            )

    def sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, shape)


@INITIALIZERS.register("truncated_normal")
class TruncatedNormal(Initializer):
    keras_name = "truncated_normal"
    bounds = declare(mean=WEIGHT_VALUE, stddev=WEIGHT_SPREAD)

    def __init__(self, mean: float = 0.0, stddev: float = 0.05) -> None:
        self.mean, self.stddev = checked(self, "mean", mean), checked(self, "stddev", stddev)

    def sample(self, shape, rng):
        return _truncated_normal(rng, shape, self.mean, self.stddev)


class VarianceScaling(Initializer):
    """scale / fan, drawn uniform (limit sqrt(3 * var)) or truncated normal, as Keras."""

    keras_name = "variance_scaling"
    bounds = declare(
        scale=Bounds(NUMBER, exclusive_minimum=0, maximum=1e30, finite=True),  # stddev sqrt(scale / fan)
        mode=choices("fan_in", "fan_out", "fan_avg"),
        distribution=choices("uniform", "truncated_normal", "untruncated_normal"),
    )

    def __init__(self, scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal") -> None:
        self.scale = checked(self, "scale", scale)
        self.mode = checked(self, "mode", mode)
        self.distribution = checked(self, "distribution", distribution)

    def sample(self, shape, rng):
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        var = self.scale / max(1.0, fan)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * var)
            return rng.uniform(-limit, limit, shape)
        if self.distribution == "truncated_normal":
            return _truncated_normal(rng, shape, 0.0, math.sqrt(var) / _TRUNC_STD)
        return rng.standard_normal(shape) * math.sqrt(var)


INITIALIZERS.add(VarianceScaling, "variance_scaling")


def _preset(keras_name: str, scale: float, mode: str, distribution: str) -> type[VarianceScaling]:
    """A VarianceScaling with fixed arguments (glorot_*, he_*, lecun_*), as Keras defines them."""

    class Preset(VarianceScaling):
        def __init__(self) -> None:
            super().__init__(scale, mode, distribution)

        def get_config(self) -> dict[str, Any]:
            return {}

    Preset.keras_name = keras_name
    Preset.__name__ = Preset.__qualname__ = "".join(p.title() for p in keras_name.split("_"))
    INITIALIZERS.add(Preset, keras_name)
    return Preset


GlorotUniform = _preset("glorot_uniform", 1.0, "fan_avg", "uniform")
GlorotNormal = _preset("glorot_normal", 1.0, "fan_avg", "truncated_normal")
HeNormal = _preset("he_normal", 2.0, "fan_in", "truncated_normal")
HeUniform = _preset("he_uniform", 2.0, "fan_in", "uniform")
LecunNormal = _preset("lecun_normal", 1.0, "fan_in", "truncated_normal")
LecunUniform = _preset("lecun_uniform", 1.0, "fan_in", "uniform")


def get(identifier: Any) -> Initializer:
    """An Initializer from a name, a `{type: ..., **args}` mapping, or an Initializer."""
    if isinstance(identifier, Initializer):
        return identifier
    return build_from_spec(INITIALIZERS, identifier)
