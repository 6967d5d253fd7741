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
