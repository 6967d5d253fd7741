"""The layer catalogue: importing this package registers every layer in `LAYERS`."""
from dlrun.graph.layers import core  # noqa: F401
from dlrun.graph.layers import conv  # noqa: F401
from dlrun.graph.layers import pooling  # noqa: F401
from dlrun.graph.layers import normalization  # noqa: F401
from dlrun.graph.layers import merge  # noqa: F401
from dlrun.graph.layers import activation_layers  # noqa: F401
