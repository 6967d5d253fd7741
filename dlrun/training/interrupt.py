"""Graceful stops on SIGINT (Ctrl-C) and SIGTERM.

While `graceful_interrupts(trainer)` is active, the first signal only sets `trainer.interrupt`: the
loop finishes the current batch, callbacks save a resumable checkpoint, and `fit` raises
TrainingInterrupted. A second signal stops at once (KeyboardInterrupt for SIGINT, SystemExit(143)
for SIGTERM); files are written atomically, so that cannot corrupt anything already saved.
Outside the main thread (where Python cannot install handlers) this is a no-op.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _immediate(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextmanager
def signal_handler(handler: Any) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM while the block runs, the previous handlers put back after
    it; outside the main thread (where Python cannot install handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


@contextmanager
def graceful_interrupts(trainer: Any) -> Iterator[None]:
    def first(signum: int, frame: Any) -> None:
        trainer.interrupt = signum
        for s in SIGNALS:
            signal.signal(s, _immediate)

    with signal_handler(first):
        yield
