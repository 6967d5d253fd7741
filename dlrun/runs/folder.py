"""The run folder: `runs/<name>/<timestamp>/` with config.yaml, summary.txt, history.json,
checkpoints/{best,last}.npz and metrics.json. Every file is written atomically."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import yaml

from dlrun.errors import CheckpointError
from dlrun.atomic import write_json, write_text


def new_run_dir(runs_root: str | Path, name: str) -> Path:
    """A fresh `runs_root/name/YYYYmmdd-HHMMSS[-N]` folder (created).

    Raises CheckpointError (creating nothing) when a file stands where a folder must go."""
    base = Path(runs_root) / name
    blocker = _nearest_existing(base)
    if blocker is not None and not blocker.is_dir():
        raise CheckpointError("is a file, so no run folder can be created in it", path=str(blocker),
                              hint="pass --runs-dir a folder (or a path where one can be created)")
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


def _nearest_existing(path: Path) -> Path | None:
    """`path` or its closest ancestor that exists: where mkdir(parents=True) would start creating."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text(run_dir / "config.yaml", dump_config(config))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    write_json(run_dir / "metrics.json", metrics)
