"""A loaded dataset: train/validation/test splits kept compact (uint8 images), batched on demand.

`load_dataset` reads a source (fashion_mnist, cifar10, npz, csv, synthetic), then prepares it in
this order: `limit` (first N training samples), `test_split` (only for sources without a test set),
`validation_split` (seeded, optionally stratified), normalisation (its statistics from the training
split only, or from `data.statistics` when a trained config carries them) and augmentation.

Images stay uint8 until a batch is made (see dlrun.data.pipeline): memory holds a quarter of what
float32 copies would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlrun.data import augment, cifar10, fashion_mnist, normalize, splits, synthetic, userfiles
from dlrun.data.augment import Augmenter
from dlrun.data.normalize import Normalization
from dlrun.data.pipeline import Batches, PipelineStats, Prefetcher
from dlrun.data.sources import ProgressFn
from dlrun.engine.backend import Backend
from dlrun.errors import DataError

#: (name, what it is) for `dlrun data list` and error messages.
DATASETS = {
    "fashion_mnist": "Fashion-MNIST: 70,000 28x28 grey images of clothes, 10 classes (downloaded)",
    "cifar10": "CIFAR-10: 60,000 32x32 colour images, 10 classes (downloaded, binary version)",
    "npz": "your arrays: an .npz with x_train, y_train[, x_test, y_test] (data.path)",
    "csv": "your table: numeric feature columns and a target column (data.path, data.target)",
    "synthetic": "seeded random data from a linear teacher, for smoke tests (generated)",
}


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: Any) -> Split:
        return Split(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class Targets:
    """What a model must predict: a class count (integer labels), or for regression
    `classes` None and the number of values per sample."""

    classes: int | None
    per_sample: int = 1


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split | None
    test: Split | None
    input_shape: tuple[int, ...]
    num_classes: int | None
    class_names: list[str] | None = None
    normalization: Normalization = field(default_factory=Normalization)
    augmenter: Augmenter | None = None
    prefetch: int = 0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def targets(self) -> Targets:
        y = self.train.y
        return Targets(self.num_classes, int(y.shape[1]) if y.ndim == 2 else 1)

    @property
    def scale(self) -> Normalization:
        """The normalisation, under its old name: Batches takes it where it took a scale factor."""
        return self.normalization

    @property
    def statistics(self) -> dict[str, list[float]] | None:
        """The standardisation statistics (for `data.statistics`), or None."""
        return self.normalization.statistics

    def split(self, which: str) -> Split:
        part = {"train": self.train, "val": self.val, "test": self.test}[which]
        if part is None:
            raise DataError(
                f"the {self.name} dataset has no {which} split here",
                hint="set data.validation_split > 0"
                if which == "val"
                else "set data.test_split > 0"
                if which == "test"
                else None,
            )
        return part

    def batches(
        self, split: Split, batch_size: int, backend: Backend, target_transform: Any = None, *, training: bool = False
    ) -> Batches:
        """Batches of `split`: normalised, prefetched, and augmented when `training`."""
        return Batches(
            split,
            batch_size,
            backend,
            self.normalization,
            target_transform,
            augmenter=self.augmenter if training else None,
            prefetch=self.prefetch,
        )


def _read(data_cfg: dict[str, Any], seed: int, progress: ProgressFn | None, allow_download: bool) -> userfiles.Arrays:
    """The source's arrays, before any preparation."""
    name = data_cfg["dataset"]
    if name == "fashion_mnist":
        x_tr, y_tr, x_te, y_te = fashion_mnist.load(data_cfg.get("path"), progress, allow_download)
        return userfiles.Arrays(x_tr, y_tr, x_te, y_te, 10, list(fashion_mnist.CLASS_NAMES))
    if name == "cifar10":
        x_tr, y_tr, x_te, y_te, names = cifar10.load(data_cfg.get("path"), progress, allow_download)
        return userfiles.Arrays(x_tr, y_tr, x_te, y_te, 10, names)
    if name == "npz":
        return userfiles.load_npz(data_cfg.get("path"), data_cfg["task"])
    if name == "csv":
        return userfiles.load_csv(data_cfg.get("path"), data_cfg["target"], data_cfg["task"], data_cfg.get("header"))
    if name == "synthetic":
        x_tr, y_tr, x_te, y_te = synthetic.make(
            data_cfg["samples"], data_cfg["features"], data_cfg["classes"], data_cfg["task"], data_cfg["noise"], seed
        )
        classes = None if data_cfg["task"] == "regression" else data_cfg["classes"]
        return userfiles.Arrays(x_tr, y_tr, x_te, y_te, classes)
    raise DataError(f"the dataset {name!r} is not available in this version of dlrun")


def load_dataset(
    data_cfg: dict[str, Any],
    seed: int,
    *,
    split_rng: np.random.Generator | None = None,
    progress: ProgressFn | None = None,
    allow_download: bool = True,
) -> Dataset:
    """Read `data_cfg["dataset"]` and prepare it (see the module docstring)."""
    name = data_cfg["dataset"]
    arrays = _read(data_cfg, seed, progress, allow_download)
    train = Split(arrays.x_train, arrays.y_train)
    if data_cfg.get("limit"):
        train = train.take(slice(0, data_cfg["limit"]))
    rng = split_rng if split_rng is not None else np.random.default_rng(seed)
    classification = arrays.num_classes is not None
    stratify = bool(data_cfg.get("stratify"))
    if stratify and not classification:
        raise DataError(
            f"data.stratify needs class labels; the {name} data here are regression targets",
            hint="set data.stratify: false",
        )
    test = Split(arrays.x_test, arrays.y_test) if arrays.x_test is not None else None
    test_frac = data_cfg.get("test_split") or 0.0
    if test_frac > 0:
        if test is not None:
            raise DataError(
                f"data.test_split is for datasets without a test set; {name} has one ({len(test):,} samples)",
                hint="remove data.test_split",
            )
        keep, held = splits.holdout(len(train), test_frac, rng, train.y if stratify else None, "test_split")
        train, test = train.take(keep), train.take(held)
    val_frac = data_cfg.get("validation_split") or 0.0
    val = None
    if val_frac > 0:
        keep, held = splits.holdout(len(train), val_frac, rng, train.y if stratify else None)
        train, val = train.take(keep), train.take(held)
    norm = normalize.resolve(
        data_cfg.get("normalize") or "auto",
        train.x,
        default_normalization(name, train.x.dtype),
        data_cfg.get("statistics"),
        name,
    )
    input_shape = tuple(train.x.shape[1:])
    try:
        augmenter = augment.augmenter(data_cfg.get("augmentation"), seed, input_shape)
    except (TypeError, ValueError) as exc:
        raise DataError(f"data.augmentation: {exc}") from None
    return Dataset(
        name,
        train,
        val,
        test,
        input_shape,
        arrays.num_classes,
        arrays.class_names,
        norm,
        augmenter,
        int(data_cfg.get("prefetch") or 0),
    )


_STATIC_SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def dataset_input_shape(data_cfg: dict[str, Any], needed: bool = False) -> tuple[int, ...] | None:
    """The input shape a dataset implies, known without loading it (for summary/validate).

    For npz and csv it is read from the file's header. When the file cannot tell: None, or with
    `needed` (the model gives no input_shape of its own) the DataError saying why.
    """
    name = data_cfg["dataset"]
    if name == "synthetic":
        return (data_cfg["features"],)
    if name in ("npz", "csv"):
        path = data_cfg.get("path")
        shape = (
            userfiles.npz_input_shape(path)
            if name == "npz"
            else userfiles.csv_input_shape(path, data_cfg.get("header"))
        )
        if shape is None and needed:  # reading the whole file says what is wrong with it
            return tuple(_read(data_cfg, 0, None, False).x_train.shape[1:])
        return shape
    return _STATIC_SHAPES.get(name)


def default_normalization(name: str, dtype: Any) -> str:
    """What `normalize: auto` means: standardize for csv, scale for uint8 images, none otherwise."""
    if name == "csv":
        return "standardize"
    return "scale" if np.dtype(dtype) == np.uint8 else "none"


def input_normalization(data_cfg: dict[str, Any], dtype: Any) -> Normalization:
    """How a trained model's raw inputs of `dtype` (predict) are normalised: as in training.

    Float inputs to a model trained on scaled uint8 images are taken as already scaled.
    """
    kind = data_cfg.get("normalize") or "auto"
    kind = default_normalization(data_cfg["dataset"], dtype) if kind == "auto" else kind
    stats = data_cfg.get("statistics")
    if kind == "standardize":
        if not stats:
            raise DataError(
                "the model was trained on standardised inputs but its config has no data.statistics",
                hint="retrain with this dlrun version (it stores them), or add data.statistics",
            )
        return Normalization("standardize", mean=stats["mean"], std=stats["std"])
    if kind == "scale" and np.dtype(dtype) == np.uint8:
        return Normalization("scale", scale=1 / 255)
    return Normalization("none")


def known_targets(data_cfg: dict[str, Any]) -> Targets | None:
    """The targets a dataset holds, known without loading it; None when only its files can tell."""
    names = known_class_names(data_cfg)
    if names is not None:
        return Targets(len(names))
    if data_cfg["dataset"] == "synthetic":
        return Targets(None if data_cfg["task"] == "regression" else data_cfg["classes"])
    return None


def known_class_names(data_cfg: dict[str, Any]) -> list[str] | None:
    """Class names known without loading data (for predict)."""
    return {"fashion_mnist": list(fashion_mnist.CLASS_NAMES), "cifar10": list(cifar10.DEFAULT_CLASS_NAMES)}.get(
        data_cfg["dataset"]
    )


__all__ = [
    "Batches",
    "Dataset",
    "PipelineStats",
    "Prefetcher",
    "Split",
    "Targets",
    "dataset_input_shape",
    "default_normalization",
    "input_normalization",
    "known_class_names",
    "known_targets",
    "load_dataset",
]
