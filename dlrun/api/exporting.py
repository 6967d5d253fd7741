"""A checkpoint's model in another tool's format: ONNX for serving, Keras, or its weights as safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrun.api.inference import load_model, output_target, writing, written
from dlrun.data.dataset import input_normalization, known_class_names
from dlrun.data.normalize import Normalization
from dlrun.errors import UsageError

FORMATS = ("onnx", "keras", "safetensors")


@dataclass
class ExportResult:
    path: Path
    #: What a user of the file must know (inputs to normalise first), or None.
    note: str | None = None


def export(
    checkpoint: str | Path, output: str | Path, *, format: str = "onnx", uint8_input: bool = False
) -> ExportResult:
    """Write the model of `checkpoint` (a checkpoint file, a run folder, or an imported model) to
    `output` in `format`. Nothing is left at `output` on failure (an existing file stays as it was).

    ONNX graphs take the inputs `dlrun predict` takes and give its outputs: the input normalization
    the model was trained with is part of the graph. By default the input is float32 (normalised as
    predict normalises float inputs); `uint8_input` makes it uint8 pixels (as predict treats uint8).
    .keras and safetensors files hold no normalization: the result's note says what inputs need.
    """
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {format!r:.40}")
    if uint8_input and format != "onnx":
        raise UsageError("--uint8-input applies to --format onnx only")
    target = output_target(output, checkpoint)
    setup, path = load_model(checkpoint)
    if target.exists() and target.samefile(path):
        raise UsageError(f"{target} is the checkpoint being exported; write the export to another file")
    data = setup.config.resolved["data"]
    normalization = input_normalization(data, np.uint8 if uint8_input else np.float32)
    if format == "onnx":
        from dlrun.interop import onnx_export

        metadata = {"dlrun_checkpoint": path.name, "input_normalization": repr(normalization)}
        names = known_class_names(data)
        if names:
            metadata["class_names"] = json.dumps(names)
        proto = onnx_export.to_onnx(
            setup.model,
            normalization,
            uint8_input=uint8_input,
            graph_name=setup.config.resolved.get("name") or "dlrun",
            metadata=metadata,
        )
        payload = onnx_export.serialize(proto)
    elif format == "safetensors":
        from dlrun.interop import safetensors_export

        payload = safetensors_export.to_bytes(setup.model)
    else:
        from dlrun.interop.keras_writer import write_keras

        with writing(target, "the .keras file"):
            write_keras(setup.model, target, config=setup.config.resolved)
        return ExportResult(target, _normalization_note(normalization, ".keras file"))
    with written(target, f"the {format} file") as f:
        f.write(payload)
    return ExportResult(target, None if format == "onnx" else _normalization_note(normalization, "weights file"))


def _normalization_note(normalization: Normalization, what: str) -> str | None:
    """For the formats without the input normalization: what the model's inputs must be."""
    if normalization.kind != "standardize":
        return None
    return (
        f"the model was trained on standardised inputs, which the {what} leaves to its user: "
        f"feed (x - mean) / std with mean={normalization.mean}, std={normalization.std} (data.statistics)"
    )
