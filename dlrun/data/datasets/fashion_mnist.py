"""Fashion-MNIST from the official IDX `.gz` files.

The decompressed content is verified by SHA-256: Debian's `dataset-fashion-mnist` package
recompressed the files (their .gz bytes differ from the official ones, the content does not).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dlrun.config.schema import Key
from dlrun.data.registry import DATASETS, PATH_KEY, Arrays, Found, Source
from dlrun.data.sources import (
    ProgressFn,
    RemoteFile,
    cache_dir,
    candidate_dirs,
    download,
    explicit_path_error,
    found_or_fetched,
    not_found_message,
)
from dlrun.errors import DataError

NAME = "fashion_mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SYSTEM_DIRS = ["/usr/share/datasets/fashion-mnist"]
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# file -> (MD5 of the official .gz, SHA-256 of the decompressed IDX content)
FILES = {
    "train-images-idx3-ubyte.gz": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train-labels-idx1-ubyte.gz": (
        "25c81989df183df01b3e8a0aad5dffbe",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "bef4ecab320f06d8554ea6380940ec79",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}


def parse_idx(raw: bytes, source: str) -> np.ndarray:
    """An IDX file (unsigned bytes) as a NumPy array, header checked against the payload size."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{source} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source} is truncated (header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{source} has {len(raw)} bytes, its header announces {expected}",
            hint="the file is truncated or corrupt; delete it and fetch it again",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_verified(path: Path, sha256: str | None) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{path} cannot be decompressed ({exc})", hint="the file is corrupt; delete it and fetch it again"
        ) from None
    if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(
            f"{path} does not contain the official Fashion-MNIST data (SHA-256 mismatch)",
            hint="delete it and fetch the files again",
        )
    return raw


def find(user_path: str | None) -> tuple[Path | None, list[Path]]:
    """The first folder holding all four files, and every folder searched."""
    searched = candidate_dirs(NAME, user_path, SYSTEM_DIRS)
    for d in searched:
        if _holds_files(d):
            return d, searched
    return None, searched


def fetch(progress: ProgressFn | None = None) -> Path:
    """Download all files into the user cache (verified), returning the folder."""
    dest = cache_dir(NAME)
    for fname, (md5, _) in FILES.items():
        if not (dest / fname).is_file():
            download(RemoteFile(fname, MIRROR + fname, md5=md5), dest, progress)
    return dest


def _holds_files(d: Path) -> bool:
    return all((d / f).is_file() for f in FILES)


def check_user_path(user_path: str | None) -> Path | None:
    """The folder a path the user named holds the files in (None: no path named); DataError if not."""
    if not user_path:
        return None
    d = Path(user_path).expanduser()
    if not _holds_files(d):
        missing = [f for f in FILES if not (d / f).is_file()]
        raise explicit_path_error(NAME, d, f"a folder holding {', '.join(FILES)} (missing: {', '.join(missing)})")
    return d


def locate(user_path: str | None, progress: ProgressFn | None = None, allow_download: bool = True) -> Path:
    """The folder holding the files: found, or else downloaded; DataError saying where to put them.

    A path the user named must hold them: it is never passed over for another copy.
    """
    named = check_user_path(user_path)
    if named is not None:
        return named
    folder, searched = find(user_path)
    return found_or_fetched(
        folder, lambda: fetch(progress), allow_download, lambda why: not_found_message(NAME, searched, list(FILES), why)
    )


def read(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as uint8 arrays, images shaped (N, 28, 28, 1)."""
    arrays = []
    for fname, (_, sha) in FILES.items():
        arrays.append(parse_idx(_read_verified(folder / fname, sha), str(folder / fname)))
    x_train, y_train, x_test, y_test = arrays
    return x_train[..., None], y_train, x_test[..., None], y_test


def load(
    user_path: str | None = None, progress: ProgressFn | None = None, allow_download: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as uint8 arrays, images shaped (N, 28, 28, 1)."""
    return read(locate(user_path, progress, allow_download))


class FashionMNIST(Source):
    name = NAME
    description = "Fashion-MNIST: 70,000 28x28 grey images of clothes, 10 classes (downloaded)"
    kind = "download"
    order = 10
    keys: ClassVar[dict[str, Key]] = {"path": PATH_KEY}

    def url(self) -> str:
        return MIRROR

    def find(self, user_path: str | None) -> Found:
        folder, searched = find(user_path)
        return Found(folder, searched, [folder / f for f in FILES] if folder else [])

    def put(self) -> str:
        return f"put {', '.join(FILES)} into one of these folders (or set data.path)"

    def fetch(self, progress: ProgressFn | None = None) -> Path:
        return fetch(progress)

    def load(self, data_cfg: dict[str, Any], seed: int, progress: ProgressFn | None, allow_download: bool) -> Arrays:
        folder = locate(data_cfg.get("path"), progress, allow_download)
        return Arrays(*read(folder), 10, list(CLASS_NAMES), [folder / f for f in FILES])

    def check_files(self, data_cfg: dict[str, Any]) -> None:
        check_user_path(data_cfg.get("path"))

    def input_shape(self, data_cfg: dict[str, Any]) -> tuple[int, ...]:
        return (28, 28, 1)

    def train_samples(self, data_cfg: dict[str, Any]) -> int:
        return 60_000

    def class_names(self, data_cfg: dict[str, Any]) -> list[str]:
        return list(CLASS_NAMES)


DATASETS.add(FashionMNIST())
