"""Seeded hold-out splits (validation, test), plain or stratified."""

from __future__ import annotations

import numpy as np

from dlrun.errors import DataError


def check_sizes(n: int, fraction: float, what: str = "validation_split") -> int:
    """How many of `n` samples `fraction` holds out; a DataError when a side would be empty."""
    n_held = round(n * fraction)
    if n_held < 1 or n_held >= n:
        raise DataError(
            f"{what} {fraction} of {n} samples leaves an empty split",
            hint=f"hold out between {1 / n:.3g} and {(n - 1) / n:.3g} of them" if n > 1 else "use more samples",
        )
    return n_held


def holdout(
    n: int, fraction: float, rng: np.random.Generator, labels: np.ndarray | None = None, what: str = "validation_split"
) -> tuple[np.ndarray, np.ndarray]:
    """(kept indices, held-out indices): `round(n * fraction)` samples held out, chosen by `rng`.

    With `labels`, the split is stratified: each class gives its share (largest remainders settle
    the rounding), so both parts keep the class proportions. Without, the held-out part is the first
    samples of one permutation (the order of earlier dlrun versions, so old runs split the same).
    """
    n_held = check_sizes(n, fraction, what)
    order = rng.permutation(n)
    if labels is None:
        return order[n_held:], order[:n_held]
    y = np.asarray(labels).reshape(n, -1)
    if y.shape[1] != 1:
        raise DataError("stratify needs one integer label per sample", hint="set data.stratify: false")
    y = y[order, 0]
    classes, counts = np.unique(y, return_counts=True)
    share = counts * (n_held / n)
    quota = np.floor(share).astype(np.int64)
    rest = n_held - int(quota.sum())
    quota[np.argsort(-(share - quota), kind="stable")[:rest]] += 1
    # rank of each sample among its class, in permutation order
    by_class = np.argsort(y, kind="stable")
    first = np.searchsorted(y[by_class], classes)
    rank = np.empty(n, np.int64)
    rank[by_class] = np.arange(n) - np.repeat(first, counts)
    held = rank < quota[np.searchsorted(classes, y)]
    return order[~held], order[held]
