"""Datasets: finding, fetching, verifying and parsing files; splitting, normalising, augmenting and
batching them (dlrun.data.pipeline prepares batches ahead in a background thread)."""

from dlrun.data.dataset import Dataset, Split, load_dataset

__all__ = ["Dataset", "Split", "load_dataset"]
