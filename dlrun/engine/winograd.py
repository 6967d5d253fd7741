"""Winograd F(2x2, 3x3): a 3x3 stride-1 convolution as 16 matrix products over 2x2 output tiles.

Each 2x2 output tile Y of a correlation with a 3x3 kernel g comes from the 4x4 input tile d under it:
Y = A^T [(G g G^T) * (B^T d B)] A. Over a chunk of images the 16 element-wise products, summed over
input channels, are 16 products (tiles, C) @ (C, F): 16 multiply-adds per 4 output pixels where
im2col spends 9 per pixel, in matrix products BLAS runs near its ceiling (200-245 GFLOP/s on one
Intel SkylakeX core, 82-93 on one AMD EPYC core whose 1024^3 product ran at 76). The transforms
are additions only, so most of the 2.25x fewer multiply-adds is saved: a forward and backward of
the seed and CIFAR-10 CNNs' 3x3 layers at batch 128 ran 1.15-1.6x faster than im2col on the EPYC
(2 threads).

The input gradient is the same convolution of dz with the flipped kernel; the kernel gradient is
G^T [sum over tiles of (B^T d B) (A dz A^T)] G, 16 products (C, tiles) @ (tiles, F) per chunk.

Numerics: float32 results differ from im2col's in the last bits (about 1e-6 relative, the inputs are
added before they are multiplied). Set DLRUN_WINOGRAD=0 for im2col's bits, which match Keras's
backends more closely. Every transform runs the same operations in the same order with numba
(dlrun.engine.numba_kernels) or with NumPy's strided views, so the results are the same bits either
way, and chunks are fixed by the shapes and summed in order, so the same bits on any thread count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from dlrun.engine import compiled, workspace
from dlrun.engine.conv_ops import pad_hw
from dlrun.engine.threads import parallel
from dlrun.engine.workspace import Workspace

#: Input and output channels from which Winograd is used: with fewer the matrix products are too
#: thin for BLAS to run at speed, and the transforms cost more than they save (a first layer on
#: grey or RGB images stays im2col).
MIN_CHANNELS = 16


def enabled() -> bool:
    """False when DLRUN_WINOGRAD=0 asks for im2col everywhere."""
    return os.environ.get("DLRUN_WINOGRAD", "").strip() != "0"


def applies(kernel_shape: tuple[int, ...], strides: tuple[int, int], dilation: tuple[int, int], xp: Any) -> bool:
    """Whether a convolution with this kernel (KH, KW, C, F) runs as Winograd: 3x3, stride 1, no
    dilation, NumPy arrays (on a GPU im2col's one big product is faster), enough channels."""
    kh, kw, c, f = kernel_shape
    return (
        enabled()
        and xp.__name__ == "numpy"
        and (kh, kw) == (3, 3)
        and tuple(strides) == (1, 1)
        and tuple(dilation) == (1, 1)
        and min(c, f) >= MIN_CHANNELS
    )


def tiles(out_hw: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of 2x2 output tiles covering an (OH, OW) output."""
    return -(-out_hw[0] // 2), -(-out_hw[1] // 2)


#: Multiply-adds of one of a chunk's 16 products (tiles x C x F) up to which OpenBLAS's builds for
#: AVX-512 run them with their small-matrix kernels, which skip packing: on an AMD EPYC (AVX-512)
#: the products ran 1.2-1.4x faster per sample within this size than just above it. Its Haswell
#: kernels, which have no such path, ran the same from 1 to 8 samples a chunk.
SMALL_PRODUCT = 100**3


def chunk_samples(n: int, out_hw: tuple[int, int], c: int, f: int) -> int:
    """Samples per chunk of a batch of n: their transformed tiles stay in cache, and each of the
    16 products stays a small one. Fixed by the shapes alone, so the same chunks on any thread
    count."""
    th, tw = tiles(out_hw)
    cached = workspace.chunk_samples(np, n, 16 * th * tw * max(c, f))
    return max(1, min(cached, SMALL_PRODUCT // (th * tw * c * f)))


# -- the kernel's transforms, once per step, in float64 --------------------------------------------
def _g_rows(x: Any) -> Any:
    """G x along axis 0: (3, ...) -> (4, ...), G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]."""
    return np.stack([x[0], (x[0] + x[1] + x[2]) * 0.5, (x[0] - x[1] + x[2]) * 0.5, x[2]])


def _gt_rows(s: Any) -> Any:
    """G^T s along axis 0: (4, ...) -> (3, ...)."""
    half = (s[1] + s[2]) * 0.5
    return np.stack([s[0] + half, (s[1] - s[2]) * 0.5, half + s[3]])


def transform_kernel(kernel4: Any) -> Any:
    """U (16, C, F) = G g G^T of a (3, 3, C, F) kernel, tile position-major, in the kernel's dtype."""
    _, _, c, f = kernel4.shape
    u = _g_rows(_g_rows(kernel4.astype(np.float64)).swapaxes(0, 1)).swapaxes(0, 1)
    return np.ascontiguousarray(u.reshape(16, c, f), dtype=kernel4.dtype)


def kernel_gradient(s: Any, dtype: Any) -> Any:
    """The (3, 3, C, F) kernel gradient G^T S G from the tile-space gradient S (16, C, F)."""
    _, c, f = s.shape
    s4 = s.reshape(4, 4, c, f).astype(np.float64)
    return _gt_rows(_gt_rows(s4).swapaxes(0, 1)).swapaxes(0, 1).astype(dtype)


# -- the tile transforms, NumPy versions of the numba kernels --------------------------------------
def _bt_into(x0: Any, x1: Any, x2: Any, x3: Any, out: Any) -> None:
    """out[0..3] = B^T (x0, x1, x2, x3)."""
    np.subtract(x0, x2, out=out[0])
    np.add(x1, x2, out=out[1])
    np.subtract(x2, x1, out=out[2])
    np.subtract(x1, x3, out=out[3])


def _a_into(x0: Any, x1: Any, out: Any) -> None:
    """out[0..3] = A (x0, x1)."""
    out[0] = x0
    np.add(x0, x1, out=out[1])
    np.subtract(x0, x1, out=out[2])
    np.negative(x1, out=out[3])


def _input_numpy(d: Any, th: int, tw: int, v: Any, ws: Workspace, key: str) -> None:
    m, c = d.shape[0], d.shape[3]
    wp = 2 * tw + 2
    rows = [d[:, r : r + 2 * th : 2, :wp] for r in range(4)]
    t = ws.rows(key + "wrows", 4 * m * th * wp * c, (), d.dtype, np).reshape(4, m, th, wp, c)
    _bt_into(*rows, t)
    v6 = v.reshape(4, 4, m, th, tw, c)
    for a in range(4):
        _bt_into(*(t[a][:, :, s : s + 2 * tw : 2] for s in range(4)), v6[a])


def _output_numpy(mm: Any, th: int, tw: int, out4: Any, ws: Workspace, key: str) -> None:
    m, oh, ow, f = out4.shape
    mm6 = mm.reshape(4, 4, m, th, tw, f)
    s = ws.rows(key + "wsums", 2 * 4 * m * th * tw * f, (), mm.dtype, np).reshape(2, 4, m, th, tw, f)
    np.add(mm6[0], mm6[1], out=s[0])
    s[0] += mm6[2]
    np.subtract(mm6[1], mm6[2], out=s[1])
    s[1] -= mm6[3]
    for p in range(2):
        ph = (oh - p + 1) // 2
        even, odd = out4[:, p::2, 0::2], out4[:, p::2, 1::2]
        sp = [s[p][b][:, :ph] for b in range(4)]
        np.add(sp[0][:, :, : even.shape[2]], sp[1][:, :, : even.shape[2]], out=even)
        even += sp[2][:, :, : even.shape[2]]
        np.subtract(sp[1][:, :, : odd.shape[2]], sp[2][:, :, : odd.shape[2]], out=odd)
        odd -= sp[3][:, :, : odd.shape[2]]


def _output_grad_numpy(dz4: Any, th: int, tw: int, w: Any, ws: Workspace, key: str) -> None:
    m, oh, ow, f = dz4.shape
    if (oh, ow) != (2 * th, 2 * tw):  # odd sizes: the missing pixels' gradients are zeros
        dzp = ws.rows(key + "wdz", m, (2 * th, 2 * tw, f), dz4.dtype, np, fill=0.0)
        dzp[:, :oh, :ow] = dz4
        dz4 = dzp
    t = ws.rows(key + "wrows", 4 * m * th * 2 * tw * f, (), dz4.dtype, np).reshape(4, m, th, 2 * tw, f)
    _a_into(dz4[:, 0::2], dz4[:, 1::2], t)
    w6 = w.reshape(4, 4, m, th, tw, f)
    for a in range(4):
        _a_into(t[a][:, :, 0::2], t[a][:, :, 1::2], w6[a])


# -- chunks ----------------------------------------------------------------------------------------
#: Bytes the 16 tile planes of a buffer are set apart by beyond a multiple of 4 KiB: a transform
#: touches one value in each of the 16 planes in turn, and planes a multiple of 4 KiB apart fall
#: into the same cache set (16 values competing for its 8-12 ways). Measured with 8x8 tiles (a
#: 16x16 output): planes 64 KiB apart made a layer's forward and backward 1.8-2.5x slower.
PLANE_SKEW_BYTES = 64


def _planes(ws: Workspace, key: str, rows: int, cols: int, dtype: Any) -> Any:
    """A (16, rows, cols) scratch view, each plane C-contiguous, planes skewed in cache."""
    itemsize = np.dtype(dtype).itemsize
    page = 4096 // itemsize
    stride = -(-rows * cols // page) * page + PLANE_SKEW_BYTES // itemsize
    flat = ws.rows(key, 16 * stride, (), dtype, np)
    return flat.reshape(16, stride)[:, : rows * cols].reshape(16, rows, cols)


def _tile_input(x: Any, pads: tuple[int, int, int, int], th: int, tw: int, ws: Workspace, key: str) -> Any:
    """V (16, m*th*tw, C): the transformed 4x4 input tiles of images x (m, H, W, C) padded by `pads`
    and, for odd output sizes, by one more zero row or column at the bottom or right."""
    m, h, w, c = x.shape
    top, _, left, _ = pads
    hp, wp = 2 * th + 2, 2 * tw + 2
    if (hp, wp) != (h, w):
        buf = ws.rows(key + "wpad", m, (hp, wp, c), x.dtype, np, fill=0.0)
        x = pad_hw(x, (top, hp - h - top, left, wp - w - left), out=buf)
    v = _planes(ws, key + "wv", m * th * tw, c, x.dtype)
    fused = compiled.kernels()
    if fused is not None:
        fused.winograd_input(x, th, tw, v)
    else:
        _input_numpy(x, th, tw, v, ws, key)
    return v


def conv_chunk(
    x: Any, pads: tuple[int, int, int, int], u: Any, out_hw: tuple[int, int], out: Any, ws: Workspace, key: str = ""
) -> Any:
    """out (m*OH*OW, F) = the convolution of images x (m, H, W, C) padded by `pads` with the
    transformed kernel u (16, C, F)."""
    m, f = x.shape[0], u.shape[2]
    th, tw = tiles(out_hw)
    v = _tile_input(x, pads, th, tw, ws, key)
    mm = _planes(ws, key + "wm", m * th * tw, f, x.dtype)
    np.matmul(v, u, out=mm)
    out4 = out.reshape(m, out_hw[0], out_hw[1], f)
    fused = compiled.kernels()
    if fused is not None:
        fused.winograd_output(mm, th, tw, out4)
    else:
        _output_numpy(mm, th, tw, out4, ws, key)
    return out


def conv_forward(
    x: Any,
    pads: tuple[int, int, int, int],
    u: Any,
    out_hw: tuple[int, int],
    out: Any,
    ws: Workspace,
    key: str = "",
    epilogue: Callable[[Any, slice], None] | None = None,
) -> Any:
    """out (N*OH*OW, F): conv_chunk over cache-sized chunks of x shared by the threads, with
    `epilogue(out_chunk, rows)` on each chunk while it is in cache (as conv_ops.conv_forward)."""
    n, c = x.shape[0], x.shape[3]
    oh, ow = out_hw
    chunk = chunk_samples(n, out_hw, c, u.shape[2])

    def work(first: int, last: int, worker: int) -> None:
        rows = slice(first * oh * ow, last * oh * ow)
        conv_chunk(x[first:last], pads, u, out_hw, out[rows], ws.worker(worker), key)
        if epilogue is not None:
            epilogue(out[rows], rows)

    parallel(np, n, work, step=chunk)
    return out


def kernel_grad_chunk(
    x: Any, pads: tuple[int, int, int, int], dz: Any, out_hw: tuple[int, int], ws: Workspace, key: str = ""
) -> Any:
    """S (16, C, F), one chunk's share of the tile-space kernel gradient: the input tiles of x
    (m, H, W, C) recomputed, times the transformed output gradients dz (m*OH*OW, F)."""
    m, f = x.shape[0], dz.shape[1]
    th, tw = tiles(out_hw)
    v = _tile_input(x, pads, th, tw, ws, key)
    w = _planes(ws, key + "wm", m * th * tw, f, dz.dtype)
    dz4 = dz.reshape(m, out_hw[0], out_hw[1], f)
    fused = compiled.kernels()
    if fused is not None:
        fused.winograd_output_grad(dz4, th, tw, dz.dtype.type(0), w)
    else:
        _output_grad_numpy(dz4, th, tw, w, ws, key)
    return np.matmul(v.transpose(0, 2, 1), w)
