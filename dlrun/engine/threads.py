"""CPU worker threads for NumPy work, and the BLAS thread count they require.

NumPy releases the GIL in copies, ufunc loops and BLAS calls, so splitting a batch over threads
uses every core for the im2col copies and element-wise passes, which run on one core otherwise.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dlrun.engine.backend import xp_of

# The workers' matmuls must then run single-threaded, and so must every other BLAS call: an
# OpenBLAS call on several threads leaves its helper threads spinning for a while afterwards,
# taking the cores from the workers. So the first time work is split, dlrun sets OpenBLAS to one
# thread for the rest of the process (models of Dense layers only never split work and keep
# OpenBLAS's threads). Without a recognisable OpenBLAS, with one core, or with
# OPENBLAS_NUM_THREADS=1 / OMP_NUM_THREADS=1, everything stays in the calling thread.
_BLAS_SET_THREADS = (
    "openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads_64_",
    "openblas_set_num_threads64_",
)
_BLAS_GET_THREADS = (
    "openblas_get_num_threads",
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads_64_",
    "openblas_get_num_threads64_",
)
_pool: ThreadPoolExecutor | None = None
_pool_size: int | None = None
_lock = threading.Lock()


def _openblas() -> tuple[Any, Any] | None:
    """(set_num_threads, get_num_threads) of the OpenBLAS NumPy loaded, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _BLAS_SET_THREADS if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _BLAS_GET_THREADS if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
            return setter, getter
    return None


_share = 1  # ranks of a data-parallel run on this host, which split its cores


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // _share)


def share_cores(ranks: int) -> None:
    """`ranks` processes share this host: each takes cores / ranks threads (BLAS's and the CPU
    workers'), unless OPENBLAS_NUM_THREADS or OMP_NUM_THREADS says otherwise. Call before work."""
    global _share
    _share = max(1, ranks)
    if _share > 1 and not (os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")):
        blas = _openblas()
        if blas is not None:
            blas[0](_cores())


def cpu_workers() -> int:
    """How many threads `parallel` splits NumPy work over (OpenBLAS's thread count, at most the
    cores); starting them switches OpenBLAS to one thread per call (see above)."""
    global _pool, _pool_size
    if _pool_size is None:
        with _lock:
            if _pool_size is None:
                blas = _openblas()
                cores = _cores()
                size = min(cores, max(1, blas[1]())) if blas is not None else 1
                if size > 1:
                    _pool = ThreadPoolExecutor(size, thread_name_prefix="dlrun-cpu")
                    blas[0](1)  # type: ignore[index]
                _pool_size = size
    return _pool_size


def workers_started() -> bool:
    """Whether the CPU workers run (some layer has split its work, and BLAS is down to one thread)."""
    return _pool is not None


def parallel(xp: Any, n: int, fn: Callable[[int, int, int], Any], step: int) -> list[Any]:
    """fn(start, stop, worker) over the ranges [0, step), [step, 2 step), ... of range(n); the
    results in order. The CPU workers each take the next range when done with one, so a core
    slowed by another process just does fewer. A GPU, or a single range, runs in the caller.
    `worker` (0 .. workers-1) tells which scratch space a call may use. fn must not call `parallel`."""
    step = max(1, step)
    tasks = [(a, min(a + step, n)) for a in range(0, n, step)]
    if len(tasks) < 2 or xp.__name__ != "numpy" or cpu_workers() < 2 or _pool is None:
        return [fn(a, b, 0) for a, b in tasks]
    results: list[Any] = [None] * len(tasks)
    queue = iter(enumerate(tasks))
    queue_lock = threading.Lock()

    def run(worker: int) -> None:
        while True:
            with queue_lock:
                item = next(queue, None)
            if item is None:
                return
            k, (a, b) = item
            results[k] = fn(a, b, worker)

    for future in [_pool.submit(run, w) for w in range(min(_pool_size or 1, len(tasks)))]:
        future.result()
    return results


def matmul(a: Any, b: Any, out: Any = None) -> Any:
    """a @ b for 2-D arrays. Once dlrun's CPU workers run (and BLAS is down to one thread per call),
    big products are split by rows of `a` over the workers; otherwise a plain matmul."""
    m = a.shape[0]
    if _pool is None or m * a.shape[1] * b.shape[1] < (1 << 22) or m < 2 or not isinstance(a, np.ndarray):
        # The common small case stays as cheap as `@` (Dense layers at batch 32 take microseconds).
        return a @ b if out is None else xp_of(a).matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, b.shape[1]), dtype=np.result_type(a, b))
    parallel(
        np,
        m,
        lambda first, last, worker: np.matmul(a[first:last], b, out=out[first:last]),
        step=-(-m // (_pool_size or 1)),
    )
    return out
