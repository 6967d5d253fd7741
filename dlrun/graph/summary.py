"""Model reports without data: the Keras-style summary (the same table, names, shapes, counts and
size units as Keras 3), memory estimates and a Graphviz graph."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dlrun.graph.model import Model


def readable_size(n_bytes: float) -> str:
    """Keras's readable_memory_size: 1024-based, two decimals."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes / 1024 < 1:
            return f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} PB"


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(["None", *map(str, shape)]) + ")"


def summary_dict(model: Model) -> dict[str, Any]:
    trainable, non_trainable = model.param_counts()
    layers = [
        {
            "name": r.name,
            "type": r.type,
            "output_shape": [None, *r.output_shape],
            "params": r.params,
            "trainable_params": r.trainable,
            "connected_to": r.connected_to,
        }
        for r in model.summary_rows()
    ]
    return {
        "model": "functional" if model.functional else "sequential",
        "layers": layers,
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
    }


def _table(headers: list[str], rows: list[list[str]], widths: list[int], right: set[int]) -> list[str]:
    def line(left: str, fill: str, mid: str, end: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + end

    def cells(values: list[str], bar: str) -> str:
        parts = [f" {v.rjust(w) if i in right else v.ljust(w)} " for i, (v, w) in enumerate(zip(values, widths))]
        return bar + bar.join(parts) + bar

    out = [line("┏", "━", "┳", "┓"), cells(headers, "┃"), line("┡", "━", "╇", "┩")]
    for i, row in enumerate(rows):
        # A row may span several lines (Connected to lists several inputs).
        height = max(len(c.split("\n")) for c in row)
        for k in range(height):
            out.append(cells([(c.split("\n") + [""] * height)[k] for c in row], "│"))
        if i < len(rows) - 1:
            out.append(line("├", "─", "┼", "┤"))
    out.append(line("└", "─", "┴", "┘"))
    return out


def summary_text(model: Model, title: str | None = None) -> str:
    """The table Keras's `model.summary()` prints, as plain text."""
    rows_data = model.summary_rows()
    headers = ["Layer (type)", "Output Shape", "Param #"]
    widths = [31, 22, 13]
    rows = [[f"{r.name} ({r.type})", shape_text(r.output_shape), f"{r.params:,}"] for r in rows_data]
    if model.functional:
        headers.append("Connected to")
        widths.append(17)
        for row, r in zip(rows, rows_data):
            row.append("\n".join(f"{c}[0][0]" for c in r.connected_to) or "-")
    for i in range(len(headers)):
        widths[i] = max([widths[i], len(headers[i])] + [len(line) for row in rows for line in row[i].split("\n")])
    trainable, non_trainable = model.param_counts()
    total = trainable + non_trainable
    size = value_bytes(model)
    name = title or ("functional" if model.functional else "sequential")
    lines = [
        f'Model: "{name}"',
        *_table(headers, rows, widths, {2}),
        f" Total params: {total:,} ({readable_size(total * size)})",
        f" Trainable params: {trainable:,} ({readable_size(trainable * size)})",
        f" Non-trainable params: {non_trainable:,} ({readable_size(non_trainable * size)})",
    ]
    return "\n".join(lines) + "\n"


def value_bytes(model: Model) -> int:
    """Bytes per weight or activation value: the model's compute dtype (float32 unless asked)."""
    return np.dtype(model.backend.dtype).itemsize


def activation_values(model: Model) -> int:
    """Values per sample a forward pass keeps: the input and every layer output (what layers cache)."""
    return sum(math.prod(n.output_shape) for n in model.nodes) + model.input_size()


def training_activation_values(model: Model) -> int:
    """Values per sample a training step holds at its peak: the input, and for every layer its output
    plus one array of the same size that backward reads (the pre-activation, a dropout mask, the
    normalised input, pooling indices), plus the widest gradient step, where a layer's output
    gradient and its input gradients are alive together. An estimate from shapes alone."""
    step = 0
    shapes = dict(model.inputs)
    for node in model.nodes:
        ins = sum(math.prod(shapes[i]) for i in node.inputs)
        step = max(step, ins + math.prod(node.output_shape))
        shapes[node.name] = node.output_shape
    return model.input_size() + 2 * sum(math.prod(n.output_shape) for n in model.nodes) + step


def memory_estimate(model: Model, optimizer: Any, batch_size: int) -> dict[str, Any]:
    """Optimizer state (values and bytes) and the activations one batch keeps alive, from the
    declared weights and the inferred shapes alone (nothing is allocated; exact Python ints)."""
    trainable, non_trainable = model.param_counts()
    slots = list(optimizer.slot_names)
    size = value_bytes(model)
    return {
        "optimizer_slots": slots,
        "optimizer_values": trainable * len(slots),
        "optimizer_bytes": trainable * len(slots) * size,
        "batch_size": batch_size,
        "activation_bytes_per_batch": activation_values(model) * batch_size * size,
        "dtype": np.dtype(model.backend.dtype).name,
        "parameter_bytes": (trainable + non_trainable) * size,
        "gradient_bytes": trainable * size,
        "training_activation_bytes_per_batch": training_activation_values(model) * batch_size * size,
    }


def memory_text(estimate: dict[str, Any], optimizer_name: str) -> str:
    slots = ", ".join(estimate["optimizer_slots"]) or "no state"
    return (
        f" Optimizer state: {estimate['optimizer_values']:,} values "
        f"({readable_size(estimate['optimizer_bytes'])}; {optimizer_name}: {slots})\n"
        f" Activations per batch of {estimate['batch_size']}: "
        f"{readable_size(estimate['activation_bytes_per_batch'])} (estimate: every layer output, {estimate['dtype']})\n"
    )


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
