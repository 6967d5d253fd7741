"""Where dataset files are looked for, and how they are downloaded and verified.

Search order: `data.path`, `$DLRUN_DATA/<name>`, the user cache (`$XDG_CACHE_HOME/dlrun/<name>`,
default `~/.cache/dlrun/<name>`), system folders (Debian's `/usr/share/datasets/...`), and last a
download into the user cache. Downloads stream into a temporary file, are checksum-verified and only
then renamed into place: an interrupted or corrupt download never looks like data.
`DLRUN_OFFLINE=1` turns every download off (the search alone runs, and its error says what to do).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dlrun.errors import DataError

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


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(remote: RemoteFile, dest_dir: Path, progress: ProgressFn | None = None, timeout: float = 30) -> Path:
    """Stream `remote` into `dest_dir`, verify its checksums, then move it into place.

    On any failure (network, short read, checksum, Ctrl-C) the temporary file is removed and DataError
    raised (KeyboardInterrupt propagates): nothing half-downloaded remains.
    """
    if offline():
        raise DataError(f"downloads are disabled (DLRUN_OFFLINE is set); not fetching {remote.url}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / remote.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.name}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    md5, sha = hashlib.md5(), hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
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
                raise DataError(f"download of {remote.url} stopped after {done} of {total_n} bytes")
            out.flush()
            os.fsync(out.fileno())
        for algo, want, got in (("MD5", remote.md5, md5.hexdigest()), ("SHA-256", remote.sha256, sha.hexdigest())):
            if want and got != want:
                raise DataError(
                    f"{remote.name} downloaded from {remote.url} has {algo} {got}, expected {want}",
                    hint="the download is corrupt or was tampered with; it was deleted. Try again",
                )
        os.replace(tmp, final)
        return final
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, http.client.IncompleteRead):
            reason = "the connection closed before the announced size was received (truncated download)"
        raise DataError(f"could not download {remote.url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)


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
