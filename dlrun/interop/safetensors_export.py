"""A model's weights as a safetensors file, under the names Keras gives them.

safetensors holds named tensors and string metadata only (no graph, no code), so every dlrun model
can be written: the architecture stays in the dlrun config or travels in an ONNX or .keras export.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlrun import __version__
from dlrun.errors import DlrunError
from dlrun.graph.model import Model

INSTALL_HINT = "pip install 'dlrun[interop]'"


def to_bytes(model: Model) -> bytes:
    """Every weight (BatchNormalization's moving statistics too) as safetensors bytes, each under
    its Keras name, with the dlrun name of each in the metadata."""
    try:
        from safetensors.numpy import save
    except ImportError:
        raise DlrunError("exporting to safetensors needs the safetensors package", hint=INSTALL_HINT) from None
    names = _keras_names(model)
    tensors = {names[key]: np.ascontiguousarray(value) for key, value in model.get_weights().items()}
    metadata = {"format": "np", "producer": f"dlrun {__version__}"}
    metadata.update({f"dlrun:{names[key]}": key for key in model.get_weights()})
    return save(tensors, metadata=metadata)


def _keras_names(model: Model) -> dict[str, Any]:
    """dlrun weight name (`layer/weight`) -> Keras name, from the Keras interop's naming."""
    try:
        from dlrun.interop.keras_format import keras_weight_names
    except ImportError:
        raise DlrunError("--format safetensors needs dlrun's Keras naming, which this build lacks") from None
    return keras_weight_names(model)
