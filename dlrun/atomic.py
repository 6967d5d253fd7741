"""Atomic file writes: temporary file in the same folder, flush + fsync, rename over the target.

A crash at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import signal
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
        fault_point("open", path)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point("written", path)
        os.replace(tmp, path)
        fault_point("renamed", path)
        _fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        exc.target = str(path)  # type: ignore[attr-defined]  # the file meant, not its temporary name
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


FAULT_POINTS = ("open", "written", "renamed")
_fault_passes: dict[tuple[str, str], int] = {}


def fault_point(point: str, path: Path) -> None:
    """Fault injection for the kill -9 tests: one environment lookup, nothing else, when unset.

    `DLRUN_FAULT=<point>:<file name>:<n>` (e.g. `written:last.npz:2`) SIGKILLs this process, as
    `kill -9` would, the n-th time a write of a file with that name reaches `point`: "open" (the
    temporary file exists, nothing is written), "written" (it is complete and fsynced, not yet
    renamed) or "renamed" (the target is replaced, the folder not yet fsynced).
    """
    spec = os.environ.get("DLRUN_FAULT")
    if not spec:
        return
    want_point, name, n = spec.split(":")
    if want_point not in FAULT_POINTS:
        raise ValueError(f"DLRUN_FAULT point must be one of {', '.join(FAULT_POINTS)}. Received: {spec!r}")
    if (point, path.name) != (want_point, name):
        return
    key = (point, name)
    _fault_passes[key] = _fault_passes.get(key, 0) + 1
    if _fault_passes[key] == int(n):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # no SIGKILL on Windows


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
