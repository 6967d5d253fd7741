"""Atomic file writes: temporary file in the same folder, flush + fsync, rename over the target.

A crash at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dlrun import jsonio


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; the result should look like open()'s
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | Path, data: Any) -> None:
    """JSON for every reader (RFC 8259): non-finite values, which a diverging run logs, as null."""
    write_text(path, jsonio.dumps(data, indent=2) + "\n")


def remove_temporaries(folder: str | Path, min_age_s: float = 0.0) -> list[Path]:
    """Delete the temporary files that writes cut short by a kill left in `folder` (not recursive).

    Both this module's `.*.tmp` and the `.*.part` of older downloads. With `min_age_s`, only files
    untouched that long: a write still going on in another process keeps its file.
    """
    removed = []
    now = time.time()
    for pattern in (".*.tmp", ".*.part"):
        for p in sorted(Path(folder).glob(pattern)):
            try:
                if p.is_file() and now - p.stat().st_mtime >= min_age_s:
                    p.unlink(missing_ok=True)
                    removed.append(p)
            except OSError:  # gone meanwhile, or not ours to delete
                continue
    return removed
