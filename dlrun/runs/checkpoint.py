"""Self-contained checkpoints: one `.npz` file (NumPy's zip of `.npy` arrays, no pickle) holding
the weights, the optimizer's slots and a JSON metadata record (config, epoch, history, optimizer
step and learning rate, RNG and callback state, format and dlrun versions).

Why .npz and not safetensors: it needs nothing beyond NumPy, `np.load(allow_pickle=False)` refuses
object arrays (so loading can never run code), and the metadata travels as a uint8 JSON array.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlrun import __version__
from dlrun.errors import CheckpointError
from dlrun.runs.atomic import atomic_open

FORMAT = "dlrun-checkpoint"
FORMAT_VERSION = 1
_META = "__meta__"
_WEIGHTS = "weights/"
_OPTIMIZER = "optimizer/"


@dataclass
class Checkpoint:
    """What a checkpoint file holds, as host arrays and plain JSON-able metadata."""

    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))


def save(path: str | Path, ckpt: Checkpoint) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dlrun_version": __version__,
            **ckpt.meta, "config": ckpt.config}
    arrays = {_META: np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    arrays.update({_WEIGHTS + k: np.ascontiguousarray(v) for k, v in ckpt.weights.items()})
    arrays.update({_OPTIMIZER + k: np.ascontiguousarray(v) for k, v in ckpt.optimizer.items()})
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint; any problem is one CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}",
                              hint="pass a .npz file from a run's checkpoints/ folder")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if _META not in names:
                raise CheckpointError(f"{path} is not a dlrun checkpoint (no metadata record)")
            meta = json.loads(bytes(npz[_META]).decode("utf-8"))
            _check_meta(path, meta)
            weights = {n[len(_WEIGHTS):]: npz[n] for n in names if n.startswith(_WEIGHTS)}
            optimizer = {n[len(_OPTIMIZER):]: npz[n] for n in names if n.startswith(_OPTIMIZER)}
    except CheckpointError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(f"{path} contains pickled Python objects and was refused",
                                  hint="dlrun checkpoints never contain pickles; this file is not one of "
                                       "ours and may be hostile") from None
        raise CheckpointError(f"{path} is corrupt ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable dlrun checkpoint ({type(exc).__name__}: {exc})",
                              hint="the file is truncated or of another format") from None
    config = meta.pop("config")
    return Checkpoint(config, weights, optimizer, meta)


def _check_meta(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dlrun checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this dlrun "
                              f"({__version__}) reads up to version {FORMAT_VERSION}",
                              hint="upgrade dlrun to load it")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path} has no config record")
