"""Winograd F(2x2, 3x3) in Conv2D: where it applies, float64 gradient checks, the same values as
im2col, the same bits with numba or NumPy and on any thread count."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make
from test_layers_conv import grad_check, reference_conv

from dlrun.engine import compiled, winograd, workspace
from dlrun.engine import threads as ops
from dlrun.engine.backend import Backend
from dlrun.graph.layers.conv import Conv2D

C = winograd.MIN_CHANNELS


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of one or two images, so the chunk loop and its ordered sum run."""
    monkeypatch.setattr(workspace, "CACHE_VALUES", 64)


def im2col_only(monkeypatch) -> None:
    monkeypatch.setattr(winograd, "enabled", lambda: False)


@pytest.mark.parametrize(
    ("shape", "kwargs", "expected"),
    [
        ((3, 3, C, C), dict(strides=(1, 1), dilation=(1, 1)), True),
        ((3, 3, C - 1, 32), dict(strides=(1, 1), dilation=(1, 1)), False),  # a first layer on few channels
        ((3, 3, 32, C - 1), dict(strides=(1, 1), dilation=(1, 1)), False),
        ((3, 3, 32, 32), dict(strides=(2, 2), dilation=(1, 1)), False),
        ((3, 3, 32, 32), dict(strides=(1, 1), dilation=(2, 2)), False),
        ((5, 5, 32, 32), dict(strides=(1, 1), dilation=(1, 1)), False),
        ((3, 1, 32, 32), dict(strides=(1, 1), dilation=(1, 1)), False),
    ],
)
def test_applies_to_3x3_stride_1_convolutions_on_enough_channels(shape, kwargs, expected):
    assert winograd.applies(shape, kwargs["strides"], kwargs["dilation"], np) is expected


def test_dlrun_winograd_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("DLRUN_WINOGRAD", "0")
    assert not winograd.applies((3, 3, 32, 32), (1, 1), (1, 1), np)


def test_kernel_transforms_are_each_others_adjoints():
    """<G g G^T, S> = <g, G^T S G>: the kernel gradient is the transpose of the kernel transform."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 3, 2, 3))
    s = rng.normal(size=(16, 2, 3))
    lhs = float((winograd.transform_kernel(g) * s).sum())
    rhs = float((g * winograd.kernel_gradient(s, np.float64)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-13)


@pytest.mark.parametrize(
    ("hw", "padding"),
    [((6, 6), "same"), ((7, 5), "same"), ((7, 6), "valid"), ((6, 5), "valid")],
    ids=["even-same", "odd-same", "odd-valid", "even-odd-valid"],
)
def test_winograd_conv_float64_gradients(rng, small_chunks, hw, padding):
    """Inputs, kernel and bias against finite differences, with odd output sizes whose last tile
    is half outside the image."""
    layer = make(Conv2D(C, 3, padding=padding, activation="relu"), (*hw, C))
    assert layer._winograd(np)
    grad_check(layer, [rng.normal(size=(3, *hw, C))], rng)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_winograd_forward_matches_a_direct_convolution(rng, small_chunks, padding):
    layer = make(Conv2D(C + 4, 3, padding=padding), (9, 7, C))
    x = rng.normal(size=(5, 9, 7, C))
    expected = reference_conv(x, layer.params["kernel"], layer.params["bias"], (1, 1), padding, (1, 1))
    np.testing.assert_allclose(layer.forward(x, False), expected, rtol=1e-12, atol=1e-12)


def step(monkeypatch, fused: object = "default", threads: int = 1, dtype=np.float32, hw=(11, 10)):
    """One forward and backward of a 3x3 'same' Conv2D on fixed data: output, input and kernel
    gradients."""
    if fused != "default":
        monkeypatch.setattr(compiled, "kernels", lambda: fused)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, *hw, C)).astype(dtype)
    layer = make(Conv2D(24, 3, padding="same"), (*hw, C), backend=Backend(np), seed=1)
    layer.params["kernel"] = layer.params["kernel"].astype(dtype)
    layer.params["bias"] = layer.params["bias"].astype(dtype)
    with ops.cpu_threads(threads):
        y = layer.forward(x, True)
        dx = layer.backward(rng.normal(size=y.shape).astype(dtype))
    return y, dx, layer.grads["kernel"].copy(), layer.grads["bias"].copy()


def test_winograd_float32_is_close_to_im2col(monkeypatch):
    tiled = step(monkeypatch)
    im2col_only(monkeypatch)
    for got, want in zip(tiled, step(monkeypatch)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_numba_and_numpy_transforms_give_the_same_bits(monkeypatch, small_chunks):
    kernels = pytest.importorskip("dlrun.engine.numba_kernels")
    with_numba = step(monkeypatch, fused=kernels)
    without = step(monkeypatch, fused=None)
    for a, b in zip(with_numba, without):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("fused", ["default", None], ids=["numba", "numpy"])
def test_winograd_bits_do_not_depend_on_the_thread_count(monkeypatch, small_chunks, fused):
    one = step(monkeypatch, fused=fused, threads=1)
    two = step(monkeypatch, fused=fused, threads=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
