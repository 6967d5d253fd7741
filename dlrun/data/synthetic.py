"""Seeded synthetic data for smoke tests: a random linear teacher gives the labels or targets."""

from __future__ import annotations

import numpy as np


def make(
    samples: int, features: int, classes: int, task: str, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); a fifth of `samples` more is generated as the test set."""
    rng = np.random.default_rng(seed)
    n_test = max(1, samples // 5)
    x = rng.standard_normal((samples + n_test, features), dtype=np.float32)
    if task == "regression":
        w = rng.standard_normal((features, 1)).astype(np.float32) / np.sqrt(features)
        y = (x @ w + np.float32(noise) * rng.standard_normal((len(x), 1), dtype=np.float32)).astype(np.float32)
    else:
        w = rng.standard_normal((features, classes), dtype=np.float32)
        logits = x @ w + np.float32(noise * np.sqrt(features)) * rng.standard_normal(
            (len(x), classes), dtype=np.float32
        )
        y = (logits.argmax(axis=1) if classes > 1 else logits[:, 0] > 0).astype(np.int64)
    return x[:samples], y[:samples], x[samples:], y[samples:]
