"""dlrun: declarative, config-driven deep-learning training on NumPy (CPU) and CuPy (GPU)."""

__version__ = "0.1.0"
