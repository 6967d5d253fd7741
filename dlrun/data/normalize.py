"""How raw inputs become model inputs, batch by batch: `x * scale`, or `(x - mean) / std` per channel.

The data stays in its stored dtype (uint8 images) until a batch is made. Standardisation statistics
are computed once, on the training split only, in float64 chunks (no float copy of the whole set),
and travel in the resolved config (`data.statistics`), so evaluate and predict reuse them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlrun.errors import DataError

KINDS = ("scale", "standardize", "none")


class Normalization:
    """One of `none`, `scale` (x * scale) or `standardize` ((x - mean) / std over the last axis)."""

    def __init__(
        self,
        kind: str = "none",
        scale: float | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}. Received: kind={kind!r}")
        if kind == "standardize" and (mean is None or std is None):
            raise ValueError("standardize needs mean and std")
        self.kind, self.scale = kind, scale
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self._device: dict[tuple[int, str, int], tuple[Any, Any]] = {}

    @classmethod
    def of(cls, value: Normalization | float | None) -> Normalization:
        """Older callers pass a bare scale factor (or None)."""
        if isinstance(value, Normalization):
            return value
        return cls("none") if value is None else cls("scale", scale=float(value))

    @property
    def statistics(self) -> dict[str, list[float]] | None:
        return {"mean": self.mean, "std": self.std} if self.kind == "standardize" else None

    def __repr__(self) -> str:
        if self.kind == "scale":
            return f"Normalization(scale={self.scale})"
        return f"Normalization({self.kind}{'' if self.mean is None else f', mean={self.mean}, std={self.std}'})"

    def to_float(self, xb: Any, dtype: Any, *, copy: bool = False) -> Any:
        """The batch in the compute dtype; a copy whenever it will be modified in place."""
        return xb.astype(dtype, copy=copy or self.kind != "none")

    def apply_(self, x: Any, xp: Any) -> Any:
        """Normalise a float batch in place (it must be a copy, see `to_float`)."""
        if self.kind == "scale":
            x *= x.dtype.type(self.scale)
        elif self.kind == "standardize":
            # Rows of a whole image row (W*C values) with the per-channel vectors tiled to match:
            # NumPy's inner loop then runs over W*C elements instead of C (about 8x faster on images).
            tile = x.shape[-2] if x.ndim >= 3 and x.flags.c_contiguous else 1
            mean, inv = self._on(xp, x.dtype, tile)
            rows = x.reshape(-1, tile * x.shape[-1]) if tile > 1 else x
            rows -= mean
            rows *= inv
        return x

    def __call__(self, xb: Any, xp: Any, dtype: Any) -> Any:
        return self.apply_(self.to_float(xb, dtype), xp)

    def _on(self, xp: Any, dtype: Any, tile: int) -> tuple[Any, Any]:
        """mean and 1/std in `dtype` on the device, repeated `tile` times (cached)."""
        key = (id(xp), np.dtype(dtype).str, tile)
        if key not in self._device:
            mean = np.tile(np.asarray(self.mean, dtype=dtype), tile)
            inv = np.tile((1.0 / np.asarray(self.std, dtype=np.float64)).astype(dtype), tile)
            self._device[key] = (xp.asarray(mean), xp.asarray(inv))
        return self._device[key]


def channel_statistics(x: np.ndarray, rows: int = 1 << 16) -> tuple[list[float], list[float]]:
    """Per-channel (last axis) mean and standard deviation of `x`, in float64 chunks.

    Sums are taken around the first sample's values (a shift that avoids cancellation for features
    with a large mean). A constant channel gets std 1, so it maps to 0 instead of dividing by 0.
    """
    if len(x) == 0:
        raise DataError("cannot compute standardisation statistics of an empty training split")
    flat = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(-1, 1)
    shift = flat[0].astype(np.float64)
    total = np.zeros(flat.shape[1], np.float64)
    squares = np.zeros(flat.shape[1], np.float64)
    for lo in range(0, len(flat), rows):
        part = flat[lo : lo + rows].astype(np.float64) - shift
        total += part.sum(axis=0)
        squares += np.einsum("ij,ij->j", part, part)
    n = len(flat)
    mean_shifted = total / n
    var = np.maximum(squares / n - mean_shifted**2, 0.0)
    std = np.sqrt(var)
    if not (np.all(np.isfinite(std)) and np.all(np.isfinite(mean_shifted))):
        raise DataError("the training inputs contain NaN or infinite values; standardisation is impossible")
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(shift)), std, 1.0)
    return (mean_shifted + shift).tolist(), std.tolist()


def resolve(kind: str, x_train: np.ndarray, default: str, stored: dict[str, Any] | None, name: str) -> Normalization:
    """The Normalization for `data.normalize` (`auto` -> `default`), with stored statistics if any."""
    kind = default if kind == "auto" else kind
    if kind == "none":
        return Normalization("none")
    if kind == "scale":
        if x_train.dtype != np.uint8:
            raise DataError(
                f"normalize: scale maps uint8 pixels (0..255) to [0, 1], but {name} inputs are {x_train.dtype}",
                hint="use normalize: standardize or normalize: none",
            )
        return Normalization("scale", scale=1 / 255)
    channels = x_train.shape[-1] if x_train.ndim > 1 else 1
    if stored:
        if len(stored["mean"]) != channels:
            raise DataError(
                f"data.statistics has {len(stored['mean'])} values per statistic but the {name} "
                f"inputs have {channels} channels/features",
                hint="remove data.statistics to compute them from the training split",
            )
        return Normalization("standardize", mean=stored["mean"], std=stored["std"])
    mean, std = channel_statistics(x_train)
    return Normalization("standardize", mean=mean, std=std)
