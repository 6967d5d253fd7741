"""The dataset registry: one `Source` per dataset, each in its own module of dlrun.data.datasets.

A Source holds everything dlrun knows about one dataset: its name and description, the config keys
it takes beyond the common data keys (and their checks), where it is looked for, how it is fetched
and loaded (with the files that were read, for the manifest), and what is known without loading it:
the input shape, the class names, what `normalize: auto` means. Adding a dataset is one module in
dlrun/data/datasets/ that defines a Source and registers it in `DATASETS`, plus its test.

`DATASETS` is also what the config schema asks for the data section's dataset-specific keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dlrun.checks import choices
from dlrun.config.schema import Config, Key, use_datasets
from dlrun.data.augment import check_spec
from dlrun.data.sources import ProgressFn
from dlrun.errors import DataError
from dlrun.registry import did_you_mean

#: data.path, for the datasets read from a folder of files (found by searching when unset)
PATH_KEY = Key((str,), None, None, "folder holding the dataset files", nullable=True)
#: data.task, for the datasets whose files or settings can hold either kind of target
TASK = Key((str,), "classification", choices("classification", "regression"), "classification or regression")


@dataclass
class Arrays:
    """What a source provides before splitting: train arrays, an optional test set, class info,
    and the files they were read from (none for generated data)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Targets:
    """What a model must predict: a class count (integer labels), or for regression
    `classes` None and the number of values per sample."""

    classes: int | None
    per_sample: int = 1


@dataclass
class Found:
    """Where a source's data is (None: not found), every place searched, and its files there."""

    where: Path | None
    searched: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


@dataclass
class Entry:
    """What `dlrun data list` and `dlrun data path` show of one dataset."""

    name: str
    description: str
    kind: str  # download | user | generated
    found: Path | None = None
    size: int | None = None  # bytes on disk of what was found
    searched: list[Path] = field(default_factory=list)
    url: str | None = None
    put: str = ""  # how to provide the data by hand


class Source:
    """One dataset. Subclasses set the class attributes and implement `load`; the rest has defaults."""

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[str] = "user"  # download | user | generated
    #: where `dlrun data list` shows it (lower first)
    order: ClassVar[int] = 50
    #: its own config keys, beyond the data keys every dataset takes
    keys: ClassVar[dict[str, Key]] = {}

    def check(self, cfg: Config, data: dict[str, Any], node: Any) -> None:
        """Checks beyond each key's own (one key needing another), as `cfg.error(..., node, ...)`."""

    def find(self, user_path: str | None) -> Found:
        """Where the data is, searching as `load` does (without downloading)."""
        return Found(None)

    def put(self) -> str:
        """How to provide the data by hand."""
        return ""

    def url(self) -> str | None:
        """Where `fetch` downloads from (None: nowhere)."""
        return None

    def fetch(self, progress: ProgressFn | None = None) -> Path:
        """Download the data now (verified), returning where it is."""
        raise DataError(f"{self.name} is not downloaded: {self.put()}")

    def load(self, data_cfg: dict[str, Any], seed: int, progress: ProgressFn | None, allow_download: bool) -> Arrays:
        """The arrays, before any preparation, and the files they came from."""
        raise NotImplementedError

    def check_files(self, data_cfg: dict[str, Any]) -> None:
        """What can be checked of the data without reading its arrays (for validate): a path the
        user named holds the files, headers are sane. DataError if not; nothing is downloaded."""

    def input_shape(self, data_cfg: dict[str, Any]) -> tuple[int, ...] | None:
        """The sample shape, known without loading (None: only loading can tell)."""
        return None

    def train_samples(self, data_cfg: dict[str, Any]) -> int | None:
        """How many training samples it has, known without loading (None: only loading can tell),
        so validate can check that the held-out splits leave samples on both sides."""
        return None

    def class_names(self, data_cfg: dict[str, Any]) -> list[str] | None:
        """The class names, known without loading (for predict)."""
        return None

    def targets(self, data_cfg: dict[str, Any]) -> Targets | None:
        """The targets, known without loading; None when only the files can tell."""
        names = self.class_names(data_cfg)
        return Targets(len(names)) if names is not None else None

    def default_normalization(self, dtype: Any) -> str:
        """What `normalize: auto` means for inputs of `dtype`: scale uint8 images, else nothing."""
        return "scale" if np.dtype(dtype) == np.uint8 else "none"

    def describe(self, user_path: str | None = None) -> Entry:
        found = self.find(user_path)
        size = sum(f.stat().st_size for f in found.files) if found.where is not None else None
        return Entry(self.name, self.description, self.kind, found.where, size, found.searched, self.url(), self.put())


def _listed(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


class Datasets:
    """The table of sources, in `order`. Also the config schema's `DatasetKeys`."""

    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}

    def add(self, source: Source) -> Source:
        for key, spec in source.keys.items():
            other = next((s.keys[key] for s in self._sources.values() if key in s.keys), None)
            if other is not None and replace(other, doc=spec.doc) != spec:
                raise TypeError(f"dataset {source.name!r} declares data.{key} unlike the datasets before it")
        self._sources[source.name] = source
        self._sources = dict(sorted(self._sources.items(), key=lambda item: item[1].order))
        return source

    def remove(self, name: str) -> None:
        del self._sources[name]

    def names(self) -> list[str]:
        return list(self._sources)

    def __iter__(self) -> Iterator[Source]:
        return iter(self._sources.values())

    def get(self, name: str) -> Source:
        try:
            return self._sources[name]
        except KeyError:
            known = self.names()
            hint = did_you_mean(name, known) or "Known: " + ", ".join(known)
            raise DataError(f"unknown dataset {name!r}. {hint}".rstrip()) from None

    def _owners(self) -> dict[str, list[str]]:
        owners: dict[str, list[str]] = {}
        for source in self._sources.values():
            for key in source.keys:
                owners.setdefault(key, []).append(source.name)
        return owners

    def keys(self) -> dict[str, Key]:
        """Every dataset's own keys; a key several take says what it means for each."""
        out = {}
        for key, owners in self._owners().items():
            docs: dict[str, list[str]] = {}
            for name in owners:
                docs.setdefault(self._sources[name].keys[key].doc, []).append(name)
            doc = "; ".join(f"{', '.join(names)}: {doc}" for doc, names in docs.items())
            out[key] = replace(self._sources[owners[0]].keys[key], doc=doc)
        return out

    def check(self, cfg: Config, data: dict[str, Any], node: Any) -> None:
        problem = check_spec(data["augmentation"]) if data["augmentation"] else None
        if problem:
            raise cfg.error(f"{problem}; got {node['augmentation']!r}", node, "augmentation", "data.augmentation")
        source = self._sources[data["dataset"]]
        for key, owners in self._owners().items():
            if key in source.keys:
                continue
            if key in node and node[key] is not None:
                raise cfg.error(
                    f"{key!r} only applies to the {_listed(owners)} dataset{'s' if len(owners) > 1 else ''}",
                    node,
                    key,
                    f"data.{key}",
                )
            del data[key]  # another dataset's default: not part of this config
        source.check(cfg, data, node)


DATASETS = Datasets()
use_datasets(DATASETS)

__all__ = ["DATASETS", "TASK", "Arrays", "Datasets", "Entry", "Found", "Source", "Targets"]
