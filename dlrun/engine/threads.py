"""How many CPU threads dlrun computes on, and the pool that splits NumPy work over them.

NumPy releases the GIL in copies, ufunc loops and BLAS calls, so splitting a batch over threads
uses every core for the im2col copies and element-wise passes, which run on one core otherwise.

One policy for every model: inside `cpu_threads(n)` (training, evaluation and prediction run
there), BLAS runs one thread per call and dlrun splits the work over n threads itself, the calling
thread being one of them. Not BLAS's own threads, because OpenBLAS's helpers spin after each call
(taking the core from our workers, or from another process that holds it) and because its results
change with its thread count (it picks other kernels), which would make a run's history depend on
the machine. Every split is into pieces whose size depends on the shapes alone, and the pieces are
combined in order, so a config gives bit-identical results on 1, 2 or 16 threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.engine.backend import xp_of

#: The variables users set to cap a program's threads; dlrun honours the smallest one set.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Products with fewer multiply-adds stay one BLAS call (Dense layers at batch 32 take microseconds).
SPLIT_MADDS = 1 << 22
#: Rows per piece of a split product are a multiple of this: BLAS kernels work on blocks of rows,
#: and a whole block takes the same kernel in every piece.
ROW_BLOCK = 64

_workers = 1  # threads `parallel` uses now (1 outside `cpu_threads`)
_depth = 0  # nesting of `cpu_threads` scopes
_share = 1  # ranks of a data-parallel run on this host, which split its cores
_pool: ThreadPoolExecutor | None = None  # the helpers beside the calling thread
_pool_size = 0
_lock = threading.Lock()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads(environ: dict[str, str] | None = None) -> int:
    """The user's OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS if set (the smallest),
    else every core this process may use (its share of them when several ranks share the host)."""
    env = os.environ if environ is None else environ
    asked = []
    for name in THREAD_VARIABLES:
        value = env.get(name, "").strip().split(",")[0]  # OpenMP allows a list per nesting level
        if value.isdigit() and int(value) > 0:
            asked.append(int(value))
    return min(asked) if asked else max(1, available_cores() // _share)


def share_cores(ranks: int) -> None:
    """`ranks` processes share this host: by default each computes on cores / ranks threads."""
    global _share
    _share = max(1, ranks)


def _blas_limits() -> Any:
    """Limit BLAS to one thread per call until `.restore_original_limits()`; threadpoolctl finds
    OpenBLAS, MKL or BLIS whatever their symbol names (and on any OS)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def blas_libraries() -> list[dict[str, Any]]:
    """The BLAS libraries NumPy uses and the kernels they picked ({library, version, kernels}).

    The kernels set the speed and the last bits of every result: OpenBLAS picks them from the
    processor unless OPENBLAS_CORETYPE names some (AVX2 "Haswell" kernels on an AVX-512 processor
    halve float32 matmul speed: 100 against 196 GFLOP/s measured on a Zen 5 core).
    """
    from threadpoolctl import threadpool_info

    np.ones((2, 2), dtype=np.float32) @ np.ones((2, 2), dtype=np.float32)  # loads the library if lazy
    return [
        {"library": info.get("internal_api"), "version": info.get("version"), "kernels": info.get("architecture")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]


#: OpenBLAS's kernel sets for AVX-512 processors (the names threadpoolctl reports, lower case).
AVX512_KERNELS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


def forced_kernels_note(environ: dict[str, str] | None = None, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """A sentence for the user when OPENBLAS_CORETYPE makes OpenBLAS run kernels without AVX-512
    on a processor that has it (measured on a Zen 5 core: float32 products at half speed), else
    None. dlrun respects the variable, which OpenBLAS reads once, when NumPy loads it."""
    env = os.environ if environ is None else environ
    forced = env.get("OPENBLAS_CORETYPE", "").strip()
    if not forced:
        return None
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:  # not Linux: nothing to compare with
        return None
    kernels = [lib["kernels"] for lib in blas_libraries() if lib["library"] == "openblas" and lib["kernels"]]
    if "avx512f" not in flags or not kernels or kernels[0].lower() in AVX512_KERNELS:
        return None
    return (
        f"OPENBLAS_CORETYPE={forced} makes OpenBLAS run its {kernels[0]} kernels on this AVX-512 processor: "
        "float32 matrix products can take twice as long as with the kernels OpenBLAS picks itself "
        "(unset OPENBLAS_CORETYPE unless something needs it)"
    )


@contextmanager
def cpu_threads(threads: int | None = None) -> Iterator[int]:
    """Within: dlrun computes on `threads` threads (default: `default_threads()`) and BLAS on one
    per call. On leaving, BLAS's limits and the pool are as they were. Yields the thread count."""
    global _workers, _depth
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {threads!r}")
    limits = _blas_limits()
    previous, _workers = _workers, n
    _depth += 1
    try:
        yield n
    finally:
        _workers, _depth = previous, _depth - 1
        limits.restore_original_limits()
        if _depth == 0:
            _shutdown_pool()  # leave no idle threads behind the outermost scope


def workers() -> int:
    """How many threads `parallel` splits work over now."""
    return _workers


def _helpers(count: int) -> ThreadPoolExecutor:
    """A pool of at least `count` helper threads (threads block on a queue when idle: none spin)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < count:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="dlrun-cpu"), count
        return _pool


def _shutdown_pool() -> None:
    global _pool, _pool_size
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool, _pool_size = None, 0


def parallel(xp: Any, n: int, fn: Callable[[int, int, int], Any], step: int) -> list[Any]:
    """fn(start, stop, worker) over the ranges [0, step), [step, 2 step), ... of range(n); the
    results in order. The threads each take the next range when done with one, so a core slowed by
    another process just does fewer. A GPU, one thread or a single range runs in the caller.
    `worker` (0 .. workers-1) tells which scratch space a call may use; the result must not depend
    on it. `step` must not depend on the thread count. fn must not call `parallel`."""
    step = max(1, step)
    tasks = [(a, min(a + step, n)) for a in range(0, n, step)]
    threads = min(_workers, len(tasks))
    if threads < 2 or xp.__name__ != "numpy":
        return [fn(a, b, 0) for a, b in tasks]
    results: list[Any] = [None] * len(tasks)
    queue = iter(enumerate(tasks))
    queue_lock = threading.Lock()
    failed: list[BaseException] = []

    def run(worker: int) -> None:
        while not failed:
            with queue_lock:
                item = next(queue, None)
            if item is None:
                return
            k, (a, b) = item
            try:
                results[k] = fn(a, b, worker)
            except BaseException as exc:
                failed.append(exc)
                raise

    futures = [_helpers(threads - 1).submit(run, w) for w in range(1, threads)]
    try:
        run(0)  # the calling thread is one of the workers: no thread sits waiting
    finally:
        for future in futures:  # no helper may still write into shared buffers when we return
            future.exception()
    if failed:
        raise failed[0]
    return results


def product(a: Any, b: Any, out: Any = None) -> Any:
    """a @ b for 1-D and 2-D arrays, without holding the GIL on the CPU.

    NumPy's matmul keeps the GIL for the whole BLAS call when the result has fewer than 500 values,
    however long the sum: a 5x5 kernel's gradient over a chunk of LeNet-5's images, (25, 20384) @
    (20384, 6), then blocks the other worker, and two threads computing such products took longer
    than one (measured: speedup 0.96; 1.85 with np.dot). np.dot releases the GIL and makes the same
    BLAS call: the same bits (tests/test_layers_conv.py)."""
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        return a @ b if out is None else xp_of(a).matmul(a, b, out=out)
    if out is None:
        return np.dot(a, b)
    if out.flags.c_contiguous and out.dtype == np.result_type(a, b):  # what np.dot's `out` accepts
        return np.dot(a, b, out=out)
    return np.matmul(a, b, out=out)


def matmul(a: Any, b: Any, out: Any = None) -> Any:
    """a @ b for 2-D arrays. Big products are cut into pieces of rows of `a` (sized by the shapes
    alone, so the bits do not depend on the thread count) that the threads share."""
    m, k = a.shape
    n = b.shape[1]
    rows = max(ROW_BLOCK, SPLIT_MADDS // 2 // max(1, k * n) // ROW_BLOCK * ROW_BLOCK)
    if not isinstance(a, np.ndarray) or m * k * n < SPLIT_MADDS or m <= rows:
        return product(a, b, out)
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    parallel(np, m, lambda first, last, worker: product(a[first:last], b, out[first:last]), step=rows)
    return out
