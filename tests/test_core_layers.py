"""Core layers (Dense, Flatten, Reshape, Activation, Dropout) through a tiny float64 Model, and regularizers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_grad_close, build_model, chain_input_grad, numeric_grad

from dlrun.engine import regularizers
from dlrun.engine.backend import Backend
from dlrun.engine.regularizers import L1, L1L2, L2
from dlrun.graph.layer import LAYERS
from dlrun.graph.layers.core import Activation, Dense, Dropout, Flatten, Reshape
from dlrun.graph.model import GraphError


def _loss_fn(model, x, r, training=False, noise_state=None):
    """sum(model(x) * r): a scalar whose gradient w.r.t. the output is r."""

    def f(_):
        if noise_state is not None:
            model.noise.set_state(noise_state)
        return float((model.forward(x, training=training) * r).sum())

    return f


def check_model_grads(model, x, rng, training=False, noise_state=None, atol=1e-9):
    """Finite-difference check of every trainable parameter and of the input."""
    out = model.forward(x, training=training)
    r = rng.normal(size=out.shape)
    f = _loss_fn(model, x, r, training, noise_state)
    # Parameters: Model.backward fills layer.grads.
    if noise_state is not None:
        model.noise.set_state(noise_state)
    model.forward(x, training=training)
    model.backward(r)
    checked = 0
    for node in model.nodes:
        analytic = {k: v.copy() for k, v in node.layer.grads.items()}
        for name, g in analytic.items():
            p = node.layer.params[name]
            assert np.shares_memory(p, model.flat_params)
            assert_grad_close(g, numeric_grad(f, p), rtol=1e-6, atol=atol)
            checked += 1
    # Input.
    if noise_state is not None:
        model.noise.set_state(noise_state)
    dx = chain_input_grad(model, x, r, training=training)
    assert dx.shape == x.shape
    assert_grad_close(dx, numeric_grad(f, x), rtol=1e-6, atol=atol)
    return checked


# -- Dense ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid", "softmax", "elu", "swish", "gelu"])
def test_dense_gradients(activation, rng):
    model = build_model([Dense(4, activation=activation)], (5,))
    x = rng.normal(size=(3, 5))
    # The exact GELU's forward uses an erf approximation (~2e-7), its backward the exact pdf.
    atol = 3e-6 if activation == "gelu" else 1e-9
    assert check_model_grads(model, x, rng, atol=atol) == 2


def test_dense_without_bias_gradients(rng):
    layer = Dense(3, use_bias=False)
    model = build_model([layer], (4,))
    assert set(layer.params) == {"kernel"}
    assert check_model_grads(model, rng.normal(size=(2, 4)), rng) == 1


def test_dense_forward_value(rng):
    layer = Dense(3, activation="relu")
    model = build_model([layer], (4,))
    layer.params["bias"][...] = [0.1, -0.2, 0.3]
    x = rng.normal(size=(5, 4))
    np.testing.assert_allclose(model.forward(x), np.maximum(x @ layer.params["kernel"] + layer.params["bias"], 0))
    assert model.forward(x).dtype == np.float64


def test_dense_defaults_and_initialisation():
    layer = Dense(100)
    model = build_model([Flatten(), layer], (28, 28))
    assert layer.activation_name is None and layer.use_bias is True
    assert layer.kernel_initializer.keras_name == "glorot_uniform"
    assert layer.bias_initializer.keras_name == "zeros"
    assert model.param_counts() == (78500, 0)
    np.testing.assert_array_equal(layer.params["bias"], 0.0)
    limit = math.sqrt(6 / (784 + 100))
    assert np.abs(layer.params["kernel"]).max() <= limit
    assert np.abs(layer.params["kernel"]).max() > 0.95 * limit


def test_dense_frozen_gets_no_param_grads_but_passes_input_grads(rng):
    frozen, head = Dense(3, trainable=False), Dense(2)
    model = build_model([frozen, head], (4,))
    assert frozen.grads == {} and set(frozen.params) == {"kernel", "bias"}
    assert model.param_counts() == (8, 15)
    assert check_model_grads(model, rng.normal(size=(2, 4)), rng) == 2


def test_dense_rejects_multi_dimensional_input():
    with pytest.raises(GraphError, match="Flatten"):
        build_model([Dense(3)], (4, 5))


# -- Flatten / Reshape ---------------------------------------------------------------------------------
def test_flatten_shape_and_gradients(rng):
    model = build_model([Flatten(), Dense(3, activation="tanh")], (2, 3, 2))
    assert model.nodes[0].output_shape == (12,)
    x = rng.normal(size=(2, 2, 3, 2))
    np.testing.assert_array_equal(model.nodes[0].layer.forward(x, False), x.reshape(2, 12))
    check_model_grads(model, x, rng)


def test_reshape_shape_and_gradients(rng):
    model = build_model([Dense(6), Reshape([2, -1]), Flatten(), Dense(2)], (4,))
    assert model.nodes[1].output_shape == (2, 3)
    x = rng.normal(size=(3, 4))
    check_model_grads(model, x, rng)
    r = Reshape((3, 2))
    m2 = build_model([r], (6,))
    x6 = rng.normal(size=(2, 6))
    y = m2.forward(x6)
    np.testing.assert_array_equal(y, x6.reshape(2, 3, 2))
    dx = chain_input_grad(m2, x6, y * 2)
    np.testing.assert_array_equal(dx, x6 * 2)


def test_reshape_validation():
    with pytest.raises(ValueError, match="target_shape"):
        Reshape([0, 2])
    with pytest.raises(ValueError, match="target_shape"):
        Reshape([-1, -1])
    with pytest.raises(GraphError, match="cannot reshape"):
        build_model([Reshape([4, 2])], (7,))
    with pytest.raises(GraphError, match="cannot reshape"):
        build_model([Reshape([-1, 2])], (7,))


# -- Activation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["relu", "softmax", "sigmoid", "leaky_relu", "gelu", "linear"])
def test_activation_layer(name, rng):
    model = build_model([Dense(4), Activation(name), Dense(2)], (3,))
    x = rng.normal(size=(3, 3))
    check_model_grads(model, x, rng, atol=3e-6 if name == "gelu" else 1e-9)
    act = model.nodes[1].layer
    z = rng.normal(size=(2, 4))
    np.testing.assert_array_equal(act.forward(z, False), act.activation.forward(z))


# -- Dropout -------------------------------------------------------------------------------------------
def test_dropout_inverted_scaling_and_mean(rng):
    layer = Dropout(0.25)
    model = build_model([layer], (400,))
    x = rng.uniform(1.0, 2.0, size=(50, 400))
    y = model.forward(x, training=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-12)
    assert abs(kept.mean() - 0.75) < 0.01
    assert abs(y.mean() / x.mean() - 1) < 0.01


def test_dropout_keeps_float32_and_odd_sizes(rng):
    layer = Dropout(0.3)
    model = build_model([layer], (7, 3), backend=Backend(np, np.float32))
    x = np.ones((5, 7, 3), dtype=np.float32)  # 105 values: an odd number of draws
    y = model.forward(x, training=True)
    assert y.dtype == np.float32 and layer.backward(x).dtype == np.float32
    assert set(np.unique(y)) <= {np.float32(0), np.float32(1 / 0.7)}
    assert 0 < (y == 0).sum() < y.size


def test_dropout_identity_at_inference(rng):
    model = build_model([Dropout(0.5)], (10,))
    x = rng.normal(size=(4, 10))
    np.testing.assert_array_equal(model.forward(x, training=False), x)
    np.testing.assert_array_equal(model.forward(x), x)
    layer = model.nodes[0].layer
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), 1.0)


def test_dropout_backward_uses_the_forward_mask(rng):
    layer = Dropout(0.5)
    build_model([layer], (30,))
    x = rng.uniform(1.0, 2.0, size=(4, 30))
    y = layer.forward(x, training=True)
    dy = rng.normal(size=x.shape)
    dx = layer.backward(dy)
    mask = y / x
    assert set(np.unique(mask.round(12))) == {0.0, 2.0}
    np.testing.assert_allclose(dx, dy * mask, rtol=1e-12)


def test_dropout_gradients_with_fixed_noise(rng):
    model = build_model([Dense(6), Dropout(0.4), Dense(3)], (4,))
    state = model.noise.get_state()
    check_model_grads(model, rng.normal(size=(5, 4)), rng, training=True, noise_state=state)


def test_dropout_masks_differ_between_batches_and_rate_zero_is_identity(rng):
    model = build_model([Dropout(0.5)], (50,))
    x = np.ones((2, 50))
    assert not np.array_equal(model.forward(x, training=True), model.forward(x, training=True))
    m0 = build_model([Dropout(0.0)], (50,))
    np.testing.assert_array_equal(m0.forward(x, training=True), x)


def test_dropout_noise_shape_broadcasts(rng):
    model = build_model([Dropout(0.5, noise_shape=[1, 8])], (5, 8))
    y = model.forward(np.ones((3, 5, 8)), training=True)
    for b in range(3):
        assert (y[b] == y[b, :1]).all()  # the same mask for every row of a sample
    with pytest.raises(GraphError, match="noise_shape"):
        build_model([Dropout(0.5, noise_shape=[8])], (5, 8))


# -- config round-trips and validation -----------------------------------------------------------------
ROUND_TRIP = {
    "Dense": lambda **kw: Dense(7, **kw),
    "Dense_full": lambda **kw: Dense(
        3,
        activation="relu",
        use_bias=False,
        kernel_initializer="he_normal",
        bias_initializer="ones",
        kernel_regularizer={"type": "l2", "l2": 0.05},
        bias_regularizer="l1",
        trainable=False,
        **kw,
    ),
    "Dense_init_args": lambda **kw: Dense(2, kernel_initializer={"type": "random_normal", "stddev": 0.2}, **kw),
    "Flatten": lambda **kw: Flatten(**kw),
    "Reshape": lambda **kw: Reshape([2, -1], **kw),
    "Activation": lambda **kw: Activation("softmax", **kw),
    "Activation_gelu": lambda **kw: Activation("gelu", **kw),
    "Dropout": lambda **kw: Dropout(0.3, **kw),
    "Dropout_noise_shape": lambda **kw: Dropout(0.5, noise_shape=[1, 4], **kw),
}


def _assert_round_trip(layer):
    cfg = layer.get_config()
    clone = type(layer)(**cfg)
    assert type(clone) is type(layer)
    assert clone.get_config() == cfg


@pytest.mark.parametrize("key", list(ROUND_TRIP))
def test_get_config_round_trip_named(key):
    layer = ROUND_TRIP[key](name="my_layer")
    _assert_round_trip(layer)
    assert LAYERS.lookup(type(layer).__name__)[1] is type(layer)


@pytest.mark.parametrize("key", list(ROUND_TRIP))
def test_get_config_round_trip_unnamed(key):
    _assert_round_trip(ROUND_TRIP[key]())


def test_round_trip_preserves_behaviour(rng):
    original = Dense(3, activation="tanh", kernel_regularizer="l2", name="d")
    clone = Dense(**original.get_config())
    m1, m2 = build_model([original], (4,), seed=5), build_model([clone], (4,), seed=5)
    x = rng.normal(size=(2, 4))
    np.testing.assert_array_equal(m1.forward(x), m2.forward(x))
    assert m1.regularization(False) == m2.regularization(False)


@pytest.mark.parametrize(
    "factory,needle",
    [
        (lambda: Dense(0), "units=0"),
        (lambda: Dense(-3), "units=-3"),
        (lambda: Dense(2.5), "units=2.5"),
        (lambda: Dense(True), "units=True"),
        (lambda: Dropout(1.5), "rate=1.5"),
        (lambda: Dropout(-0.1), "rate=-0.1"),
        (lambda: Dropout(1.0), "rate=1.0"),
        (lambda: Dropout(0.5, noise_shape=[0]), "noise_shape=[0]"),
        (lambda: Dense(2, name=""), "name=''"),
        (lambda: Dense(2, trainable="yes"), "trainable='yes'"),
        (lambda: Activation("rellu"), "relu"),
        (lambda: Dense(2, kernel_initializer="glorot_uniformm"), "glorot_uniform"),
    ],
)
def test_constructor_validation(factory, needle):
    with pytest.raises(ValueError) as err:
        factory()
    assert needle in str(err.value)


# -- regularizers --------------------------------------------------------------------------------------
W = np.array([[0.5, -1.5], [2.0, -0.25], [0.75, 1.0]])


@pytest.mark.parametrize(
    "reg,expected",
    [
        (L1(), 0.01 * np.abs(W).sum()),
        (L2(), 0.01 * (W**2).sum()),
        (L1(0.3), 0.3 * np.abs(W).sum()),
        (L2(0.2), 0.2 * (W**2).sum()),
        (L1L2(l1=0.1, l2=0.2), 0.1 * np.abs(W).sum() + 0.2 * (W**2).sum()),
        (L1L2(), 0.0),
    ],
    ids=["l1", "l2", "l1_0.3", "l2_0.2", "l1_l2", "l1_l2_default"],
)
def test_regularizer_penalty_and_gradient(reg, expected):
    assert float(reg.penalty(W)) == pytest.approx(expected, rel=1e-12, abs=0)
    g = np.zeros_like(W)
    reg.add_grad(W, g)
    numeric = numeric_grad(lambda w: float(reg.penalty(w)), W.copy())
    assert_grad_close(g, numeric, rtol=1e-6, atol=1e-9)


def test_regularizer_lookup_and_defaults():
    assert isinstance(regularizers.get("l2"), L2) and regularizers.get("l2").l2 == 0.01
    assert isinstance(regularizers.get("L1"), L1) and regularizers.get("l1").l1 == 0.01
    r = regularizers.get({"type": "l1_l2", "l1": 0.1, "l2": 0.2})
    assert (r.l1, r.l2) == (0.1, 0.2)
    assert regularizers.get(None) is None
    assert regularizers.get(r.spec()).get_config() == r.get_config()
    with pytest.raises(ValueError, match="l2=-1"):
        L2(-1)


def test_model_regularization_adds_penalty_and_gradient(rng):
    layer = Dense(3, kernel_regularizer={"type": "l1_l2", "l1": 0.01, "l2": 0.05}, bias_regularizer="l2")
    model = build_model([layer], (4,))
    layer.params["bias"][...] = [0.3, -0.2, 0.1]
    x = rng.normal(size=(2, 4))
    r = rng.normal(size=(2, 3))

    def total(_):
        return float((model.forward(x) * r).sum()) + float(model.regularization(False))

    k, b = layer.params["kernel"], layer.params["bias"]
    expected = 0.01 * np.abs(k).sum() + 0.05 * (k**2).sum() + 0.01 * (b**2).sum()
    assert float(model.regularization(False)) == pytest.approx(expected, rel=1e-12)
    model.forward(x)
    model.backward(r)
    model.regularization(True)
    for name in ("kernel", "bias"):
        analytic = layer.grads[name].copy()
        assert_grad_close(analytic, numeric_grad(total, layer.params[name]), rtol=1e-6, atol=1e-9)
