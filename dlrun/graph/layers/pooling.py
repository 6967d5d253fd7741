"""Pooling and resampling layers (channels-last): max/average pooling, global pooling, padding, up-sampling."""

from __future__ import annotations

from typing import Any

from dlrun.checks import BOOL, PAIR_OR_INT, Bounds, checked, declare, nullable
from dlrun.engine.backend import xp_of
from dlrun.engine.conv_ops import crop_hw, output_length, pad_hw, padding_amounts
from dlrun.engine.pool_ops import avg_pool, avg_pool_backward, max_pool, max_pool_backward, window_counts
from dlrun.errors import ArgumentError, short
from dlrun.graph.layer import LAYERS, Layer, image_shape, padding_arg


class _Pooling2D(Layer):
    """Shared arguments: pool_size (default 2), strides (default pool_size), padding (default "valid")."""

    bounds = declare(pool_size=PAIR_OR_INT, strides=nullable(PAIR_OR_INT))

    def __init__(self, pool_size: Any = 2, strides: Any = None, padding: str = "valid", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_size = checked(self, "pool_size", pool_size)
        self.strides = checked(self, "strides", strides) or self.pool_size
        self.padding = padding_arg(padding)

    def compute_output_shape(self, input_shape):
        h, w, c = image_shape(self, input_shape)
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        return (output_length(h, ph, sh, self.padding), output_length(w, pw, sw, self.padding), c)

    def build(self, input_shape):
        out = super().build(input_shape)
        h, w, _ = input_shape
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        self._pads = (*padding_amounts(h, ph, sh, self.padding), *padding_amounts(w, pw, sw, self.padding))
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
        }


@LAYERS.register("MaxPooling2D", "MaxPool2D")
class MaxPooling2D(_Pooling2D):
    """Maximum over each pool_size window; the gradient goes to the window's first maximum.

    Args: pool_size (int or [ph, pw], default 2), strides (default pool_size), padding ("valid" or "same").
    Input (None, H, W, C); output (None, OH, OW, C).
    """

    def forward(self, x, training):
        xpad = pad_hw(x, self._pads, value=float("-inf"))
        out, self._saved = max_pool(xpad, self.pool_size, self.strides, self.output_shape[:2])
        return out

    def backward(self, dy):
        dx = max_pool_backward(dy, self._saved, self.pool_size, self.strides)
        return crop_hw(dx, self._pads)


@LAYERS.register("AveragePooling2D", "AvgPool2D")
class AveragePooling2D(_Pooling2D):
    """Mean over each pool_size window; with padding "same", padded pixels are not counted (as Keras).

    Args: pool_size (int or [ph, pw], default 2), strides (default pool_size), padding ("valid" or "same").
    """

    def _counts(self, x: Any) -> Any:
        if not any(self._pads):
            return float(self.pool_size[0] * self.pool_size[1])
        xp = xp_of(x)
        cached = getattr(self, "_count_table", None)
        if cached is None or cached.dtype != x.dtype or xp_of(cached) is not xp:
            cached = self._count_table = window_counts(
                xp, self.input_shape[:2], self.pool_size, self.strides, self._pads, self.output_shape[:2], x.dtype
            )
        return cached

    def forward(self, x, training):
        xpad = pad_hw(x, self._pads)
        self._padded_shape = xpad.shape
        self._count = self._counts(x)
        return avg_pool(xpad, self.pool_size, self.strides, self.output_shape[:2], self._count)

    def backward(self, dy):
        dx = avg_pool_backward(dy, self._padded_shape, self.pool_size, self.strides, self._count)
        return crop_hw(dx, self._pads)


class _GlobalPooling2D(Layer):
    bounds = declare(keepdims=BOOL)

    def __init__(self, keepdims: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keepdims = checked(self, "keepdims", keepdims)

    def compute_output_shape(self, input_shape):
        _, _, c = image_shape(self, input_shape)
        return (1, 1, c) if self.keepdims else (c,)

    def _shaped(self, y: Any) -> Any:
        return y.reshape(y.shape[0], 1, 1, y.shape[-1]) if self.keepdims else y

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


@LAYERS.register("GlobalAveragePooling2D", "GlobalAvgPool2D")
class GlobalAveragePooling2D(_GlobalPooling2D):
    """Mean over height and width: (None, H, W, C) -> (None, C), or (None, 1, 1, C) with keepdims."""

    def forward(self, x, training):
        self._x_shape = x.shape
        return self._shaped(x.mean(axis=(1, 2)))

    def backward(self, dy):
        n, h, w, c = self._x_shape
        dx = xp_of(dy).empty(self._x_shape, dtype=dy.dtype)
        dx[...] = dy.reshape(n, 1, 1, c) * (1.0 / (h * w))
        return dx


@LAYERS.register("GlobalMaxPooling2D", "GlobalMaxPool2D")
class GlobalMaxPooling2D(_GlobalPooling2D):
    """Maximum over height and width; the gradient goes to the first maximum of each channel."""

    def forward(self, x, training):
        n, h, w, c = x.shape
        self._x_shape = x.shape
        x3 = x.reshape(n, h * w, c)
        self._arg = x3.argmax(axis=1)
        return self._shaped(x3.max(axis=1))

    def backward(self, dy):
        xp = xp_of(dy)
        n, h, w, c = self._x_shape
        hit = xp.arange(h * w).reshape(1, h * w, 1) == self._arg.reshape(n, 1, c)
        return xp.where(hit, dy.reshape(n, 1, c), xp.zeros((), dtype=dy.dtype)).reshape(self._x_shape)


def _padding_pairs(value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras ZeroPadding2D's padding: int, [rows, cols] or [[top, bottom], [left, right]]."""

    def nonneg(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if nonneg(value):
        return (value, value), (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if all(nonneg(v) for v in value):
            return (value[0], value[0]), (value[1], value[1])
        if all(isinstance(v, (list, tuple)) and len(v) == 2 and all(nonneg(u) for u in v) for v in value):
            return (value[0][0], value[0][1]), (value[1][0], value[1][1])
    raise ArgumentError(
        "padding must be a non-negative int, [rows, cols] or [[top, bottom], [left, right]]. "
        f"Received: padding={short(value)}",
        "padding",
        value,
    )


@LAYERS.register("ZeroPadding2D")
class ZeroPadding2D(Layer):
    """Adds rows and columns of zeros around each image.

    Args:
        padding: int (all sides), [rows, cols] (symmetric) or [[top, bottom], [left, right]]. Defaults to 1.
    """

    def __init__(self, padding: Any = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.padding = _padding_pairs(padding)
        (top, bottom), (left, right) = self.padding
        self._pads = (top, bottom, left, right)

    def compute_output_shape(self, input_shape):
        h, w, c = image_shape(self, input_shape)
        top, bottom, left, right = self._pads
        return (h + top + bottom, w + left + right, c)

    def forward(self, x, training):
        xp = xp_of(x)
        out = xp.zeros((x.shape[0], *self.output_shape), dtype=x.dtype)
        return pad_hw(x, self._pads, out=out) if any(self._pads) else x

    def backward(self, dy):
        return crop_hw(dy, self._pads)

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}


@LAYERS.register("UpSampling2D")
class UpSampling2D(Layer):
    """Repeats rows and columns (nearest-neighbour up-sampling).

    Args:
        size: int or [rows, cols] repeat factors. Defaults to 2.
        interpolation: only "nearest" is supported. Defaults to "nearest".
    """

    bounds = declare(
        size=PAIR_OR_INT,
        interpolation=Bounds(choices=("nearest",), text="'nearest' (the only one dlrun implements)"),
    )

    def __init__(self, size: Any = 2, interpolation: str = "nearest", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = checked(self, "size", size)
        self.interpolation = checked(self, "interpolation", interpolation)

    def compute_output_shape(self, input_shape):
        h, w, c = image_shape(self, input_shape)
        return (h * self.size[0], w * self.size[1], c)

    def forward(self, x, training):
        xp = xp_of(x)
        n, h, w, c = x.shape
        sh, sw = self.size
        out = xp.empty((n, h, sh, w, sw, c), dtype=x.dtype)
        out[...] = x.reshape(n, h, 1, w, 1, c)
        return out.reshape(n, h * sh, w * sw, c)

    def backward(self, dy):
        n, oh, ow, c = dy.shape
        sh, sw = self.size
        return dy.reshape(n, oh // sh, sh, ow // sw, sw, c).sum(axis=(2, 4))

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "interpolation": self.interpolation}
