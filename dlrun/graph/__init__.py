"""The layer graph: the Layer base, the layer catalogue, and the Model that wires named nodes."""
