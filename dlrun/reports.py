"""Reports over models and run folders: Graphviz graphs, memory estimates, confusion matrices,
run listings, config diffs and history plots. Pure functions returning data; the CLI renders."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.errors import DlrunError
from dlrun.graph.model import Model
from dlrun.graph.summary import readable_size, shape_text

_FLOAT_BYTES = 4


def memory_estimate(model: Model, optimizer: Any, batch_size: int) -> dict[str, Any]:
    """Optimizer state (values and bytes) and the activations one training batch keeps alive."""
    trainable, _ = model.param_counts()
    slots = list(getattr(optimizer, "_slots", ()))
    activations = sum(math.prod(n.output_shape) for n in model.nodes) + model.input_size()
    return {"optimizer_slots": slots, "optimizer_values": trainable * len(slots),
            "optimizer_bytes": trainable * len(slots) * _FLOAT_BYTES,
            "batch_size": batch_size, "activation_bytes_per_batch": activations * batch_size * _FLOAT_BYTES}


def memory_text(estimate: dict[str, Any], optimizer_name: str) -> str:
    slots = ", ".join(estimate["optimizer_slots"]) or "no state"
    return (f" Optimizer state: {estimate['optimizer_values']:,} values "
            f"({readable_size(estimate['optimizer_bytes'])}; {optimizer_name}: {slots})\n"
            f" Activations per batch of {estimate['batch_size']}: "
            f"{readable_size(estimate['activation_bytes_per_batch'])} (estimate: every layer output, float32)\n")


def graph_dot(model: Model, title: str) -> str:
    """A Graphviz description of the graph with input/output shapes, like Keras's plot_model."""
    def q(text: str) -> str:
        return '"' + text.replace('"', '\\"') + '"'

    lines = [f"digraph {q(title)} {{", "  rankdir=TB;", '  node [shape=record, fontname="Helvetica", fontsize=10];']
    shapes: dict[str, tuple[int, ...]] = dict(model.inputs)
    for name, shape in model.inputs.items():
        lines.append(f"  {q(name)} [label={q(f'{name} (InputLayer) | output: {shape_text(shape)}')}];")
    for node in model.nodes:
        ins = ", ".join(shape_text(shapes[i]) for i in node.inputs)
        label = f"{node.name} ({node.layer.type_name}) | {{input: {ins} | output: {shape_text(node.output_shape)}}}"
        lines.append(f"  {q(node.name)} [label={q(label)}];")
        shapes[node.name] = node.output_shape
        lines.extend(f"  {q(i)} -> {q(node.name)};" for i in node.inputs)
    lines.append("}")
    return "\n".join(lines) + "\n"


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    out = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(out, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return out


def per_class_accuracy(matrix: np.ndarray) -> list[float]:
    totals = matrix.sum(axis=1)
    return [float(matrix[i, i] / totals[i]) if totals[i] else float("nan") for i in range(len(matrix))]


# -- run folders -------------------------------------------------------------------------------------
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
    test = _headline(metrics.get("test", {})) if metrics else None
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


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"training.epochs": 5, "model.layers[1].Dense.units": 100, ...}."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(config, list) and config and any(isinstance(v, (dict, list)) for v in config):
        for i, v in enumerate(config):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = config
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) where they differ; a key one config lacks counts as None."""
    fa, fb = flatten(a), flatten(b)
    return [(key, fa.get(key), fb.get(key)) for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]


def plot_history(histories: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Loss and metric curves (training solid, validation dashed), one panel per quantity.

    Needs matplotlib (`pip install 'dlrun[plot]'`); raises ImportError otherwise. Raises DlrunError
    for a run with no finished epoch (history.json is `{}` until the first epoch ends).
    """
    for label, history in histories.items():
        if not any(v for k, v in history.items() if k != "learning_rate"):
            raise DlrunError(f"run {label} has no finished epoch to plot yet",
                             hint="plot it after its first epoch ends (dlrun runs shows its epochs)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    quantities = sorted({k for h in histories.values() for k in h if not k.startswith("val_") and k != "learning_rate"},
                        key=lambda k: (k != "loss", k))
    fig, axes = plt.subplots(1, len(quantities), figsize=(5 * len(quantities), 3.6), squeeze=False)
    for ax, key in zip(axes[0], quantities):
        for label, history in histories.items():
            for k, style in ((key, "-"), (f"val_{key}", "--")):
                if k in history:
                    epochs = range(1, len(history[k]) + 1)
                    prefix = f"{label} " if len(histories) > 1 else ""
                    ax.plot(epochs, history[k], style, marker="o", markersize=3, label=f"{prefix}{k}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
