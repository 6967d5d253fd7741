"""Reading `.npz` archives (datasets, checkpoints, predict inputs) without trusting them.

`np.load` allocates whatever an `.npy` header claims before it reads a byte of data (a 1 kB file
claiming shape (10**12, 10**6) asks for exabytes), and a zip member declaring gigabytes inflates
them from a few kB. So before anything is allocated, each member to be read is checked:

- the path is a regular file (a FIFO or a device would block or never end) and a zip archive;
- its `.npy` header parses (format 1.0 or 2.0) and its dtype holds no Python objects (those are
  pickles: loading them can run code; arrays are read with `allow_pickle=False` as well);
- the zip's declared uncompressed size holds the bytes the header claims (the zip reader never
  inflates more than it declares, so the header cannot make it allocate more than is there);
- all arrays read from one file together stay within `limit()` bytes: `DLRUN_MAX_ARRAY_BYTES`, or
  else the smaller of 16 GiB and this machine's memory; and no member inflates at a zip bomb's ratio.

Every problem is an NpzError (a DataError) naming the file and the member; the subclasses let a
caller (the checkpoint loader) phrase them its own way.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.lib import format as npy_format

from dlrun.errors import DataError

#: The most bytes the arrays read from one file may take, unless DLRUN_MAX_ARRAY_BYTES says otherwise.
MAX_BYTES = 16 << 30
#: A member inflating to more than BOMB_MIN_BYTES at over BOMB_RATIO times its compressed size is a
#: zip bomb (deflate tops out near 1032:1; real arrays, even images, compress far less).
BOMB_MIN_BYTES = 256 << 20
BOMB_RATIO = 200
_ENV = "DLRUN_MAX_ARRAY_BYTES"
_SUFFIX = ".npy"
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError, NotImplementedError)


class NpzError(DataError):
    """The file cannot be read as an archive of plain arrays."""


class NotAnArchive(NpzError):
    """Not a regular file, or not a zip archive."""


class PickledArray(NpzError):
    """A member holds Python objects (a pickle): refused, never loaded."""


class TooLarge(NpzError):
    """A member (or all of them together) would take more memory than the limit."""


class Corrupt(NpzError):
    """A member is truncated, damaged or not an `.npy` array."""


def size_text(n: float) -> str:
    """Bytes for people: '512 B', '3.4 MiB', '3.47 EiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"


def _memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def limit() -> int:
    """The byte budget for the arrays of one file (see the module docstring)."""
    raw = os.environ.get(_ENV, "").strip()
    if raw:
        try:
            value = int(float(raw))
        except ValueError:
            raise DataError(f"{_ENV}={raw!r:.40} is not a number of bytes") from None
        if value > 0:
            return value
    memory = _memory()
    return min(MAX_BYTES, memory) if memory else MAX_BYTES


def regular_file(path: str | Path) -> bool:
    """True for a regular file (or a link to one): never a FIFO, device or socket, which can block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Header:
    """What an `.npy` member's header declares, checked against the zip's declared size."""

    name: str  # the key, without ".npy"
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


class NpzReader:
    """An open `.npz`: its member names, their checked headers, and the arrays, read within `limit()`.

    Use as a context manager. `names` are the keys `np.load` would give (".npy" dropped).
    """

    def __init__(self, path: str | Path, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = limit() if max_bytes is None else max_bytes
        self.used = 0  # bytes of the arrays read so far
        if not regular_file(self.path):
            what = "a folder" if self.path.is_dir() else "not a regular file" if self.path.exists() else "missing"
            raise NotAnArchive(f"{self.path} is {what}, not an .npz file")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise NotAnArchive(f"{self.path} is not an .npz file (a zip archive of .npy arrays): {exc}") from None
        self._members = {
            info.filename[: -len(_SUFFIX)] if info.filename.endswith(_SUFFIX) else info.filename: info
            for info in self._zip.infolist()
            if not info.is_dir()
        }
        self._headers: dict[str, Header] = {}

    @property
    def names(self) -> list[str]:
        return list(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def _where(self, name: str) -> str:
        return f"{self.path}: entry {name!r:.60}"

    def header(self, name: str) -> Header:
        """The member's checked header (nothing of its data is read or allocated)."""
        if name in self._headers:
            return self._headers[name]
        info = self._members.get(name)
        if info is None:
            raise Corrupt(
                f"{self.path} has no entry {name!r:.60} (it holds {', '.join(self.names)[:200] or 'nothing'})"
            )
        if not info.filename.endswith(_SUFFIX):
            raise Corrupt(f"{self._where(name)} is not an .npy array")
        try:
            with self._zip.open(info) as f:
                version = npy_format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = npy_format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = npy_format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
                offset = f.tell()
        except _READ_ERRORS as exc:
            raise Corrupt(f"{self._where(name)} is not a readable .npy array ({exc!s:.200})") from None
        if dtype.hasobject:
            raise PickledArray(
                f"{self._where(name)} holds Python objects (a pickle) and was refused; nothing was loaded or run",
                hint="save plain numeric arrays; loading pickles can run code, so dlrun never does",
            )
        if any(d < 0 for d in shape):
            raise Corrupt(f"{self._where(name)} has an impossible shape {shape}")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
        described = f"{self._where(name)} claims shape {list(shape)!s:.80} of {dtype} ({size_text(nbytes)})"
        if offset + nbytes > info.file_size:
            raise Corrupt(
                f"{described} but holds {size_text(max(info.file_size - offset, 0))}",
                hint="the file is truncated, damaged or forged; save it again",
            )
        if info.file_size > BOMB_MIN_BYTES and info.file_size > BOMB_RATIO * max(info.compress_size, 1):
            raise TooLarge(
                f"{described}, inflated from {size_text(info.compress_size)} (over {BOMB_RATIO}:1): "
                "refused as a zip bomb",
                hint="if the data is real, save it uncompressed with np.savez",
            )
        if nbytes > self.max_bytes:
            raise TooLarge(f"{described}, more than the {size_text(self.max_bytes)} allowed", hint=self._hint())
        header = Header(name, tuple(shape), dtype, nbytes)
        self._headers[name] = header
        return header

    def _hint(self) -> str:
        return f"arrays read from one file may take at most {size_text(self.max_bytes)}; {_ENV} sets the limit"

    def read(self, name: str) -> np.ndarray:
        """One array, after its header and the byte budget are checked."""
        return self.read_all([name])[name]

    def read_all(self, names: list[str]) -> dict[str, np.ndarray]:
        """Several arrays; every header and their total size are checked before any is read."""
        headers = [self.header(n) for n in names]
        total = self.used + sum(h.nbytes for h in headers)
        if total > self.max_bytes:
            raise TooLarge(
                f"{self.path}: its arrays take {size_text(total)}, more than the {size_text(self.max_bytes)} allowed",
                hint=self._hint(),
            )
        out = {}
        for h in headers:
            try:
                with self._zip.open(self._members[h.name]) as f:
                    out[h.name] = npy_format.read_array(f, allow_pickle=False)
            except _READ_ERRORS as exc:
                raise Corrupt(
                    f"{self._where(h.name)} cannot be read ({exc!s:.200})", hint="the file is truncated or damaged"
                ) from None
            self.used += h.nbytes
        return out


def read_npz(path: str | Path, names: list[str] | None = None, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays `names` (default: all) of an `.npz`, checked as the module docstring says."""
    with NpzReader(path, max_bytes) as npz:
        return npz.read_all(npz.names if names is None else names)


__all__ = [
    "MAX_BYTES",
    "Corrupt",
    "Header",
    "NotAnArchive",
    "NpzError",
    "NpzReader",
    "PickledArray",
    "TooLarge",
    "limit",
    "read_npz",
    "regular_file",
    "size_text",
]
