"""Pooling kernels, channels-last, written against `xp`: separable (along the width, then the
height), one strided slice per window position, so they run on NumPy and CuPy alike. With numba
(dlrun.engine.compiled), 2x2 windows that tile the image take one fused pass on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlrun.engine import compiled, workspace
from dlrun.engine.backend import xp_of
from dlrun.engine.threads import parallel


def _axis_windows(axis: int, k: int, stride: int, out_len: int) -> list[tuple[slice, ...]]:
    """Index tuples picking, for each window offset, that offset of every window along `axis`."""
    lead = (slice(None),) * axis
    return [(*lead, slice(i, i + stride * (out_len - 1) + 1, stride)) for i in range(k)]


def _tiles(length: int, k: int, stride: int, out_len: int) -> bool:
    """Windows that cover the axis exactly once (stride == size, length divides): assign, no zeroing."""
    return stride == k and length == k * out_len


def _max_1d(x: Any, axis: int, k: int, stride: int, out_len: int, out: Any = None) -> tuple[Any, Any]:
    """(window maxima, index of each window's first maximum) along one axis. Multiplies masks
    instead of `where`: NumPy's where is several times slower on unpredictable masks."""
    xp = xp_of(x)
    views = [x[idx] for idx in _axis_windows(axis, k, stride, out_len)]
    if out is None:
        out = xp.empty(views[0].shape, dtype=x.dtype)
    if k == 1:
        out[...] = views[0]
        return out, None
    if k == 2:
        return xp.maximum(views[0], views[1], out=out), views[1] > views[0]
    out[...] = views[0]
    index = xp.uint8 if k <= 256 else xp.int32  # offsets 0 .. k-1, without wrapping around
    arg = xp.zeros(out.shape, dtype=index)
    for i, v in enumerate(views[1:], start=1):
        # Indices only grow, so max(arg, i * greater) sets i exactly where v is a new strict maximum.
        xp.maximum(arg, (v > out).astype(index) * index(i), out=arg)
        xp.maximum(out, v, out=out)
    return out, arg


def _max_1d_backward(
    dy: Any, arg: Any, in_shape: tuple[int, ...], axis: int, k: int, stride: int, out: Any = None
) -> Any:
    xp = xp_of(dy)
    if arg is None:
        parts = [dy]
    elif arg.dtype == xp.bool_:
        second = dy * arg
        parts = [dy - second, second]
    else:
        parts = [dy * (arg == i) for i in range(k)]
    out_len = dy.shape[axis]
    return _spread(
        parts, _axis_windows(axis, k, stride, out_len), in_shape, _tiles(in_shape[axis], k, stride, out_len), out
    )


def _spread(
    parts: list[Any], windows_: list[tuple[slice, ...]], in_shape: tuple[int, ...], tiles: bool, out: Any = None
) -> Any:
    """Window-offset gradients written (tiling windows) or added (overlaps, gaps) back into the input's shape."""
    xp = xp_of(parts[0])
    dx = xp.empty(in_shape, dtype=parts[0].dtype) if out is None else out
    if not tiles:
        dx[...] = 0
    for idx, part in zip(windows_, parts):
        if tiles:
            dx[idx] = part
        else:
            dx[idx] += part
    return dx


def _sample_parts(x: Any, n: int, fn: Callable[[int, int, int], Any]) -> list[Any]:
    """fn over ranges of samples of about a megabyte (float32), spread over the CPU workers."""
    xp = xp_of(x)
    if xp.__name__ != "numpy":
        return [fn(0, n, 0)]
    per_sample = max(1, x.size // max(1, x.shape[0]))
    return parallel(xp, n, fn, step=max(1, workspace.CACHE_VALUES // 2 // per_sample))


def _fused_2x2(x: Any, pool: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]) -> Any:
    """numba's kernels when 2x2 windows tile the (N, H, W, C) NumPy image `x` (the common
    pooling, which they run in one pass with the NumPy passes' results), else None."""
    tiles = pool == strides == (2, 2) and x.shape[1] == 2 * out_hw[0] and x.shape[2] == 2 * out_hw[1]
    return compiled.kernels() if tiles and xp_of(x).__name__ == "numpy" else None


def max_pool(x: Any, pool: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]) -> tuple[Any, Any]:
    """Max over each window of a padded (N, H, W, C) image; returns (output, what backward needs).

    Separable: maxima along the width, then along the height. The gradient goes to the first
    maximum of each window in row-major order, as TensorFlow. 2x2 tiles take one fused pass with
    numba (the same values and masks)."""
    xp = xp_of(x)
    n = x.shape[0]
    out = xp.empty((n, *out_hw, x.shape[3]), dtype=x.dtype)
    fused = _fused_2x2(x, pool, strides, out_hw)

    def work(first: int, last: int, worker: int) -> tuple[Any, ...]:
        if fused is not None:
            m, c = last - first, x.shape[3]
            arg_w, arg_h = xp.empty((m, x.shape[1], out_hw[1], c), bool), xp.empty((m, *out_hw, c), bool)
            fused.max_pool_2x2(x[first:last], out[first:last], arg_w, arg_h)
            return first, last, arg_w, arg_h, arg_w.shape
        row_max, arg_w = _max_1d(x[first:last], 2, pool[1], strides[1], out_hw[1])
        _, arg_h = _max_1d(row_max, 1, pool[0], strides[0], out_hw[0], out=out[first:last])
        return first, last, arg_w, arg_h, row_max.shape

    return out, (_sample_parts(x, n, work), x.shape)


def max_pool_backward(dy: Any, saved: Any, pool: tuple[int, int], strides: tuple[int, int]) -> Any:
    parts, in_shape = saved
    xp = xp_of(dy)
    dx = xp.empty(in_shape, dtype=dy.dtype)
    fused = _fused_2x2(dx, pool, strides, dy.shape[1:3])
    levels = xp.asarray([0, 1], dtype=dy.dtype) if fused is not None else None

    def work(a: int, b: int, worker: int) -> None:  # the forward's sample ranges, one per worker
        for first, stop, arg_w, arg_h, mid_shape in parts[a:b]:
            if fused is not None:
                fused.max_pool_2x2_backward(dy[first:stop], arg_w, arg_h, levels, dx[first:stop])
                continue
            d_mid = _max_1d_backward(dy[first:stop], arg_h, mid_shape, 1, pool[0], strides[0])
            _max_1d_backward(d_mid, arg_w, (stop - first, *in_shape[1:]), 2, pool[1], strides[1], out=dx[first:stop])

    parallel(xp_of(dy), len(parts), work, step=1)
    return dx


def window_counts(
    xp: Any,
    size: tuple[int, int],
    pool: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    out_hw: tuple[int, int],
    dtype: Any,
) -> Any:
    """(OH, OW, 1): how many real (unpadded) pixels each window covers (Keras's 'same' average)."""

    def counts(n: int, k: int, s: int, before: int, m: int) -> list[int]:
        return [min(o * s - before + k, n) - max(o * s - before, 0) for o in range(m)]

    ch = counts(size[0], pool[0], strides[0], pads[0], out_hw[0])
    cw = counts(size[1], pool[1], strides[1], pads[2], out_hw[1])
    table = [[float(a * b) for b in cw] for a in ch]
    return xp.asarray(table, dtype=dtype).reshape(out_hw[0], out_hw[1], 1)


def _sum_1d(x: Any, axis: int, k: int, stride: int, out_len: int, out: Any = None) -> Any:
    views = [x[idx] for idx in _axis_windows(axis, k, stride, out_len)]
    xp = xp_of(x)
    if out is None:
        out = xp.empty(views[0].shape, dtype=x.dtype)
    if k > 1:
        xp.add(views[0], views[1], out=out)
    else:
        out[...] = views[0]
    for v in views[2:]:
        out += v
    return out


def _counts_2d(xp: Any, counts: Any, out_hw: tuple[int, ...], dtype: Any) -> Any:
    """`counts` (a window area, or window_counts' (OH, OW, 1)) as an (OH, OW) array of `dtype`."""
    table = xp.asarray(counts, dtype=dtype)
    table = table[..., 0] if table.ndim == 3 else table
    return xp.ascontiguousarray(xp.broadcast_to(table, tuple(out_hw)))


def avg_pool(x: Any, pool: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int], counts: Any) -> Any:
    """Window means of a zero-padded image; `counts` is the window area or `window_counts`."""
    xp = xp_of(x)
    n = x.shape[0]
    out = xp.empty((n, *out_hw, x.shape[3]), dtype=x.dtype)
    fused = _fused_2x2(x, pool, strides, out_hw)
    counts2 = _counts_2d(xp, counts, out_hw, x.dtype) if fused is not None else None

    def work(first: int, last: int, worker: int) -> None:
        part = out[first:last]
        if fused is not None:
            fused.avg_pool_2x2(x[first:last], counts2, part)
            return
        _sum_1d(_sum_1d(x[first:last], 2, pool[1], strides[1], out_hw[1]), 1, pool[0], strides[0], out_hw[0], part)
        part /= counts

    _sample_parts(x, n, work)
    return out


def avg_pool_backward(
    dy: Any, padded_shape: tuple[int, ...], pool: tuple[int, int], strides: tuple[int, int], counts: Any
) -> Any:
    xp = xp_of(dy)
    dx = xp.empty(padded_shape, dtype=dy.dtype)
    fused = _fused_2x2(dx, pool, strides, dy.shape[1:3])
    counts2 = _counts_2d(xp, counts, dy.shape[1:3], dy.dtype) if fused is not None else None

    def work(first: int, last: int, worker: int) -> None:
        if fused is not None:
            fused.avg_pool_2x2_backward(dy[first:last], counts2, dx[first:last])
            return
        share = dy[first:last] / counts
        m = last - first
        mid_shape = (m, padded_shape[1], dy.shape[2], dy.shape[3])
        d_mid = _spread(
            [share] * pool[0],
            _axis_windows(1, pool[0], strides[0], dy.shape[1]),
            mid_shape,
            _tiles(padded_shape[1], pool[0], strides[0], dy.shape[1]),
        )
        _spread(
            [d_mid] * pool[1],
            _axis_windows(2, pool[1], strides[1], dy.shape[2]),
            (m, *padded_shape[1:]),
            _tiles(padded_shape[2], pool[1], strides[1], dy.shape[2]),
            dx[first:last],
        )

    _sample_parts(dx, dy.shape[0], work)
    return dx
