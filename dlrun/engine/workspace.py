"""Scratch buffers reused from batch to batch, and the cache-sized chunks work is cut into."""

from __future__ import annotations

from typing import Any

from dlrun.engine.backend import xp_of
from dlrun.engine.threads import product

#: Values (float32: 2 MB) of windows copied per chunk on the CPU: the chunk stays in the L2/L3 cache.
CACHE_VALUES = 1 << 19
#: On a GPU, inference splits batches whose windows exceed this many values.
GPU_CHUNK_VALUES = 1 << 26


class Workspace:
    """Per-layer scratch arrays reused from batch to batch (no fresh large allocations per step).

    Never hand these out as a layer's output: the next forward overwrites them.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, Any] = {}
        self._workers: dict[int, Workspace] = {}

    def worker(self, i: int) -> Workspace:
        """The workspace of CPU worker i (each thread needs its own scratch)."""
        if i == 0:
            return self
        ws = self._workers.get(i)
        if ws is None:
            ws = self._workers.setdefault(i, Workspace())
        return ws

    def get(self, key: str, shape: tuple[int, ...], dtype: Any, xp: Any, fill: float | None = None) -> Any:
        """A buffer of `shape`; with `fill` it holds that value when (re)allocated (padding borders, ones)."""
        buf = self._bufs.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or xp_of(buf) is not xp:
            buf = xp.empty(shape, dtype=dtype) if fill is None else xp.full(shape, fill, dtype=dtype)
            self._bufs[key] = buf
        return buf

    def rows(self, key: str, n: int, row_shape: tuple[int, ...], dtype: Any, xp: Any, fill: float | None = None) -> Any:
        """The first n rows of a buffer of shape (>= n, *row_shape), reallocated only to grow."""
        buf = self._bufs.get(key)
        if (
            buf is None
            or buf.shape[0] < n
            or buf.shape[1:] != tuple(row_shape)
            or buf.dtype != dtype
            or xp_of(buf) is not xp
        ):
            shape = (n, *row_shape)
            buf = xp.empty(shape, dtype=dtype) if fill is None else xp.full(shape, fill, dtype=dtype)
            self._bufs[key] = buf
        return buf[:n]

    def ones(self, m: int, dtype: Any, xp: Any) -> Any:
        """A vector of m ones (a prefix of the longest one asked for so far)."""
        buf = self._bufs.get("ones")
        if buf is None or buf.shape[0] < m or buf.dtype != dtype or xp_of(buf) is not xp:
            buf = self._bufs["ones"] = xp.ones(m, dtype=dtype)
        return buf[:m]


def chunk_samples(xp: Any, n: int, per_sample: int) -> int:
    """How many samples to process at once: on the CPU few enough that their windows
    (`per_sample` values each) stay in cache; on a GPU the whole batch unless it is huge."""
    limit = CACHE_VALUES if xp.__name__ == "numpy" else GPU_CHUNK_VALUES
    return min(n, max(1, limit // per_sample))


def column_sums(x2d: Any, ws: Workspace | None = None) -> Any:
    """Sum over the rows of a (M, C) matrix; a matrix-vector product, much faster than sum(axis=0) on NumPy."""
    xp = xp_of(x2d)
    if xp.__name__ != "numpy":
        return x2d.sum(axis=0)
    m = x2d.shape[0]
    ones = ws.ones(m, x2d.dtype, xp) if ws is not None else xp.ones(m, dtype=x2d.dtype)
    return product(ones, x2d)
