"""Shared test helpers: a float64 finite-difference checker and tiny float64 models for the numerics
tests, and the small synthetic config that the command-line and report tests train."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlrun.engine.backend import Backend
from dlrun.graph.layer import Layer
from dlrun.graph.model import Model, Node

F64 = Backend(np, np.float64)


def numeric_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar `f(x)` with respect to `x` (float64).

    `x` is perturbed in place, one element at a time, and restored afterwards, so it may be a view into
    a model's parameter buffer: `f` may ignore its argument and read the model instead.
    """
    assert x.dtype == np.float64, "finite differences need float64"
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, x), "x must be contiguous so perturbations reach it"
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = float(f(x))
        flat[i] = old - eps
        fm = float(f(x))
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def assert_grad_close(analytic: Any, numeric: np.ndarray, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    analytic = np.asarray(analytic)
    assert analytic.shape == numeric.shape
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def build_model(
    layers: Sequence[Layer], input_shape: tuple[int, ...], *, seed: int = 0, backend: Backend = F64
) -> Model:
    """A chain `input -> layers[0] -> ... -> layers[-1]` as a float64 dlrun Model."""
    nodes, prev = [], "input"
    for i, layer in enumerate(layers):
        name = f"n{i}"
        nodes.append(Node(name=name, layer=layer, inputs=[prev]))
        prev = name
    return Model(
        inputs={"input": tuple(input_shape)},
        nodes=nodes,
        output=prev,
        backend=backend,
        init_rng=np.random.default_rng(seed),
        noise_rng=np.random.default_rng(seed + 1),
    )


def chain_input_grad(model: Model, x: np.ndarray, dout: np.ndarray, training: bool = False) -> np.ndarray:
    """d(sum(model(x) * dout))/dx for a chain model (Model.backward does not return input gradients)."""
    for node in model.nodes:
        node.layer.needs_input_grad = True
    model.forward(x, training=training)
    dy = dout
    for node in reversed(model.nodes):
        dy = node.layer.backward(dy)
    return dy


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def make(layer, *shapes, backend=F64, seed=0):
    """`layer` inside a tiny Model (which allocates its weights, float64 by default), input grads on."""
    names = [f"in{i}" for i in range(len(shapes))]
    Model(
        dict(zip(names, shapes)),
        [Node("layer", layer, names)],
        "layer",
        backend=backend,
        init_rng=np.random.default_rng(seed),
        noise_rng=np.random.default_rng(seed + 1),
    )
    layer.needs_input_grad = True
    return layer


SYNTH_YAML = """\
name: synth
seed: 3
data: {dataset: synthetic, samples: 300, features: 12, classes: 3, validation_split: 0.2}
model:
  layers:
    - Dense: {units: 16, activation: relu}
    - Dense: {units: 3, activation: softmax}
loss: sparse_categorical_crossentropy
optimizer: adam
metrics: [accuracy]
training: {epochs: 2, batch_size: 16}
"""


@pytest.fixture(scope="session")
def synth_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SYNTH_YAML as a config file (read it, never change it): 12 features, 3 classes, 2 epochs."""
    path = tmp_path_factory.mktemp("synth") / "synth.yaml"
    path.write_text(SYNTH_YAML)
    return path
