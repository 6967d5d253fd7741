"""A loaded dataset: train/validation/test splits kept compact (uint8 images), batched on demand.

`load_dataset` reads a source (dlrun.data.registry; one module each in dlrun.data.datasets), then prepares it in
this order: `limit` (first N training samples), `test_split` (only for sources without a test set),
`validation_split` (seeded, optionally stratified), normalisation (its statistics from the training
split only, or from `data.statistics` when a trained config carries them) and augmentation.

Images stay uint8 until a batch is made (see dlrun.data.pipeline): memory holds a quarter of what
float32 copies would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import dlrun.data.datasets  # noqa: F401  (registers every dataset)
from dlrun.data import augment, normalize, splits
from dlrun.data.augment import Augmenter
from dlrun.data.normalize import Normalization
from dlrun.data.pipeline import Batches, PipelineStats, Prefetcher
from dlrun.data.registry import DATASETS, Targets
from dlrun.data.sources import ProgressFn
from dlrun.engine.backend import Backend
from dlrun.errors import DataError

#: Batches made ahead when `data.prefetch` is null and prefetching pays (see `Dataset.batches`).
AUTO_PREFETCH = 2


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: Any) -> Split:
        return Split(self.x[idx], self.y[idx])


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
    #: Batches made ahead in a background thread; None: `AUTO_PREFETCH` where it pays (see `batches`).
    prefetch: int | None = 0
    files: list[Path] = field(default_factory=list)  # what it was read from (the manifest hashes them)
    #: What was noticed while preparing the splits (an empty test set skipped), for the user to read.
    notes: list[str] = field(default_factory=list)

    @property
    def targets(self) -> Targets:
        y = self.train.y
        return Targets(self.num_classes, int(y.shape[1]) if y.ndim == 2 else 1)

    @property
    def statistics(self) -> dict[str, list[float]] | None:
        """The standardisation statistics (for `data.statistics`), or None."""
        return self.normalization.statistics

    def split(self, which: str) -> Split:
        part = {"train": self.train, "val": self.val, "test": self.test}[which]
        if part is None:
            skipped = next((n for n in self.notes if n.startswith(f"the {which} split")), None)
            raise DataError(
                f"the {self.name} dataset has no {which} split here" + (f" ({skipped})" if skipped else ""),
                hint="set data.validation_split > 0"
                if which == "val"
                else "set data.test_split > 0"
                if which == "test"
                else None,
            )
        return part

    def batches(
        self,
        split: Split,
        batch_size: int,
        backend: Backend,
        target_transform: Any = None,
        *,
        training: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> Batches:
        """Batches of `split`: normalised, prefetched, and augmented when `training`; this rank's
        part of each (see Batches).

        Prefetching by default only where it pays: augmentation and host-to-GPU copies are worth
        doing beside the step. A plain CPU batch is a gather and a scale of tens of microseconds,
        and a second Python thread then costs more than it hides: it takes the interpreter lock
        from the training thread between its small NumPy calls (measured: 0.4-0.5 s of a 1.1-1.6 s
        MLP epoch at batch 32).
        """
        augmenter = self.augmenter if training else None
        prefetch = self.prefetch
        if prefetch is None:
            prefetch = AUTO_PREFETCH if backend.is_gpu or augmenter is not None else 0
        return Batches(
            split,
            batch_size,
            backend,
            self.normalization,
            target_transform,
            augmenter=augmenter,
            prefetch=prefetch,
            shard=shard,
        )


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
    source = DATASETS.get(name)
    arrays = source.load(data_cfg, seed, progress, allow_download)
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
    if len(train) == 0:
        raise DataError(f"the {name} dataset holds no training samples", hint="check data.path and data.limit")
    notes = []
    test = Split(arrays.x_test, arrays.y_test) if arrays.x_test is not None else None
    if test is not None and len(test) == 0:  # scoring 0 samples would divide by zero: no test set
        notes.append(f"the test split of {name} is empty (0 samples) and was skipped")
        test = None
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
        source.default_normalization(train.x.dtype),
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
        data_cfg.get("prefetch"),
        arrays.files,
        notes,
    )


def dataset_input_shape(data_cfg: dict[str, Any], needed: bool = False) -> tuple[int, ...] | None:
    """The input shape a dataset implies, known without loading it (for summary/validate).

    For npz and csv it is read from the file's header. When the file cannot tell: None, or with
    `needed` (the model gives no input_shape of its own) the DataError saying why.
    """
    source = DATASETS.get(data_cfg["dataset"])
    shape = source.input_shape(data_cfg)
    if shape is None and needed:  # reading the whole file says what is wrong with it
        return tuple(source.load(data_cfg, 0, None, False).x_train.shape[1:])
    return shape


def check_data_files(data_cfg: dict[str, Any]) -> None:
    """The checks of the data `train` makes that need no arrays read (for validate): a path the
    user named holds the files, a regular file; an npz's headers (keys, shapes, dtypes, sizes).
    DataError if not. Nothing is downloaded, and datasets found by searching are not looked for."""
    source = DATASETS.get(data_cfg["dataset"])
    source.check_files(data_cfg)
    n = source.train_samples(data_cfg)
    if n is not None and data_cfg.get("validation_split"):
        # The arithmetic of splits.holdout, which train runs after loading.
        n = min(n, data_cfg.get("limit") or n)
        splits.check_sizes(n, data_cfg["validation_split"])


def input_normalization(data_cfg: dict[str, Any], dtype: Any) -> Normalization:
    """How a trained model's raw inputs of `dtype` (predict) are normalised: as in training.

    Float inputs to a model trained on scaled uint8 images are taken as already scaled.
    """
    kind = data_cfg.get("normalize") or "auto"
    kind = DATASETS.get(data_cfg["dataset"]).default_normalization(dtype) if kind == "auto" else kind
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
    return DATASETS.get(data_cfg["dataset"]).targets(data_cfg)


def known_class_names(data_cfg: dict[str, Any]) -> list[str] | None:
    """Class names known without loading data (for predict): the dataset's own, or those a training
    run recorded in the config (`data.class_names`, for datasets whose files name the classes)."""
    return DATASETS.get(data_cfg["dataset"]).class_names(data_cfg) or data_cfg.get("class_names")


__all__ = [
    "Batches",
    "Dataset",
    "PipelineStats",
    "Prefetcher",
    "Split",
    "Targets",
    "check_data_files",
    "dataset_input_shape",
    "input_normalization",
    "known_class_names",
    "known_targets",
    "load_dataset",
]
