"""The layer catalogue: importing this package registers every layer in `LAYERS`."""

from dlrun.graph.layers import (
    activation_layers,  # noqa: F401
    conv,  # noqa: F401
    core,  # noqa: F401
    merge,  # noqa: F401
    normalization,  # noqa: F401
    pooling,  # noqa: F401
)
