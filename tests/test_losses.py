"""Losses (values against Keras's formulas written out here, gradients against finite differences)
and the metrics that depend on the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_grad_close, numeric_grad

from dlrun.engine import losses, metrics
from dlrun.engine.losses import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredError,
    SparseCategoricalCrossentropy,
)

EPS = 1e-7
N, C = 4, 3


# -- Keras's formulas, by hand ---------------------------------------------------------------------------
def keras_cce(y_onehot, pred, from_logits):
    if from_logits:
        z = pred - pred.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    else:
        p = pred / pred.sum(axis=-1, keepdims=True)  # renormalise ...
        p = np.clip(p, EPS, 1 - EPS)  # ... then clip
        logp = np.log(p)
    per_sample = -(y_onehot * logp).sum(axis=-1)
    return per_sample.mean()  # sum_over_batch_size


def keras_bce(y, pred, from_logits):
    p = 1 / (1 + np.exp(-pred)) if from_logits else np.clip(pred, EPS, 1 - EPS)
    per_sample = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=-1)
    return per_sample.mean()


def keras_mse(y, p):
    return ((y - p) ** 2).mean(axis=-1).mean()


def keras_mae(y, p):
    return np.abs(y - p).mean(axis=-1).mean()


def keras_mape(y, p):
    return (100 * (np.abs(y - p) / np.maximum(np.abs(y), EPS)).mean(axis=-1)).mean()


def one_hot(labels, c=C):
    return np.eye(c)[labels]


# -- fixtures for each loss: (loss, pred, target, reference value) -----------------------------------------
LABELS = np.array([0, 2, 1, 2])


def _case(kind: str, from_logits: bool, rng: np.random.Generator):
    if kind in ("scce", "cce"):
        if from_logits:
            pred = rng.normal(0, 2, size=(N, C))
        else:
            # Unnormalised positive scores: the loss renormalises them; values stay clear of the clip.
            pred = rng.uniform(0.2, 2.0, size=(N, C))
        y = one_hot(LABELS)
        ref = keras_cce(y, pred, from_logits)
        if kind == "scce":
            return SparseCategoricalCrossentropy(from_logits=from_logits), pred, LABELS.copy(), ref
        return CategoricalCrossentropy(from_logits=from_logits), pred, y, ref
    if kind == "bce":
        pred = rng.normal(0, 2, size=(N, 2)) if from_logits else rng.uniform(0.05, 0.95, size=(N, 2))
        y = rng.integers(0, 2, size=(N, 2)).astype(np.float64)
        return BinaryCrossentropy(from_logits=from_logits), pred, y, keras_bce(y, pred, from_logits)
    y = rng.normal(0, 2, size=(N, 2))
    # Predictions at least 0.1 away from the targets: |.| has a kink at 0.
    pred = y + rng.choice([-1, 1], size=y.shape) * rng.uniform(0.1, 1.0, size=y.shape)
    if kind == "mse":
        return MeanSquaredError(), pred, y, keras_mse(y, pred)
    if kind == "mae":
        return MeanAbsoluteError(), pred, y, keras_mae(y, pred)
    return MeanAbsolutePercentageError(), pred, y, keras_mape(y, pred)


CASES = [
    ("scce", True),
    ("scce", False),
    ("cce", True),
    ("cce", False),
    ("bce", True),
    ("bce", False),
    ("mse", False),
    ("mae", False),
    ("mape", False),
]
IDS = [f"{k}-{'logits' if fl else 'probs'}" for k, fl in CASES]


@pytest.mark.parametrize("kind,from_logits", CASES, ids=IDS)
def test_value_matches_keras_formula(kind, from_logits, rng):
    loss, pred, target, ref = _case(kind, from_logits, rng)
    value, grad = loss.value_and_grad(pred, target)
    assert float(value) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    assert float(loss.value(pred, target)) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    assert grad.shape == pred.shape


@pytest.mark.parametrize("kind,from_logits", CASES, ids=IDS)
def test_gradient_matches_finite_differences(kind, from_logits, rng):
    loss, pred, target, _ = _case(kind, from_logits, rng)
    _, grad = loss.value_and_grad(pred, target)
    numeric = numeric_grad(lambda p: float(loss.value(p, target)), pred.copy())
    assert_grad_close(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind,from_logits", CASES, ids=IDS)
def test_float32_stays_float32(kind, from_logits, rng):
    loss, pred, target, ref = _case(kind, from_logits, rng)
    value, grad = loss.value_and_grad(pred.astype(np.float32), target)
    assert grad.dtype == np.float32
    assert float(value) == pytest.approx(ref, rel=1e-4)


def test_probabilities_are_renormalised_before_clipping():
    # Row sums 4 and 10: renormalised to (0.5, 0.5) and (0.2, 0.8).
    pred = np.array([[2.0, 2.0], [2.0, 8.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    expected = (-math.log(0.5) - math.log(0.8)) / 2
    assert float(CategoricalCrossentropy().value(pred, y)) == pytest.approx(expected, rel=1e-12)
    assert float(SparseCategoricalCrossentropy().value(pred, np.array([0, 1]))) == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_clips_probabilities_to_epsilon():
    pred = np.array([[0.0, 1.0], [1.0, 0.0]])
    # Class 0 has probability 0 -> clipped to 1e-7; class 0 has probability 1 -> clipped to 1 - 1e-7.
    expected = (-math.log(EPS) - math.log(1 - EPS)) / 2
    assert float(SparseCategoricalCrossentropy().value(pred, np.array([0, 0]))) == pytest.approx(expected, rel=1e-12)
    assert float(CategoricalCrossentropy().value(pred, one_hot([0, 0], 2))) == pytest.approx(expected, rel=1e-12)
    # Binary: p = 0 with y = 1 and p = 1 with y = 0 both give -log(1e-7).
    v = BinaryCrossentropy().value(np.array([[0.0], [1.0]]), np.array([[1.0], [0.0]]))
    assert float(v) == pytest.approx(-math.log(EPS), rel=1e-9)
    # Outside the clip the gradient is zero (Keras's clip has no gradient there).
    _, g = BinaryCrossentropy().value_and_grad(np.array([[0.0], [1.0]]), np.array([[1.0], [0.0]]))
    np.testing.assert_array_equal(g, 0.0)


def test_fused_logits_value_is_minus_log_softmax(rng):
    z = rng.normal(0, 3, size=(5, 4))
    labels = np.array([0, 3, 1, 2, 3])
    logsm = z - z.max(axis=1, keepdims=True)
    logsm -= np.log(np.exp(logsm).sum(axis=1, keepdims=True))
    expected = -logsm[np.arange(5), labels].mean()
    assert float(SparseCategoricalCrossentropy(from_logits=True).value(z, labels)) == pytest.approx(expected, rel=1e-12)
    assert float(CategoricalCrossentropy(from_logits=True).value(z, one_hot(labels, 4))) == pytest.approx(
        expected, rel=1e-12
    )
    # And equals the probability form on softmax(z) while nothing is clipped.
    p = np.exp(logsm)
    assert float(CategoricalCrossentropy().value(p, one_hot(labels, 4))) == pytest.approx(expected, rel=1e-9)
    # Gradient w.r.t. logits is (softmax - y) / N.
    _, g = SparseCategoricalCrossentropy(from_logits=True).value_and_grad(z, labels)
    np.testing.assert_allclose(g, (p - one_hot(labels, 4)) / 5, rtol=1e-12)


def test_fused_logits_are_stable_for_extreme_logits():
    z = np.array([[1000.0, -1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        v = SparseCategoricalCrossentropy(from_logits=True).value(z, np.array([1]))
        b = BinaryCrossentropy(from_logits=True).value(np.array([[100.0]]), np.array([[0.0]]))
    assert float(v) == pytest.approx(2000.0)
    assert float(b) == pytest.approx(100.0)


def test_binary_from_logits_equals_probability_form(rng):
    z = rng.normal(size=(6, 1))
    y = rng.integers(0, 2, size=(6, 1)).astype(np.float64)
    s = 1 / (1 + np.exp(-z))
    assert float(BinaryCrossentropy(from_logits=True).value(z, y)) == pytest.approx(
        float(BinaryCrossentropy().value(s, y)), rel=1e-9
    )


@pytest.mark.parametrize(
    "loss, activation, targets",
    [
        (SparseCategoricalCrossentropy(from_logits=True), "softmax", lambda r: r.integers(0, 7, size=64)),
        (CategoricalCrossentropy(from_logits=True), "softmax", lambda r: one_hot(r.integers(0, 7, size=64), 7)),
        (BinaryCrossentropy(from_logits=True), "sigmoid", lambda r: r.integers(0, 2, size=(64, 7)).astype(np.float32)),
    ],
    ids=["sparse", "categorical", "binary"],
)
def test_a_loss_on_logits_hands_the_metrics_the_activations_bits(loss, activation, targets, rng):
    """The training step's metrics read the probabilities the loss computed on the way instead of
    applying the output activation again: they must be what the activation gives, to the bit."""
    from dlrun.engine.activations import get as activation_of

    z = rng.normal(0, 4, size=(64, 7)).astype(np.float32)
    y = targets(rng)
    value, grad, probs = loss.value_grad_and_probabilities(z, y)
    np.testing.assert_array_equal(probs, activation_of(activation).forward(z))
    np.testing.assert_array_equal(grad, loss.value_and_grad(z, y)[1])
    assert value == loss.value(z, y) and probs.dtype == np.float32
    # A loss on probabilities computes none.
    assert type(loss)().value_grad_and_probabilities(probs, y)[2] is None


def test_targets_of_shape_n_against_predictions_n_by_1(rng):
    pred = rng.uniform(0.1, 0.9, size=(5, 1))
    y = np.array([0, 1, 1, 0, 1])
    assert float(BinaryCrossentropy().value(pred, y)) == pytest.approx(keras_bce(y[:, None], pred, False), rel=1e-12)
    assert float(MeanSquaredError().value(pred, y.astype(float))) == pytest.approx(
        keras_mse(y[:, None], pred), rel=1e-12
    )
    # Sparse labels given as a (N, 1) float column.
    logits = rng.normal(size=(5, 3))
    labels = np.array([0, 1, 2, 1, 0])
    a = SparseCategoricalCrossentropy(from_logits=True).value(logits, labels)
    b = SparseCategoricalCrossentropy(from_logits=True).value(logits, labels.reshape(5, 1).astype(np.float32))
    assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_mape_uses_epsilon_floor_for_zero_targets():
    y = np.array([[0.0, 2.0]])
    p = np.array([[1e-3, 1.0]])
    expected = 100 * (1e-3 / EPS + 1.0 / 2.0) / 2
    assert float(MeanAbsolutePercentageError().value(p, y)) == pytest.approx(expected, rel=1e-12)


def test_regression_values_by_hand():
    y = np.array([[1.0, 2.0], [3.0, -4.0]])
    p = np.array([[1.5, 1.0], [3.0, -2.0]])
    assert float(MeanSquaredError().value(p, y)) == pytest.approx((0.25 + 1 + 0 + 4) / 4)
    assert float(MeanAbsoluteError().value(p, y)) == pytest.approx((0.5 + 1 + 0 + 2) / 4)
    assert float(MeanAbsolutePercentageError().value(p, y)) == pytest.approx(100 * (0.5 + 0.5 + 0 + 0.5) / 4)


@pytest.mark.parametrize(
    "name,cls",
    [
        ("mse", MeanSquaredError),
        ("MSE", MeanSquaredError),
        ("mean_squared_error", MeanSquaredError),
        ("MAE", MeanAbsoluteError),
        ("mean_absolute_error", MeanAbsoluteError),
        ("mape", MeanAbsolutePercentageError),
        ("MeanAbsolutePercentageError", MeanAbsolutePercentageError),
        ("CategoricalCrossentropy", CategoricalCrossentropy),
        ("categorical_crossentropy", CategoricalCrossentropy),
        ("Categorical_CrossEntropy", CategoricalCrossentropy),
        ("sparse_categorical_crossentropy", SparseCategoricalCrossentropy),
        ("SparseCategoricalCrossentropy", SparseCategoricalCrossentropy),
        ("binary_crossentropy", BinaryCrossentropy),
        ("BinaryCrossentropy", BinaryCrossentropy),
    ],
)
def test_aliases_resolve(name, cls):
    loss = losses.get(name)
    assert type(loss) is cls
    assert loss.from_logits is False


def test_spec_with_arguments_and_errors():
    loss = losses.get({"type": "CategoricalCrossentropy", "from_logits": True})
    assert isinstance(loss, CategoricalCrossentropy) and loss.from_logits is True
    assert loss.spec() == {"type": "categorical_crossentropy", "from_logits": True}
    assert CategoricalCrossentropy().spec() == "categorical_crossentropy"
    with pytest.raises(ValueError, match="categorical_crossentropy"):
        losses.get("categorical_crossentropyy")
    with pytest.raises(ValueError, match="from_logits='yes'"):
        BinaryCrossentropy(from_logits="yes")
    with pytest.raises(TypeError):
        losses.get({"type": "mse", "from_logits": True})


def test_with_logits():
    fused = SparseCategoricalCrossentropy().with_logits()
    assert type(fused) is SparseCategoricalCrossentropy and fused.from_logits is True
    assert BinaryCrossentropy().with_logits().from_logits is True
    assert CategoricalCrossentropy.fuses_with == "softmax" and BinaryCrossentropy.fuses_with == "sigmoid"
    with pytest.raises(TypeError):
        MeanSquaredError().with_logits()


# -- metrics ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "loss_name,cls",
    [
        ("sparse_categorical_crossentropy", metrics.SparseCategoricalAccuracy),
        ("categorical_crossentropy", metrics.CategoricalAccuracy),
        ("binary_crossentropy", metrics.BinaryAccuracy),
    ],
)
@pytest.mark.parametrize("metric_name", ["accuracy", "acc"])
def test_accuracy_resolves_from_the_loss(loss_name, cls, metric_name):
    m = metrics.get(metric_name, losses.get(loss_name))
    assert type(m) is cls
    assert m.name == metric_name


def test_accuracy_values():
    probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    labels = np.array([1, 0, 0, 1])
    assert int(metrics.get("accuracy", losses.get("scce")).batch_sum(probs, labels)) == 2
    assert int(metrics.get("accuracy", losses.get("cce")).batch_sum(probs, one_hot(labels))) == 2
    bin_pred = np.array([[0.9, 0.2], [0.4, 0.6], [0.51, 0.49]])
    bin_y = np.array([[1, 0], [1, 1], [0, 0]], dtype=float)
    # Per-sample mean over the two outputs: 1, 0.5, 0.5.
    assert float(metrics.get("accuracy", losses.get("bce")).batch_sum(bin_pred, bin_y)) == pytest.approx(2.0)
    # Explicit names win over the loss.
    assert type(metrics.get("binary_accuracy", losses.get("scce"))) is metrics.BinaryAccuracy
    assert type(metrics.get("sparse_categorical_accuracy", losses.get("bce"))) is metrics.SparseCategoricalAccuracy


def test_regression_metrics_are_batch_sums(rng):
    y = rng.normal(size=(4, 2))
    p = y + 0.5
    m = metrics.get("mae", losses.get("mse"))
    assert float(m.batch_sum(p, y)) == pytest.approx(0.5 * 4)
    assert float(metrics.get("mse", losses.get("mse")).batch_sum(p, y)) == pytest.approx(0.25 * 4)
    with pytest.raises(ValueError):
        metrics.get("acuracy", losses.get("mse"))
