"""What a sweep folder holds besides its trials: trials.json, trials.csv, best.yaml and sweep.png.

Rewritten (atomically) after every trial, so an interrupted sweep's folder is always current.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dlrun.atomic import atomic_open, write_json, write_text

COLUMNS = ("number", "state", "value", "params", "run_dir", "seconds", "message")


@dataclass
class TrialRecord:
    """One trial as the sweep reports it; `state` is COMPLETE, PRUNED, FAIL or RUNNING."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_dir: str | None
    seconds: float | None
    message: str | None = None
    epochs: int | None = field(default=None, compare=False)

    def plain(self) -> dict[str, Any]:
        return asdict(self)


def best_of(records: list[TrialRecord], goal: str) -> TrialRecord | None:
    """The best COMPLETE trial (the lowest value for minimize, the first of equals)."""
    done = [r for r in records if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    if not done:
        return None
    sign = 1 if goal == "minimize" else -1
    return min(done, key=lambda r: (sign * r.value, r.number))


def write_results(sweep_dir: Path, records: list[TrialRecord], goal: str, metric: str) -> None:
    """trials.json, trials.csv, best.yaml (the best trial's config.yaml) and sweep.png."""
    write_json(sweep_dir / "trials.json", [r.plain() for r in records])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    for r in records:
        row = r.plain()
        row["params"] = json.dumps(r.params)
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
    write_text(sweep_dir / "trials.csv", buf.getvalue())
    best = best_of(records, goal)
    config = Path(best.run_dir) / "config.yaml" if best is not None and best.run_dir else None
    if config is not None and config.is_file():
        header = f"# the best trial of the sweep: trial {best.number}, {metric} {best.value:.6g} ({best.run_dir})\n"
        write_text(sweep_dir / "best.yaml", header + config.read_text(encoding="utf-8"))
    if importlib.util.find_spec("matplotlib") is not None and any(r.value is not None for r in records):
        plot_sweep(records, goal, metric, sweep_dir / "sweep.png")


def plot_sweep(records: list[TrialRecord], goal: str, metric: str, path: Path) -> Path:
    """Each trial's value (pruned ones hollow) and the best so far, by trial number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for state, style in (("COMPLETE", {"color": "C0"}), ("PRUNED", {"facecolors": "none", "edgecolors": "C1"})):
        pts = [(r.number, r.value) for r in records if r.state == state and r.value is not None]
        if pts:
            ax.scatter(*zip(*pts), label=state.lower(), s=22, **style)
    best, xs, ys = None, [], []
    better = (lambda a, b: a < b) if goal == "minimize" else (lambda a, b: a > b)
    for r in sorted(records, key=lambda r: r.number):
        if r.state == "COMPLETE" and r.value is not None and (best is None or better(r.value, best)):
            best = r.value
        if best is not None:
            xs.append(r.number)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="C2", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
