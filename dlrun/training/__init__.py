"""The training loop, its history and callbacks."""
