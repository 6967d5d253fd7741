"""What `dlrun data` needs: every dataset's whereabouts, one dataset's, and fetching ahead of time."""

from __future__ import annotations

from pathlib import Path

from dlrun.data.registry import DATASETS, Entry
from dlrun.data.sources import ProgressFn


def datasets(user_path: str | None = None) -> list[Entry]:
    """Every dataset: where it was found (searching `user_path` first, as data.path does) or how to provide it."""
    return [source.describe(user_path) for source in DATASETS]


def dataset(name: str, user_path: str | None = None) -> Entry:
    """One dataset's entry; an unknown name is a DataError with the nearest names."""
    return DATASETS.get(name).describe(user_path)


def fetch_dataset(name: str, progress: ProgressFn | None = None) -> Path:
    """Download a dataset into the user cache now (checksum-verified); returns where it is."""
    return DATASETS.get(name).fetch(progress)
