"""What `dlrun runs` shows: every run folder under a root, with its status and headline scores."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrun import jsonio
from dlrun.errors import CheckpointError
from dlrun.runs.folder import read_history


@dataclass
class RunInfo:
    path: Path
    name: str
    date: str
    epochs: int
    best_val: tuple[str, float] | None
    test: tuple[str, float] | None
    status: str


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _headline(scores: Any) -> tuple[str, float] | None:
    if not isinstance(scores, dict):
        return None
    for key in ("accuracy", "loss"):
        if key in scores:
            return key, jsonio.number(scores[key])
    return next(((k, jsonio.number(v)) for k, v in scores.items() if v is None or isinstance(v, (int, float))), None)


def run_info(run_dir: Path) -> RunInfo:
    try:
        history = read_history(run_dir)
    except CheckpointError:  # listed all the same; `compare` or `plot` of it says what is wrong
        history = {}
    metrics = _read_json(run_dir / "metrics.json")
    epochs = len(next(iter(history.values()), []))
    best_val = None
    for key, better in (("val_accuracy", max), ("val_loss", min)):
        finite = [v for v in history.get(key, []) if math.isfinite(v)]
        if finite:
            best_val = (key, better(finite))
            break
    # The best weights' test score (what `dlrun evaluate RUN_DIR` reports), else the final weights'.
    metrics = metrics if isinstance(metrics, dict) else None
    best = (metrics or {}).get("best")
    scored = (best.get("test") if isinstance(best, dict) else None) or (metrics or {}).get("test")
    test = _headline(scored) if scored else None
    if metrics is not None:
        status = "finished"
    elif (run_dir / "checkpoints" / "last.npz").is_file():
        status = "interrupted"
    else:
        status = "failed"
    name, stamp = run_dir.parent.name, run_dir.name[:15]
    if name == "trials":  # a sweep's trial: <sweep>/<time>/trials/<number>
        name, stamp = (
            f"{run_dir.parent.parent.parent.name}/{run_dir.parent.parent.name}/trials",
            run_dir.parent.parent.name[:15],
        )
    date = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}" if len(stamp) == 15 else stamp
    return RunInfo(run_dir, name, date, epochs, best_val, test, status)


def list_runs(root: Path) -> list[RunInfo]:
    """Every run folder (one holding config.yaml) under `root`, newest first."""
    patterns = ("*/*/config.yaml", "*/config.yaml", "config.yaml", "*/*/trials/*/config.yaml", "trials/*/config.yaml")
    runs = {p.parent for pattern in patterns for p in root.glob(pattern)}
    # Newest first; a sweep's trials after one another, in their order.
    return sorted((run_info(r) for r in runs), key=lambda r: (r.date, r.name, -_number(r.path.name)), reverse=True)


def _number(name: str) -> int:
    return int(name) if name.isdigit() else 0
