"""The numba kernels behind `dlrun.engine.compiled.kernels()`; importing this module needs numba.

Every kernel repeats, value by value, the float operations of the NumPy code it replaces (same
order, same dtype, scalars already in the arrays' dtype), and error_model="numpy" lets LLVM
vectorise the divisions and square roots without reordering them, so results are bit-identical.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")


@_jit
def adam(w, g, m, v, one_minus_b1, one_minus_b2, epsilon, alpha):  # pragma: no cover (compiled)
    """Keras's Adam step in place: m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    w -= m / (sqrt(v) + epsilon) * alpha."""
    for i in range(w.shape[0]):
        gi = g[i]
        mi = m[i] + (gi - m[i]) * one_minus_b1
        vi = v[i] + (gi * gi - v[i]) * one_minus_b2
        m[i] = mi
        v[i] = vi
        w[i] -= mi / (np.sqrt(vi) + epsilon) * alpha


@_jit
def flush_below(bits, exponent, smallest):  # pragma: no cover (compiled)
    """Zero the values whose exponent bits (bits & exponent) are below `smallest`, in place, on
    the integer view of a float array: the masks of optimizers.flush_subnormals, in one pass."""
    for i in range(bits.shape[0]):
        if bits[i] & exponent < smallest:
            bits[i] = 0


# -- Activations, on C-contiguous arrays seen flat ---------------------------------------------------------
@_jit
def relu_grad(y, dy, zero, out):  # pragma: no cover (compiled)
    """out = dy * (y > 0): dy where the output is positive, else dy * 0 (-0.0 for a negative dy, NaN
    for NaN, as NumPy's product with the cast mask gives)."""
    yf, df, of = y.reshape(-1), dy.reshape(-1), out.reshape(-1)
    for i in range(of.shape[0]):
        of[i] = df[i] if yf[i] > 0 else df[i] * zero


@_jit
def tanh_grad(y, dy, one, out):  # pragma: no cover (compiled)
    """out = dy * (1 - y * y)."""
    yf, df, of = y.reshape(-1), dy.reshape(-1), out.reshape(-1)
    for i in range(of.shape[0]):
        of[i] = df[i] * (one - yf[i] * yf[i])


@_jit
def sigmoid_grad(y, dy, one, out):  # pragma: no cover (compiled)
    """out = dy * y * (1 - y), multiplied left to right."""
    yf, df, of = y.reshape(-1), dy.reshape(-1), out.reshape(-1)
    for i in range(of.shape[0]):
        of[i] = df[i] * yf[i] * (one - yf[i])


@_jit
def bias_relu(z, bias, zero, out):  # pragma: no cover (compiled)
    """z += bias; out = max(z, 0) for a (rows, width) block: np.maximum's result, NaN kept and
    +0.0 for -0.0 (its second operand). `out` may be `z`."""
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            v = z[i, j] + bias[j]
            z[i, j] = v
            out[i, j] = v if (v > zero or v != v) else zero


# -- BatchNormalization over a (rows, width) block, per-column vectors of that width ---------------
@_jit
def scale_shift(x, a, shift, out):  # pragma: no cover (compiled)
    """out = x * a + shift."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * a[j] + shift[j]


@_jit
def centred_square(x, mean, out):  # pragma: no cover (compiled)
    """out = (x - mean)^2."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            d = x[i, j] - mean[j]
            out[i, j] = d * d


@_jit
def centred_product(x, mean, dy, out):  # pragma: no cover (compiled)
    """out = (x - mean) * dy."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = (x[i, j] - mean[j]) * dy[i, j]


@_jit
def batchnorm_input_grad(dy, x, a, mean, b, c, out):  # pragma: no cover (compiled)
    """out = dy * a + ((x - mean) * b + c)."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = dy[i, j] * a[j] + ((x[i, j] - mean[j]) * b[j] + c[j])


# -- 2x2 pooling windows that tile the image (stride 2), channels-last (N, H, W, C) -------------------
@_jit
def avg_pool_2x2(x, counts, out):  # pragma: no cover (compiled)
    """2x2 window means in the order of the separable NumPy passes: each row's pair summed,
    then the two row sums, divided by counts[i, j]."""
    n, oh, ow, c = out.shape
    for a in range(n):
        for i in range(oh):
            for j in range(ow):
                for k in range(c):
                    top = x[a, 2 * i, 2 * j, k] + x[a, 2 * i, 2 * j + 1, k]
                    bottom = x[a, 2 * i + 1, 2 * j, k] + x[a, 2 * i + 1, 2 * j + 1, k]
                    out[a, i, j, k] = (top + bottom) / counts[i, j]


@_jit
def avg_pool_2x2_backward(dy, counts, dx):  # pragma: no cover (compiled)
    """Every pixel of a 2x2 window gets the window's dy / count."""
    n, oh, ow, c = dy.shape
    for a in range(n):
        for i in range(oh):
            for j in range(ow):
                for k in range(c):
                    share = dy[a, i, j, k] / counts[i, j]
                    dx[a, 2 * i, 2 * j, k] = share
                    dx[a, 2 * i, 2 * j + 1, k] = share
                    dx[a, 2 * i + 1, 2 * j, k] = share
                    dx[a, 2 * i + 1, 2 * j + 1, k] = share


@_jit
def _max2(a, b):  # pragma: no cover (compiled)
    """np.maximum of two values: NaN wins."""
    return b if (b > a or b != b) else a


@_jit
def max_pool_2x2(x, out, arg_w, arg_h):  # pragma: no cover (compiled)
    """2x2 maxima along the width, then the height, with NumPy's masks: arg_w (N, H, OW, C) and
    arg_h (N, OH, OW, C) are True where the second value of a pair is strictly greater."""
    n, oh, ow, c = out.shape
    for a in range(n):
        for i in range(oh):
            for j in range(ow):
                for k in range(c):
                    p, q = x[a, 2 * i, 2 * j, k], x[a, 2 * i, 2 * j + 1, k]
                    top = _max2(p, q)
                    arg_w[a, 2 * i, j, k] = q > p
                    p, q = x[a, 2 * i + 1, 2 * j, k], x[a, 2 * i + 1, 2 * j + 1, k]
                    bottom = _max2(p, q)
                    arg_w[a, 2 * i + 1, j, k] = q > p
                    out[a, i, j, k] = _max2(top, bottom)
                    arg_h[a, i, j, k] = bottom > top


@_jit
def _route_pair(v, mask, levels, dx, a, r, j, k):  # pragma: no cover (compiled)
    """One row's pair: right = v * mask, left = v - right (levels: [0, 1] in dx's dtype)."""
    right = v * levels[1 if mask else 0]
    dx[a, r, 2 * j, k] = v - right
    dx[a, r, 2 * j + 1, k] = right


@_jit
def max_pool_2x2_backward(dy, arg_w, arg_h, levels, dx):  # pragma: no cover (compiled)
    """The gradient routed as the NumPy passes route it: second = d * mask, first = d - second."""
    n, oh, ow, c = dy.shape
    for a in range(n):
        for i in range(oh):
            for j in range(ow):
                for k in range(c):
                    d = dy[a, i, j, k]
                    second = d * levels[1 if arg_h[a, i, j, k] else 0]
                    _route_pair(d - second, arg_w[a, 2 * i, j, k], levels, dx, a, 2 * i, j, k)
                    _route_pair(second, arg_w[a, 2 * i + 1, j, k], levels, dx, a, 2 * i + 1, j, k)


# -- convolution -----------------------------------------------------------------------------------
@_jit
def col2im(cols6, out, sh, sw, dh, dw):  # pragma: no cover (compiled)
    """out (N, Hp, Wp, C), zeros on entry, += the window gradients cols6 (N, OH, OW, KH, KW, C),
    kernel position by position as the NumPy col2im adds them (each pixel's sum in that order)."""
    n, oh, ow, kh, kw, c = cols6.shape
    for i in range(kh):
        for j in range(kw):
            for b in range(n):
                for y in range(oh):
                    for x in range(ow):
                        row = out[b, y * sh + i * dh, x * sw + j * dw]
                        src = cols6[b, y, x, i, j]
                        for k in range(c):
                            row[k] += src[k]


# -- Winograd F(2x2, 3x3): the tile transforms of dlrun.engine.winograd, one tile at a time ---------
@_jit
def _bt(x0, x1, x2, x3):  # pragma: no cover (compiled)
    """B^T x for four values along one axis of a 4x4 input tile."""
    return x0 - x2, x1 + x2, x2 - x1, x1 - x3


@_jit
def _at(x0, x1, x2, x3):  # pragma: no cover (compiled)
    """A^T x: two outputs from four products, summed left to right."""
    return (x0 + x1) + x2, (x1 - x2) - x3


@_jit
def _a(x0, x1):  # pragma: no cover (compiled)
    """A x: a 2-value output-gradient pair spread over four tile positions."""
    return x0, x0 + x1, x0 - x1, -x1


@_jit
def winograd_input(d, th, tw, v):  # pragma: no cover (compiled)
    """v (16, m*th*tw, C) = B^T d B for the 4x4 tiles of padded images d (m, >=2th+2, >=2tw+2, C),
    rows transformed first, then columns, as winograd._input_numpy does."""
    m, c = d.shape[0], d.shape[3]
    for n in range(m):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                y, x = 2 * i, 2 * j
                for k in range(c):
                    c0 = _bt(d[n, y, x, k], d[n, y + 1, x, k], d[n, y + 2, x, k], d[n, y + 3, x, k])
                    c1 = _bt(d[n, y, x + 1, k], d[n, y + 1, x + 1, k], d[n, y + 2, x + 1, k], d[n, y + 3, x + 1, k])
                    c2 = _bt(d[n, y, x + 2, k], d[n, y + 1, x + 2, k], d[n, y + 2, x + 2, k], d[n, y + 3, x + 2, k])
                    c3 = _bt(d[n, y, x + 3, k], d[n, y + 1, x + 3, k], d[n, y + 2, x + 3, k], d[n, y + 3, x + 3, k])
                    for a in range(4):
                        r = _bt(c0[a], c1[a], c2[a], c3[a])
                        v[4 * a, t, k] = r[0]
                        v[4 * a + 1, t, k] = r[1]
                        v[4 * a + 2, t, k] = r[2]
                        v[4 * a + 3, t, k] = r[3]


@_jit
def winograd_output(mm, th, tw, out):  # pragma: no cover (compiled)
    """out (m, OH, OW, F) = A^T mm A for the tiles' products mm (16, m*th*tw, F); the pixels of
    the last tile row or column that lie outside an odd-sized output are dropped."""
    m, oh, ow, f = out.shape
    for n in range(m):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                y, x = 2 * i, 2 * j
                for k in range(f):
                    s0 = _at(mm[0, t, k], mm[4, t, k], mm[8, t, k], mm[12, t, k])
                    s1 = _at(mm[1, t, k], mm[5, t, k], mm[9, t, k], mm[13, t, k])
                    s2 = _at(mm[2, t, k], mm[6, t, k], mm[10, t, k], mm[14, t, k])
                    s3 = _at(mm[3, t, k], mm[7, t, k], mm[11, t, k], mm[15, t, k])
                    for p in range(2):
                        if y + p < oh:
                            r = _at(s0[p], s1[p], s2[p], s3[p])
                            out[n, y + p, x, k] = r[0]
                            if x + 1 < ow:
                                out[n, y + p, x + 1, k] = r[1]


@_jit
def winograd_output_grad(dz, th, tw, zero, w):  # pragma: no cover (compiled)
    """w (16, m*th*tw, F) = A dz A^T for the 2x2 output tiles of dz (m, OH, OW, F), `zero` for the
    pixels beyond an odd-sized output, rows first, as winograd._output_grad_numpy does."""
    m, oh, ow, f = dz.shape
    for n in range(m):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                y, x = 2 * i, 2 * j
                for k in range(f):
                    d00 = dz[n, y, x, k]
                    d01 = dz[n, y, x + 1, k] if x + 1 < ow else zero
                    d10 = dz[n, y + 1, x, k] if y + 1 < oh else zero
                    d11 = dz[n, y + 1, x + 1, k] if (y + 1 < oh and x + 1 < ow) else zero
                    c0 = _a(d00, d10)
                    c1 = _a(d01, d11)
                    for a in range(4):
                        r = _a(c0[a], c1[a])
                        w[4 * a, t, k] = r[0]
                        w[4 * a + 1, t, k] = r[1]
                        w[4 * a + 2, t, k] = r[2]
                        w[4 * a + 3, t, k] = r[3]
