"""Datasets: finding, fetching, verifying and parsing files; splitting and batching."""
from dlrun.data.dataset import Dataset, Split, load_dataset

__all__ = ["Dataset", "Split", "load_dataset"]
