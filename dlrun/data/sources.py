"""Where dataset files are looked for, and how they are downloaded and verified.

Search order: `data.path`, `$DLRUN_DATA/<name>`, the user cache (`$XDG_CACHE_HOME/dlrun/<name>`,
default `~/.cache/dlrun/<name>`), system folders (Debian's `/usr/share/datasets/...`), and last a
download into the user cache. Downloads stream through `atomic_open`, are checksum-verified and only
then renamed into place: an interrupted or corrupt download never looks like data. A dropped
connection or a truncated read is retried (ATTEMPTS in all).
`DLRUN_OFFLINE=1` turns every download off (the search alone runs, and its error says what to do).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dlrun.atomic import atomic_open, remove_temporaries
from dlrun.errors import DataError

T = TypeVar("T")

#: (bytes done, total bytes or None) -> None; the CLI passes a rich progress bar.
ProgressFn = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    md5: str | None = None  # the publisher's checksum of the file as downloaded
    sha256: str | None = None


def offline() -> bool:
    """True when `DLRUN_OFFLINE` is set (to anything but 0/false/no): never touch the network."""
    return os.environ.get("DLRUN_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlrun" / name


def candidate_dirs(name: str, user_path: str | None, system_dirs: Iterable[str]) -> list[Path]:
    """Every folder that may hold the dataset, in search order."""
    dirs: list[Path] = []
    if user_path:
        dirs.append(Path(user_path).expanduser())
    env = os.environ.get("DLRUN_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.append(cache_dir(name))
    dirs.extend(Path(d) for d in system_dirs)
    return dirs


#: Attempts per file; a retry follows only a dropped connection or a truncated read, never a
#: checksum mismatch (the same bytes would come again). Waits BACKOFF_S, then twice that, ...
ATTEMPTS = 3
BACKOFF_S = 0.5
#: A temporary file untouched this long is what a killed download left (a live one grows steadily).
STALE_S = 60.0


class _Retryable(Exception):
    """A dropped connection or a truncated read: worth another attempt."""


def download(remote: RemoteFile, dest_dir: Path, progress: ProgressFn | None = None, timeout: float = 30) -> Path:
    """Stream `remote` into `dest_dir`, verify its checksums, then move it into place.

    Up to ATTEMPTS tries on connection errors and truncated reads. On any failure (network, short
    read, checksum, Ctrl-C) the temporary file is removed and DataError raised (KeyboardInterrupt
    propagates): nothing half-downloaded remains. What killed downloads left is removed first.
    """
    if offline():
        raise DataError(f"downloads are disabled (DLRUN_OFFLINE is set); not fetching {remote.url}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(dest_dir, min_age_s=STALE_S)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _download_once(remote, dest_dir / remote.name, progress, timeout)
        except _Retryable as exc:
            if attempt == ATTEMPTS:
                tries = f" ({ATTEMPTS} attempts)" if ATTEMPTS > 1 else ""
                raise DataError(f"could not download {remote.url}: {exc}{tries}") from None
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # the loop returns or raises


def _download_once(remote: RemoteFile, final: Path, progress: ProgressFn | None, timeout: float) -> Path:
    md5, sha = hashlib.md5(), hashlib.sha256()
    try:
        with atomic_open(final, "wb") as out:
            with urllib.request.urlopen(remote.url, timeout=timeout) as resp:  # URLs we define
                total = resp.headers.get("Content-Length")
                total_n = int(total) if total and total.isdigit() else None
                done = 0
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total_n)
            if total_n is not None and done != total_n:
                raise _Retryable(f"the download stopped after {done} of {total_n} bytes")
            for algo, want, got in (("MD5", remote.md5, md5.hexdigest()), ("SHA-256", remote.sha256, sha.hexdigest())):
                if want and got != want:
                    raise DataError(
                        f"{remote.name} downloaded from {remote.url} has {algo} {got}, expected {want}",
                        hint="the download is corrupt or was tampered with; it was deleted. Try again",
                    )
        return final
    except http.client.IncompleteRead:
        raise _Retryable("the connection closed before the announced size was received (truncated download)") from None
    except urllib.error.HTTPError as exc:  # the server answered: another try gets the same answer
        raise DataError(f"could not download {remote.url}: {exc.reason or exc}") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise _Retryable(str(getattr(exc, "reason", None) or exc)) from None
    except OSError as exc:
        raise DataError(f"could not download {remote.url}: {exc}") from None


def found_or_fetched(
    found: T | None, fetch: Callable[[], T], allow_download: bool, not_found: Callable[[str], DataError]
) -> T:
    """What the search found, else what `fetch` downloads; else `not_found(why)` (downloads
    disabled, or the download's error) is raised."""
    if found is not None:
        return found
    why = "downloads disabled"
    if allow_download:
        try:
            return fetch()
        except DataError as exc:
            why = exc.message
    raise not_found(why)


def not_found_message(
    name: str, searched: list[Path], files: list[str], download_error: str | None, *, what_to_put: str | None = None
) -> DataError:
    """The offline error: every place searched, and exactly which files to put where.

    `what_to_put` replaces the default "put the files ... into one of those folders" advice when a
    dataset accepts several layouts (an archive or its extracted folder).
    """
    places = "\n".join(f"    {p}" for p in searched)
    text = f"the {name} dataset was not found. Looked in:\n{places}"
    if download_error:
        text += f"\n  and the download failed: {download_error}"
    put = what_to_put or f"put the files {', '.join(files)} into one of those folders (or set data.path)"
    fetch = (
        "or unset DLRUN_OFFLINE and run again to download them"
        if offline()
        else "or run again with internet access to download them"
    )
    return DataError(text, hint=f"{put}, {fetch} (ahead of time: dlrun data fetch {name})")


def explicit_path_error(name: str, path: Path, expected: str) -> DataError:
    """A path the user named (data.path, --data-path) that lacks the data: never a silent fallback
    to another copy elsewhere. `expected` says what should be there."""
    if not path.exists():
        state = "does not exist"
    elif path.is_dir():
        state = "lacks the files"
    elif path.is_file():
        state = "is a file"
    else:
        state = "is not a file or folder (a FIFO, device or socket)"
    return DataError(
        f"the data path {path} {state}; the {name} dataset expects there {expected}",
        hint=f"fix the path, or leave it out to use the {name} data found elsewhere (or downloaded)",
    )
