"""What the `dlrun data` commands show: each dataset, where it is (or would be looked for), its size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dlrun.data import cifar10, fashion_mnist
from dlrun.data.dataset import DATASETS
from dlrun.data.sources import ProgressFn, size_on_disk
from dlrun.errors import DataError

DOWNLOADABLE = ("fashion_mnist", "cifar10")


@dataclass
class Entry:
    name: str
    description: str
    kind: str  # download | user | generated
    found: Path | None = None
    size: int | None = None  # bytes on disk of what was found
    searched: list[Path] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    url: str | None = None
    put: str = ""  # how to provide the data by hand


def _check_name(name: str) -> None:
    if name not in DATASETS:
        from dlrun.registry import did_you_mean

        raise DataError(
            f"unknown dataset {name!r}. {did_you_mean(name, DATASETS) or 'Known: ' + ', '.join(DATASETS)}".rstrip()
        )


def describe(name: str, user_path: str | None = None) -> Entry:
    """Where `name` is found (searching as training would), or everything needed to provide it."""
    _check_name(name)
    entry = Entry(
        name, DATASETS[name], "generated" if name == "synthetic" else "download" if name in DOWNLOADABLE else "user"
    )
    if name == "synthetic":
        entry.put = "nothing to put anywhere: synthetic data is generated from the seed"
    if name == "fashion_mnist":
        folder, entry.searched = fashion_mnist.find(user_path)
        entry.files, entry.url = list(fashion_mnist.FILES), fashion_mnist.MIRROR
        entry.put = f"put {', '.join(entry.files)} into one of these folders (or set data.path)"
        if folder is not None:
            entry.found, entry.size = folder, sum((folder / f).stat().st_size for f in fashion_mnist.FILES)
    elif name == "cifar10":
        where, entry.searched = cifar10.find(user_path)
        entry.files, entry.url, entry.put = [cifar10.ARCHIVE], cifar10.URL, cifar10.what_to_put()
        if where is not None:
            entry.found = where.path
            entry.size = (
                where.path.stat().st_size
                if where.archive
                else sum((where.path / f).stat().st_size for f in cifar10.FILES)
            )
    elif name in ("npz", "csv"):
        entry.put = f"set data.path to your .{name} file" + (
            " (arrays x_train, y_train, optionally x_test, y_test)"
            if name == "npz"
            else " and data.target to the column to predict"
        )
        if user_path and Path(user_path).expanduser().is_file():
            entry.found = Path(user_path).expanduser()
            entry.size = size_on_disk(entry.found)
    return entry


def fetch(name: str, progress: ProgressFn | None = None) -> Path:
    """Download a dataset into the user cache now (verified); returns where it is."""
    _check_name(name)
    if name == "fashion_mnist":
        return fashion_mnist.fetch(progress)
    if name == "cifar10":
        return cifar10.fetch(progress)
    raise DataError(
        f"{name} is not downloaded: {describe(name).put}"
        if name != "synthetic"
        else "synthetic data is generated from the seed; there is nothing to fetch"
    )
