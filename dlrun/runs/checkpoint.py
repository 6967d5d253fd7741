"""Self-contained checkpoints: one `.npz` file (NumPy's zip of `.npy` arrays, no pickle) holding
the weights, the optimizer's slots and a JSON metadata record (config, epoch, history, optimizer
step and learning rate, RNG and callback state, format and dlrun versions).

Why .npz and not safetensors: it needs nothing beyond NumPy, `np.load(allow_pickle=False)` refuses
object arrays (so loading can never run code), and the metadata travels as a uint8 JSON array.
Arrays inside the metadata (EarlyStopping's best weights) are stored as `state/<n>` entries and
referenced from the JSON as `{"__array__": "state/<n>"}`.

Layout (format version 1):
    __meta__            uint8 UTF-8 JSON: format, format_version, dlrun_version, config, epoch, ...
    weights/<layer>/<w> every weight, BatchNormalization moving statistics included
    optimizer/<slot>    the optimizer's flat slot buffers (moments, ...)
    state/<n>           arrays referenced from the metadata
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlrun import __version__
from dlrun.atomic import atomic_open
from dlrun.errors import CheckpointError
from dlrun.npzfile import NpzError, NpzReader, PickledArray

FORMAT = "dlrun-checkpoint"
FORMAT_VERSION = 1
_META = "__meta__"
_WEIGHTS = "weights/"
_OPTIMIZER = "optimizer/"
_STATE = "state/"
_ARRAY_REF = "__array__"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_HOSTILE_HINT = "dlrun checkpoints never contain pickles; this file is not one of ours and may be hostile"


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

    @property
    def resumable(self) -> bool:
        """True when the file holds the full training state (not a weights-only save)."""
        return not self.meta.get("weights_only") and "rng" in self.meta


def save(path: str | Path, ckpt: Checkpoint) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    arrays: dict[str, np.ndarray] = {}
    meta = _pack(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dlrun_version": __version__,
            **ckpt.meta,
            "config": ckpt.config,
        },
        arrays,
    )
    out = {_META: np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    out.update({_WEIGHTS + k: np.ascontiguousarray(v) for k, v in ckpt.weights.items()})
    out.update({_OPTIMIZER + k: np.ascontiguousarray(v) for k, v in ckpt.optimizer.items()})
    out.update(arrays)
    with atomic_open(path, "wb") as f:
        np.savez(f, **out)


def _pack(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Metadata -> JSON-able: NumPy arrays move to `arrays` and leave a reference behind."""
    if isinstance(value, np.ndarray):
        key = f"{_STATE}{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return {_ARRAY_REF: key}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _pack(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pack(v, arrays) for v in value]
    return value


def _unpack(value: Any, arrays: dict[str, np.ndarray], path: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY_REF}:
            try:
                return arrays[value[_ARRAY_REF]]
            except (KeyError, TypeError):
                raise CheckpointError(f"{path} is corrupt (a missing array {value[_ARRAY_REF]!r})") from None
        return {k: _unpack(v, arrays, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, arrays, path) for v in value]
    return value


def load(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint; any problem is one CheckpointError naming the file.

    No code can run and nothing huge is allocated: the file must be a zip archive (checked before
    anything else reads it), every entry's `.npy` header and size are checked before it is read
    (dlrun.npzfile), arrays are read with `allow_pickle=False`, entries of unknown names are refused
    rather than skipped, and the metadata's fields are type- and range-checked.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", hint="pass a .npz file from a run's checkpoints/ folder")
    _check_magic(path)
    try:
        with NpzReader(path) as npz:
            names = npz.names
            if _META not in names:
                raise CheckpointError(f"{path} is not a dlrun checkpoint (no metadata record)")
            unknown = [n for n in names if n != _META and not n.startswith((_WEIGHTS, _OPTIMIZER, _STATE))]
            if unknown:
                raise CheckpointError(
                    f"{path} is not a dlrun checkpoint (unexpected entries: {', '.join(unknown[:5])[:200]})"
                )
            raw_meta = npz.read(_META)
            if raw_meta.dtype != np.uint8 or raw_meta.ndim != 1:
                raise CheckpointError(f"{path} is not a dlrun checkpoint (bad metadata record)")
            meta = json.loads(raw_meta.tobytes().decode("utf-8"))
            _check_meta(path, meta)
            arrays = npz.read_all([n for n in names if n != _META])
    except CheckpointError:
        raise
    except PickledArray:
        raise CheckpointError(
            f"{path} contains pickled Python objects and was refused (nothing was loaded or run)",
            hint=_HOSTILE_HINT,
        ) from None
    except NpzError as exc:
        raise CheckpointError(exc.message, hint=exc.hint or "the file is truncated or damaged") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(
            f"{path} is not a readable dlrun checkpoint (its metadata: {type(exc).__name__}: {exc!s:.100})",
            hint="the file is truncated or of another format",
        ) from None
    weights = {n[len(_WEIGHTS) :]: a for n, a in arrays.items() if n.startswith(_WEIGHTS)}
    optimizer = {n[len(_OPTIMIZER) :]: a for n, a in arrays.items() if n.startswith(_OPTIMIZER)}
    state = {n: a for n, a in arrays.items() if n.startswith(_STATE)}
    for name, arr in (*weights.items(), *optimizer.items()):
        if arr.dtype.kind not in "fiub":
            raise CheckpointError(f"{path} is corrupt (array {name!r:.60} has dtype {arr.dtype})")
    meta = _unpack(meta, state, path)
    config = meta.pop("config")
    return Checkpoint(config, weights, optimizer, meta)


def _check_magic(path: Path) -> None:
    """Refuse anything that is not a zip archive before NumPy looks at it (NumPy would take a
    non-zip, non-.npy file for a pickle and only then refuse it, with a misleading message)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc})") from None
    if head[:4] in _ZIP_MAGIC:
        return
    if not head:
        raise CheckpointError(
            f"{path} is empty, not a dlrun checkpoint",
            hint="the file was truncated; use another checkpoint (e.g. last.npz or best.npz)",
        )
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a Python pickle, not a dlrun checkpoint; refused without loading it", hint=_HOSTILE_HINT
        )
    raise CheckpointError(
        f"{path} is not a dlrun checkpoint (not an .npz archive)",
        hint="pass a .npz file from a run's checkpoints/ folder",
    )


def _check_meta(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dlrun checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path} has an invalid checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, written by dlrun "
            f"{meta.get('dlrun_version', '?')}; this dlrun ({__version__}) reads up to "
            f"version {FORMAT_VERSION}",
            hint="upgrade dlrun to load it",
        )
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path} has no config record")
    for key, check, want in _FIELDS:
        if key in meta and not check(meta[key]):
            raise CheckpointError(
                f"{path} is corrupt: its metadata field {key!r} is {json.dumps(meta[key])[:60]}; it must be {want}",
                hint="the file was damaged or edited; use another checkpoint (e.g. last.npz or best.npz)",
            )


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: Any) -> bool:  # null: a non-finite value as RFC 8259 JSON writes it
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _dict_of(v: Any, **fields: Any) -> bool:
    return isinstance(v, dict) and all(k not in v or ok(v[k]) for k, ok in fields.items())


#: The metadata fields a resume reads: (key, check, what it must be). Absent ones take defaults.
_FIELDS: list[tuple[str, Any, str]] = [
    ("epoch", _count, "a whole number >= 0"),
    ("epochs", _count, "a whole number >= 0"),
    ("weights_only", lambda v: isinstance(v, bool), "true or false"),
    ("stop_training", lambda v: isinstance(v, bool), "true or false"),
    (
        "history",
        lambda v: isinstance(v, dict) and all(isinstance(s, list) and all(map(_number, s)) for s in v.values()),
        "a mapping of metric names to lists of numbers",
    ),
    (
        "optimizer",
        lambda v: _dict_of(v, iterations=_count, learning_rate=_number),
        "a mapping with iterations (a whole number >= 0) and learning_rate (a number)",
    ),
    (
        "rng",
        lambda v: _dict_of(v, noise=lambda s: isinstance(s, dict), shuffle=lambda s: isinstance(s, dict)),
        "a mapping of generator states",
    ),
    (
        "callbacks",
        lambda v: isinstance(v, list) and all(isinstance(c, dict) for c in v),
        "a list of callback states",
    ),
    (
        "partial_epoch",
        lambda v: (
            v is None
            or (
                isinstance(v, dict)
                and _count(v.get("batch"))
                and _count(v.get("seen"))
                and isinstance(v.get("sums"), list)
                and all(map(_number, v["sums"]))
                and isinstance(v.get("shuffle"), dict)
            )
        ),
        "a mapping with batch, seen (whole numbers >= 0), sums (numbers) and shuffle (a generator state)",
    ),
]
