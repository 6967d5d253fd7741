"""NumPy against CuPy: every layer's forward and backward on the same inputs and weights, and a
short training run's history, must agree to float32 tolerance; checkpoints cross devices.

Runs only where CuPy imports and sees a CUDA device; CI has none, so the module is skipped there.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make

from dlrun import api
from dlrun.engine import backend as backend_mod
from dlrun.engine.backend import Backend
from dlrun.graph.layer import LAYERS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        backend_mod.gpu_unavailable_reason() is not None,
        reason=f"no GPU backend: {backend_mod.gpu_unavailable_reason()}",
    ),
]

RTOL, ATOL = 2e-4, 2e-5

# (layer type, arguments, per-sample input shapes): every layer type, the conv paths each taken.
CASES = [
    ("Dense", {"units": 7, "activation": "relu"}, [(12,)]),
    ("Dense", {"units": 5, "activation": "gelu", "kernel_regularizer": "l2"}, [(6,)]),
    ("Flatten", {}, [(3, 4, 2)]),
    ("Reshape", {"target_shape": [4, 6]}, [(24,)]),
    ("Activation", {"activation": "swish"}, [(10,)]),
    ("Dropout", {"rate": 0.4}, [(30,)]),
    ("SpatialDropout2D", {"rate": 0.5}, [(5, 5, 6)]),
    ("Conv2D", {"filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"}, [(9, 9, 3)]),
    ("Conv2D", {"filters": 4, "kernel_size": 3, "strides": 2}, [(9, 8, 3)]),
    ("Conv2D", {"filters": 3, "kernel_size": [3, 2], "dilation_rate": 2, "padding": "same"}, [(8, 7, 2)]),
    ("Conv2D", {"filters": 5, "kernel_size": 1, "activation": "tanh"}, [(4, 4, 6)]),
    ("Conv2D", {"filters": 6, "kernel_size": 5, "activation": "sigmoid"}, [(12, 12, 1)]),
    ("MaxPooling2D", {"pool_size": 2}, [(8, 8, 3)]),
    ("MaxPooling2D", {"pool_size": 3, "strides": 2, "padding": "same"}, [(7, 9, 2)]),
    ("AveragePooling2D", {"pool_size": 2, "padding": "same"}, [(7, 7, 3)]),
    ("GlobalAveragePooling2D", {}, [(5, 5, 4)]),
    ("GlobalMaxPooling2D", {"keepdims": True}, [(5, 5, 4)]),
    ("ZeroPadding2D", {"padding": [[1, 2], [0, 1]]}, [(4, 4, 2)]),
    ("UpSampling2D", {"size": 2}, [(3, 4, 2)]),
    ("BatchNormalization", {}, [(6, 6, 4)]),
    ("BatchNormalization", {"axis": 1, "center": False}, [(5, 3)]),
    ("LayerNormalization", {}, [(4, 8)]),
    ("ReLU", {"max_value": 6, "negative_slope": 0.1, "threshold": 0.2}, [(20,)]),
    ("LeakyReLU", {"negative_slope": 0.3}, [(20,)]),
    ("ELU", {"alpha": 0.7}, [(20,)]),
    ("Softmax", {}, [(3, 7)]),
    ("Add", {}, [(4, 3), (4, 3)]),
    ("Subtract", {}, [(6,), (6,)]),
    ("Multiply", {}, [(6,), (6,)]),
    ("Average", {}, [(6,), (6,), (6,)]),
    ("Maximum", {}, [(6,), (6,)]),
    ("Minimum", {}, [(6,), (6,)]),
    ("Concatenate", {"axis": -1}, [(3, 2), (3, 5)]),
]


@pytest.fixture(scope="module")
def gpu() -> Backend:
    backend, note = backend_mod.get_backend("gpu")
    assert backend.is_gpu, note
    return backend


def _run_layer(backend: Backend, case, xs, training: bool):
    """The layer's output, input gradient(s) and weight gradients (host arrays), for a seeded dy."""
    kind, kwargs, shapes = case
    layer = make(LAYERS.lookup(kind)[1](**kwargs), *shapes, backend=backend, seed=3)
    inputs = [backend.asarray(x) for x in xs]
    y = layer.forward(inputs if len(inputs) > 1 else inputs[0], training)
    dy = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
    dx = layer.backward(backend.asarray(dy))
    dxs = dx if isinstance(dx, list) else [dx]
    return (
        backend.to_host(y),
        [backend.to_host(d) for d in dxs],
        {k: backend.to_host(g) for k, g in layer.grads.items()},
    )


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'-'.join(map(str, c[1].values()))}")
def test_layer_forward_and_backward_match_numpy(case, training, gpu):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(5, *shape)).astype(np.float32) for shape in case[2]]
    y_cpu, dx_cpu, grads_cpu = _run_layer(Backend(np), case, xs, training)
    y_gpu, dx_gpu, grads_gpu = _run_layer(gpu, case, xs, training)
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=RTOL, atol=ATOL)
    assert len(dx_gpu) == len(dx_cpu)
    for a, b in zip(dx_gpu, dx_cpu):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    assert grads_gpu.keys() == grads_cpu.keys()
    for name in grads_cpu:
        np.testing.assert_allclose(grads_gpu[name], grads_cpu[name], rtol=RTOL, atol=ATOL, err_msg=name)


SMALL_CNN = {
    "seed": 5,
    "data": {"dataset": "synthetic", "samples": 240, "features": 64, "classes": 3, "validation_split": 0.25},
    "model": {
        "layers": [
            {"Reshape": {"target_shape": [8, 8, 1]}},
            {"Conv2D": {"filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"}},
            {"BatchNormalization": {}},
            {"MaxPooling2D": {"pool_size": 2}},
            {"Dropout": {"rate": 0.25}},
            {"Flatten": {}},
            {"Dense": {"units": 3, "activation": "softmax"}},
        ]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "metrics": ["accuracy"],
    "training": {"epochs": 2, "batch_size": 32},
}


def test_training_history_matches_between_devices(tmp_path, gpu):
    on_cpu = api.train(SMALL_CNN, runs_dir=tmp_path / "cpu", device="cpu")
    on_gpu = api.train(SMALL_CNN, runs_dir=tmp_path / "gpu", device="gpu")
    assert on_gpu.device.startswith("gpu") and on_cpu.device.startswith("cpu")
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(on_gpu.history[key], on_cpu.history[key], rtol=1e-3)
    for name, value in on_cpu.weights.items():
        np.testing.assert_allclose(on_gpu.weights[name], value, rtol=1e-3, atol=1e-4, err_msg=name)


def test_checkpoints_cross_devices(tmp_path, gpu):
    run = api.train(SMALL_CNN, runs_dir=tmp_path, device="gpu")
    checkpoint = run.run_dir / "checkpoints" / "last.npz"
    on_cpu = api.evaluate(checkpoint, split="val", device="cpu")
    on_gpu = api.evaluate(checkpoint, split="val", device="gpu")
    assert on_cpu.keys() == on_gpu.keys()
    for key in on_cpu:
        assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-4, abs=1e-5)
