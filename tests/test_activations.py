"""Activations: forward values against Keras's definitions, backward against float64 finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_grad_close, numeric_grad

from dlrun.engine import activations
from dlrun.engine.activations import ELU, GELU, LeakyReLU, Sigmoid, Softmax


def _phi(v: float) -> float:
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def _reference(name: str, x: np.ndarray) -> np.ndarray:
    """Keras's activation formulas, written independently of dlrun."""
    sig = 1 / (1 + np.exp(-x))
    if name == "relu":
        return np.maximum(x, 0)
    if name == "leaky_relu":
        return np.where(x > 0, x, 0.2 * x)
    if name == "elu":
        return np.where(x > 0, x, np.exp(x) - 1)
    if name == "gelu":
        return x * np.vectorize(_phi)(x)
    if name == "gelu_approx":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if name == "sigmoid":
        return sig
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name == "tanh":
        return np.tanh(x)
    if name == "linear":
        return x
    if name == "swish":
        return x * sig
    raise KeyError(name)


def _make(name: str) -> activations.Activation:
    return GELU(approximate=True) if name == "gelu_approx" else activations.get(name)


ALL = ["relu", "leaky_relu", "elu", "gelu", "gelu_approx", "sigmoid", "softmax", "tanh", "linear", "swish"]


def _inputs(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0, 1.5, size=(4, 6))
    # Stay away from the kinks at 0 (relu, leaky_relu, elu), where finite differences are meaningless.
    return np.where(np.abs(x) < 1e-2, 0.5, x)


@pytest.mark.parametrize("name", ALL)
def test_forward_matches_keras_formula(name, rng):
    x = _inputs(rng)
    y = _make(name).forward(x)
    # The exact GELU uses an erf approximation good to ~2e-7 (NumPy has no erf).
    atol = 5e-7 if name == "gelu" else 1e-12
    np.testing.assert_allclose(y, _reference(name, x), rtol=0, atol=atol)


@pytest.mark.parametrize("name", ALL)
def test_backward_matches_finite_differences(name, rng):
    act = _make(name)
    x = _inputs(rng)
    dy = rng.normal(size=x.shape)
    y = act.forward(x)
    analytic = act.backward(x, y, dy)
    numeric = numeric_grad(lambda v: float((act.forward(v) * dy).sum()), x.copy())
    # The exact GELU's backward uses the exact pdf while its forward uses the erf approximation.
    atol = 2e-6 if name == "gelu" else 1e-8
    assert_grad_close(analytic, numeric, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("name", ALL)
def test_float32_in_float32_out(name, rng):
    act = _make(name)
    x = _inputs(rng).astype(np.float32)
    y = act.forward(x)
    dx = act.backward(x, y, np.ones_like(x))
    assert y.dtype == np.float32 and dx.dtype == np.float32
    assert y.shape == x.shape and dx.shape == x.shape


def test_known_values():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0])
    gelu = GELU()
    np.testing.assert_allclose(gelu.forward(np.array([1.0])), [0.8413447460685429], atol=5e-7)
    np.testing.assert_allclose(gelu.forward(np.array([-1.0])), [-0.15865525393145707], atol=5e-7)
    np.testing.assert_allclose(GELU(approximate=True).forward(np.array([1.0])), [0.8411919906082768], atol=1e-12)
    np.testing.assert_allclose(activations.get("relu").forward(x), [0, 0, 0, 1, 3])
    np.testing.assert_allclose(activations.get("leaky_relu").forward(x), [-0.4, -0.2, 0, 1, 3])
    np.testing.assert_allclose(activations.get("elu").forward(x), [math.expm1(-2), math.expm1(-1), 0, 1, 3])
    np.testing.assert_allclose(activations.get("sigmoid").forward(np.array([0.0, math.log(3)])), [0.5, 0.75])
    np.testing.assert_allclose(activations.get("swish").forward(np.array([0.0, 1.0])), [0.0, 1 / (1 + math.e**-1)])
    np.testing.assert_allclose(activations.get("tanh").forward(np.array([0.5])), [math.tanh(0.5)])
    np.testing.assert_allclose(activations.get("softmax").forward(np.array([[0.0, math.log(3)]])), [[0.25, 0.75]])
    np.testing.assert_array_equal(activations.get(None).forward(x), x)


def test_leaky_relu_slope_is_0_2_and_gradient_too():
    act = activations.get("leaky_relu")
    assert isinstance(act, LeakyReLU) and act.negative_slope == 0.2
    x = np.array([-5.0, 5.0])
    np.testing.assert_allclose(act.backward(x, act.forward(x), np.ones(2)), [0.2, 1.0])
    assert LeakyReLU(0.3).forward(np.array([-1.0]))[0] == pytest.approx(-0.3)


def test_elu_alpha():
    x = np.array([-1.0, 2.0])
    np.testing.assert_allclose(ELU(alpha=2.0).forward(x), [2 * math.expm1(-1), 2.0])


def test_sigmoid_and_softmax_are_stable_for_large_inputs():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = Sigmoid().forward(np.array([-1000.0, 1000.0]))
        p = Softmax().forward(np.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(s, [0.0, 1.0])
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0]])
    assert np.isfinite(p).all()


def test_softmax_rows_sum_to_one_and_shift_invariant(rng):
    x = rng.normal(size=(3, 5))
    p = Softmax().forward(x)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    np.testing.assert_allclose(Softmax().forward(x + 7.0), p)


def test_lookup_aliases_and_errors():
    assert activations.get("ReLU").name == "relu"
    assert activations.get("silu").name == "swish"
    assert activations.get("none").name == "linear"
    assert activations.get(None).name == "linear"
    gelu = activations.get("gelu")
    assert isinstance(gelu, GELU) and gelu.approximate is False  # Keras's default is the exact GELU
    with pytest.raises(ValueError, match="relu"):
        activations.get("rellu")
    with pytest.raises(ValueError, match="activation=3"):
        activations.get(3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_activation_kernels_give_the_bits_of_numpy(dtype, rng, monkeypatch):
    """numba runs the gradients of ReLU, tanh and sigmoid, and a layer's bias plus ReLU, in one pass
    each: the values, signed zeros and NaNs must be those of the NumPy passes."""
    kernels = pytest.importorskip("dlrun.engine.numba_kernels")
    from dlrun.engine import compiled

    z = rng.standard_normal((37, 12)).astype(dtype)
    z[0, :6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45]
    bias = rng.standard_normal(12).astype(dtype)
    bias[:6] = [0.0, -0.0, 0.0, 0.0, 0.0, 0.0]  # -0.0 + -0.0 keeps the sign
    dy = rng.standard_normal((37, 12)).astype(dtype)
    dy[1, :4] = [np.inf, -np.inf, np.nan, -0.0]
    bits = np.uint32 if dtype == np.float32 else np.uint64

    def run(fused):
        monkeypatch.setattr(compiled, "kernels", lambda: fused)
        zz, same = z.copy(), z.copy()
        y = activations.relu_with_bias(zz, bias, np.empty_like(zz))
        in_place = activations.relu_with_bias(same, bias, same)
        squashed = np.tanh(z)  # outputs in (-1, 1) as well as relu's
        with np.errstate(invalid="ignore"):  # inf * 0 in NumPy's products
            grads = [
                activations.get(name).backward(z, out, dy)
                for name in ("relu", "tanh", "sigmoid")
                for out in (y, squashed)
            ]
        return [zz, y, in_place, *grads]

    for fused, plain in zip(run(kernels), run(None)):
        assert fused.dtype == plain.dtype
        np.testing.assert_array_equal(fused.view(bits), plain.view(bits))


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_half_precision_gradients_take_the_numpy_path(name):
    """numba compiles no float16 loops: such arrays must still get NumPy's gradient, in float16."""
    y = np.array([[-0.5, 0.0, 0.25, 0.75]], dtype=np.float16)
    dy = np.array([[1.0, -2.0, 3.0, -4.0]], dtype=np.float16)
    grad = activations.get(name).backward(y, y, dy)
    expected = {"relu": dy * (y > 0), "tanh": dy * (1 - y * y), "sigmoid": dy * y * (1 - y)}[name]
    assert grad.dtype == np.float16
    np.testing.assert_array_equal(grad, expected)
