"""Array kernels for the convolution and pooling layers, channels-last, written against `xp`.

im2col copies the sliding windows of an (N, H, W, C) image into one contiguous
(N*OH*OW, KH*KW*C) matrix, so a convolution is one matmul; col2im adds windows back with one
strided slice per kernel position. Neither scatters, so both run on NumPy and CuPy alike.
Pooling works the same way: one strided slice per window position.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from dlrun.engine.activations import xp_of

PADDINGS = ("valid", "same")
#: Values (float32: 2 MB) of windows copied per chunk on the CPU: the chunk stays in the L2/L3 cache.
CACHE_VALUES = 1 << 19
#: On a GPU, inference splits batches whose windows exceed this many values.
GPU_CHUNK_VALUES = 1 << 26


# -- sizes -----------------------------------------------------------------------------------------
def effective_kernel(k: int, dilation: int = 1) -> int:
    return (k - 1) * dilation + 1


def output_length(n: int, k: int, stride: int, padding: str, dilation: int = 1) -> int:
    """Keras's output size: valid floor((n - k_eff) / s) + 1, same ceil(n / s)."""
    if padding == "same":
        return -(-n // stride)
    return (n - effective_kernel(k, dilation)) // stride + 1


def padding_amounts(n: int, k: int, stride: int, padding: str, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zero padding along one axis; 'same' puts the odd pixel after, as Keras."""
    if padding != "same":
        return 0, 0
    total = max((output_length(n, k, stride, padding) - 1) * stride + effective_kernel(k, dilation) - n, 0)
    return total // 2, total - total // 2


# -- CPU threads ---------------------------------------------------------------------------------
# NumPy releases the GIL in copies, ufunc loops and BLAS calls, so splitting a batch over threads
# uses every core for the im2col copies and element-wise passes, which run on one core otherwise.
# The workers' matmuls must then run single-threaded, and so must every other BLAS call: an
# OpenBLAS call on several threads leaves its helper threads spinning for a while afterwards,
# taking the cores from the workers. So the first time work is split, dlrun sets OpenBLAS to one
# thread for the rest of the process (models of Dense layers only never split work and keep
# OpenBLAS's threads). Without a recognisable OpenBLAS, with one core, or with
# OPENBLAS_NUM_THREADS=1 / OMP_NUM_THREADS=1, everything stays in the calling thread.
_BLAS_SET_THREADS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads_64_", "openblas_set_num_threads64_")
_BLAS_GET_THREADS = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                     "scipy_openblas_get_num_threads_64_", "openblas_get_num_threads64_")
_pool: ThreadPoolExecutor | None = None
_pool_size: int | None = None
_lock = threading.Lock()


def _openblas() -> tuple[Any, Any] | None:
    """(set_num_threads, get_num_threads) of the OpenBLAS NumPy loaded, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _BLAS_SET_THREADS if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _BLAS_GET_THREADS if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
            return setter, getter
    return None


def cpu_workers() -> int:
    """How many threads `parallel` splits NumPy work over (OpenBLAS's thread count, at most the
    cores); starting them switches OpenBLAS to one thread per call (see above)."""
    global _pool, _pool_size
    if _pool_size is None:
        with _lock:
            if _pool_size is None:
                blas = _openblas()
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
                size = min(cores, max(1, blas[1]())) if blas is not None else 1
                if size > 1:
                    _pool = ThreadPoolExecutor(size, thread_name_prefix="dlrun-cpu")
                    blas[0](1)  # type: ignore[index]
                _pool_size = size
    return _pool_size


def workers_started() -> bool:
    """Whether the CPU workers run (some layer has split its work, and BLAS is down to one thread)."""
    return _pool is not None


def parallel(xp: Any, n: int, fn: Callable[[int, int, int], Any], step: int) -> list[Any]:
    """fn(start, stop, worker) over the ranges [0, step), [step, 2 step), ... of range(n); the
    results in order. The CPU workers each take the next range when done with one, so a core
    slowed by another process just does fewer. A GPU, or a single range, runs in the caller.
    `worker` (0 .. workers-1) tells which scratch space a call may use. fn must not call `parallel`."""
    step = max(1, step)
    tasks = [(a, min(a + step, n)) for a in range(0, n, step)]
    if len(tasks) < 2 or xp.__name__ != "numpy" or cpu_workers() < 2 or _pool is None:
        return [fn(a, b, 0) for a, b in tasks]
    results: list[Any] = [None] * len(tasks)
    queue = iter(enumerate(tasks))
    queue_lock = threading.Lock()

    def run(worker: int) -> None:
        while True:
            with queue_lock:
                item = next(queue, None)
            if item is None:
                return
            k, (a, b) = item
            results[k] = fn(a, b, worker)

    for future in [_pool.submit(run, w) for w in range(min(_pool_size or 1, len(tasks)))]:
        future.result()
    return results


def matmul(a: Any, b: Any, out: Any = None) -> Any:
    """a @ b for 2-D arrays. Once dlrun's CPU workers run (and BLAS is down to one thread per call),
    big products are split by rows of `a` over the workers; otherwise a plain matmul."""
    m = a.shape[0]
    if _pool is None or m * a.shape[1] * b.shape[1] < (1 << 22) or m < 2 or not isinstance(a, np.ndarray):
        # The common small case stays as cheap as `@` (Dense layers at batch 32 take microseconds).
        return a @ b if out is None else xp_of(a).matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, b.shape[1]), dtype=np.result_type(a, b))
    parallel(np, m, lambda first, last, worker: np.matmul(a[first:last], b, out=out[first:last]),
             step=-(-m // (_pool_size or 1)))
    return out


# -- scratch buffers -------------------------------------------------------------------------------
class Workspace:
    """Per-layer scratch arrays reused from batch to batch (no fresh large allocations per step).

    Never hand these out as a layer's output: the next forward overwrites them.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, Any] = {}
        self._workers: dict[int, Workspace] = {}

    def worker(self, i: int) -> "Workspace":
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

    def rows(self, key: str, n: int, row_shape: tuple[int, ...], dtype: Any, xp: Any,
             fill: float | None = None) -> Any:
        """The first n rows of a buffer of shape (>= n, *row_shape), reallocated only to grow."""
        buf = self._bufs.get(key)
        if (buf is None or buf.shape[0] < n or buf.shape[1:] != tuple(row_shape) or buf.dtype != dtype
                or xp_of(buf) is not xp):
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


def pad_hw(x: Any, pads: tuple[int, int, int, int], value: float = 0.0, out: Any = None) -> Any:
    """x (N, H, W, C) padded by (top, bottom, left, right) with `value`.

    `out`, when given, must have the padded shape and its border must already hold `value`
    (a Workspace buffer from `fill=value`); only the interior is written.
    """
    top, bottom, left, right = pads
    if not any(pads):
        return x
    xp = xp_of(x)
    n, h, w, c = x.shape
    if out is None:
        out = xp.full((n, h + top + bottom, w + left + right, c), value, dtype=x.dtype)
    out[:, top:top + h, left:left + w, :] = x
    return out


def crop_hw(x: Any, pads: tuple[int, int, int, int]) -> Any:
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]


# -- im2col / col2im -------------------------------------------------------------------------------
def windows(x: Any, kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int],
            out_hw: tuple[int, int]) -> Any:
    """A read-only strided view (N, OH, OW, KH, KW, C) of the windows of a padded image."""
    xp = xp_of(x)
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilation, out_hw
    s0, s1, s2, s3 = x.strides
    return xp.lib.stride_tricks.as_strided(x, (x.shape[0], oh, ow, kh, kw, x.shape[3]),
                                           (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3))


def im2col(x: Any, kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int],
           out_hw: tuple[int, int], out: Any = None) -> Any:
    """The windows of padded `x` copied into a contiguous (N*OH*OW, KH*KW*C) matrix."""
    xp = xp_of(x)
    n, c = x.shape[0], x.shape[3]
    shape = (n, out_hw[0], out_hw[1], kernel[0], kernel[1], c)
    out = xp.empty(shape, dtype=x.dtype) if out is None else out.reshape(shape)
    if c <= 2 and xp.__name__ == "numpy":
        # Few channels: one strided slice per kernel position copies whole image rows at a time.
        for i, j, rows, cols in window_slices(kernel, strides, dilation, out_hw):
            out[:, :, :, i, j, :] = x[:, rows, cols, :]
    else:
        out[...] = windows(x, kernel, strides, dilation, out_hw)
    return out.reshape(-1, kernel[0] * kernel[1] * c)


def chunk_samples(xp: Any, n: int, per_sample: int) -> int:
    """How many samples to process at once: on the CPU few enough that their windows
    (`per_sample` values each) stay in cache; on a GPU the whole batch unless it is huge."""
    limit = CACHE_VALUES if xp.__name__ == "numpy" else GPU_CHUNK_VALUES
    return min(n, max(1, limit // per_sample))


def conv_chunk(src: Any, kernel4: Any, strides: tuple[int, int], dilation: tuple[int, int],
               out_hw: tuple[int, int], out: Any, ws: Workspace, key: str = "") -> Any:
    """out (m*OH*OW, F) = the convolution of padded images src (m, Hp, Wp, C) with kernel4 (KH, KW, C, F):
    im2col, then one matmul."""
    xp = xp_of(src)
    kh, kw, c, f = kernel4.shape
    cols = im2col(src, (kh, kw), strides, dilation, out_hw,
                  out=ws.rows(key + "cols", src.shape[0] * out_hw[0] * out_hw[1], (kh * kw * c,), src.dtype, xp))
    return xp.matmul(cols, kernel4.reshape(-1, f), out=out)


def conv_chunk_kernel_grad(src: Any, dz: Any, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                           dilation: tuple[int, int], out_hw: tuple[int, int], ws: Workspace, key: str = "") -> Any:
    """The kernel gradient (KH, KW, C, F) of one chunk: windows(src)^T @ dz, the windows recomputed."""
    xp = xp_of(src)
    kh, kw, c, f = kernel_shape
    cols = im2col(src, (kh, kw), strides, dilation, out_hw,
                  out=ws.rows(key + "cols", src.shape[0] * out_hw[0] * out_hw[1], (kh * kw * c,), src.dtype, xp))
    return (cols.T @ dz).reshape(kernel_shape)


def conv_forward(x: Any, pads: tuple[int, int, int, int], kernel4: Any, strides: tuple[int, int],
                 dilation: tuple[int, int], out_hw: tuple[int, int], out: Any, ws: Workspace, key: str = "",
                 epilogue: Callable[[Any, slice], None] | None = None) -> Any:
    """out (N*OH*OW, F): the convolution of x (N, H, W, C) padded by `pads`, a few samples at a time.

    On the CPU each chunk's padded images and windows stay in cache between the copy and the
    matmul, which makes the pair faster than one matmul over a whole-batch window matrix.
    `epilogue(out_chunk, rows)` runs on each chunk's result while it is still in cache (bias, activation).
    """
    xp = xp_of(x)
    n = x.shape[0]
    oh, ow = out_hw
    chunk = chunk_samples(xp, n, oh * ow * kernel4.shape[0] * kernel4.shape[1] * kernel4.shape[2])

    def work(first: int, last: int, worker: int) -> None:
        wws = ws.worker(worker)
        for start, src in padded_chunks(x[first:last], pads, chunk, wws, key):
            start += first
            rows = slice(start * oh * ow, (start + src.shape[0]) * oh * ow)
            conv_chunk(src, kernel4, strides, dilation, out_hw, out[rows], wws, key)
            if epilogue is not None:
                epilogue(out[rows], rows)

    parallel(xp, n, work, step=chunk)
    return out


def padded_chunks(x: Any, pads: tuple[int, int, int, int], chunk: int, ws: Workspace,
                  key: str = "") -> Iterator[tuple[int, Any]]:
    """(first sample, padded images) for consecutive chunks of `chunk` samples, padded into a reused buffer."""
    xp = xp_of(x)
    n, h, w, c = x.shape
    top, bottom, left, right = pads
    buf = (ws.get(key + "pad", (chunk, h + top + bottom, w + left + right, c), x.dtype, xp, fill=0.0)
           if any(pads) else None)
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        yield start, (pad_hw(part, pads, out=buf[:part.shape[0]]) if buf is not None else part)


def window_slices(kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int],
                  out_hw: tuple[int, int]) -> Iterator[tuple[int, int, slice, slice]]:
    """(kh, kw, rows, cols): the input pixels each kernel position sees, over all windows."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            yield (i, j, slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
                   slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def col2im(cols: Any, padded_shape: tuple[int, ...], kernel: tuple[int, int], strides: tuple[int, int],
           dilation: tuple[int, int], out_hw: tuple[int, int], out: Any = None) -> Any:
    """The adjoint of im2col: window gradients summed back into a padded image (one slice per position)."""
    xp = xp_of(cols)
    n, c = padded_shape[0], padded_shape[3]
    cols6 = cols.reshape(n, out_hw[0], out_hw[1], kernel[0], kernel[1], c)
    if out is None:
        out = xp.zeros(padded_shape, dtype=cols.dtype)
    else:
        out[...] = 0
    for i, j, rows, colsl in window_slices(kernel, strides, dilation, out_hw):
        out[:, rows, colsl, :] += cols6[:, :, :, i, j, :]
    return out


# -- pooling (separable: along the width, then along the height) ------------------------------------
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


def _max_1d_backward(dy: Any, arg: Any, in_shape: tuple[int, ...], axis: int, k: int, stride: int,
                     out: Any = None) -> Any:
    xp = xp_of(dy)
    if arg is None:
        parts = [dy]
    elif arg.dtype == xp.bool_:
        second = dy * arg
        parts = [dy - second, second]
    else:
        parts = [dy * (arg == i) for i in range(k)]
    out_len = dy.shape[axis]
    return _spread(parts, _axis_windows(axis, k, stride, out_len), in_shape,
                   _tiles(in_shape[axis], k, stride, out_len), out)


def _spread(parts: list[Any], windows_: list[tuple[slice, ...]], in_shape: tuple[int, ...], tiles: bool,
            out: Any = None) -> Any:
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
    return parallel(xp, n, fn, step=max(1, CACHE_VALUES // 2 // per_sample))


def max_pool(x: Any, pool: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]) -> tuple[Any, Any]:
    """Max over each window of a padded (N, H, W, C) image; returns (output, what backward needs).

    Separable: maxima along the width, then along the height. The gradient goes to the first
    maximum of each window in row-major order, as TensorFlow."""
    xp = xp_of(x)
    n = x.shape[0]
    out = xp.empty((n, *out_hw, x.shape[3]), dtype=x.dtype)

    def work(first: int, last: int, worker: int) -> tuple[Any, ...]:
        row_max, arg_w = _max_1d(x[first:last], 2, pool[1], strides[1], out_hw[1])
        _, arg_h = _max_1d(row_max, 1, pool[0], strides[0], out_hw[0], out=out[first:last])
        return first, last, arg_w, arg_h, row_max.shape

    return out, (_sample_parts(x, n, work), x.shape)


def max_pool_backward(dy: Any, saved: Any, pool: tuple[int, int], strides: tuple[int, int]) -> Any:
    parts, in_shape = saved
    dx = xp_of(dy).empty(in_shape, dtype=dy.dtype)

    def work(a: int, b: int, worker: int) -> None:  # the forward's sample ranges, one per worker
        for first, stop, arg_w, arg_h, mid_shape in parts[a:b]:
            d_mid = _max_1d_backward(dy[first:stop], arg_h, mid_shape, 1, pool[0], strides[0])
            _max_1d_backward(d_mid, arg_w, (stop - first, *in_shape[1:]), 2, pool[1], strides[1],
                             out=dx[first:stop])

    parallel(xp_of(dy), len(parts), work, step=1)
    return dx


def window_counts(xp: Any, size: tuple[int, int], pool: tuple[int, int], strides: tuple[int, int],
                  pads: tuple[int, int, int, int], out_hw: tuple[int, int], dtype: Any) -> Any:
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


def avg_pool(x: Any, pool: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int], counts: Any) -> Any:
    """Window means of a zero-padded image; `counts` is the window area or `window_counts`."""
    xp = xp_of(x)
    n = x.shape[0]
    out = xp.empty((n, *out_hw, x.shape[3]), dtype=x.dtype)

    def work(first: int, last: int, worker: int) -> None:
        part = out[first:last]
        _sum_1d(_sum_1d(x[first:last], 2, pool[1], strides[1], out_hw[1]), 1, pool[0], strides[0], out_hw[0], part)
        part /= counts

    _sample_parts(x, n, work)
    return out


def avg_pool_backward(dy: Any, padded_shape: tuple[int, ...], pool: tuple[int, int], strides: tuple[int, int],
                      counts: Any) -> Any:
    xp = xp_of(dy)
    dx = xp.empty(padded_shape, dtype=dy.dtype)

    def work(first: int, last: int, worker: int) -> None:
        share = dy[first:last] / counts
        m = last - first
        mid_shape = (m, padded_shape[1], dy.shape[2], dy.shape[3])
        d_mid = _spread([share] * pool[0], _axis_windows(1, pool[0], strides[0], dy.shape[1]), mid_shape,
                        _tiles(padded_shape[1], pool[0], strides[0], dy.shape[1]))
        _spread([d_mid] * pool[1], _axis_windows(2, pool[1], strides[1], dy.shape[2]), (m, *padded_shape[1:]),
                _tiles(padded_shape[2], pool[1], strides[1], dy.shape[2]), dx[first:last])

    _sample_parts(dx, dy.shape[0], work)
    return dx


def column_sums(x2d: Any, ws: Workspace | None = None) -> Any:
    """Sum over the rows of a (M, C) matrix; a matrix-vector product, much faster than sum(axis=0) on NumPy."""
    xp = xp_of(x2d)
    if xp.__name__ != "numpy":
        return x2d.sum(axis=0)
    m = x2d.shape[0]
    ones = ws.ones(m, x2d.dtype, xp) if ws is not None else xp.ones(m, dtype=x2d.dtype)
    return ones @ x2d


__all__ = ["PADDINGS", "CACHE_VALUES", "effective_kernel", "output_length", "padding_amounts", "cpu_workers",
           "workers_started", "parallel", "matmul", "Workspace", "pad_hw", "crop_hw", "windows", "im2col", "chunk_samples", "conv_chunk",
           "conv_chunk_kernel_grad", "conv_forward", "padded_chunks", "window_slices", "col2im", "max_pool",
           "max_pool_backward", "window_counts", "avg_pool", "avg_pool_backward", "column_sums"]
