"""Convolution kernels, channels-last, written against `xp`: output sizes, padding, im2col/col2im.

im2col copies the sliding windows of an (N, H, W, C) image into one contiguous
(N*OH*OW, KH*KW*C) matrix, so a convolution is one matmul; col2im adds windows back with one
strided slice per kernel position. Neither scatters, so both run on NumPy and CuPy alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from dlrun.engine import compiled
from dlrun.engine.backend import xp_of
from dlrun.engine.threads import parallel, product
from dlrun.engine.workspace import Workspace, chunk_samples

PADDINGS = ("valid", "same")


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
    out[:, top : top + h, left : left + w, :] = x
    return out


def crop_hw(x: Any, pads: tuple[int, int, int, int]) -> Any:
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return x[:, top : x.shape[1] - bottom, left : x.shape[2] - right, :]


# -- im2col / col2im -------------------------------------------------------------------------------
def windows(
    x: Any, kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int], out_hw: tuple[int, int]
) -> Any:
    """A read-only strided view (N, OH, OW, KH, KW, C) of the windows of a padded image."""
    xp = xp_of(x)
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilation, out_hw
    s0, s1, s2, s3 = x.strides
    shape, strides = (x.shape[0], oh, ow, kh, kw, x.shape[3]), (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3)
    if xp.__name__ == "numpy" and x.flags.c_contiguous:
        # The same view without as_strided's detour through __array_interface__: 0.6 against 3.8 us,
        # for a few hundred chunks per step, with the GIL held.
        return np.ndarray(shape, x.dtype, buffer=x, strides=strides)
    return xp.lib.stride_tricks.as_strided(x, shape, strides)


def im2col(
    x: Any,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    out: Any = None,
) -> Any:
    """The windows of padded `x` as a (N*OH*OW, KH*KW*C) matrix: C-contiguous, or for one channel
    on the CPU the transpose of a C-contiguous (KH*KW, N*OH*OW) one (`out` holds it either way)."""
    xp = xp_of(x)
    n, c = x.shape[0], x.shape[3]
    if c == 1 and xp.__name__ == "numpy":
        # Kernel position-major: the copy runs along image rows into contiguous memory, 3x faster
        # than writing every 25th value (LeNet-5's first layer), and BLAS reads the transposed
        # view as it is. One copy call, not one per position: less Python holding the GIL.
        shape_t = (kernel[0], kernel[1], n, out_hw[0], out_hw[1])
        cols_t = xp.empty(shape_t, dtype=x.dtype) if out is None else out.reshape(shape_t)
        cols_t[...] = windows(x, kernel, strides, dilation, out_hw)[..., 0].transpose(3, 4, 0, 1, 2)
        return cols_t.reshape(kernel[0] * kernel[1], -1).T
    shape = (n, out_hw[0], out_hw[1], kernel[0], kernel[1], c)
    out = xp.empty(shape, dtype=x.dtype) if out is None else out.reshape(shape)
    if c == 2 and xp.__name__ == "numpy":
        # Few channels: one strided slice per kernel position copies whole image rows at a time.
        for i, j, rows, cols in window_slices(kernel, strides, dilation, out_hw):
            out[:, :, :, i, j, :] = x[:, rows, cols, :]
    else:
        out[...] = windows(x, kernel, strides, dilation, out_hw)
    return out.reshape(-1, kernel[0] * kernel[1] * c)


def conv_chunk(
    src: Any,
    kernel4: Any,
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    out: Any,
    ws: Workspace,
    key: str = "",
) -> Any:
    """out (m*OH*OW, F) = the convolution of padded images src (m, Hp, Wp, C) with kernel4 (KH, KW, C, F):
    im2col, then one matmul."""
    xp = xp_of(src)
    kh, kw, c, f = kernel4.shape
    cols = im2col(
        src,
        (kh, kw),
        strides,
        dilation,
        out_hw,
        out=ws.rows(key + "cols", src.shape[0] * out_hw[0] * out_hw[1], (kh * kw * c,), src.dtype, xp),
    )
    return product(cols, kernel4.reshape(-1, f), out=out)


def conv_chunk_kernel_grad(
    src: Any,
    dz: Any,
    kernel_shape: tuple[int, ...],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    ws: Workspace,
    key: str = "",
) -> Any:
    """The kernel gradient (KH, KW, C, F) of one chunk: windows(src)^T @ dz, the windows recomputed."""
    xp = xp_of(src)
    kh, kw, c, f = kernel_shape
    cols = im2col(
        src,
        (kh, kw),
        strides,
        dilation,
        out_hw,
        out=ws.rows(key + "cols", src.shape[0] * out_hw[0] * out_hw[1], (kh * kw * c,), src.dtype, xp),
    )
    return product(cols.T, dz).reshape(kernel_shape)


def conv_forward(
    x: Any,
    pads: tuple[int, int, int, int],
    kernel4: Any,
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    out: Any,
    ws: Workspace,
    key: str = "",
    epilogue: Callable[[Any, slice], None] | None = None,
) -> Any:
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


def padded_chunks(
    x: Any, pads: tuple[int, int, int, int], chunk: int, ws: Workspace, key: str = ""
) -> Iterator[tuple[int, Any]]:
    """(first sample, padded images) for consecutive chunks of `chunk` samples, padded into a reused buffer."""
    xp = xp_of(x)
    n, h, w, c = x.shape
    top, bottom, left, right = pads
    buf = (
        ws.get(key + "pad", (chunk, h + top + bottom, w + left + right, c), x.dtype, xp, fill=0.0)
        if any(pads)
        else None
    )
    for start in range(0, n, chunk):
        part = x[start : start + chunk]
        yield start, (pad_hw(part, pads, out=buf[: part.shape[0]]) if buf is not None else part)


def window_slices(
    kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int], out_hw: tuple[int, int]
) -> Iterator[tuple[int, int, slice, slice]]:
    """(kh, kw, rows, cols): the input pixels each kernel position sees, over all windows."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            yield (i, j, slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def col2im(
    cols: Any,
    padded_shape: tuple[int, ...],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    out: Any = None,
) -> Any:
    """The adjoint of im2col: window gradients summed back into a padded image (one slice per position)."""
    xp = xp_of(cols)
    n, c = padded_shape[0], padded_shape[3]
    cols6 = cols.reshape(n, out_hw[0], out_hw[1], kernel[0], kernel[1], c)
    if out is None:
        out = xp.zeros(padded_shape, dtype=cols.dtype)
    else:
        out[...] = 0
    fused = compiled.kernels() if xp.__name__ == "numpy" else None
    if fused is not None:  # one loop, the same sums: NumPy's slices of a few channels are slow
        fused.col2im(cols6, out, *strides, *dilation)
        return out
    for i, j, rows, colsl in window_slices(kernel, strides, dilation, out_hw):
        out[:, rows, colsl, :] += cols6[:, :, :, i, j, :]
    return out
