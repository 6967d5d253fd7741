"""Inference never mutates the model: `forward(x)` gives probabilities before, during and after
training, the loss reads logits only per call, and scoring a checkpoint needs no optimizer state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import build_model, numeric_grad

from dlrun import api
from dlrun.data.dataset import Dataset, Split
from dlrun.engine import losses, metrics, optimizers
from dlrun.graph.layers.activation_layers import Softmax
from dlrun.graph.layers.conv import Conv2D
from dlrun.graph.layers.core import Dense
from dlrun.training.evaluation import Evaluator, loss_on_logits
from dlrun.training.loop import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# (layers, input shape, loss): outputs whose final activation the loss absorbs in training
CASES = {
    "dense_softmax": (lambda: [Dense(4, activation="tanh"), Dense(3, activation="softmax")], (5,), "scce"),
    "softmax_layer": (lambda: [Dense(4, activation="tanh"), Dense(3), Softmax()], (5,), "cce"),
    "dense_sigmoid": (lambda: [Dense(4, activation="tanh"), Dense(1, activation="sigmoid")], (5,), "bce"),
}


def _labels(loss: str, n: int) -> np.ndarray:
    return np.arange(n) % (2 if loss == "bce" else 3)


def _dataset(shape: tuple[int, ...], loss: str, n: int = 24) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *shape))
    y = _labels(loss, n)
    return Dataset("t", Split(x, y), Split(x[:8], y[:8]), None, shape, 2 if loss == "bce" else 3)


def _is_probability(out: np.ndarray, loss: str) -> None:
    assert np.all((out > 0) & (out < 1))
    if loss != "bce":
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_building_and_running_a_trainer_leaves_forward_unchanged(case):
    make_layers, shape, loss_name = CASES[case]
    model = build_model(make_layers(), shape)
    x = np.random.default_rng(1).standard_normal((6, *shape))
    before = model.forward(x)
    _is_probability(before, loss_name)
    loss = losses.get(loss_name)
    trainer = Trainer(
        model, loss, optimizers.get("adam"), [metrics.get("accuracy", loss)], _dataset(shape, loss_name), epochs=1
    )
    assert trainer.evaluator.fused  # training does take the logits
    np.testing.assert_array_equal(model.forward(x), before)
    trainer.fit()  # training steps and a validation pass ask for logits per call only
    after = model.forward(x)
    _is_probability(after, loss_name)
    np.testing.assert_allclose(model.activate_output(model.forward(x, logits=True)), after, rtol=1e-12)


def test_logits_need_a_final_activation():
    model = build_model([Dense(3)], (4,))
    with pytest.raises(ValueError, match="no activation"):
        model.forward(np.zeros((2, 4)), logits=True)
    model = build_model([Softmax(axis=1)], (2, 3))  # not the last axis: no loss absorbs it
    assert loss_on_logits(model, losses.get("cce")) is None
    with pytest.raises(ValueError, match="no activation"):
        model.forward(np.zeros((2, 2, 3)), logits=True)


def _grads(model, loss, x, y, logits: bool) -> tuple[float, np.ndarray]:
    out = model.forward(x, training=True, logits=logits)
    value, dout = loss.value_and_grad(out, y)
    model.backward(dout)
    return float(value), model.flat_grads.copy()


GRAD_CASES = {
    **{k: (make, shape, loss, lambda n, loss=loss: _labels(loss, n)) for k, (make, shape, loss) in CASES.items()},
    # A convolution as the output: its per-call choice skips the activation in the chunked epilogue.
    "conv_softmax": (
        lambda: [Conv2D(3, 3, activation="softmax")],
        (3, 3, 2),
        "cce",
        lambda n: np.eye(3)[np.arange(n) % 3].reshape(n, 1, 1, 3),
    ),
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_fused_training_path_gives_the_unfused_gradient(case):
    make_layers, shape, loss_name, labels = GRAD_CASES[case]
    model = build_model(make_layers(), shape)
    x = np.random.default_rng(2).standard_normal((6, *shape))
    y = labels(6)
    if loss_name == "cce" and y.ndim == 1:
        y = np.eye(3)[y]
    loss = losses.get(loss_name)
    fused_loss = loss_on_logits(model, loss)
    assert fused_loss is not None and fused_loss.from_logits
    plain, g_plain = _grads(model, loss, x, y, logits=False)
    fused, g_fused = _grads(model, fused_loss, x, y, logits=True)
    again, g_again = _grads(model, loss, x, y, logits=False)  # the logits call left nothing behind
    assert fused == pytest.approx(plain, rel=1e-10)
    np.testing.assert_allclose(g_fused, g_plain, rtol=1e-8, atol=1e-12)
    assert again == plain
    np.testing.assert_array_equal(g_again, g_plain)

    def value(_):
        return loss.value(model.forward(x, training=True), y)

    np.testing.assert_allclose(g_fused, numeric_grad(value, model.flat_params), rtol=1e-5, atol=1e-8)


CONFIG = {
    "name": "inference",
    "seed": 3,
    "data": {"dataset": "synthetic", "samples": 96, "features": 5, "classes": 3, "validation_split": 0.25},
    "model": {
        "layers": [
            {"Dense": {"units": 6, "activation": "relu", "kernel_regularizer": {"type": "l2", "l2": 0.01}}},
            {"Dense": {"units": 3, "activation": "softmax"}},
        ]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "metrics": ["accuracy"],
    "training": {"epochs": 2, "batch_size": 16},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return api.train(dict(CONFIG), runs_dir=tmp_path_factory.mktemp("runs"))


def test_evaluating_a_checkpoint_allocates_no_optimizer_slots(trained, monkeypatch):
    def build(self, params, segments):
        raise AssertionError(f"{type(self).__name__} slots allocated")

    monkeypatch.setattr(optimizers.Optimizer, "build", build)
    checkpoint = trained.run_dir / "checkpoints" / "last.npz"
    report = api.evaluate_report(checkpoint, split="val")
    # The same numbers as the run's own validation pass (which the Trainer ran through an Evaluator).
    assert report["scores"] == pytest.approx(trained.metrics["val"], rel=1e-6)
    assert report["scores"]["loss"] == pytest.approx(trained.history["val_loss"][-1], rel=1e-6)
    assert sum(map(sum, report["confusion"])) == report["samples"]


def test_predict_gives_probabilities(trained, tmp_path):
    x = np.random.default_rng(4).standard_normal((7, 5)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rows = api.predict(trained.run_dir / "checkpoints" / "last.npz", tmp_path / "in.npz", top_k=3)
    assert len(rows) == 7
    for row in rows:
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_the_evaluator_scores_without_an_optimizer():
    make_layers, shape, loss_name = CASES["dense_softmax"]
    model = build_model(make_layers(), shape)
    loss = losses.get(loss_name)
    data = _dataset(shape, loss_name)
    scores = Evaluator(model, loss, [metrics.get("accuracy", loss)], data).evaluate(data.val)
    probs = model.forward(data.val.x)
    expected = -np.log(probs[np.arange(8), data.val.y]).mean()
    assert scores["loss"] == pytest.approx(expected, rel=1e-10)
    assert scores["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == data.val.y))


def test_inference_batches_keep_the_widest_layer_output_within_the_cpu_budget():
    """Batches of 1024 for the MLP; the seed CNN's 28x28x32 outputs cut them to 128 (a batch of 1024
    would stream 100 MB per layer through memory); the same scores whatever the batch."""
    from dlrun.training import evaluation

    mlp = api.prepare(CONFIGS / "fashion_mnist_mlp.yaml", device="cpu").model
    cnn = api.prepare(CONFIGS / "fashion_mnist_cnn.yaml", device="cpu").model
    assert evaluation.inference_batch(mlp) == evaluation.INFERENCE_BATCH == 1024
    assert evaluation.inference_batch(cnn) == 128
    assert 128 * 28 * 28 * 32 <= evaluation.CPU_INFERENCE_VALUES < 256 * 28 * 28 * 32
    x = np.random.default_rng(0).random((300, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(
        evaluation.predict_outputs(cnn, x), evaluation.predict_outputs(cnn, x, batch_size=1024), rtol=1e-5, atol=1e-7
    )
