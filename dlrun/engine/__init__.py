"""The array engine: backend selection, initializers, activations, losses, optimizers, metrics.

Nothing here knows about configs, the CLI or files.
"""
