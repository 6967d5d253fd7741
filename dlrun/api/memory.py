"""Will a run fit in memory? Estimated from the static shapes before anything large is allocated.

`train`, `resume`, `evaluate` and `predict` call `check_training` / `check_inference` after the
model's graph is built (its weights not yet allocated) and before the data is loaded or generated,
and refuse a run whose estimate exceeds most of the memory the machine has available, instead of
ending in a MemoryError traceback (or the OOM killer) part way through.

The figure for "available" is /proc/meminfo's MemAvailable (lowered to a cgroup's limit when the
process runs in one), else the free physical pages. DLRUN_MEMORY_LIMIT (bytes, with an optional
K/M/G/T suffix; `off` to skip the check) replaces it: for tests, and for machines where swap or
overcommit make the estimate too cautious.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrun.data.registry import DATASETS
from dlrun.errors import DlrunError, UsageError
from dlrun.graph import summary as summaries
from dlrun.graph.model import Model
from dlrun.training.evaluation import inference_batch

ENV = "DLRUN_MEMORY_LIMIT"
#: Refuse above this share of the available memory: the interpreter, the libraries and temporaries
#: the estimate leaves out need the rest.
SHARE = 0.9
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass
class Need:
    """Estimated bytes of one run, by part (Python ints: no overflow however absurd the sizes)."""

    parameters: int  # weights, their gradients and a host copy for checkpoints
    optimizer: int  # the optimizer's slots, its update scratch and their checkpoint copy
    activations: int  # the larger of a training batch and an evaluation batch
    batch: int
    batch_kind: str  # "training" or "evaluation"
    data: int  # generated data whose size the config states (0 when read from files)

    @property
    def total(self) -> int:
        return self.parameters + self.optimizer + self.activations + self.data

    def parts(self) -> str:
        text = (
            f"parameters {_size(self.parameters)}, optimizer {_size(self.optimizer)}, "
            f"activations of a{'n' if self.batch_kind[0] in 'aeiou' else ''} {self.batch_kind} batch of "
            f"{self.batch:,}: {_size(self.activations)}"
        )
        return text + (f", data {_size(self.data)}" if self.data else "")

    def hint(self) -> str:
        largest = max(
            ("parameters", self.parameters + self.optimizer),
            ("activations", self.activations),
            ("data", self.data),
            key=lambda kv: kv[1],
        )[0]
        fix = {
            "parameters": "fewer units or filters, or a smaller model.input_shape",
            "activations": "a smaller training.batch_size, or smaller layer outputs (fewer units or filters, "
            "less up-sampling or padding)"
            if self.batch_kind == "training"
            else "smaller layer outputs (fewer units or filters, less up-sampling or padding)",
            "data": "fewer data.samples or data.features",
        }[largest]
        return f"use {fix}; or set {ENV}=<bytes> if this machine has more memory than it reports"


def training_need(model: Model, optimizer: Any, batch_size: int, data_cfg: dict[str, Any]) -> Need:
    """What training `model` with `optimizer` on batches of `batch_size` needs, from shapes alone."""
    size = summaries.value_bytes(model)
    trainable, frozen = model.param_counts()
    slots = len(optimizer.slot_names)
    # The validation pass runs inference batches, and layers keep their outputs then too.
    eval_batch = inference_batch(model)
    train_bytes = summaries.training_activation_values(model) * batch_size * size
    eval_bytes = summaries.activation_values(model) * eval_batch * size
    kind, batch, activations = (
        ("training", batch_size, train_bytes) if train_bytes >= eval_bytes else ("evaluation", eval_batch, eval_bytes)
    )
    return Need(
        parameters=(2 * (trainable + frozen) + trainable) * size,
        optimizer=(2 * slots + 1) * trainable * size,
        activations=activations,
        batch=batch,
        batch_kind=kind,
        data=dataset_bytes(data_cfg),
    )


def inference_need(model: Model, data_cfg: dict[str, Any] | None = None) -> Need:
    """What scoring or predicting with `model` needs: its weights and one evaluation batch."""
    size = summaries.value_bytes(model)
    trainable, frozen = model.param_counts()
    batch = inference_batch(model)
    return Need(
        parameters=2 * (trainable + frozen) * size,  # the checkpoint's arrays and the model's
        optimizer=0,
        activations=summaries.activation_values(model) * batch * size,
        batch=batch,
        batch_kind="evaluation",
        data=dataset_bytes(data_cfg or {}),
    )


def check(need: Need, *, what: str = "this run", file: str | None = None, backend: Any = None) -> None:
    """Refuse (a DlrunError, exit 1) when `need` exceeds SHARE of the available memory.

    On a GPU the model's part (weights, optimizer, activations) must fit in the device's free
    memory and the data in the host's."""
    available, source = available_bytes()
    device = _device_free(backend) if source != ENV else None
    if device is not None:
        parts = [(need.total - need.data, device, "this GPU", "free GPU memory")]
        parts.append((need.data, available, "this machine", source))
    else:
        parts = [(need.total, available, "this machine", source)]
    for wanted, room, where, origin in parts:
        if room is not None and wanted > SHARE * room:
            raise DlrunError(
                f"{what} needs about {_size(wanted)} ({need.parts()}), {where} has {_size(room)} "
                f"available ({origin}); refused before allocating it",
                hint=need.hint(),
                file=file,
            )


def _device_free(backend: Any) -> int | None:
    """Free bytes on the current GPU (CuPy), or None on the CPU or when it cannot be asked."""
    if backend is None or not backend.is_gpu:
        return None
    try:
        free, _total = backend.xp.cuda.runtime.memGetInfo()
        # Blocks CuPy's pool holds are reusable too.
        return int(free) + int(backend.xp.get_default_memory_pool().free_bytes())
    except Exception:  # a driver that cannot say: no device check rather than a wrong one
        return None


def dataset_bytes(data_cfg: dict[str, Any]) -> int:
    """Bytes a generated dataset will take, from its config (sources that generate data say so with a
    `generated_bytes` method). Datasets read from files count 0: their files size them, and their
    headers are checked before they are read."""
    source = DATASETS.get(data_cfg["dataset"]) if "dataset" in data_cfg else None
    estimate = getattr(source, "generated_bytes", None)
    return int(estimate(data_cfg)) if estimate is not None else 0


def available_bytes() -> tuple[int | None, str]:
    """(bytes available to this process or None when unknown, where the figure comes from)."""
    override = os.environ.get(ENV)
    if override is not None and override.strip():
        return _parse_limit(override), ENV
    found = _meminfo_available()
    if found is not None:
        limit = _cgroup_room()
        if limit is not None and limit < found:
            return limit, "cgroup memory limit"
        return found, "MemAvailable in /proc/meminfo"
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return pages * os.sysconf("SC_PAGE_SIZE"), "free physical pages"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def _parse_limit(text: str) -> int | None:
    value = text.strip()
    if value.lower() in ("off", "none", "unlimited"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", value, re.IGNORECASE)
    if not match:
        raise UsageError(
            f"{ENV}={value!r:.40} is not a size",
            hint=f"give bytes, optionally with K, M, G or T (e.g. {ENV}=8G), or {ENV}=off to skip the memory check",
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _cgroup_room() -> int | None:
    """What a cgroup (v2, else v1) memory limit leaves this process, when one is set."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 1 << 60:  # v1 says "no limit" with a huge number
            return max(0, int(limit) - int(usage))
        return None
    return None


def _size(n_bytes: int) -> str:
    """1024-based, one decimal: 3.5 GiB, 812.0 TiB."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:,.1f} PiB"
