"""What `dlrun runs` shows: every run folder under a root, with its status and headline scores."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def _headline(scores: dict[str, float]) -> tuple[str, float] | None:
    for key in ("accuracy", "loss"):
        if key in scores:
            return key, scores[key]
    return next(iter(scores.items()), None)


def run_info(run_dir: Path) -> RunInfo:
    history = _read_json(run_dir / "history.json") or {}
    metrics = _read_json(run_dir / "metrics.json")
    epochs = len(next(iter(history.values()), []))
    best_val = None
    for key, better in (("val_accuracy", max), ("val_loss", min)):
        if history.get(key):
            best_val = (key, better(history[key]))
            break
    # The best weights' test score (what `dlrun evaluate RUN_DIR` reports), else the final weights'.
    scored = ((metrics.get("best") or {}).get("test") or metrics.get("test", {})) if isinstance(metrics, dict) else {}
    test = _headline(scored) if scored else None
    if metrics is not None:
        status = "finished"
    elif (run_dir / "checkpoints" / "last.npz").is_file():
        status = "interrupted"
    else:
        status = "failed"
    stamp = run_dir.name[:15]
    date = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}" if len(stamp) == 15 else stamp
    return RunInfo(run_dir, run_dir.parent.name, date, epochs, best_val, test, status)


def list_runs(root: Path) -> list[RunInfo]:
    """Every run folder (one holding config.yaml) under `root`, newest first."""
    runs = [p.parent for p in (*root.glob("*/*/config.yaml"), *root.glob("*/config.yaml"), *root.glob("config.yaml"))]
    return sorted((run_info(r) for r in set(runs)), key=lambda r: r.path.name, reverse=True)
