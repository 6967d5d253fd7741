"""Initializers: Keras's fan computation, bounds/spreads of the variance-scaling presets, seeding, dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlrun.engine import initializers
from dlrun.engine.initializers import (
    Constant,
    GlorotNormal,
    GlorotUniform,
    HeNormal,
    HeUniform,
    LecunNormal,
    LecunUniform,
    Ones,
    RandomNormal,
    RandomUniform,
    TruncatedNormal,
    VarianceScaling,
    Zeros,
    compute_fans,
)


def draw(init, shape, seed=0, dtype=np.float32):
    return init(shape, np.random.default_rng(seed), dtype)


@pytest.mark.parametrize(
    "shape,fans",
    [
        ((3, 3, 16, 32), (144, 288)),
        ((5, 5, 1, 6), (25, 150)),
        ((784, 100), (784, 100)),
        ((7,), (7, 7)),
        ((), (1, 1)),
        ((3, 4, 5), (12, 15)),
    ],
)
def test_compute_fans(shape, fans):
    assert compute_fans(shape) == fans


@pytest.mark.parametrize("shape", [(60, 40), (3, 3, 16, 32)])
def test_glorot_uniform_bounds_and_spread(shape):
    fan_in, fan_out = compute_fans(shape)
    limit = math.sqrt(6 / (fan_in + fan_out))
    w = draw(GlorotUniform(), shape, dtype=np.float64)
    assert w.shape == shape
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.97 * limit
    assert abs(w.mean()) < 0.05 * limit
    assert w.std() == pytest.approx(limit / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("cls,fan,scale", [(HeUniform, "in", 2.0), (LecunUniform, "in", 1.0)])
def test_other_uniform_presets(cls, fan, scale):
    shape = (50, 80)
    limit = math.sqrt(3 * scale / 50)
    w = draw(cls(), shape, dtype=np.float64)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.97 * limit


@pytest.mark.parametrize(
    "cls,var_fn",
    [
        (HeNormal, lambda fi, fo: 2 / fi),
        (LecunNormal, lambda fi, fo: 1 / fi),
        (GlorotNormal, lambda fi, fo: 2 / (fi + fo)),
    ],
)
@pytest.mark.parametrize("shape", [(200, 150), (3, 3, 16, 32)])
def test_truncated_normal_presets_std(cls, var_fn, shape):
    fan_in, fan_out = compute_fans(shape)
    target_std = math.sqrt(var_fn(fan_in, fan_out))
    w = draw(cls(), shape, dtype=np.float64)
    # Keras divides the pre-truncation stddev by 0.8796..., so the truncated draws have the target std ...
    assert w.std() == pytest.approx(target_std, rel=0.03)
    assert abs(w.mean()) < 0.03 * target_std
    # ... and are cut at two pre-truncation standard deviations.
    cut = 2 * target_std / 0.87962566103423978
    assert np.abs(w).max() <= cut
    assert np.abs(w).max() > 0.95 * cut


def test_he_normal_std_for_conv_kernel():
    w = draw(HeNormal(), (3, 3, 16, 32), dtype=np.float64)
    assert w.std() == pytest.approx(math.sqrt(2 / 144), rel=0.03)


def test_zeros_ones_constant():
    np.testing.assert_array_equal(draw(Zeros(), (3, 4)), np.zeros((3, 4)))
    np.testing.assert_array_equal(draw(Ones(), (5,)), np.ones(5))
    np.testing.assert_array_equal(draw(Constant(0.25), (2, 2)), np.full((2, 2), 0.25))


def test_random_normal_uniform_truncated():
    n = draw(RandomNormal(mean=1.0, stddev=0.5), (200, 100), dtype=np.float64)
    assert n.mean() == pytest.approx(1.0, abs=0.01) and n.std() == pytest.approx(0.5, rel=0.02)
    u = draw(RandomUniform(-0.2, 0.6), (200, 100), dtype=np.float64)
    assert u.min() >= -0.2 and u.max() <= 0.6 and u.mean() == pytest.approx(0.2, abs=0.01)
    t = draw(TruncatedNormal(stddev=0.1), (200, 100), dtype=np.float64)
    assert np.abs(t).max() <= 0.2 and np.abs(t).max() > 0.19
    # Defaults as Keras: stddev 0.05, uniform in [-0.05, 0.05].
    assert RandomNormal().stddev == 0.05 and TruncatedNormal().stddev == 0.05
    assert (RandomUniform().minval, RandomUniform().maxval) == (-0.05, 0.05)


@pytest.mark.parametrize(
    "name",
    [
        "glorot_uniform",
        "glorot_normal",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "lecun_uniform",
        "random_normal",
        "random_uniform",
        "truncated_normal",
    ],
)
def test_seeded_reproducibility(name):
    init = initializers.get(name)
    a, b = draw(init, (20, 10), seed=7), draw(init, (20, 10), seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw(init, (20, 10), seed=8))


@pytest.mark.parametrize("name", ["glorot_uniform", "he_normal", "zeros", "ones", "random_normal", "constant"])
def test_dtype(name):
    init = initializers.get(name)
    assert init((4, 3), np.random.default_rng(0)).dtype == np.float32  # default dtype float32
    assert init((4, 3), np.random.default_rng(0), np.float64).dtype == np.float64


def test_float32_and_float64_draws_agree():
    a = draw(GlorotUniform(), (6, 5), seed=3, dtype=np.float32)
    b = draw(GlorotUniform(), (6, 5), seed=3, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_lookup_specs_and_validation():
    assert type(initializers.get("GlorotUniform")) is GlorotUniform
    assert type(initializers.get("he_normal")) is HeNormal
    assert type(initializers.get("zero")) is Zeros
    init = initializers.get({"type": "random_normal", "stddev": 0.2})
    assert isinstance(init, RandomNormal) and init.stddev == 0.2
    assert init.spec() == {"type": "random_normal", "mean": 0.0, "stddev": 0.2}
    assert GlorotUniform().spec() == "glorot_uniform"
    assert initializers.get(init.spec()).get_config() == init.get_config()
    vs = initializers.get({"type": "variance_scaling", "scale": 2.0, "mode": "fan_out", "distribution": "uniform"})
    w = draw(vs, (30, 50), dtype=np.float64)
    assert np.abs(w).max() <= math.sqrt(3 * 2 / 50)
    with pytest.raises(ValueError, match="mode='fan_sum'"):
        VarianceScaling(mode="fan_sum")
    with pytest.raises(ValueError, match="distribution='normal'"):
        VarianceScaling(distribution="normal")
    with pytest.raises(ValueError, match="stddev=-1"):
        RandomNormal(stddev=-1)
    with pytest.raises(ValueError, match="glorot_uniform"):
        initializers.get("glorot_unifrom")
