"""A loaded dataset: train/validation/test splits kept compact (uint8 images), batched on demand.

Images stay uint8 until a batch is made; the batch is then converted to the compute dtype and
scaled to [0, 1] on the device, so memory holds a quarter of what float32 copies would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from dlrun.data import fashion_mnist, synthetic
from dlrun.data.sources import ProgressFn
from dlrun.engine.backend import Backend
from dlrun.errors import DataError


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split | None
    test: Split | None
    input_shape: tuple[int, ...]
    num_classes: int | None
    class_names: list[str] | None = None
    #: Multiplier applied to x when a batch is made (1/255 for uint8 images), or None.
    scale: float | None = None
    files: dict[str, str] = field(default_factory=dict)

    def split(self, which: str) -> Split:
        part = {"train": self.train, "val": self.val, "test": self.test}[which]
        if part is None:
            raise DataError(f"the {self.name} dataset has no {which} split here",
                            hint="set data.validation_split > 0" if which == "val" else None)
        return part


def load_dataset(data_cfg: dict[str, Any], seed: int, *, split_rng: np.random.Generator | None = None,
                 progress: ProgressFn | None = None, allow_download: bool = True) -> Dataset:
    """Load `data_cfg["dataset"]`, then apply `limit` and the seeded validation split."""
    name = data_cfg["dataset"]
    scale: float | None = None
    class_names: list[str] | None = None
    if name == "fashion_mnist":
        x_tr, y_tr, x_te, y_te = fashion_mnist.load(data_cfg.get("path"), progress, allow_download)
        scale, class_names, num_classes = 1 / 255, fashion_mnist.CLASS_NAMES, 10
    elif name == "synthetic":
        x_tr, y_tr, x_te, y_te = synthetic.make(data_cfg["samples"], data_cfg["features"], data_cfg["classes"],
                                                data_cfg["task"], data_cfg["noise"], seed)
        num_classes = None if data_cfg["task"] == "regression" else data_cfg["classes"]
    else:
        raise DataError(f"the dataset {name!r} is not available in this version of dlrun")
    if data_cfg.get("limit"):
        x_tr, y_tr = x_tr[: data_cfg["limit"]], y_tr[: data_cfg["limit"]]
    train, val = Split(x_tr, y_tr), None
    frac = data_cfg.get("validation_split") or 0.0
    if frac > 0:
        rng = split_rng if split_rng is not None else np.random.default_rng(seed)
        order = rng.permutation(len(x_tr))
        n_val = int(round(len(x_tr) * frac))
        if n_val < 1 or n_val >= len(x_tr):
            raise DataError(f"validation_split {frac} of {len(x_tr)} samples leaves an empty split")
        train = Split(x_tr[order[n_val:]], y_tr[order[n_val:]])
        val = Split(x_tr[order[:n_val]], y_tr[order[:n_val]])
    return Dataset(name, train, val, Split(x_te, y_te), tuple(x_tr.shape[1:]), num_classes, class_names, scale)


class Batches:
    """Mini-batches of one split as device arrays, optionally reshuffled each epoch."""

    def __init__(self, split: Split, batch_size: int, backend: Backend, scale: float | None,
                 target_transform: Any = None) -> None:
        self.split, self.batch_size, self.backend, self.scale = split, batch_size, backend, scale
        self.target_transform = target_transform
        # On a GPU the whole split goes to the device once (still uint8); batches are cut there.
        self._x = backend.asarray(split.x) if backend.is_gpu else split.x
        self._y = backend.asarray(split.y) if backend.is_gpu else split.y

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def epoch(self, rng: np.random.Generator | None = None, start_batch: int = 0) -> Iterator[tuple[Any, Any]]:
        n = len(self.split)
        order = rng.permutation(n) if rng is not None else None
        if order is not None and self.backend.is_gpu:
            order = self.backend.asarray(order)
        for b in range(start_batch, len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            idx = slice(lo, hi) if order is None else order[lo:hi]
            yield self._convert_x(self._x[idx]), self._convert_y(self._y[idx])

    def _convert_x(self, xb: Any) -> Any:
        dtype = self.backend.dtype
        if self.scale is None:
            return xb.astype(dtype, copy=False)
        out = xb.astype(dtype)
        out *= self.scale
        return out

    def _convert_y(self, yb: Any) -> Any:
        return yb if self.target_transform is None else self.target_transform(yb)


_STATIC_SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def dataset_input_shape(data_cfg: dict[str, Any]) -> tuple[int, ...] | None:
    """The input shape a dataset implies, known without loading it (for summary/validate)."""
    if data_cfg["dataset"] == "synthetic":
        return (data_cfg["features"],)
    return _STATIC_SHAPES.get(data_cfg["dataset"])
