"""Seeded synthetic data for smoke tests: a random linear teacher gives the labels or targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dlrun.checks import NON_NEGATIVE, NUMBER, POSITIVE
from dlrun.config.schema import Key
from dlrun.data.registry import DATASETS, TASK, Arrays, Source, Targets
from dlrun.data.sources import ProgressFn
from dlrun.errors import DataError


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


class Synthetic(Source):
    name = "synthetic"
    description = "seeded random data from a linear teacher, for smoke tests (generated)"
    kind = "generated"
    order = 90
    keys: ClassVar[dict[str, Key]] = {
        "samples": Key((int,), 1000, POSITIVE, "number of samples"),
        "features": Key((int,), 100, POSITIVE, "number of features"),
        "classes": Key((int,), 2, POSITIVE, "number of classes (classification)"),
        "task": TASK,
        "noise": Key(NUMBER, 0.1, NON_NEGATIVE, "label/target noise"),
    }

    def put(self) -> str:
        return "nothing to put anywhere: synthetic data is generated from the seed"

    def fetch(self, progress: ProgressFn | None = None) -> Path:
        raise DataError("synthetic data is generated from the seed; there is nothing to fetch")

    def load(self, data_cfg: dict[str, Any], seed: int, progress: ProgressFn | None, allow_download: bool) -> Arrays:
        c = data_cfg
        arrays = make(c["samples"], c["features"], c["classes"], c["task"], c["noise"], seed)
        return Arrays(*arrays, self.targets(c).classes)

    def generated_bytes(self, data_cfg: dict[str, Any]) -> int:
        """Peak bytes of `make` and the split after it, from the config alone (checked before generating):
        float32 features of the samples and the fifth more of test samples, the validation split's copy
        of them, the teacher's logits and noise, and int64 labels."""
        samples = data_cfg["samples"]
        n = samples + max(1, samples // 5)
        return n * (2 * 4 * data_cfg["features"] + 2 * 4 * data_cfg["classes"] + 8)

    def input_shape(self, data_cfg: dict[str, Any]) -> tuple[int, ...]:
        return (data_cfg["features"],)

    def train_samples(self, data_cfg: dict[str, Any]) -> int:
        return data_cfg["samples"]

    def targets(self, data_cfg: dict[str, Any]) -> Targets:
        return Targets(None if data_cfg["task"] == "regression" else data_cfg["classes"])


DATASETS.add(Synthetic())
