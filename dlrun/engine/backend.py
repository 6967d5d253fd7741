"""The one place that decides between NumPy and CuPy.

Every kernel is written against an `xp` module; `Backend` carries that module and the compute
dtype. Parameters are always created on the host from the seed and then moved, so a CPU and a GPU
run start from the same weights and checkpoints always hold host arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from dlrun.errors import DlrunError


def xp_of(x: Any):
    """The array module (numpy or cupy) an array belongs to. Called in every kernel: keep it cheap."""
    if type(x).__module__.startswith("cupy"):
        import cupy  # type: ignore[import-not-found]

        return cupy
    return np


_cupy: ModuleType | None = None
_cupy_error: str | None = None


def _import_cupy() -> ModuleType | None:
    """Import CuPy once and remember why it failed, so `auto` can say why it fell back."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy  # type: ignore[import-not-found]

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        _cupy = cupy
    except Exception as exc:  # ImportError, CUDA driver errors, ...
        _cupy_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return _cupy


def gpu_unavailable_reason() -> str | None:
    """None when a GPU backend can be used, else the reason it cannot."""
    _import_cupy()
    return _cupy_error


@dataclass(frozen=True)
class Backend:
    """An array module plus the dtype every parameter and activation uses."""

    xp: ModuleType
    dtype: Any = np.float32

    @property
    def name(self) -> str:
        return "gpu" if self.is_gpu else "cpu"

    @property
    def is_gpu(self) -> bool:
        return self.xp is not np

    def asarray(self, host: np.ndarray, dtype: Any = None) -> Any:
        """Move a host array to the device (a no-op copy-free view on CPU)."""
        return self.xp.asarray(host, dtype=dtype)

    def to_host(self, arr: Any) -> np.ndarray:
        """Bring an array back to the host. A sync point: never in the per-batch hot loop."""
        if self.is_gpu:
            return self.xp.asnumpy(arr)
        return np.asarray(arr)

    def describe(self) -> str:
        if not self.is_gpu:
            return "cpu (NumPy)"
        dev = self.xp.cuda.Device()
        props = self.xp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"gpu {dev.id} ({name}, CuPy {self.xp.__version__})"


CPU = Backend(np)


def get_backend(device: str = "auto", dtype: Any = np.float32) -> tuple[Backend, str | None]:
    """Resolve `auto | cpu | gpu` to a Backend; the second value is a note for the user (or None).

    `gpu` without a usable CuPy is an error; `auto` falls back to CPU and says why.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise DlrunError(f"unknown device {device!r}", hint="use auto, cpu or gpu")
    if device == "cpu":
        return Backend(np, dtype), None
    cupy = _import_cupy()
    if cupy is not None:
        return Backend(cupy, dtype), None
    if device == "gpu":
        raise DlrunError(
            f"device: gpu was asked for, but the GPU backend is unavailable ({_cupy_error})",
            hint="install CuPy with `pip install 'dlrun[gpu]'` on a machine with an NVIDIA GPU, or set `device: cpu`",
        )
    if _cupy_error and _cupy_error.startswith("ModuleNotFoundError"):  # the usual case: nothing to worry about
        return Backend(np, dtype), "training on the CPU (for an NVIDIA GPU: pip install 'dlrun[gpu]')"
    return Backend(np, dtype), f"training on the CPU: the GPU backend is unavailable ({_cupy_error})"
