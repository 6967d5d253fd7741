"""CIFAR-10 from the official *binary* archive, `cifar-10-binary.tar.gz`.

Each `.bin` file is a run of 3073-byte records: one label byte, then 3072 pixel bytes in
channel-planar order (1024 red, 1024 green, 1024 blue, each 32x32 row-major). They become
(N, 32, 32, 3) uint8 images, channels last. The "python version" of the archive is a set of
pickles and is never read: unpickling runs code.

A folder is accepted in three layouts: `cifar-10-batches-bin/` inside it, the `.bin` files directly
in it, or the `.tar.gz` itself (read in place, nothing extracted into the user's folders). A
download is MD5-verified, then its expected members (and only those) are extracted into the user
cache, each written atomically (dlrun.atomic): no path from the archive is ever used.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from dlrun.atomic import atomic_open, remove_temporaries
from dlrun.config.schema import Key
from dlrun.data.registry import DATASETS, PATH_KEY, Arrays, Found, Source
from dlrun.data.sources import (
    STALE_S,
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

NAME = "cifar10"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE = "cifar-10-binary.tar.gz"
#: The publisher's MD5 of the archive. Our own SHA-256 is not recorded yet: it must be taken from a
#: verified download of the real archive, which could not be made where this was written. Until then
#: only the MD5 is checked (RemoteFile.sha256 stays None and download() skips it).
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
SHA256: str | None = None
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
FILES = [*TRAIN_FILES, TEST_FILE, META_FILE]
#: The names batches.meta.txt gives, for when only a config is at hand (predict).
DEFAULT_CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SYSTEM_DIRS = ["/usr/share/datasets/cifar10", "/usr/share/datasets/cifar-10"]
RECORD = 3073
SHAPE = (32, 32, 3)
CLASSES = 10


@dataclass(frozen=True)
class Location:
    """Where the data was found: a folder holding the files, or the archive."""

    path: Path
    archive: bool

    def __str__(self) -> str:
        return str(self.path)


def _folder_in(d: Path) -> Path | None:
    for folder in (d / FOLDER, d):
        if all((folder / f).is_file() for f in FILES):
            return folder
    return None


def find(user_path: str | None) -> tuple[Location | None, list[Path]]:
    """The first usable location in search order, and every folder searched.

    `data.path` may also name the archive file itself.
    """
    searched = candidate_dirs(NAME, user_path, SYSTEM_DIRS)
    for d in searched:
        where = _location_in(d)
        if where is not None:
            return where, searched
    return None, searched


def _location_in(d: Path) -> Location | None:
    """The data at `d`, in any of the accepted layouts (the module docstring), or None."""
    if d.is_file() and d.name.endswith((".tar.gz", ".tgz")):
        return Location(d, True)
    folder = _folder_in(d)
    if folder is not None:
        return Location(folder, False)
    if (d / ARCHIVE).is_file():
        return Location(d / ARCHIVE, True)
    return None


def check_user_path(user_path: str | None) -> Location | None:
    """The data at a path the user named (None: no path named); DataError listing what it lacks."""
    if not user_path:
        return None
    d = Path(user_path).expanduser()
    where = _location_in(d)
    if where is None:
        raise explicit_path_error(
            NAME,
            d,
            f"the archive {ARCHIVE} (as the path itself or inside it), its extracted {FOLDER}/ folder, "
            f"or the files {', '.join(FILES)}",
        )
    return where


def what_to_put() -> str:
    return (
        f"put {ARCHIVE} (from {URL}), or its extracted {FOLDER}/ folder ({', '.join(FILES)}), "
        f"into one of those folders (or set data.path)"
    )


def fetch(progress: ProgressFn | None = None) -> Path:
    """Download the archive into the user cache (MD5-verified) and extract it there; returns the folder."""
    dest = cache_dir(NAME)
    archive = dest / ARCHIVE
    if not archive.is_file():
        download(RemoteFile(ARCHIVE, URL, md5=MD5, sha256=SHA256), dest, progress)
    return extract(archive, dest)


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The expected file a member is, or None: only `cifar-10-batches-bin/<one of FILES>`, regular files."""
    if not member.isfile():
        return None
    folder, _, base = member.name.lstrip("./").partition("/")
    return base if folder == FOLDER and base in FILES else None


def extract(archive: Path, dest: Path) -> Path:
    """Copy the expected members of `archive` into `dest/cifar-10-batches-bin/`; returns that folder.

    Member names are compared against the fixed list, never joined to a path, so a hostile archive
    cannot write elsewhere. Each file is written atomically (complete, or not at all); the
    folder counts as data (for `find`) only when every file is there.
    """
    out = dest / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out, min_age_s=STALE_S)  # what a killed extraction left
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                base = _member_name(member)
                if base is None or base in seen:
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                with atomic_open(out / base, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
                seen.add(base)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{archive} cannot be extracted ({exc})",
            hint="the archive is corrupt or truncated; delete it and fetch it again",
        ) from None
    missing = [f for f in FILES if f not in seen]
    if missing:
        raise DataError(
            f"{archive} lacks {', '.join(f'{FOLDER}/{m}' for m in missing)}",
            hint=f"this is not the official {ARCHIVE}; delete it and fetch it again",
        )
    return out


def parse_records(raw: bytes | np.ndarray, source: str, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels (N,) int64) from the bytes of one `.bin` file.

    With `out`, the images are written into it (shape (N, 32, 32, 3)) and no other copy is made.
    """
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    if buf.size == 0 or buf.size % RECORD:
        raise DataError(
            f"{source} has {buf.size} bytes, not a whole number of {RECORD}-byte records",
            hint="the file is truncated or corrupt; delete it and fetch it again",
        )
    records = buf.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= CLASSES:
        raise DataError(
            f"{source} has a label {int(labels.max())}; CIFAR-10 labels are 0..9",
            hint="the file is corrupt or not a CIFAR-10 batch",
        )
    planar = records[:, 1:].reshape(-1, 3, 32, 32)
    if out is None:
        out = np.empty((len(records), *SHAPE), dtype=np.uint8)
    np.copyto(out, planar.transpose(0, 2, 3, 1))
    return out, labels


def records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The official record bytes of (N, 32, 32, 3) uint8 images: the inverse of `parse_records`
    (for making small archives in the exact format, in tests and benchmarks)."""
    planar = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([np.asarray(labels, np.uint8).reshape(-1, 1), planar], axis=1).tobytes()


def parse_meta(text: str, source: str) -> list[str]:
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != CLASSES:
        raise DataError(
            f"{source} names {len(names)} classes; CIFAR-10 has {CLASSES}",
            hint="the file is corrupt or not CIFAR-10's batches.meta.txt",
        )
    return names


def _assemble(
    files: list[str],
    size: Callable[[str], int],
    read: Callable[[str], bytes],
    where: str,
    read_order: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The records of `files`, in that order, written straight into one preallocated uint8 array.

    `read_order` only changes the order the files are read in (an archive is read forwards).
    """
    counts = {}
    for f in files:
        n = size(f)
        if n == 0 or n % RECORD:
            raise DataError(
                f"{where}/{f} has {n} bytes, not a whole number of {RECORD}-byte records",
                hint="the file is truncated or corrupt; delete it and fetch it again",
            )
        counts[f] = n // RECORD
    starts = dict(zip(files, np.cumsum([0, *counts.values()])[:-1].tolist()))
    x = np.empty((sum(counts.values()), *SHAPE), dtype=np.uint8)
    y = np.empty(len(x), dtype=np.int64)
    for f in read_order or files:
        lo, hi = starts[f], starts[f] + counts[f]
        _, y[lo:hi] = parse_records(read(f), f"{where}/{f}", out=x[lo:hi])
    return x, y


def read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    def read(f: str) -> bytes:
        return (folder / f).read_bytes()

    def size(f: str) -> int:
        return (folder / f).stat().st_size

    x_tr, y_tr = _assemble(TRAIN_FILES, size, read, str(folder))
    x_te, y_te = _assemble([TEST_FILE], size, read, str(folder))
    names = parse_meta((folder / META_FILE).read_text(encoding="utf-8", errors="replace"), str(folder / META_FILE))
    return x_tr, y_tr, x_te, y_te, names


def read_archive(archive: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Read the expected members of the archive in place (nothing is written to disk)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members: dict[str, tarfile.TarInfo] = {}
            for m in tar.getmembers():
                base = _member_name(m)
                if base is not None:
                    members.setdefault(base, m)
            missing = [f for f in FILES if f not in members]
            if missing:
                raise DataError(
                    f"{archive} lacks {', '.join(f'{FOLDER}/{m}' for m in missing)}",
                    hint=f"this is not the official {ARCHIVE}",
                )

            def read(f: str) -> bytes:
                src: IO[bytes] | None = tar.extractfile(members[f])
                assert src is not None  # regular files only (_member_name)
                return src.read()

            def size(f: str) -> int:
                return members[f].size

            # Members in archive order, so the gzip stream is only read forwards.
            forwards = sorted(TRAIN_FILES, key=lambda f: members[f].offset)
            x_tr, y_tr = _assemble(TRAIN_FILES, size, read, str(archive), read_order=forwards)
            x_te, y_te = _assemble([TEST_FILE], size, read, str(archive))
            names = parse_meta(read(META_FILE).decode("utf-8", errors="replace"), f"{archive}/{META_FILE}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{archive} cannot be read ({exc})",
            hint="the archive is corrupt or truncated; delete it and fetch it again",
        ) from None
    return x_tr, y_tr, x_te, y_te, names


def locate(user_path: str | None, progress: ProgressFn | None = None, allow_download: bool = True) -> Location:
    """Where the data is: found, or else downloaded and extracted; DataError saying where to put it.

    A path the user named must hold it: it is never passed over for another copy.
    """
    named = check_user_path(user_path)
    if named is not None:
        return named
    where, searched = find(user_path)
    return found_or_fetched(
        where,
        lambda: Location(fetch(progress), False),
        allow_download,
        lambda why: not_found_message(NAME, searched, FILES, why, what_to_put=what_to_put()),
    )


def _files(where: Location) -> list[Path]:
    return [where.path] if where.archive else [where.path / f for f in FILES]


def load(
    user_path: str | None = None, progress: ProgressFn | None = None, allow_download: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(x_train, y_train, x_test, y_test, class names); images uint8 (N, 32, 32, 3)."""
    where = locate(user_path, progress, allow_download)
    return read_archive(where.path) if where.archive else read_folder(where.path)


class CIFAR10(Source):
    name = NAME
    description = "CIFAR-10: 60,000 32x32 colour images, 10 classes (downloaded, binary version)"
    kind = "download"
    order = 20
    keys: ClassVar[dict[str, Key]] = {"path": PATH_KEY}

    def url(self) -> str:
        return URL

    def find(self, user_path: str | None) -> Found:
        where, searched = find(user_path)
        return Found(where.path if where else None, searched, _files(where) if where else [])

    def put(self) -> str:
        return what_to_put()

    def fetch(self, progress: ProgressFn | None = None) -> Path:
        return fetch(progress)

    def load(self, data_cfg: dict[str, Any], seed: int, progress: ProgressFn | None, allow_download: bool) -> Arrays:
        where = locate(data_cfg.get("path"), progress, allow_download)
        x_tr, y_tr, x_te, y_te, names = read_archive(where.path) if where.archive else read_folder(where.path)
        return Arrays(x_tr, y_tr, x_te, y_te, CLASSES, names, _files(where))

    def check_files(self, data_cfg: dict[str, Any]) -> None:
        check_user_path(data_cfg.get("path"))

    def input_shape(self, data_cfg: dict[str, Any]) -> tuple[int, ...]:
        return SHAPE

    def train_samples(self, data_cfg: dict[str, Any]) -> int:
        return 50_000

    def class_names(self, data_cfg: dict[str, Any]) -> list[str]:
        return list(DEFAULT_CLASS_NAMES)


DATASETS.add(CIFAR10())
