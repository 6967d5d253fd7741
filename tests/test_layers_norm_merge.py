"""Normalization, merge and activation layers: float64 gradient checks, Keras semantics, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import F64, assert_grad_close, make, numeric_grad

from dlrun import api
from dlrun.engine import compiled
from dlrun.engine import workspace as ops
from dlrun.engine.backend import Backend
from dlrun.graph.layer import LAYERS
from dlrun.graph.layers.activation_layers import ELU, LeakyReLU, ReLU, Softmax
from dlrun.graph.layers.core import Dense, SpatialDropout2D
from dlrun.graph.layers.merge import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract
from dlrun.graph.layers.normalization import BatchNormalization, LayerNormalization
from dlrun.graph.model import GraphError, Model, Node

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# -- helpers -------------------------------------------------------------------------------------------


def grad_check(layer, xs, rng, training=True, atol=1e-8, before=None):
    """Finite differences of sum(layer(xs) * r) against backward: every input and every parameter.
    `before()` runs before each forward (e.g. to replay the same dropout mask)."""
    arg = list(xs) if layer.n_inputs != 1 else xs[0]

    def run():
        if before is not None:
            before()
        return layer.forward(arg, training)

    r = rng.normal(size=run().shape)
    run()
    dx = layer.backward(r)
    grads = {k: np.array(v) for k, v in layer.grads.items()}

    def f(_):
        return float((run() * r).sum())

    for x, d in zip(xs, dx if layer.n_inputs != 1 else [dx]):
        assert_grad_close(d, numeric_grad(f, x), rtol=1e-6, atol=atol)
    for name, g in grads.items():
        assert_grad_close(g, numeric_grad(f, layer.params[name]), rtol=1e-6, atol=atol)
    return sorted(grads)


def randomize(layer, rng):
    for name, value in layer.params.items():
        value[...] = (
            rng.uniform(0.5, 1.5, size=value.shape)
            if "variance" in name or name == "gamma"
            else rng.normal(size=value.shape)
        )


# -- BatchNormalization ----------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape,axis", [((4, 3, 5), -1), ((4, 3, 5), 1), ((4, 3, 5), 2), ((6,), -1)])
def test_batch_norm_gradients(shape, axis, training, rng):
    layer = make(BatchNormalization(axis=axis), shape)
    randomize(layer, rng)
    assert grad_check(layer, [rng.normal(size=(5, *shape)) * 2 + 1], rng, training=training) == ["beta", "gamma"]


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_batch_norm_without_center_or_scale(center, scale, rng):
    layer = make(BatchNormalization(center=center, scale=scale), (3, 4))
    randomize(layer, rng)
    expected = (["beta"] if center else []) + (["gamma"] if scale else [])
    assert [w.name for w in layer.weight_specs] == [*reversed(expected), "moving_mean", "moving_variance"]
    for training in (True, False):
        assert grad_check(layer, [rng.normal(size=(4, 3, 4))], rng, training=training) == expected


def test_batch_norm_gradients_over_many_blocks(rng, monkeypatch):
    monkeypatch.setattr(ops, "CACHE_VALUES", 32)
    layer = make(BatchNormalization(), (4, 3, 2))
    randomize(layer, rng)
    grad_check(layer, [rng.normal(size=(6, 4, 3, 2))], rng)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis", [-1, 1])
def test_batch_norm_compiled_kernels_give_the_bits_of_the_numpy_passes(axis, training, monkeypatch):
    """numba fuses the element-wise passes; outputs, gradients and moving statistics must not
    depend on whether it is installed."""
    kernels = pytest.importorskip("dlrun.engine.numba_kernels")
    monkeypatch.setattr(ops, "CACHE_VALUES", 1 << 12)  # many blocks
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(16, 6, 6, 12)) * 3 + 1).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)

    def run(fused: object) -> list[np.ndarray]:
        monkeypatch.setattr(compiled, "kernels", lambda: fused)
        layer = make(BatchNormalization(axis=axis), (6, 6, 12), backend=Backend(np))
        randomize(layer, np.random.default_rng(3))
        y = layer.forward(x, training=training)
        assert y.dtype == np.float32  # the dtype training runs in
        dx = layer.backward(dy)
        return [y, dx, *(np.array(g) for g in layer.grads.values()), *(np.array(p) for p in layer.params.values())]

    for fused, plain in zip(run(kernels), run(None)):
        assert fused.dtype == plain.dtype
        np.testing.assert_array_equal(fused, plain)


def test_batch_norm_statistics_over_many_blocks_are_exact_in_float32(monkeypatch):
    """Blocks' statistics are combined without cancellation: a large offset does not swamp a
    small spread (E[x^2] - mean^2 would lose every digit here in float32)."""
    monkeypatch.setattr(ops, "CACHE_VALUES", 1 << 12)
    layer = make(BatchNormalization(momentum=0.0), (6, 6, 4), backend=Backend(np))
    rng = np.random.default_rng(1)
    x = (1000 + rng.normal(size=(50, 6, 6, 4)) * np.array([0.5, 1, 2, 3])).astype(np.float32)
    y = layer.forward(x, training=True)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(layer.params["moving_mean"], x64.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(layer.params["moving_variance"], x64.var(axis=(0, 1, 2)), rtol=1e-3)
    np.testing.assert_allclose(
        y.std(axis=(0, 1, 2)), np.sqrt(x64.var(axis=(0, 1, 2)) / (x64.var(axis=(0, 1, 2)) + 1e-3)), rtol=1e-3
    )


def test_batch_norm_weights_and_keras_defaults():
    layer = make(BatchNormalization(), (5, 5, 8))
    assert [(w.name, w.shape, w.trainable) for w in layer.weight_specs] == [
        ("gamma", (8,), True),
        ("beta", (8,), True),
        ("moving_mean", (8,), False),
        ("moving_variance", (8,), False),
    ]
    assert layer.param_count() == (16, 16)
    assert (layer.axis, layer.momentum, layer.epsilon, layer.center, layer.scale) == (-1, 0.99, 1e-3, True, True)
    np.testing.assert_array_equal(layer.params["gamma"], 1)
    np.testing.assert_array_equal(layer.params["moving_variance"], 1)


def test_batch_norm_moving_statistics(rng):
    layer = make(BatchNormalization(momentum=0.9), (3, 2))
    randomize(layer, rng)
    mm0, mv0 = layer.params["moving_mean"].copy(), layer.params["moving_variance"].copy()
    x = rng.normal(size=(8, 3, 2)) * 3 + 2
    y = layer.forward(x, training=True)
    mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))  # the biased variance
    np.testing.assert_allclose(layer.params["moving_mean"], mm0 * 0.9 + mean * 0.1)
    np.testing.assert_allclose(layer.params["moving_variance"], mv0 * 0.9 + var * 0.1)
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    np.testing.assert_allclose(y, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta)
    # Inference uses (and leaves alone) the moving statistics.
    mm, mv = layer.params["moving_mean"].copy(), layer.params["moving_variance"].copy()
    np.testing.assert_allclose(layer.forward(x, training=False), gamma * (x - mm) / np.sqrt(mv + 1e-3) + beta)
    np.testing.assert_array_equal(layer.params["moving_mean"], mm)


def test_frozen_batch_norm_runs_in_inference_mode(rng):
    layer = make(BatchNormalization(trainable=False), (4,))
    assert layer.param_count() == (0, 16) and layer.grads == {}
    randomize(layer, rng)
    mm = layer.params["moving_mean"].copy()
    x = rng.normal(size=(5, 4))
    np.testing.assert_allclose(layer.forward(x, True), layer.forward(x, False))
    np.testing.assert_array_equal(layer.params["moving_mean"], mm)
    grad_check(layer, [x], rng)


def test_batch_norm_stays_float32():
    layer = make(BatchNormalization(), (4, 4, 3), backend=Backend(np))
    x = np.random.default_rng(0).random((6, 4, 4, 3), dtype=np.float32) * 100
    y = layer.forward(x, True)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(v.dtype == np.float32 for v in (*layer.params.values(), *layer.grads.values()))
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4)


def test_batch_norm_bad_axis():
    with pytest.raises(GraphError, match="axis=0 is out of range"):
        make(BatchNormalization(axis=0), (3, 4))
    with pytest.raises(ValueError, match="Received: momentum="):
        BatchNormalization(momentum=1.5)


# -- LayerNormalization ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", [((6,), -1), ((3, 4), -1), ((3, 4, 2), [1, 2, 3]), ((3, 4, 2), [1, -1])])
def test_layer_norm_values_and_gradients(shape, axis, rng):
    layer = make(LayerNormalization(axis=axis), shape)
    randomize(layer, rng)
    x = rng.normal(size=(2, *shape)) * 2 + 1
    axes = tuple(sorted({a % (len(shape) + 1) for a in ([axis] if isinstance(axis, int) else axis)}))
    xhat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-3)
    bshape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    np.testing.assert_allclose(
        layer.forward(x, True), xhat * layer.params["gamma"].reshape(bshape) + layer.params["beta"].reshape(bshape)
    )
    assert grad_check(layer, [x], rng) == ["beta", "gamma"]


# -- merge layers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,fn",
    [
        (Add, lambda a, b, c: a + b + c),
        (Multiply, lambda a, b, c: a * b * c),
        (Average, lambda a, b, c: (a + b + c) / 3),
        (Maximum, lambda a, b, c: np.maximum(np.maximum(a, b), c)),
        (Minimum, lambda a, b, c: np.minimum(np.minimum(a, b), c)),
    ],
)
def test_merge_values_and_gradients(cls, fn, rng):
    layer = make(cls(), (3, 2), (3, 2), (3, 2))
    xs = [rng.normal(size=(4, 3, 2)) for _ in range(3)]
    np.testing.assert_allclose(layer.forward(xs, True), fn(*xs))
    grad_check(layer, xs, rng)


def test_subtract(rng):
    layer = make(Subtract(), (3,), (3,))
    xs = [rng.normal(size=(2, 3)) for _ in range(2)]
    np.testing.assert_allclose(layer.forward(xs, True), xs[0] - xs[1])
    grad_check(layer, xs, rng)
    with pytest.raises(GraphError, match="Subtract takes exactly 2 inputs, got 3"):
        make(Subtract(), (3,), (3,), (3,))


def test_maximum_routes_ties_to_the_first_input():
    layer = make(Maximum(), (2,), (2,))
    layer.forward([np.ones((1, 2)), np.ones((1, 2))], True)
    da, db = layer.backward(np.full((1, 2), 3.0))
    np.testing.assert_array_equal(da, 3.0)
    np.testing.assert_array_equal(db, 0.0)


@pytest.mark.parametrize(
    "axis,shapes,out",
    [
        (-1, [(2, 3, 4), (2, 3, 1)], (2, 3, 5)),
        (1, [(2, 3), (5, 3)], (7, 3)),
        (2, [(2, 3, 4), (2, 1, 4), (2, 2, 4)], (2, 6, 4)),
    ],
)
def test_concatenate(axis, shapes, out, rng):
    layer = make(Concatenate(axis=axis), *shapes)
    assert layer.output_shape == out
    xs = [rng.normal(size=(2, *s)) for s in shapes]
    np.testing.assert_array_equal(layer.forward(xs, True), np.concatenate(xs, axis=axis))
    grad_check(layer, xs, rng)


@pytest.mark.parametrize("cls", [Add, Subtract, Multiply, Average, Maximum, Minimum])
def test_merge_shape_mismatch(cls):
    with pytest.raises(GraphError, match=r"needs inputs of the same shape, got \(None, 4, 4, 8\), \(None, 4, 4, 16\)"):
        make(cls(), (4, 4, 8), (4, 4, 16))


def test_concatenate_errors():
    with pytest.raises(GraphError, match="match on every other axis"):
        make(Concatenate(), (4, 4, 8), (2, 2, 8))
    with pytest.raises(GraphError, match="axis=0 is out of range"):
        make(Concatenate(axis=0), (3,), (3,))
    with pytest.raises(GraphError, match="same rank"):
        make(Concatenate(), (3,), (3, 1))


def test_merge_needs_two_inputs():
    with pytest.raises(GraphError, match="merges two or more inputs"):
        make(Add(), (3,))


# -- activation layers -----------------------------------------------------------------------------------
def reference_relu(x, max_value, negative_slope, threshold):
    y = np.where(x > threshold, x, negative_slope * (x - threshold))
    return y if max_value is None else np.minimum(y, max_value)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"max_value": 0.5}, {"negative_slope": 0.1}, {"threshold": 0.3, "negative_slope": 0.2, "max_value": 1.2}],
)
def test_relu_layer(kwargs, rng):
    layer = make(ReLU(**kwargs), (3, 4))
    x = rng.normal(size=(2, 3, 4))
    full = {"max_value": None, "negative_slope": 0.0, "threshold": 0.0, **kwargs}
    np.testing.assert_allclose(layer.forward(x, True), reference_relu(x, **full))
    grad_check(layer, [x], rng)


@pytest.mark.parametrize(
    "layer,fn",
    [
        (LeakyReLU(), lambda x: np.where(x > 0, x, 0.3 * x)),
        (LeakyReLU(negative_slope=0.05), lambda x: np.where(x > 0, x, 0.05 * x)),
        (LeakyReLU(negative_slope=1.5), lambda x: np.where(x > 0, x, 1.5 * x)),
        (ELU(), lambda x: np.where(x > 0, x, np.expm1(x))),
        (ELU(alpha=0.5), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
        (Softmax(), lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)),
        (Softmax(axis=1), lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)),
    ],
    ids=str,
)
def test_activation_layers(layer, fn, rng):
    layer = make(layer, (3, 4))
    x = rng.normal(size=(2, 3, 4))
    np.testing.assert_allclose(layer.forward(x, True), fn(x))
    grad_check(layer, [x], rng)


def test_activation_layer_arguments():
    assert LeakyReLU().negative_slope == 0.3
    for make_layer, arg in [
        (lambda: ReLU(max_value=-1), "max_value"),
        (lambda: ReLU(negative_slope=-0.1), "negative_slope"),
        (lambda: ReLU(threshold=-1), "threshold"),
        (lambda: LeakyReLU(negative_slope=-1), "negative_slope"),
        (lambda: ELU(alpha="x"), "alpha"),
        (lambda: Softmax(axis=1.5), "axis"),
    ]:
        with pytest.raises(ValueError, match=f"Received: {arg}="):
            make_layer()


def test_softmax_layer_fuses_with_the_loss_only_on_the_last_axis():
    for axis, fused in [(-1, True), (2, True), (1, False)]:
        layer = Softmax(axis=axis)
        model = Model({"in": (3, 4)}, [Node("s", layer, ["in"])], "s", backend=F64)
        assert (model.output_activation == "softmax") is fused


class ReplayNoise:
    """Stands in for the model's noise stream: the same draws on every forward."""

    def __init__(self, seed):
        self.seed = seed

    def bernoulli(self, shape, p):
        return np.random.default_rng(self.seed).random(shape) < p


def test_spatial_dropout_drops_whole_channels(rng):
    layer = make(SpatialDropout2D(0.5), (4, 5, 6))
    layer.rng = ReplayNoise(3)
    x = rng.normal(size=(3, 4, 5, 6)) + 5
    y = layer.forward(x, True)
    ratio = y / x
    assert np.allclose(ratio, ratio[:, :1, :1, :])  # one draw per (sample, channel)
    assert set(np.unique(np.round(ratio, 12))) <= {0.0, 2.0}
    np.testing.assert_array_equal(layer.forward(x, False), x)
    grad_check(layer, [x], rng, atol=1e-7)


def test_spatial_dropout_rejects_flat_inputs():
    with pytest.raises(GraphError, match="expects 4-D input"):
        make(SpatialDropout2D(0.2), (10,))
    with pytest.raises(ValueError, match="Received: rate="):
        SpatialDropout2D(1.0)


# -- configs round-trip ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer",
    [
        BatchNormalization(
            axis=1, momentum=0.9, epsilon=1e-5, center=False, gamma_initializer="zeros", gamma_regularizer="l2"
        ),
        LayerNormalization(axis=[1, 2], scale=False),
        Add(),
        Subtract(),
        Multiply(),
        Average(),
        Maximum(),
        Minimum(),
        Concatenate(axis=1),
        ReLU(max_value=6),
        LeakyReLU(0.1),
        ELU(0.7),
        Softmax(axis=1),
        SpatialDropout2D(0.3),
    ],
    ids=lambda layer: layer.type_name,
)
def test_get_config_round_trips(layer):
    layer.name = "x"
    clone = type(layer)(**layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_every_new_layer_is_registered():
    for name in [
        "Conv2D",
        "MaxPooling2D",
        "MaxPool2D",
        "AveragePooling2D",
        "AvgPool2D",
        "GlobalAveragePooling2D",
        "GlobalMaxPooling2D",
        "ZeroPadding2D",
        "UpSampling2D",
        "BatchNormalization",
        "LayerNormalization",
        "Add",
        "Subtract",
        "Multiply",
        "Average",
        "Maximum",
        "Minimum",
        "Concatenate",
        "ReLU",
        "LeakyReLU",
        "ELU",
        "Softmax",
        "SpatialDropout2D",
    ]:
        assert name in LAYERS


# -- whole models ----------------------------------------------------------------------------------------
def counts(source):
    trainable, non_trainable = api.prepare(source, device="cpu").model.param_counts()
    return trainable + non_trainable, trainable, non_trainable


def test_bn_mlp_param_counts():
    cfg = {
        "data": {"dataset": "fashion_mnist"},
        "loss": "sparse_categorical_crossentropy",
        "model": {
            "layers": [
                "Flatten",
                {"Dense": {"units": 256, "activation": "relu"}},
                "BatchNormalization",
                {"Dropout": {"rate": 0.2}},
                {"Dense": {"units": 128, "activation": "relu"}},
                "BatchNormalization",
                {"Dropout": {"rate": 0.2}},
                {"Dense": {"units": 10, "activation": "softmax"}},
            ]
        },
    }
    assert counts(cfg) == (236_682, 235_914, 768)


def test_cifar10_mlp_param_count():
    cfg = {
        "data": {"dataset": "cifar10"},
        "loss": "sparse_categorical_crossentropy",
        "model": {
            "layers": [
                "Flatten",
                {"Dense": {"units": 200, "activation": "relu"}},
                {"Dense": {"units": 150, "activation": "relu"}},
                {"Dense": {"units": 10, "activation": "softmax"}},
            ]
        },
    }
    assert counts(cfg) == (646_260, 646_260, 0)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("fashion_mnist_cnn", (1_677_034, 1_676_650, 384)),
        ("fashion_mnist_mlp_bn", (236_682, 235_914, 768)),
        ("cifar10_mlp", (646_260, 646_260, 0)),
        ("lenet5", (61_706, 61_706, 0)),
        ("cifar10_cnn", None),
        ("fashion_mnist_resnet", None),
    ],
)
def test_config_files(name, expected):
    setup = api.prepare(CONFIGS / f"{name}.yaml", device="cpu")
    model = setup.model
    total = counts(CONFIGS / f"{name}.yaml")
    if expected is not None:
        assert total == expected
    assert model.output_node.output_shape == (10,)
    x = np.random.default_rng(0).random((2, *next(iter(model.inputs.values()))), dtype=np.float32)
    out = model.forward(x, training=True)
    model.backward(np.ones_like(out))
    assert out.dtype == np.float32 and np.isfinite(model.flat_grads).all()


def test_resnet_config_branches_and_merges():
    model = api.prepare(CONFIGS / "fashion_mnist_resnet.yaml", device="cpu").model
    types = {n.layer.type_name for n in model.nodes}
    assert {"Add", "Concatenate", "Conv2D", "BatchNormalization"} <= types
    assert model.functional
    assert any(len(n.inputs) > 1 for n in model.nodes)


def test_functional_graph_gradients(rng):
    """A residual block with a concatenated branch, checked end to end in float64."""
    conv_a = Dense(3, activation="tanh")
    nodes = [
        Node("a", conv_a, ["input"]),
        Node("b", Dense(3), ["a"]),
        Node("sum", Add(), ["a", "b"]),
        Node("cat", Concatenate(), ["sum", "input"]),
        Node("bn", BatchNormalization(), ["cat"]),
        Node("out", Dense(2), ["bn"]),
    ]
    model = Model({"input": (3,)}, nodes, "out", backend=F64, init_rng=np.random.default_rng(0))
    x = rng.normal(size=(5, 3))
    r = rng.normal(size=(5, 2))
    model.forward(x, training=True)
    model.backward(r)
    for node in model.nodes:
        for name, g in node.layer.grads.items():
            numeric = numeric_grad(
                lambda _: float((model.forward(x, training=True) * r).sum()), node.layer.params[name]
            )
            assert_grad_close(g, numeric, rtol=1e-6, atol=1e-8)
