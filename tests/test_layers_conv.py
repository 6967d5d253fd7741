"""Conv2D and the pooling/resampling layers: Keras shapes, values, float64 gradient checks, configs."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from conftest import assert_grad_close, make, numeric_grad

from dlrun import api
from dlrun.engine import compiled, workspace
from dlrun.engine import threads as ops
from dlrun.engine.backend import Backend
from dlrun.graph.layer import LAYERS, ShapeError
from dlrun.graph.layers.conv import FLIPPED_MIN_CHANNELS, Conv2D
from dlrun.graph.layers.pooling import (
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
    UpSampling2D,
    ZeroPadding2D,
)
from dlrun.graph.model import GraphError

# -- helpers -------------------------------------------------------------------------------------------


def grad_check(layer, xs, rng, training=True, atol=1e-8):
    """Finite differences of sum(layer(xs) * r) against backward: every input and every parameter."""
    arg = list(xs) if layer.n_inputs != 1 else xs[0]
    y = layer.forward(arg, training)
    r = rng.normal(size=y.shape)
    layer.forward(arg, training)
    dx = layer.backward(r)
    grads = {k: np.array(v) for k, v in layer.grads.items()}

    def f(_):
        return float((layer.forward(arg, training) * r).sum())

    for x, d in zip(xs, dx if layer.n_inputs != 1 else [dx]):
        assert_grad_close(d, numeric_grad(f, x), rtol=1e-6, atol=atol)
    for name, g in grads.items():
        assert_grad_close(g, numeric_grad(f, layer.params[name]), rtol=1e-6, atol=atol)
    return sorted(grads)


def keras_length(n, k, s, d, padding):
    k_eff = (k - 1) * d + 1
    return math.ceil(n / s) if padding == "same" else (n - k_eff) // s + 1


def reference_conv(x, kernel, bias, strides, padding, dilation):
    """Direct convolution with Keras's 'same' padding (the odd pixel at the bottom/right)."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = keras_length(h, kh, sh, dh, padding), keras_length(w, kw, sw, dw, padding)
    if padding == "same":
        th = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0)
        tw = max((ow - 1) * sw + (kw - 1) * dw + 1 - w, 0)
        x = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    out[:, i, j] += x[:, i * sh + a * dh, j * sw + b * dw] @ kernel[a, b]
    return out + bias


@pytest.fixture
def small_chunks(monkeypatch):
    """Tiny cache chunks: the chunk loops and (on several cores) the worker split run on tiny inputs."""
    monkeypatch.setattr(workspace, "CACHE_VALUES", 64)


# -- Conv2D shapes and values ----------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(
    "n,k,s,d",
    [
        (5, 3, 1, 1),
        (7, 3, 2, 1),
        (8, 3, 2, 1),
        (7, 2, 1, 1),
        (8, 2, 3, 1),
        (9, 5, 2, 1),
        (7, 3, 1, 2),
        (9, 2, 1, 3),
        (6, 1, 2, 1),
        (5, 5, 1, 1),
    ],
)
def test_conv_output_shape_matches_keras(n, k, s, d, padding):
    layer = make(Conv2D(3, k, strides=s, padding=padding, dilation_rate=d), (n, n + 1, 2))
    expected = (keras_length(n, k, s, d, padding), keras_length(n + 1, k, s, d, padding), 3)
    assert layer.output_shape == expected
    assert layer.forward(np.zeros((2, n, n + 1, 2)), False).shape == (2, *expected)


@pytest.mark.parametrize(
    "kernel,strides,padding,dilation",
    [
        ((3, 3), (1, 1), "same", (1, 1)),
        ((2, 2), (1, 1), "same", (1, 1)),
        ((2, 3), (2, 2), "same", (1, 1)),
        ((3, 3), (2, 1), "valid", (1, 1)),
        ((3, 2), (1, 1), "same", (2, 2)),
        ((1, 1), (2, 2), "valid", (1, 1)),
        ((4, 4), (3, 3), "same", (1, 1)),
    ],
)
@pytest.mark.parametrize("channels", [1, 2, 3])  # im2col copies one and two channels its own ways
def test_conv_forward_matches_direct_convolution(kernel, strides, padding, dilation, channels, rng):
    layer = make(Conv2D(4, kernel, strides=strides, padding=padding, dilation_rate=dilation), (7, 8, channels))
    layer.params["bias"][...] = rng.normal(size=4)
    x = rng.normal(size=(2, 7, 8, channels))
    expected = reference_conv(x, layer.params["kernel"], layer.params["bias"], strides, padding, dilation)
    np.testing.assert_allclose(layer.forward(x, True), expected, rtol=1e-10, atol=1e-12)


CONV_CASES = [
    dict(filters=3, kernel_size=3, padding="same", activation="tanh"),
    dict(filters=2, kernel_size=(3, 2), padding="valid", use_bias=False),
    dict(filters=3, kernel_size=3, strides=2, padding="same", activation="relu"),
    dict(filters=2, kernel_size=(2, 3), strides=(2, 3), padding="valid"),
    dict(filters=2, kernel_size=2, padding="same", dilation_rate=2, activation="sigmoid"),
    dict(filters=3, kernel_size=1),
    dict(filters=2, kernel_size=1, strides=2, padding="same"),
]


@pytest.mark.parametrize("kwargs", CONV_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_conv_gradients(kwargs, rng):
    layer = make(Conv2D(**kwargs), (5, 6, 3))
    if layer.use_bias:
        layer.params["bias"][...] = rng.normal(size=layer.filters)
    names = grad_check(layer, [rng.normal(size=(2, 5, 6, 3))], rng)
    assert names == (["bias", "kernel"] if layer.use_bias else ["kernel"])


@pytest.mark.parametrize("kwargs", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[4]])
def test_conv_gradients_over_many_chunks(kwargs, rng, small_chunks):
    layer = make(Conv2D(**kwargs), (5, 4, 3))
    grad_check(layer, [rng.normal(size=(5, 5, 4, 3))], rng)


@pytest.mark.parametrize(
    "kwargs",
    [dict(padding="same", activation="relu"), dict(padding="valid"), dict(padding="same", dilation_rate=2)],
    ids=["same", "valid", "dilated"],
)
def test_conv_gradients_through_the_flipped_kernel(kwargs, rng):
    """From FLIPPED_MIN_CHANNELS input channels on, a stride-1 input gradient is the convolution
    of dz with the flipped kernel, whatever the padding (fewer: with "same" padding too; with
    "valid" col2im, which CONV_CASES[1] checks)."""
    c = FLIPPED_MIN_CHANNELS
    layer = make(Conv2D(2, 3, **kwargs), (5, 4, c))
    grad_check(layer, [rng.normal(size=(2, 5, 4, c))], rng)


@pytest.mark.parametrize(
    "kwargs",
    [dict(kernel_size=5), dict(kernel_size=2, dilation_rate=2), dict(kernel_size=3, strides=2, padding="same")],
    ids=["valid", "dilated", "strided"],
)
def test_conv_col2im_kernel_gives_the_bits_of_the_numpy_passes(kwargs, monkeypatch):
    """numba sums the window gradients back in one loop; the input gradient must be the NumPy
    slices' to the bit (float32, every pixel's sum taken in the same order)."""
    kernels = pytest.importorskip("dlrun.engine.numba_kernels")
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 9, 8, 6)).astype(np.float32)

    def input_grad(fused: object) -> np.ndarray:
        monkeypatch.setattr(compiled, "kernels", lambda: fused)
        layer = make(Conv2D(4, **kwargs), (9, 8, 6), backend=Backend(np), seed=1)
        y = layer.forward(x, True)
        return layer.backward(np.random.default_rng(7).normal(size=y.shape).astype(np.float32))

    np.testing.assert_array_equal(input_grad(kernels).view(np.uint32), input_grad(None).view(np.uint32))


def test_conv_single_channel_input_gradients(rng, small_chunks):
    layer = make(Conv2D(3, 3, padding="same", activation="relu"), (6, 5, 1))
    grad_check(layer, [rng.normal(size=(3, 6, 5, 1))], rng)


def test_conv_inference_chunks_match_training(rng, small_chunks):
    layer = make(Conv2D(4, 3, padding="same"), (6, 6, 2))
    x = rng.normal(size=(7, 6, 6, 2))
    np.testing.assert_allclose(
        layer.forward(x, False),
        reference_conv(x, layer.params["kernel"], layer.params["bias"], (1, 1), "same", (1, 1)),
        atol=1e-12,
    )


def test_conv_stays_float32():
    layer = make(Conv2D(4, 3, strides=2, padding="same", activation="relu"), (7, 7, 3), backend=Backend(np))
    x = np.random.default_rng(0).random((2, 7, 7, 3), dtype=np.float32)
    y = layer.forward(x, True)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())


def test_conv_weights_and_defaults():
    layer = make(Conv2D(8, 3), (10, 10, 3))
    assert [(w.name, w.shape) for w in layer.weight_specs] == [("kernel", (3, 3, 3, 8)), ("bias", (8,))]
    assert layer.param_count() == (3 * 3 * 3 * 8 + 8, 0)
    cfg = layer.get_config()
    assert cfg["strides"] == [1, 1] and cfg["padding"] == "valid" and cfg["dilation_rate"] == [1, 1]
    assert cfg["kernel_initializer"] == "glorot_uniform" and cfg["bias_initializer"] == "zeros"
    assert LAYERS.lookup("Convolution2D")[0] == "Conv2D"


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(filters=0, kernel_size=3), "filters"),
        (dict(filters=4, kernel_size=0), "kernel_size"),
        (dict(filters=4, kernel_size=[3, 3, 3]), "kernel_size"),
        (dict(filters=4, kernel_size=3, padding="full"), "padding"),
        (dict(filters=4, kernel_size=3, strides=-1), "strides"),
        (dict(filters=4, kernel_size=3, activation="nope"), None),
        (dict(filters=4, kernel_size=3, strides=2, dilation_rate=2), "strides"),
    ],
)
def test_conv_argument_errors(kwargs, arg):
    with pytest.raises(ValueError) as info:
        Conv2D(**kwargs)
    if arg is not None:
        assert f"Received: {arg}=" in str(info.value)


@pytest.mark.parametrize(
    "cls,args",
    [
        (Conv2D, dict(filters=2, kernel_size=3)),
        (MaxPooling2D, {}),
        (AveragePooling2D, {}),
        (GlobalAveragePooling2D, {}),
        (ZeroPadding2D, {}),
        (UpSampling2D, {}),
    ],
)
def test_image_layers_reject_flat_inputs(cls, args):
    with pytest.raises(GraphError, match=r"expects 4-D input .*\(H, W, C\).*\(None, 784\)"):
        make(cls(**args), (784,))
    with pytest.raises(GraphError, match=r"target_shape: \[28, 28, 1\]"):
        make(cls(**args), (28, 28))


def test_shape_error_is_a_value_error():
    with pytest.raises(ShapeError):
        Conv2D(2, 3).build((5,))


# -- pooling -------------------------------------------------------------------------------------------
def reference_pool(x, pool, strides, padding, kind):
    n, h, w, c = x.shape
    oh, ow = keras_length(h, pool[0], strides[0], 1, padding), keras_length(w, pool[1], strides[1], 1, padding)
    th = max((oh - 1) * strides[0] + pool[0] - h, 0) // 2 if padding == "same" else 0
    tw = max((ow - 1) * strides[1] + pool[1] - w, 0) // 2 if padding == "same" else 0
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * strides[0] - th, j * strides[1] - tw
            win = x[:, max(r0, 0) : r0 + pool[0], max(c0, 0) : c0 + pool[1]]  # padding excluded, as Keras
            out[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return out


POOL_CASES = [
    ((2, 2), None, "valid"),
    ((2, 2), None, "same"),
    ((3, 3), (2, 2), "valid"),
    ((3, 3), (2, 2), "same"),
    ((2, 3), (1, 2), "same"),
    ((3, 2), (3, 1), "valid"),
    ((1, 2), None, "valid"),
]


@pytest.mark.parametrize("cls,kind", [(MaxPooling2D, "max"), (AveragePooling2D, "avg")])
@pytest.mark.parametrize("pool,strides,padding", POOL_CASES)
def test_pooling_values_and_gradients(cls, kind, pool, strides, padding, rng):
    layer = make(cls(pool_size=pool, strides=strides, padding=padding), (7, 6, 2))
    x = rng.normal(size=(2, 7, 6, 2))
    expected = reference_pool(x, pool, strides or pool, padding, kind)
    assert layer.output_shape == expected.shape[1:]
    np.testing.assert_allclose(layer.forward(x, True), expected, atol=1e-12)
    assert grad_check(layer, [x], rng) == []


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
@pytest.mark.parametrize("pool,padding,size", [(2, "valid", 8), (2, "same", 6), (3, "valid", 9), (2, "valid", 7)])
def test_pooling_compiled_kernels_give_the_bits_of_the_numpy_passes(cls, pool, padding, size, monkeypatch):
    """numba runs tiling windows in one pass; values, ties and the routed gradient must be the
    NumPy passes' to the bit (with ties, NaNs and signed zeros in the input)."""
    kernels = pytest.importorskip("dlrun.engine.numba_kernels")
    rng = np.random.default_rng(4)
    x = np.round(rng.normal(size=(5, size, size, 3)), 1).astype(np.float32)  # ties and -0.0
    x[0, 0, 0, 0], x[1, 2, 3, 1] = np.nan, -np.inf

    def run(fused: object) -> tuple[np.ndarray, np.ndarray]:
        monkeypatch.setattr(compiled, "kernels", lambda: fused)
        layer = make(cls(pool_size=pool, padding=padding), (size, size, 3), backend=Backend(np))
        y = layer.forward(x, True)
        dy = np.random.default_rng(5).normal(size=y.shape).astype(np.float32)
        return y, layer.backward(dy)

    for fused, plain in zip(run(kernels), run(None)):
        np.testing.assert_array_equal(fused.view(np.uint32), plain.view(np.uint32))


def test_pooling_defaults_and_aliases():
    layer = MaxPooling2D()
    assert layer.pool_size == (2, 2) and layer.strides == (2, 2) and layer.padding == "valid"
    assert MaxPooling2D(pool_size=3).strides == (3, 3)
    assert LAYERS.lookup("MaxPool2D") == ("MaxPooling2D", MaxPooling2D)
    assert LAYERS.lookup("AvgPool2D") == ("AveragePooling2D", AveragePooling2D)
    assert make(MaxPooling2D(), (7, 9, 3)).output_shape == (3, 4, 3)


def test_max_pooling_routes_ties_to_the_first_maximum():
    layer = make(MaxPooling2D(), (2, 2, 1))
    x = np.ones((1, 2, 2, 1))
    layer.forward(x, True)
    dx = layer.backward(np.full((1, 1, 1, 1), 5.0))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[5.0, 0.0], [0.0, 0.0]])


def test_max_pooling_windows_wider_than_256_route_the_gradient_exactly():
    layer = make(MaxPooling2D(pool_size=(1, 300)), (1, 300, 1))
    x = np.zeros((1, 1, 300, 1))
    x[0, 0, 280, 0] = 1.0  # offset 280 does not fit in a byte
    assert layer.forward(x, True)[0, 0, 0, 0] == 1.0
    dx = layer.backward(np.full((1, 1, 1, 1), 3.0))
    assert dx[0, 0, 280, 0] == 3.0 and dx.sum() == 3.0


def test_pooling_stays_float32():
    for cls in (MaxPooling2D, AveragePooling2D):
        layer = make(cls(padding="same"), (5, 5, 2), backend=Backend(np))
        x = np.random.default_rng(0).random((2, 5, 5, 2), dtype=np.float32)
        y = layer.forward(x, True)
        assert y.dtype == layer.backward(np.ones_like(y)).dtype == np.float32


@pytest.mark.parametrize("cls,reduce", [(GlobalAveragePooling2D, np.mean), (GlobalMaxPooling2D, np.max)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(cls, reduce, keepdims, rng):
    layer = make(cls(keepdims=keepdims), (3, 4, 5))
    x = rng.normal(size=(2, 3, 4, 5))
    expected = reduce(x, axis=(1, 2), keepdims=keepdims)
    assert layer.output_shape == expected.shape[1:]
    np.testing.assert_allclose(layer.forward(x, True), expected)
    grad_check(layer, [x], rng)


@pytest.mark.parametrize(
    "padding,pads",
    [(1, ((1, 1), (1, 1))), (2, ((2, 2), (2, 2))), ([1, 2], ((1, 1), (2, 2))), ([[0, 1], [2, 3]], ((0, 1), (2, 3)))],
)
def test_zero_padding(padding, pads, rng):
    layer = make(ZeroPadding2D(padding), (3, 4, 2))
    x = rng.normal(size=(2, 3, 4, 2))
    np.testing.assert_array_equal(layer.forward(x, True), np.pad(x, ((0, 0), *pads, (0, 0))))
    grad_check(layer, [x], rng)
    assert layer.get_config()["padding"] == [list(p) for p in pads]


def test_upsampling_nearest(rng):
    layer = make(UpSampling2D((2, 3)), (2, 3, 2))
    x = rng.normal(size=(2, 2, 3, 2))
    np.testing.assert_array_equal(layer.forward(x, True), x.repeat(2, axis=1).repeat(3, axis=2))
    grad_check(layer, [x], rng)


@pytest.mark.parametrize(
    "make_layer,arg",
    [
        (lambda: MaxPooling2D(pool_size=0), "pool_size"),
        (lambda: AveragePooling2D(strides=[1]), "strides"),
        (lambda: MaxPooling2D(padding="causal"), "padding"),
        (lambda: ZeroPadding2D(-1), "padding"),
        (lambda: ZeroPadding2D([[1, 2, 3], [0, 0]]), "padding"),
        (lambda: UpSampling2D(interpolation="bilinear"), "interpolation"),
        (lambda: GlobalMaxPooling2D(keepdims="yes"), "keepdims"),
    ],
)
def test_pooling_argument_errors(make_layer, arg):
    with pytest.raises(ValueError, match=f"Received: {arg}="):
        make_layer()


# -- configs round-trip ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer",
    [
        Conv2D(
            4,
            (3, 2),
            strides=2,
            padding="SAME",
            activation="relu",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer={"type": "l2", "l2": 0.001},
            name="c",
        ),
        Conv2D(4, 3, dilation_rate=2, bias_regularizer="l1"),
        MaxPooling2D(3, 2, "same"),
        AveragePooling2D((2, 3)),
        GlobalAveragePooling2D(keepdims=True),
        GlobalMaxPooling2D(),
        ZeroPadding2D([1, 2]),
        UpSampling2D(3),
    ],
    ids=lambda layer: layer.type_name,
)
def test_get_config_round_trips(layer):
    layer.name = layer.name or "x"  # the builder names every layer before reading its config
    clone = type(layer)(**layer.get_config())
    assert clone.get_config() == layer.get_config()


# -- whole models through the config API ---------------------------------------------------------------
def cnn_config():
    conv = lambda f: {"Conv2D": {"filters": f, "kernel_size": 3, "padding": "same", "activation": "relu"}}
    return {
        "data": {"dataset": "fashion_mnist"},
        "loss": "sparse_categorical_crossentropy",
        "model": {
            "layers": [
                conv(32),
                "BatchNormalization",
                conv(32),
                "BatchNormalization",
                "MaxPooling2D",
                {"Dropout": {"rate": 0.25}},
                conv(64),
                "BatchNormalization",
                conv(64),
                "BatchNormalization",
                "MaxPooling2D",
                {"Dropout": {"rate": 0.25}},
                "Flatten",
                {"Dense": {"units": 512, "activation": "relu"}},
                {"Dense": {"units": 10, "activation": "softmax"}},
            ]
        },
    }


def test_fashion_mnist_cnn_param_counts():
    model = api.prepare(cnn_config(), device="cpu").model
    trainable, non_trainable = model.param_counts()
    assert (trainable + non_trainable, trainable, non_trainable) == (1_677_034, 1_676_650, 384)
    assert [n.name for n in model.nodes][:5] == [
        "conv2d",
        "batch_normalization",
        "conv2d_1",
        "batch_normalization_1",
        "max_pooling2d",
    ]


def test_lenet5_param_count():
    cfg = {
        "data": {"dataset": "fashion_mnist"},
        "loss": "sparse_categorical_crossentropy",
        "model": {
            "input_shape": [32, 32, 1],
            "layers": [
                {"Conv2D": {"filters": 6, "kernel_size": 5, "activation": "tanh"}},
                "AveragePooling2D",
                {"Conv2D": {"filters": 16, "kernel_size": 5, "activation": "tanh"}},
                "AveragePooling2D",
                "Flatten",
                {"Dense": {"units": 120, "activation": "tanh"}},
                {"Dense": {"units": 84, "activation": "tanh"}},
                {"Dense": {"units": 10, "activation": "softmax"}},
            ],
        },
    }
    model = api.prepare(cfg, device="cpu").model
    assert model.param_counts() == (61_706, 0)
    assert model.node("average_pooling2d_1").output_shape == (5, 5, 16)


def test_cnn_trains_in_float32_end_to_end(rng):
    """One forward/backward of a small CNN: float32 everywhere, and every gradient is filled."""
    cfg = cnn_config()
    cfg["model"]["input_shape"] = [8, 8, 1]
    setup = api.prepare(cfg, device="cpu")
    model = setup.model
    x = rng.random((4, 8, 8, 1)).astype(np.float32)
    out = model.forward(x, training=True)
    assert out.dtype == np.float32 and out.shape == (4, 10)
    model.flat_grads[...] = np.nan
    model.backward(np.ones_like(out))
    assert model.flat_grads.dtype == np.float32 and np.isfinite(model.flat_grads).all()
    for node in model.nodes:
        assert all(v.dtype == np.float32 for v in node.layer.params.values())


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (MaxPooling2D, {}),
        (MaxPooling2D, {"pool_size": 3, "strides": 2, "padding": "same"}),
        (AveragePooling2D, {"padding": "same", "pool_size": 3}),
    ],
)
def test_pooling_split_over_workers_matches_serial(cls, kwargs, rng):
    """Images big enough to be split over the CPU workers give the same values and gradients."""
    layer = make(cls(**kwargs), (64, 64, 8))
    x = rng.normal(size=(4, 64, 64, 8))
    r = rng.normal(size=(4, *layer.output_shape))
    with ops.cpu_threads(2):
        y, dx = layer.forward(x, True).copy(), layer.backward(r).copy()
    np.testing.assert_allclose(
        y,
        reference_pool(x, layer.pool_size, layer.strides, layer.padding, "max" if cls is MaxPooling2D else "avg"),
        atol=1e-12,
    )
    with ops.cpu_threads(1):
        np.testing.assert_array_equal(layer.forward(x, True), y)
        np.testing.assert_array_equal(layer.backward(r), dx)


def test_worker_split_is_deterministic(rng, small_chunks):
    """Chunk results are combined in chunk order: the same bits on 1, 2 or 16 threads."""
    conv = make(Conv2D(3, 3, padding="same", activation="relu"), (6, 5, 4), backend=Backend(np))
    x = rng.random((9, 6, 5, 4)).astype(np.float32)
    r = rng.random((9, 6, 5, 3)).astype(np.float32)

    def run(threads):
        with ops.cpu_threads(threads):
            y = conv.forward(x, True).copy()
            dx = conv.backward(r).copy()
            return y, dx, conv.grads["kernel"].copy(), conv.grads["bias"].copy()

    first = run(1)
    for threads in (2, 16):
        for a, b in zip(first, run(threads)):
            np.testing.assert_array_equal(a, b)


def test_ops_matmul_matches_numpy(rng):
    cases = [
        (rng.random((300, 200)), rng.random((200, 150))),
        (rng.random((3, 4)), rng.random((4, 5))),
        (rng.random((200, 300)).T, rng.random((200, 64))),
        (rng.random((1000, 784)).astype(np.float32), rng.random((784, 100)).astype(np.float32)),
    ]
    for threads in (1, 2):
        with ops.cpu_threads(threads):
            for a, b in cases:
                np.testing.assert_allclose(ops.matmul(a, b), a @ b, rtol=1e-5)


def test_product_gives_the_bits_of_numpy_matmul(rng):
    """`product` goes through np.dot (which releases the GIL) instead of np.matmul (which keeps it
    for small results): it must not change a bit, for the shapes and layouts layers use."""
    for dtype in (np.float32, np.float64):
        cases = [
            (rng.random((20384, 25)).astype(dtype).T, rng.random((20384, 6)).astype(dtype)),  # LeNet kernel grad
            (rng.random((3, 4)).astype(dtype), rng.random((4, 5)).astype(dtype)),
            (rng.random((32, 784)).astype(dtype), rng.random((100, 784)).astype(dtype).T),
            (rng.random(4099).astype(dtype), rng.random((4099, 32)).astype(dtype)),  # column sums
            (rng.random((64, 9)).astype(dtype), rng.random(9).astype(dtype)),
        ]
        for a, b in cases:
            expected = np.matmul(a, b)
            np.testing.assert_array_equal(ops.product(a, b), expected)
            out = np.empty_like(expected)
            assert ops.product(a, b, out=out) is out
            np.testing.assert_array_equal(out, expected)
            if expected.ndim == 2:  # an output np.dot refuses (strided) still gets the product
                wide = np.zeros((expected.shape[0], 2 * expected.shape[1]), dtype)
                ops.product(a, b, out=wide[:, ::2])
                np.testing.assert_array_equal(wide[:, ::2], expected)


def test_matmul_pieces_do_not_depend_on_the_thread_count(rng):
    """BLAS picks kernels by shape (and by its own thread count): dlrun's pieces are sized by the
    shapes alone, and BLAS runs one thread per call, so every thread count gives the same bits."""
    a = rng.random((1000, 784)).astype(np.float32)
    b = rng.random((784, 100)).astype(np.float32)
    with ops.cpu_threads(1):
        one = ops.matmul(a, b)
    for threads in (2, 16):
        with ops.cpu_threads(threads):
            np.testing.assert_array_equal(ops.matmul(a, b), one)


def test_cpu_threads_scope_restores_blas_and_leaves_no_threads():
    from threadpoolctl import threadpool_info

    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    with ops.cpu_threads(2) as n:
        assert n == 2 and ops.workers() == 2
        assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")
        ops.parallel(np, 10, lambda a, b, w: None, step=1)
        assert any(t.name.startswith("dlrun-cpu") for t in threading.enumerate())
    assert ops.workers() == 1
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == before
    assert not any(t.name.startswith("dlrun-cpu") for t in threading.enumerate())


def test_default_threads_follows_the_users_variables():
    assert ops.default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert ops.default_threads({"OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "2"}) == 2
    assert ops.default_threads({"OMP_NUM_THREADS": "2,1"}) == 2
    assert ops.default_threads({"OMP_NUM_THREADS": "junk"}) == ops.available_cores()
    assert ops.default_threads({}) == ops.available_cores()


def test_a_failing_piece_stops_every_thread_and_raises():
    seen = []

    def fn(a, b, worker):
        seen.append(a)
        if a == 3:
            raise RuntimeError("piece 3")

    with ops.cpu_threads(2), pytest.raises(RuntimeError, match="piece 3"):
        ops.parallel(np, 100, fn, step=1)
    assert len(seen) < 100


@pytest.mark.parametrize(
    "forced,flags,kernels,says",
    [
        ("Haswell", "fpu avx2 avx512f", "Haswell", True),  # the slow case: AVX2 kernels, AVX-512 there
        ("Haswell", "fpu avx2", "Haswell", False),  # the processor has no AVX-512: nothing lost
        ("SkylakeX", "fpu avx2 avx512f", "SkylakeX", False),  # forced, but to AVX-512 kernels
        ("", "fpu avx2 avx512f", "Haswell", False),  # OpenBLAS's own choice is not second-guessed
    ],
)
def test_forced_blas_kernels_get_a_note(forced, flags, kernels, says, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(ops, "blas_libraries", lambda: [{"library": "openblas", "version": "0", "kernels": kernels}])
    note = ops.forced_kernels_note({"OPENBLAS_CORETYPE": forced} if forced else {}, str(cpuinfo))
    assert (note is not None) == says
    if says:
        assert "OPENBLAS_CORETYPE=Haswell" in note and "Haswell kernels" in note
    assert ops.forced_kernels_note({"OPENBLAS_CORETYPE": "Haswell"}, str(tmp_path / "absent")) is None
