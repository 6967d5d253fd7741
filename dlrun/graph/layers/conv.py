"""Convolution layers (channels-last): Conv2D as im2col plus one matmul, or Winograd for 3x3 kernels."""

from __future__ import annotations

from typing import Any

from dlrun.checks import PAIR_OR_INT, POSITIVE_INT, checked, declare
from dlrun.engine import winograd
from dlrun.engine.activations import relu_with_bias
from dlrun.engine.backend import xp_of
from dlrun.engine.conv_ops import (
    col2im,
    conv_chunk,
    conv_chunk_kernel_grad,
    conv_forward,
    crop_hw,
    effective_kernel,
    output_length,
    pad_hw,
    padded_chunks,
    padding_amounts,
)
from dlrun.engine.threads import matmul, parallel, product
from dlrun.engine.workspace import Workspace, chunk_samples, column_sums
from dlrun.errors import ArgumentError, short
from dlrun.graph.layer import LAYERS, Layer, image_shape, padding_arg

#: Activations whose backward reads only their output (see dlrun.engine.activations).
_OUTPUT_ONLY_GRADIENT = frozenset({"relu", "sigmoid", "tanh", "softmax"})
#: A stride-1 input gradient is the convolution of dz with the flipped kernel: a product with one
#: column per input channel, over every input pixel. With "valid" padding that is more pixels than
#: the forward's, and with few channels BLAS is slow on it (LeNet-5's second conv, 5x5 valid, 6
#: channels: 14 GFLOP/s; its backward 1.86 ms against 0.85 ms), so there the window gradients
#: dz @ kernel^T are summed back (col2im) instead. With "same" padding the flipped kernel measured as
#: fast or faster (8 and 12 channels), and it is how Keras's backends compute it, to the last bits.
FLIPPED_MIN_CHANNELS = 16


@LAYERS.register("Conv2D", "Convolution2D")
class Conv2D(Layer):
    """2-D convolution over (H, W) of channels-last images: `activation(conv(x, kernel) + bias)`.

    Args:
        filters: number of output channels.
        kernel_size: int or [kh, kw].
        strides: int or [sh, sw]. Defaults to 1.
        padding: "valid" (no padding) or "same" (output ceil(n / stride); the odd pixel of padding
            goes at the bottom/right, as Keras). Defaults to "valid".
        dilation_rate: int or [dh, dw]; cannot be combined with strides > 1. Defaults to 1.
        activation: activation name. Defaults to None (linear).
        use_bias: Defaults to True.
        kernel_initializer: Defaults to "glorot_uniform". bias_initializer: Defaults to "zeros".
        kernel_regularizer, bias_regularizer: Default to None.

    Input (None, H, W, C); output (None, OH, OW, filters); kernel shape (kh, kw, C, filters).
    Example: `Conv2D: {filters: 32, kernel_size: 3, padding: same, activation: relu}`.
    """

    bounds = declare(filters=POSITIVE_INT, kernel_size=PAIR_OR_INT, strides=PAIR_OR_INT, dilation_rate=PAIR_OR_INT)

    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        strides: Any = 1,
        padding: str = "valid",
        dilation_rate: Any = 1,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = checked(self, "filters", filters)
        self.kernel_size = checked(self, "kernel_size", kernel_size)
        self.strides = checked(self, "strides", strides)
        self.padding = padding_arg(padding)
        self.dilation_rate = checked(self, "dilation_rate", dilation_rate)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ArgumentError(
                "strides > 1 cannot be combined with dilation_rate > 1. "
                f"Received: strides={short(strides)}, dilation_rate={short(dilation_rate)}",
                "strides",
                strides,
            )
        self._set_activation(activation)
        self._set_kernel_options(use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer)
        self._ws = Workspace()

    def compute_output_shape(self, input_shape):
        h, w, _ = image_shape(self, input_shape)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        return (output_length(h, kh, sh, self.padding, dh), output_length(w, kw, sw, self.padding, dw), self.filters)

    def build(self, input_shape):
        out = super().build(input_shape)
        h, w, c = input_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        self._pads = (*padding_amounts(h, kh, sh, self.padding, dh), *padding_amounts(w, kw, sw, self.padding, dw))
        self._pointwise = self.kernel_size == (1, 1) and self.strides == (1, 1)
        self._add_kernel_and_bias((kh, kw, c, self.filters))
        return out

    def forward(self, x, training, logits=False):
        xp = xp_of(x)
        n = x.shape[0]
        oh, ow, f = self.output_shape
        kernel = self.params["kernel"].reshape(-1, f)
        self._x = x
        z = xp.empty((n * oh * ow, f), dtype=x.dtype)
        linear = logits or self.activation_name in (None, "linear")
        # Activations whose gradient needs only their output may overwrite their input.
        a = z if linear or self.activation_name in _OUTPUT_ONLY_GRADIENT else xp.empty_like(z)

        def epilogue(zc: Any, rows: slice) -> None:  # bias and activation while the chunk is in cache
            if self.use_bias and not linear and self.activation_name == "relu":
                relu_with_bias(zc, self.params["bias"], a[rows])
                return
            if self.use_bias:
                zc += self.params["bias"]
            if linear:
                return
            if self.activation_name == "relu":
                xp.maximum(zc, 0, out=a[rows])  # no temporary: one pass over the chunk
            else:
                a[rows] = self.activation.forward(zc)

        if self._pointwise:
            matmul(x.reshape(-1, x.shape[3]), kernel, out=z)
            epilogue(z, slice(None))
        elif self._winograd(xp):
            u = winograd.transform_kernel(self.params["kernel"])
            winograd.conv_forward(x, self._pads, u, (oh, ow), z, self._ws, key="f", epilogue=epilogue)
        else:
            conv_forward(
                x,
                self._pads,
                self.params["kernel"],
                self.strides,
                self.dilation_rate,
                (oh, ow),
                z,
                self._ws,
                key="f",
                epilogue=epilogue,
            )
        self._z, self._a, self._linear = z, a, linear
        return a.reshape(n, oh, ow, f)

    def _winograd(self, xp: Any) -> bool:
        return winograd.applies(self.params["kernel"].shape, self.strides, self.dilation_rate, xp)

    def backward(self, dy):
        xp = xp_of(dy)
        x = self._x
        n, h, w, c = x.shape
        oh, ow, f = self.output_shape
        dy2 = dy.reshape(-1, f)
        kernel2d = self.params["kernel"].reshape(-1, f)
        kernel_grad, dbias = "kernel" in self.grads, self.grads.get("bias")
        want_dx = self.needs_input_grad
        ws, dtype = self._ws, dy.dtype
        if not (kernel_grad or dbias is not None or want_dx):
            return None

        def dz_of(rows: slice) -> Any:
            return dy2[rows] if self._linear else self.activation.backward(self._z[rows], self._a[rows], dy2[rows])

        if self._pointwise:
            dz2 = dz_of(slice(None))
            if dbias is not None:
                dbias[...] = column_sums(dz2, ws)
            if kernel_grad:
                matmul(x.reshape(-1, c).T, dz2, out=self.grads["kernel"].reshape(-1, f))
            return matmul(dz2, kernel2d.T).reshape(x.shape) if want_dx else None

        # One pass over chunks of samples, everything for a chunk computed while it is in cache:
        # dz (through the activation), the bias and kernel gradients (windows of x recomputed), dx.
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation_rate
        top, bottom, left, right = self._pads
        stride1 = self.strides == (1, 1)
        ekh, ekw = effective_kernel(kh, dh), effective_kernel(kw, dw)
        kshape = self.params["kernel"].shape
        padded_hw = (h + top + bottom, w + left + right)
        per_sample = oh * ow * kh * kw * c
        flip = stride1 and (c >= FLIPPED_MIN_CHANNELS or h * w <= oh * ow)
        unpadded = not any(self._pads)  # col2im then writes straight into dx
        tiled = self._winograd(xp)
        if want_dx:
            dx = xp.empty((n, h, w, c), dtype=dtype)
            if flip:
                # The input gradient is a stride-1 convolution of dz, padded by k_eff - 1 - pad on each
                # side, with the kernel flipped and its channel axes swapped.
                dpads = (ekh - 1 - top, ekh - 1 - bottom, ekw - 1 - left, ekw - 1 - right)
                flipped = xp.ascontiguousarray(self.params["kernel"][::-1, ::-1].transpose(0, 1, 3, 2))
                dpad_hw = (h + ekh - 1, w + ekw - 1)
                if tiled:
                    flipped = winograd.transform_kernel(flipped)
                else:
                    per_sample = max(per_sample, h * w * kh * kw * f)
        chunk = (
            min(winograd.chunk_samples(n, (oh, ow), c, f), winograd.chunk_samples(n, (h, w), f, c))
            if tiled
            else chunk_samples(xp, n, per_sample)
        )

        def work(first: int, last: int, worker: int) -> tuple[Any, Any]:
            """Gradients for samples [first, last): dx rows written in place; this chunk's kernel and
            bias gradients returned, to be summed in chunk order (the same sums however many threads)."""
            wws = ws.worker(worker)
            m = last - first
            rows = slice(first * oh * ow, last * oh * ow)
            dz = dz_of(rows)
            db = column_sums(dz, wws) if dbias is not None else None
            dk = None
            if kernel_grad and tiled:
                dk = winograd.kernel_grad_chunk(x[first:last], self._pads, dz, (oh, ow), wws, key="b")
            elif kernel_grad:
                _, src = next(padded_chunks(x[first:last], self._pads, chunk, wws, key="b"))
                dk = conv_chunk_kernel_grad(src, dz, kshape, self.strides, self.dilation_rate, (oh, ow), wws, key="b")
            if want_dx:
                if tiled:
                    dz4 = dz.reshape(m, oh, ow, f)
                    winograd.conv_chunk(
                        dz4, dpads, flipped, (h, w), dx.reshape(-1, c)[first * h * w : last * h * w], wws, key="d"
                    )
                elif flip:
                    dpad_buf = wws.get("dpad", (chunk, *dpad_hw, f), dtype, xp, fill=0.0)
                    dsrc = pad_hw(dz.reshape(m, oh, ow, f), dpads, out=dpad_buf[:m])
                    conv_chunk(
                        dsrc,
                        flipped,
                        (1, 1),
                        self.dilation_rate,
                        (h, w),
                        dx.reshape(-1, c)[first * h * w : last * h * w],
                        wws,
                        key="d",
                    )
                else:
                    dcols = product(dz, kernel2d.T, out=wws.rows("dcols", m * oh * ow, (kernel2d.shape[0],), dtype, xp))
                    padded = (m, *padded_hw, c)
                    dxpad = col2im(
                        dcols,
                        padded,
                        self.kernel_size,
                        self.strides,
                        self.dilation_rate,
                        (oh, ow),
                        out=dx[first:last] if unpadded else wws.rows("dxpad", m, padded[1:], dtype, xp),
                    )
                    if not unpadded:
                        dx[first:last] = crop_hw(dxpad, self._pads)
            return dk, db

        parts = parallel(xp, n, work, step=chunk)
        for name, i in (("kernel", 0), ("bias", 1)):
            if name in self.grads:
                tile_space = tiled and name == "kernel"  # summed as S (16, C, F), transformed once
                total = xp.empty_like(parts[0][i]) if tile_space else self.grads[name]
                total[...] = parts[0][i]
                for part in parts[1:]:
                    total += part[i]
                if tile_space:
                    self.grads[name][...] = winograd.kernel_gradient(total, dtype)
        return dx if want_dx else None

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "dilation_rate": list(self.dilation_rate),
            **self._kernel_config(),
        }
