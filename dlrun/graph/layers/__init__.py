"""The layer catalogue: importing this package registers every layer in `LAYERS`."""
from dlrun.graph.layers import core  # noqa: F401
