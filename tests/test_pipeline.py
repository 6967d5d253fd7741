"""The background input pipeline: same batches in the same order whatever the timing; clean shutdown."""

from __future__ import annotations

import signal
import sys
import threading
import time

import numpy as np
import pytest

from dlrun.data import augment, pipeline
from dlrun.data.dataset import Split
from dlrun.data.normalize import Normalization
from dlrun.data.pipeline import Batches, Prefetcher
from dlrun.engine.backend import CPU


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dlrun-prefetch"]


def wait_no_threads(timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while prefetch_threads() and time.monotonic() < end:
        time.sleep(0.01)
    assert not prefetch_threads()


def split(n: int = 100) -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n))


def make(prefetch: int, aug: augment.Augmenter | None = None) -> Batches:
    return Batches(split(), 16, CPU, Normalization("scale", scale=1 / 255), augmenter=aug, prefetch=prefetch)


class Jittery(augment.Augmenter):
    """Sleeps a random while per batch (its own, unseeded clock): timing must not change results."""

    def geometric_batch(self, rng, x, xp):
        time.sleep(np.random.default_rng().uniform(0, 0.004))
        return super().geometric_batch(rng, x, xp)


def epochs(batches: Batches, n: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [b for e in range(n) for b in batches.epoch(rng, epoch=e)]


def test_prefetching_changes_nothing_but_the_timing():
    specs = augment.parse([{"RandomFlip": {}}, {"RandomCrop": {"padding": 2}}, {"RandomBrightness": {"factor": 0.2}}])
    reference = epochs(make(0, augment.Augmenter(specs, 5, (8, 8, 3))))
    for depth in (1, 3):
        got = epochs(make(depth, Jittery(specs, 5, (8, 8, 3))))
        assert len(got) == len(reference) == 14
        for (x1, y1), (x2, y2) in zip(reference, got):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    wait_no_threads()


def test_resuming_mid_epoch_repeats_the_same_batches():
    specs = augment.parse([{"RandomFlip": {}}, {"RandomTranslation": {"height_factor": 0.2, "width_factor": 0.2}}])
    full = list(make(2, augment.Augmenter(specs, 1, (8, 8, 3))).epoch(np.random.default_rng(3), epoch=4))
    tail = list(make(2, augment.Augmenter(specs, 1, (8, 8, 3))).epoch(np.random.default_rng(3), 4, epoch=4))
    for (x1, _), (x2, _) in zip(full[4:], tail, strict=True):
        np.testing.assert_array_equal(x1, x2)


def test_thread_stops_when_the_consumer_stops_early():
    batches = make(2)
    for i, _ in enumerate(batches.epoch()):
        if i == 1:
            break
    wait_no_threads()
    it = make(2).epoch()
    next(it)
    it.close()
    assert not prefetch_threads()


def test_errors_in_the_thread_reach_the_consumer():
    def broken():
        yield 1
        raise ZeroDivisionError("in the producer")

    it = Prefetcher(broken(), 2)
    assert next(it) == 1
    with pytest.raises(ZeroDivisionError, match="in the producer"):
        next(it)
    wait_no_threads()
    with pytest.raises(StopIteration):
        next(it)


def test_an_exception_in_the_training_step_stops_the_thread():
    def train():
        for _ in make(1).epoch():
            raise KeyboardInterrupt  # as if Ctrl-C arrived inside the step

    with pytest.raises(KeyboardInterrupt):
        train()
    wait_no_threads()


def main_thread_waits_for_a_batch() -> None:
    """Until the main thread is inside a queue get (a Prefetcher waiting for the next item)."""
    main = threading.main_thread().ident
    end = time.monotonic() + 30  # only a bound on a broken run: the wait ends as soon as it is true
    while time.monotonic() < end:
        frame = sys._current_frames().get(main)
        while frame is not None:
            if frame.f_code.co_name == "get" and frame.f_code.co_filename.endswith("queue.py"):
                return
            frame = frame.f_back
        time.sleep(0.001)
    raise AssertionError("the main thread never waited for a batch")


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill (POSIX)")
def test_ctrl_c_while_waiting_for_a_batch_does_not_hang():
    released = threading.Event()
    received = []

    def blocked():  # makes nothing until the Ctrl-C has been sent, then more batches than the queue holds
        released.wait()
        yield from range(100)

    def ctrl_c():
        try:
            main_thread_waits_for_a_batch()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        finally:
            released.set()

    sender = threading.Thread(target=ctrl_c)
    sender.start()
    it = Prefetcher(blocked(), 2)  # held: its thread must stop on the interrupt, not when it is collected
    try:
        with pytest.raises(KeyboardInterrupt):
            for item in it:
                received.append(item)
    finally:
        released.set()
        sender.join()
    # The interrupt ended the wait itself (no batch existed before it was sent), and it closed the
    # thread, which would otherwise wait forever to put batches into the full queue.
    assert received == []
    wait_no_threads()


class Clock:
    """A stand-in for time.perf_counter that moves only when told: waits measured exactly."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class Costly(augment.Augmenter):
    """Each batch takes a quarter of a (fake) second to make."""

    def __init__(self, clock: Clock) -> None:
        super().__init__([], 0, (8, 8, 3))
        self.clock = clock

    def geometric_batch(self, rng, x, xp):
        self.clock.now += 0.25
        return x


def test_wait_time_is_measured(monkeypatch):
    batches = make(2)
    list(batches.epoch())
    assert batches.stats.batches == 7
    clock = Clock()
    monkeypatch.setattr(pipeline, "time", clock)
    # Without prefetching, the consumer waits while each batch is made.
    batches = make(0, Costly(clock))
    list(batches.epoch())
    assert batches.stats.batches == 7 and batches.stats.wait_seconds == 7 * 0.25

    def slow():  # each item takes 0.25 s, spent while the consumer waits for it
        for i in range(3):
            main_thread_waits_for_a_batch()
            clock.now += 0.25
            yield i

    prefetched = Prefetcher(slow(), 1)
    assert list(prefetched) == [0, 1, 2] and prefetched.stats.wait_seconds == 3 * 0.25
    assert prefetched.stats.batches == 3


def test_trainer_results_do_not_depend_on_prefetching(tmp_path):
    from dlrun import api

    histories = []
    for depth in (0, 2):
        cfg = {
            "seed": 1,
            "data": {
                "dataset": "synthetic",
                "samples": 200,
                "features": 6,
                "classes": 3,
                "validation_split": 0.2,
                "prefetch": depth,
            },
            "model": {
                "layers": [
                    {"Dense": {"units": 8, "activation": "relu"}},
                    {"Dropout": {"rate": 0.3}},
                    {"Dense": {"units": 3, "activation": "softmax"}},
                ]
            },
            "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"],
            "training": {"epochs": 3, "batch_size": 16},
        }
        histories.append(api.train(cfg, runs_dir=tmp_path / str(depth)).history)
    assert histories[0] == histories[1]
    wait_no_threads()


def test_gpu_branch_with_a_stand_in_array_module():
    """The GPU code path (device context and stream events around the thread), run on a NumPy stand-in."""
    import types

    from dlrun.engine.backend import Backend

    calls = []

    class Event:
        def __init__(self, disable_timing=False):
            pass

        def record(self):
            calls.append(("record", threading.current_thread().name))

    class Stream:
        def wait_event(self, event):
            calls.append(("wait", threading.current_thread().name))

    class Device:
        def __init__(self, i=0):
            self.id = i

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("fakecupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    fake.cuda = types.SimpleNamespace(Event=Event, Device=Device, get_current_stream=Stream)
    gpu = Backend(fake)
    assert gpu.is_gpu
    specs = augment.parse([{"RandomFlip": {}}, {"RandomCrop": {"padding": 2}}, {"RandomContrast": {"factor": 0.3}}])
    data = split()
    on_gpu = Batches(
        data,
        16,
        gpu,
        Normalization("standardize", mean=[1, 2, 3], std=[4, 5, 6]),
        augmenter=augment.Augmenter(specs, 5, (8, 8, 3)),
        prefetch=2,
    )
    on_cpu = Batches(
        data,
        16,
        CPU,
        Normalization("standardize", mean=[1, 2, 3], std=[4, 5, 6]),
        augmenter=augment.Augmenter(specs, 5, (8, 8, 3)),
        prefetch=0,
    )
    for (x1, y1), (x2, y2) in zip(
        on_gpu.epoch(np.random.default_rng(0), epoch=1), on_cpu.epoch(np.random.default_rng(0), epoch=1), strict=True
    ):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert set(calls) == {("record", "dlrun-prefetch"), ("wait", "MainThread")}
    assert len(calls) == 14
    wait_no_threads()


def test_prefetch_null_makes_batches_ahead_only_where_it_pays():
    """data.prefetch: null (the default) prefetches augmented training batches, never plain CPU
    batches (a second Python thread would take the interpreter lock from the training step);
    a number is obeyed as written."""
    from dlrun.data.dataset import AUTO_PREFETCH, Dataset

    aug = augment.augmenter([{"RandomFlip": {"mode": "horizontal"}}], 0, (4, 4, 1))
    s = Split(np.zeros((8, 4, 4, 1), np.uint8), np.zeros(8, np.int64))
    auto = Dataset("t", s, None, None, (4, 4, 1), 2, augmenter=aug, prefetch=None)
    assert auto.batches(s, 4, CPU, training=True).prefetch == AUTO_PREFETCH
    assert auto.batches(s, 4, CPU, training=False).prefetch == 0
    plain = Dataset("t", s, None, None, (4, 4, 1), 2, prefetch=None)
    assert plain.batches(s, 4, CPU, training=True).prefetch == 0
    assert Dataset("t", s, None, None, (4, 4, 1), 2, prefetch=3).batches(s, 4, CPU).prefetch == 3
