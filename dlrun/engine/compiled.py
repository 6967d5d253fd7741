"""Optional compiled kernels: numba (the `fast` extra) fuses an element-wise pipeline into one loop.

NumPy runs Adam's update as twelve passes over the parameters, each its own C loop and call; for
the seed MLP's 79,510 weights the twelve cost 91 us per step, one fused loop 14 us (measured on a
Zen 5 core), a third of that MLP's epoch. Each kernel computes in the order and dtype of the NumPy
code it stands for, so a run's results are the same bits with or without numba (tests compare
them: test_optimizers, test_layers_norm_merge, test_layers_conv).

Imported on first use, never at start-up: `kernels()` is None without numba, on a GPU's arrays
(callers check), or when DLRUN_NUMBA=0 asks for NumPy alone. Kernels are single-threaded and
release the GIL, so dlrun's own workers run them side by side (numba's thread pool never starts);
compiled code is cached on disk, so only a machine's first run pays the compilation.
"""

from __future__ import annotations

import os
from functools import cache
from types import ModuleType


@cache
def kernels() -> ModuleType | None:
    """The module of compiled kernels (dlrun.engine.numba_kernels), or None to use NumPy."""
    if os.environ.get("DLRUN_NUMBA", "").strip() == "0":
        return None
    try:
        from dlrun.engine import numba_kernels
    except ImportError:  # numba is not installed (or cannot load on this platform)
        return None
    return numba_kernels


def numba_version() -> str | None:
    """numba's version when dlrun's kernels use it, for the run's manifest."""
    if kernels() is None:
        return None
    import numba

    return str(numba.__version__)
