"""The run folder: `runs/<name>/<timestamp>/` with config.yaml, summary.txt, history.json,
checkpoints/{best,last}.npz and metrics.json. Every file is written atomically."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from dlrun import jsonio
from dlrun.atomic import remove_temporaries, write_json, write_text
from dlrun.errors import CheckpointError


def new_run_dir(runs_root: str | Path, name: str) -> Path:
    """A fresh `runs_root/name/YYYYmmdd-HHMMSS[-N]` folder (created).

    Raises CheckpointError (creating nothing) when a file stands where a folder must go."""
    base = Path(runs_root) / name
    blocker = _nearest_existing(base)
    if blocker is not None and not blocker.is_dir():
        raise CheckpointError(
            "is a file, so no run folder can be created in it",
            path=str(blocker),
            hint="pass --runs-dir a folder (or a path where one can be created)",
        )
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as exc:  # permissions, read-only disk: the user's to fix, no traceback
            raise CheckpointError(f"cannot create a run folder ({exc.strerror or exc})", path=str(path)) from None
    raise CheckpointError("cannot create a run folder: 1000 names for this second are taken", path=str(base))


def exact_run_dir(path: str | Path) -> Path:
    """`path` as a new run folder (created with its parents): refused when it already holds files,
    so no run is ever written over another."""
    path = Path(path)
    blocker = _nearest_existing(path)
    if blocker is not None and not blocker.is_dir():
        raise CheckpointError("is a file, so no run folder can be created in it", path=str(blocker))
    try:
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise CheckpointError("already holds files; a run folder must be new", path=str(path))
    except OSError as exc:
        raise CheckpointError(f"cannot create a run folder ({exc.strerror or exc})", path=str(path)) from None
    return path


def remove_new_run_dir(run_dir: Path) -> None:
    """Undo `new_run_dir` when nothing was done in the folder yet: no folder that looks like a run
    is left, nor the config's folder above it unless earlier runs are in it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.parent.rmdir()


def _nearest_existing(path: Path) -> Path | None:
    """`path` or its closest ancestor that exists: where mkdir(parents=True) would start creating."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)


def read_history(run_dir: Path) -> dict[str, list[float]]:
    """history.json as {name: [one float per epoch]}, `null` (a non-finite value) read as NaN.

    A missing file is an empty history (the run had not finished an epoch); anything that is not
    that shape is a CheckpointError naming the file."""
    path = Path(run_dir) / "history.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc})") from None
    ok = isinstance(raw, dict) and all(
        isinstance(k, str)
        and isinstance(v, list)
        and all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in v)
        for k, v in raw.items()
    )
    if not ok:
        raise CheckpointError(
            f"{path} is not a dlrun history (expected {{name: [one number per epoch]}})",
            hint="it was edited or damaged; `dlrun train --resume` rewrites it from the last checkpoint",
        )
    return {k: [jsonio.number(x) for x in v] for k, v in raw.items()}


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text(run_dir / "config.yaml", dump_config(config))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    write_json(run_dir / "metrics.json", metrics)


LOCK = ".lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process: a second `dlrun train --resume` of the same folder is refused
    while this one runs. The lock file holds the PID; one left by a process that died (kill -9) is
    stale and taken over."""
    path = Path(run_dir) / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None and owner != os.getpid() and _alive(owner):
                raise CheckpointError(
                    f"{run_dir} is in use by another dlrun process (PID {owner})",
                    hint="wait for it to finish or stop it; a lock left by a process that is gone is cleared by itself",
                ) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as exc:
            raise CheckpointError(f"cannot lock the run folder ({exc.strerror or exc})", path=str(path)) from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:  # a full disk: no half-written lock left behind
            path.unlink(missing_ok=True)
            raise CheckpointError(
                f"cannot lock the run folder ({exc.strerror or exc})", path=str(path), hint="free some space"
            ) from None
        break
    else:
        raise CheckpointError(f"cannot lock the run folder {run_dir}", path=str(path))
    try:
        yield
    finally:
        if _lock_owner(path) == os.getpid():
            path.unlink(missing_ok=True)


def remove_stale_temporaries(config_runs: Path) -> list[Path]:
    """Remove what kills left in the run folders of one config (`runs/<name>/*`): the temporary
    files of interrupted writes, which can be large (checkpoints). Folders in use by a live
    process are left alone."""
    removed: list[Path] = []
    if not config_runs.is_dir():
        return removed
    for run in sorted(p for p in config_runs.iterdir() if p.is_dir()):
        owner = _lock_owner(run / LOCK)
        if owner is not None and owner != os.getpid() and _alive(owner):
            continue
        for folder in (run, run / "checkpoints"):
            if folder.is_dir():
                removed += remove_temporaries(folder)
    return removed


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
