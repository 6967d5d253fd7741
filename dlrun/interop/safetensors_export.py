"""A model's weights as a safetensors file, under the names Keras gives them.

safetensors holds named tensors and string metadata only (no graph, no code), so every dlrun model
can be written: the architecture stays in the dlrun config or travels in an ONNX or .keras export.
"""

from __future__ import annotations

import numpy as np

from dlrun import __version__
from dlrun.errors import DlrunError
from dlrun.graph.model import Model
from dlrun.interop.keras_format import keras_weight_names

INSTALL_HINT = "pip install 'dlrun[interop]'"


def to_bytes(model: Model) -> bytes:
    """Every weight (BatchNormalization's moving statistics too) as safetensors bytes, each under
    its Keras variable path (`dense/kernel`), in Keras's order."""
    try:
        from safetensors.numpy import save
    except ImportError:
        raise DlrunError("exporting to safetensors needs the safetensors package", hint=INSTALL_HINT) from None
    weights = model.get_weights()
    tensors = {keras: np.ascontiguousarray(weights[key]) for key, keras in keras_weight_names(model).items()}
    return save(tensors, metadata={"format": "np", "producer": f"dlrun {__version__}"})
