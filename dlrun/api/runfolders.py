"""Reading run folders back: listing them, their config and history, plotting them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dlrun.errors import DlrunError
from dlrun.runs.folder import read_history
from dlrun.runs.listing import RunInfo, list_runs
from dlrun.runs.plot import plot_history


def runs(root: str | Path = "runs") -> list[RunInfo]:
    """The run folders under `root` (or `root` itself when it is one), newest first."""
    if not Path(root).is_dir():
        raise DlrunError(f"{root}: no such folder", hint="pass the folder runs were written to (--runs-dir)")
    return list_runs(Path(root))


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """(resolved config, history) of a run folder."""
    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DlrunError(
            f"{run_dir} is not a readable run folder ({exc})", hint="pass a folder such as runs/<name>/<timestamp>"
        ) from None
    if not isinstance(config, dict):
        raise DlrunError(f"{run_dir / 'config.yaml'} is not a dlrun config", hint="pass a run folder")
    return config, read_history(run_dir)


def plot(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write loss/metric curves of one or more runs to a PNG (default: <run>/history.png)."""
    histories = {}
    for rd in run_dirs:
        _, history = load_run(rd)
        histories[f"{Path(rd).parent.name}/{Path(rd).name}"] = history
    target = Path(out) if out else Path(run_dirs[0]) / "history.png"
    try:
        return plot_history(histories, target)
    except ImportError:
        raise DlrunError("plotting needs matplotlib", hint="pip install 'dlrun[plot]'") from None


def tracking_hints(root: str | Path, infos: list[RunInfo]) -> list[str]:
    """How to open the runs under `root` in TensorBoard and MLflow, for the runs that logged to them."""
    root = Path(root)
    hints = []
    if any(next(r.path.rglob("events.out.tfevents.*"), None) is not None for r in infos):
        hints.append(f"TensorBoard: tensorboard --logdir {root}")
    if (root / "mlflow.db").is_file():
        hints.append(f"MLflow: mlflow ui --backend-store-uri sqlite:///{(root / 'mlflow.db').resolve()}")
    return hints
