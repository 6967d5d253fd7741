"""The input pipeline: mini-batches of a split as device arrays, prepared ahead in a background thread.

Per batch: gather the samples (still uint8 for images), augment (training only), convert to the
compute dtype, normalise. With `prefetch > 0` a daemon thread makes the next batches into a small
bounded queue while the model trains on the current one. Each batch is a pure function of the
epoch's permutation, its index and the epoch number, so the batches, and their order, are the same
whatever the timing or the prefetch depth.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlrun.data.augment import Augmenter
from dlrun.data.normalize import Normalization
from dlrun.engine.backend import Backend


@dataclass
class PipelineStats:
    """Where the consumer's time went in the last epoch: seconds spent waiting for batches (with no
    prefetching: making them), and how many batches it received."""

    wait_seconds: float = 0.0
    batches: int = 0


_ITEM, _END, _ERROR = "item", "end", "error"


def _put(q: queue.Queue, stop: threading.Event, entry: tuple[str, Any]) -> bool:
    while not stop.is_set():
        try:
            q.put(entry, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(source: Iterator[Any], q: queue.Queue, stop: threading.Event) -> None:
    # Ctrl-C and SIGTERM go to the main thread, never here: there they interrupt a blocked get().
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        for item in source:
            if not _put(q, stop, (_ITEM, item)):
                return
        _put(q, stop, (_END, None))
    except BaseException as exc:  # handed to the consumer, which re-raises it
        _put(q, stop, (_ERROR, exc))


class Prefetcher:
    """Iterate `source` in a daemon thread, at most `depth` items ahead: same items, same order.

    An error in the thread is re-raised by `next()`. The thread stops when the items run out, on
    `close()`, when the consumer raises (KeyboardInterrupt included) or drops the iterator: it
    checks a stop flag at least every 50 ms while the queue is full, so nothing hangs.
    """

    def __init__(
        self,
        source: Iterable[Any],
        depth: int,
        stats: PipelineStats | None = None,
        receive: Callable[[Any], Any] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be a positive integer. Received: depth={depth}")
        self._receive = receive  # applied to each item in the consumer's thread
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._closed = False
        self.stats = stats if stats is not None else PipelineStats()
        self._thread = threading.Thread(
            target=_produce, args=(iter(source), self._queue, self._stop), name="dlrun-prefetch", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        start = time.perf_counter()
        try:
            kind, item = self._queue.get()
        except BaseException:  # KeyboardInterrupt while waiting
            self.close()
            raise
        self.stats.wait_seconds += time.perf_counter() - start
        if kind == _ITEM:
            self.stats.batches += 1
            return item if self._receive is None else self._receive(item)
        self.close()
        if kind == _ERROR:
            raise item
        raise StopIteration

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (it exits within ~50 ms unless a batch is being made)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def __del__(self) -> None:
        self._stop.set()


def _timed(source: Iterable[Any], stats: PipelineStats) -> Iterator[Any]:
    """Without prefetching: count the time spent making each batch as waiting."""
    it = iter(source)
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        stats.wait_seconds += time.perf_counter() - start
        stats.batches += 1
        yield item


def _gpu_produced(source: Iterable[Any], xp: Any, device: int) -> Iterator[Any]:
    """In the worker: use the consumer's GPU, and mark when each batch's kernels are done."""
    with xp.cuda.Device(device):
        for item in source:
            done = xp.cuda.Event(disable_timing=True)
            done.record()
            yield item, done


def _gpu_received(item: Any, xp: Any) -> Any:
    """In the consumer: its stream waits (on the GPU, not the host) for the batch to be made."""
    batch, done = item
    xp.cuda.get_current_stream().wait_event(done)
    return batch


class Batches:
    """Mini-batches of one split as device arrays, optionally reshuffled each epoch.

    Args:
        split: the samples (host arrays).
        batch_size: samples per batch (the last one may be smaller).
        backend: where the batches go; on a GPU the whole split is moved there once (still uint8).
        normalization: a Normalization, or a bare scale factor, or None (float as stored).
        target_transform: applied to each label batch (one-hot, dtype).
        augmenter: augmentation for training batches, or None.
        prefetch: batches made ahead in a background thread; 0 makes them on demand.
        shard: (rank, ranks) for data-parallel training: every rank walks the same batches of
            `batch_size` (the global batch) and yields only its contiguous part of each; augmentation
            is drawn for the whole global batch, so each sample gets what one process would give it.
    """

    def __init__(
        self,
        split: Any,
        batch_size: int,
        backend: Backend,
        normalization: Normalization | float | None = None,
        target_transform: Any = None,
        *,
        augmenter: Augmenter | None = None,
        prefetch: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.split, self.batch_size, self.backend = split, batch_size, backend
        self.shard = shard
        self.normalization = Normalization.of(normalization)
        self.target_transform, self.augmenter, self.prefetch = target_transform, augmenter, prefetch
        self.stats = PipelineStats()
        self._epochs = 0
        self._x = backend.asarray(split.x) if backend.is_gpu else split.x
        self._y = backend.asarray(split.y) if backend.is_gpu else split.y

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def epoch(
        self, rng: np.random.Generator | None = None, start_batch: int = 0, epoch: int | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """The batches of one epoch, from `start_batch`.

        The permutation is drawn from `rng` now, in the caller's thread. `epoch` keys the
        augmentation (default: how many epochs this object has started), so a resumed run that
        passes its epoch number augments exactly as the original did.
        """
        n = len(self.split)
        order = rng.permutation(n) if rng is not None else None
        if order is not None and self.backend.is_gpu:
            order = self.backend.asarray(order)
        epoch = self._epochs if epoch is None else epoch
        self._epochs = epoch + 1
        self.stats = PipelineStats()
        batches = (self._batch(order, b, epoch) for b in range(start_batch, len(self)))
        if self.prefetch <= 0:
            return _timed(batches, self.stats)
        if not self.backend.is_gpu:
            return Prefetcher(batches, self.prefetch, self.stats)
        xp = self.backend.xp
        return Prefetcher(
            _gpu_produced(batches, xp, xp.cuda.Device().id),
            self.prefetch,
            self.stats,
            receive=lambda item: _gpu_received(item, xp),
        )

    def global_size(self, b: int) -> int:
        """How many samples batch `b` holds over all ranks."""
        return min(len(self.split), (b + 1) * self.batch_size) - b * self.batch_size

    def part(self, b: int) -> tuple[int, int]:
        """This rank's [start, stop) within batch `b`: contiguous, sizes differing by at most one."""
        n, (rank, ranks) = self.global_size(b), self.shard
        return n * rank // ranks, n * (rank + 1) // ranks

    def _batch(self, order: Any, b: int, epoch: int) -> tuple[Any, Any]:
        lo, hi = b * self.batch_size, min(len(self.split), (b + 1) * self.batch_size)
        first, last = self.part(b)
        if self.augmenter is not None and self.shard[1] > 1:  # augment the global batch, keep our part
            idx = slice(lo, hi) if order is None else order[lo:hi]
            x = self._convert_x(self._x[idx], epoch, b)[first:last]
            mine = slice(lo + first, lo + last) if order is None else order[lo + first : lo + last]
            return x, self._convert_y(self._y[mine])
        lo, hi = lo + first, lo + last
        idx = slice(lo, hi) if order is None else order[lo:hi]
        return self._convert_x(self._x[idx], epoch, b), self._convert_y(self._y[idx])

    def _convert_x(self, xb: Any, epoch: int, b: int) -> Any:
        xp, dtype, norm = self.backend.xp, self.backend.dtype, self.normalization
        if self.augmenter is None:
            return norm(xb, xp, dtype)
        rng = self.augmenter.rng(epoch, b)
        xb = self.augmenter.geometric_batch(rng, xb, xp)
        x = self.augmenter.photometric_batch(rng, norm.to_float(xb, dtype, copy=True), xp)
        return norm.apply_(x, xp)

    def _convert_y(self, yb: Any) -> Any:
        return yb if self.target_transform is None else self.target_transform(yb)
