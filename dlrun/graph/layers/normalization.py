"""Normalization layers: BatchNormalization (with moving statistics) and LayerNormalization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlrun.checks import BOOL, INT, NUMBER, POSITIVE, Bounds, checked, declare
from dlrun.engine import compiled, initializers, regularizers, workspace
from dlrun.engine.backend import xp_of
from dlrun.engine.threads import parallel
from dlrun.engine.workspace import Workspace, column_sums
from dlrun.graph.layer import LAYERS, Layer, ShapeError


def _axis(layer: Layer, axis: int, input_shape: Any) -> int:
    """A Keras axis (counting the batch axis; negative from the end) as an index into `input_shape`."""
    rank = len(input_shape) + 1
    full = axis + rank if axis < 0 else axis
    if not 1 <= full < rank:
        raise ShapeError(
            f"{layer.type_name} axis={axis} is out of range for input of shape "
            f"(None, {', '.join(map(str, input_shape))}); use an axis from 1 to {rank - 1} (or -1)"
        )
    return full - 1


class _Normalization(Layer):
    """What BatchNormalization and LayerNormalization share: epsilon and the learned scale (gamma)
    and offset (beta) with their initializers and regularizers."""

    bounds = declare(epsilon=POSITIVE)

    def _set_affine_options(
        self,
        epsilon: float,
        center: bool,
        scale: bool,
        beta_initializer: Any,
        gamma_initializer: Any,
        beta_regularizer: Any,
        gamma_regularizer: Any,
    ) -> None:
        self.epsilon = checked(self, "epsilon", epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)

    def _add_gamma_and_beta(self, shape: tuple[int, ...]) -> None:
        if self.scale:
            self.add_weight("gamma", shape, self.gamma_initializer, regularizer=self.gamma_regularizer)
        if self.center:
            self.add_weight("beta", shape, self.beta_initializer, regularizer=self.beta_regularizer)

    def _affine_config(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": self.beta_initializer.spec(),
            "gamma_initializer": self.gamma_initializer.spec(),
            "beta_regularizer": self.beta_regularizer and self.beta_regularizer.spec(),
            "gamma_regularizer": self.gamma_regularizer and self.gamma_regularizer.spec(),
        }


@LAYERS.register("BatchNormalization")
class BatchNormalization(_Normalization):
    """Normalizes each feature (channel) over the batch: gamma * (x - mean) / sqrt(var + epsilon) + beta.

    Training uses the batch mean and (biased) variance and updates the moving statistics,
    `moving = moving * momentum + batch * (1 - momentum)`; inference uses the moving statistics.
    A layer with `trainable: false` always runs in inference mode, as in Keras.

    Args:
        axis: the feature axis (counting the batch axis). Defaults to -1.
        momentum: Defaults to 0.99. epsilon: Defaults to 1e-3.
        center: learn beta. Defaults to True. scale: learn gamma. Defaults to True.
        beta_initializer: Defaults to "zeros". gamma_initializer: Defaults to "ones".
        moving_mean_initializer: Defaults to "zeros". moving_variance_initializer: Defaults to "ones".
        beta_regularizer, gamma_regularizer: Default to None.
        synchronized: in data-parallel training, compute the batch statistics over the global batch
            (all ranks) instead of each rank's part. Defaults to False (per rank, as Keras's
            MirroredStrategy and PyTorch DDP do). One all-reduce packs [sum x, sum x^2, count] in
            forward, one [sum dy, sum dy * x_hat] in backward; with it, N processes compute what one does.

    Weights (Keras order): gamma, beta (trainable), moving_mean, moving_variance (non-trainable).
    """

    bounds = declare(axis=INT, momentum=Bounds(NUMBER, minimum=0, maximum=1), synchronized=BOOL)

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        synchronized: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.axis = checked(self, "axis", axis)
        self.momentum = checked(self, "momentum", momentum)
        self.synchronized = checked(self, "synchronized", synchronized)
        self._set_affine_options(
            epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer
        )
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self._ws = Workspace()

    def build(self, input_shape):
        out = super().build(input_shape)
        self._feature = _axis(self, self.axis, input_shape)
        self._last = self._feature == len(input_shape) - 1
        c = (input_shape[self._feature],)
        self._add_gamma_and_beta(c)
        self.add_weight("moving_mean", c, self.moving_mean_initializer, trainable=False)
        self.add_weight("moving_variance", c, self.moving_variance_initializer, trainable=False)
        return out

    # The features as a contiguous (M, C) matrix, viewed as (M / r, r * C): NumPy broadcasts a
    # per-channel vector much faster along rows of a few hundred values than along rows of C.
    def _to_2d(self, x: Any) -> Any:
        c = x.shape[self._feature + 1]
        x2 = x if self._last else xp_of(x).moveaxis(x, self._feature + 1, -1)
        x2 = x2.reshape(-1, c)
        r = 1
        while r * c < 512 and x2.shape[0] % (2 * r) == 0:
            r *= 2
        self._r = r
        return x2.reshape(-1, r * c)

    def _from_2d(self, y2: Any, shape: tuple[int, ...]) -> Any:
        if self._last:
            return y2.reshape(shape)
        xp = xp_of(y2)
        moved = (*shape[: self._feature + 1], *shape[self._feature + 2 :], shape[self._feature + 1])
        return xp.ascontiguousarray(xp.moveaxis(y2.reshape(moved), -1, self._feature + 1))

    def _fold(self, wide: Any) -> Any:
        """Per-channel totals of a (r * C,) row of column totals."""
        return wide.reshape(self._r, -1).sum(axis=0) if self._r > 1 else wide

    def _tile(self, v: Any) -> Any:
        return xp_of(v).tile(v, self._r) if self._r > 1 else v

    @staticmethod
    def _each_block(x2: Any, fn: Callable[[slice, int], Any]) -> list[Any]:
        """fn(rows, worker) over row blocks of about a megabyte (each pass works on a block while it
        is in cache), spread over the CPU workers; the results in order. A GPU takes all rows at once."""
        n = x2.shape[0]
        xp = xp_of(x2)
        step = max(1, workspace.CACHE_VALUES // 2 // x2.shape[1]) if xp.__name__ == "numpy" else n
        return parallel(xp, n, lambda first, last, worker: fn(slice(first, last), worker), step=step)

    @staticmethod
    def _fused(x2: Any) -> Any:
        """numba's kernels for the element-wise passes over NumPy blocks (the same bits), or None."""
        return compiled.kernels() if xp_of(x2).__name__ == "numpy" else None

    def _scratch(self, worker: int, like: Any) -> Any:
        return self._ws.worker(worker).rows("block", like.shape[0], like.shape[1:], like.dtype, xp_of(like))

    def _mean_and_variance(self, x2: Any) -> tuple[Any, Any]:
        """Per-channel mean and biased variance in one pass over x: each block's column sums and
        centred sum of squares while the block is in cache, combined exactly (Chan et al.'s
        pairwise update) instead of the less accurate E[x^2] - mean^2."""
        xp, fused = xp_of(x2), self._fused(x2)

        def block(rows: slice, worker: int) -> tuple[int, Any, Any]:
            xb = x2[rows]
            ws = self._ws.worker(worker)
            mean_b = column_sums(xb, ws) * (1.0 / xb.shape[0])
            centred = self._scratch(worker, xb)
            if fused is not None:
                fused.centred_square(xb, mean_b, centred)
            else:
                xp.subtract(xb, mean_b, out=centred)
                centred *= centred
            return xb.shape[0], mean_b, column_sums(centred, ws)

        counts, means, squares = zip(*self._each_block(x2, block))
        rows = x2.shape[0]
        # Blocks -> columns of the (M / r, r * C) view -> channels: two rounds of the same update.
        mean = sum(n * m for n, m in zip(counts, means)) * (1.0 / rows)
        m2 = sum(q + n * (m - mean) ** 2 for n, m, q in zip(counts, means, squares))
        if self._r > 1:
            mean_w, m2_w = mean.reshape(self._r, -1), m2.reshape(self._r, -1)
            mean = mean_w.mean(axis=0)
            m2 = (m2_w + rows * (mean_w - mean) ** 2).sum(axis=0)
        return mean, m2 * (1.0 / (rows * self._r))

    def _synchronized_moments(self, x2: Any) -> tuple[Any, Any]:
        """The mean and biased variance over every rank's rows, from one all-reduce of
        [sum d, sum d^2, count] with d = x - moving_mean: the same shift on every rank (the moving
        statistics stay equal), close to the mean, so E[d^2] - E[d]^2 loses little to cancellation."""
        xp = xp_of(x2)
        shift = self.params["moving_mean"]
        d = x2 - self._tile(shift)
        s1 = self._fold(d.sum(axis=0)).astype(xp.float64)
        s2 = self._fold((d * d).sum(axis=0)).astype(xp.float64)
        count = xp.full(1, x2.shape[0] * self._r, dtype=xp.float64)
        total = self.comm.allreduce_stats(xp.concatenate([s1, s2, count]))
        c = s1.shape[0]
        rows = total[-1]
        m1 = total[:c] / rows
        var = xp.maximum(total[c : 2 * c] / rows - m1 * m1, 0.0)
        self._count = float(rows)
        return (shift + m1).astype(x2.dtype), var.astype(x2.dtype)

    def _gradient_sums(self, dy2: Any, x2: Any, mean: Any) -> tuple[Any, Any]:
        """Per-channel sum(dy) and sum(dy * (x - mean)), in one pass over blocks of dy and x."""
        xp, fused = xp_of(x2), self._fused(x2)
        mean_t = self._tile(mean)

        def block(rows: slice, worker: int) -> tuple[Any, Any]:
            ws = self._ws.worker(worker)
            prod = self._scratch(worker, x2[rows])
            if fused is not None:
                fused.centred_product(x2[rows], mean_t, dy2[rows], prod)
            else:
                xp.subtract(x2[rows], mean_t, out=prod)
                prod *= dy2[rows]
            return column_sums(dy2[rows], ws), column_sums(prod, ws)

        dy_sums, dot_sums = zip(*self._each_block(x2, block))
        return self._fold(sum(dy_sums[1:], dy_sums[0])), self._fold(sum(dot_sums[1:], dot_sums[0]))

    def forward(self, x, training):
        xp = xp_of(x)
        x2 = self._to_2d(x)
        self._batch_stats = training = bool(training) and self.trainable
        p = self.params
        synced = training and self.synchronized and self.comm is not None
        if synced:
            mean, var = self._synchronized_moments(x2)
        elif training:
            mean, var = self._mean_and_variance(x2)
            for key, batch in (("moving_mean", mean), ("moving_variance", var)):
                p[key] *= self.momentum
                p[key] += batch * (1.0 - self.momentum)
        else:
            mean, var = p["moving_mean"], p["moving_variance"]
        inv = 1.0 / xp.sqrt(var + self.epsilon)
        a = inv * p["gamma"] if self.scale else inv
        shift = -mean * a
        if self.center:
            shift += p["beta"]
        a_t, shift_t = self._tile(a), self._tile(shift)
        y2 = xp.empty_like(x2)

        fused = self._fused(x2)

        def normalize(rows: slice, worker: int) -> None:  # y = x * a + (beta - mean * a)
            if fused is not None:
                fused.scale_shift(x2[rows], a_t, shift_t, y2[rows])
                return
            xp.multiply(x2[rows], a_t, out=y2[rows])
            y2[rows] += shift_t

        self._each_block(x2, normalize)
        self._x2, self._mean, self._inv, self._a = x2, mean, inv, a
        self._synced = synced
        return self._from_2d(y2, x.shape)

    def backward(self, dy):
        xp = xp_of(dy)
        dy2 = self._to_2d(dy)
        x2, mean, inv, a = self._x2, self._mean, self._inv, self._a
        # dbeta = sum(dy), dgamma_hat = sum(dy * xhat) per channel, xhat = (x - mean) * inv
        dbeta, dot = self._gradient_sums(dy2, x2, mean)
        dgamma_hat = dot * inv
        m = dy2.shape[0] * self._r
        if "gamma" in self.grads:
            self.grads["gamma"][...] = dgamma_hat
        if "beta" in self.grads:
            self.grads["beta"][...] = dbeta
        if not self.needs_input_grad:
            return None
        a_t = self._tile(a)
        if not self._batch_stats:
            return self._from_2d(dy2 * a_t, dy.shape)
        if self._synced:
            # The weights' gradients above stay this rank's (the model's gradient all-reduce sums
            # them); the input gradient needs the sums and count over the global batch.
            c = dbeta.shape[0]
            total = self.comm.allreduce_stats(xp.concatenate([dbeta, dot]).astype(xp.float64))
            dbeta, dgamma_hat, m = total[:c].astype(dy.dtype), (total[c:] * inv).astype(dy.dtype), self._count
        # dx = a * (dy - mean(dy) - xhat * mean(dy * xhat)) = dy * a + (x - mean) * b + c
        b_t = self._tile(a * inv * dgamma_hat * (-1.0 / m))
        c_t = self._tile(dbeta * (a * (-1.0 / m)))
        mean_t = self._tile(mean)
        dx2 = xp.empty_like(dy2)

        fused = self._fused(dy2)

        def input_grad(rows: slice, worker: int) -> None:
            out = dx2[rows]
            if fused is not None:
                fused.batchnorm_input_grad(dy2[rows], x2[rows], a_t, mean_t, b_t, c_t, out)
                return
            xp.multiply(dy2[rows], a_t, out=out)
            t = xp.subtract(x2[rows], mean_t, out=self._scratch(worker, out))
            t *= b_t
            t += c_t
            out += t

        self._each_block(dy2, input_grad)
        return self._from_2d(dx2, dy.shape)

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            **self._affine_config(),
            "synchronized": self.synchronized,
            "moving_mean_initializer": self.moving_mean_initializer.spec(),
            "moving_variance_initializer": self.moving_variance_initializer.spec(),
        }


@LAYERS.register("LayerNormalization")
class LayerNormalization(_Normalization):
    """Normalizes each sample over `axis`: gamma * (x - mean) / sqrt(var + epsilon) + beta.

    Args:
        axis: int or list of ints (counting the batch axis). Defaults to -1.
        epsilon: Defaults to 1e-3. center: Defaults to True. scale: Defaults to True.
        beta_initializer: Defaults to "zeros". gamma_initializer: Defaults to "ones".
        beta_regularizer, gamma_regularizer: Default to None.

    gamma and beta have the shape of the normalized axes.
    """

    bounds = declare(
        axis=Bounds((int, list, tuple), items=INT, min_length=1, text="an integer or a list of integers"),
    )

    def __init__(
        self,
        axis: int | list[int] = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        axis = checked(self, "axis", axis)
        self.axis = axis if isinstance(axis, int) else list(axis)
        self._set_affine_options(
            epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer
        )

    def build(self, input_shape):
        out = super().build(input_shape)
        axes = [self.axis] if isinstance(self.axis, int) else self.axis
        idx = sorted({_axis(self, a, input_shape) for a in axes})
        self._axes = tuple(i + 1 for i in idx)  # in the batched array
        self._others = tuple(i for i in range(len(input_shape) + 1) if i not in self._axes)
        self._bshape = tuple(input_shape[i] if i in idx else 1 for i in range(len(input_shape)))
        self._add_gamma_and_beta(tuple(input_shape[i] for i in idx))
        return out

    def forward(self, x, training):
        xp = xp_of(x)
        xc = x - x.mean(axis=self._axes, keepdims=True)
        inv = 1.0 / xp.sqrt((xc * xc).mean(axis=self._axes, keepdims=True) + self.epsilon)
        xhat = xc
        xhat *= inv
        self._xhat, self._inv = xhat, inv
        y = xhat * self.params["gamma"].reshape(self._bshape) if self.scale else xhat.copy()
        if self.center:
            y += self.params["beta"].reshape(self._bshape)
        return y

    def backward(self, dy):
        xhat = self._xhat
        if "gamma" in self.grads:
            self.grads["gamma"][...] = (dy * xhat).sum(axis=self._others).reshape(self.grads["gamma"].shape)
        if "beta" in self.grads:
            self.grads["beta"][...] = dy.sum(axis=self._others).reshape(self.grads["beta"].shape)
        if not self.needs_input_grad:
            return None
        g = dy * self.params["gamma"].reshape(self._bshape) if self.scale else dy
        dx = g - g.mean(axis=self._axes, keepdims=True)
        dx -= xhat * (g * xhat).mean(axis=self._axes, keepdims=True)
        dx *= self._inv
        return dx

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, **self._affine_config()}
