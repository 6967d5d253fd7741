"""The run's random streams: one for initialisation, one for layer noise (dropout), one for shuffling.

All three derive from the config's seed and are NumPy generators on the host, whose state can be
saved and restored exactly: that is what makes resume bit-identical, and a CPU and a GPU run draw
the same dropout masks.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from dlrun.engine.backend import Backend


class Streams(NamedTuple):
    init: np.random.Generator
    noise: np.random.Generator
    shuffle: np.random.Generator
    split: np.random.Generator


def streams(seed: int) -> Streams:
    """Independent generators for weights, layer noise, shuffling and the validation split."""
    return Streams(*(np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(4)))


class NoiseRNG:
    """Random draws for layer noise (dropout masks), made on the host and moved to the compute device."""

    def __init__(self, backend: Backend, host_gen: np.random.Generator) -> None:
        self.backend = backend
        self.generator = host_gen
        self._part: tuple[int, int, int] | None = None

    def set_part(self, first: int, last: int, total: int) -> None:
        """In data-parallel training: the batch has `total` samples over all ranks, this rank holds
        [first, last). Masks are then drawn for the whole batch (the stream advances as for one
        process) and this rank keeps its rows: N processes draw what one would."""
        self._part = None if (first, last) == (0, total) else (first, last, total)

    def bernoulli(self, shape: tuple[int, ...], p: float) -> Any:
        """A boolean array, each element True with probability p (to 2^-32), from raw 32-bit draws:
        twice as fast as comparing uniform floats, and a quarter of the bytes to a GPU."""
        part = self._part
        rows = None
        if part is not None and shape and shape[0] == part[1] - part[0]:
            rows, shape = slice(part[0], part[1]), (part[2], *shape[1:])
        n = math.prod(shape)
        raw = self.generator.bit_generator.random_raw(-(-n // 2)).view(np.uint32)[:n]
        keep = raw < np.uint32(min(round(p * 2.0**32), 2**32 - 1))
        keep = keep.reshape(shape)
        if rows is not None:
            keep = keep[rows]
        return self.backend.asarray(keep) if self.backend.is_gpu else keep

    def get_state(self) -> dict[str, Any]:
        return self.generator.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.generator.bit_generator.state = state
