"""`dlrun import`: a Keras model file -> a self-contained dlrun checkpoint (and its YAML config)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dlrun.api.setup import prepare
from dlrun.atomic import write_text
from dlrun.config.schema import run_name
from dlrun.data.registry import DATASETS
from dlrun.errors import UsageError
from dlrun.interop.keras_reader import import_keras
from dlrun.registry import did_you_mean
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.runs.manifest import sha256

NORMALIZE = ("none", "auto", "scale", "standardize")


@dataclass
class ImportResult:
    checkpoint: Path
    config: Path | None
    kind: str
    keras_version: str | None
    functional: bool
    layers: int
    params: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def import_model(
    source: str | Path,
    out: str | Path,
    *,
    config_out: str | Path | None = None,
    dataset: str | None = None,
    data_path: str | None = None,
    normalize: str = "none",
) -> ImportResult:
    """Read a Keras `.keras` / `.h5` model and write a dlrun checkpoint (config and weights) to
    `out`, and with `config_out` the equivalent YAML config (its `model.weights` naming `out`).

    The data section is `dataset` (with `data_path`), normalised as `normalize` says: none by
    default, so that predict on the arrays Keras was given gives Keras's outputs. Without a dataset
    it is a synthetic placeholder. Everything is checked before anything is written.
    """
    source, out = Path(source), Path(out)
    if normalize not in NORMALIZE:
        raise UsageError(f"--normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r:.40}")
    if dataset is not None and dataset not in DATASETS.names():
        raise UsageError(
            f"unknown dataset {dataset!r:.60}. {did_you_mean(dataset, DATASETS.names())}".rstrip(),
            hint=f"datasets: {', '.join(DATASETS.names())}",
        )
    for target in (out, Path(config_out) if config_out else None):
        if target is not None and target.is_dir():
            raise UsageError(f"{target} is a folder; give a file name", hint=f"e.g. {target / 'model.npz'}")
    imported = import_keras(source)
    notes = list(imported.compiled.notes)
    data: dict[str, Any] = {"dataset": dataset, "normalize": normalize}
    if data_path is not None:
        data["path"] = data_path
    if dataset is None:
        data.update(_placeholder(imported))
        notes.append(f"no --dataset: the data section is a {data['dataset']} placeholder; pass --dataset for real data")
    config = {"name": run_name(source.stem), **imported.config(data)}
    setup = prepare(config, device="cpu")  # the checkpoint's config must be one dlrun reads back
    setup.model.set_weights(imported.model.get_weights())
    meta = {
        "weights_only": True,
        "epoch": 0,
        "imported_from": {
            "file": str(source.resolve()),
            "sha256": sha256(source),
            "format": imported.kind,
            "keras_version": imported.keras_version,
        },
    }
    yaml_text = None
    if config_out is not None:
        config_out = Path(config_out)
        weights_ref = os.path.relpath(out.resolve(), config_out.resolve().parent)
        plain = {**config, "model": {**config["model"], "weights": weights_ref}}
        yaml_text = (
            f"# Imported from {source.name} ({imported.kind}, Keras {imported.keras_version or '?'}) by dlrun import.\n"
            + yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
        )
    ckpt_mod.save(out, ckpt_mod.Checkpoint(setup.config.resolved, setup.model.get_weights(), meta=meta))
    if yaml_text is not None:
        try:
            write_text(config_out, yaml_text)
        except BaseException:
            out.unlink(missing_ok=True)  # both files or neither
            raise
    return ImportResult(
        out,
        Path(config_out) if config_out else None,
        imported.kind,
        imported.keras_version,
        imported.plan.functional,
        len(imported.plan.layers),
        setup.model.param_counts(),
        notes,
    )


def _placeholder(imported: Any) -> dict[str, Any]:
    """A generated dataset (the registry's first) shaped like the model where its keys allow."""
    name = next(n for n in DATASETS.names() if DATASETS.get(n).kind == "generated")
    keys = DATASETS.get(name).keys
    shape = next(iter(imported.plan.inputs.values()))
    regression = imported.compiled.loss in ("mean_squared_error", "mean_absolute_error")
    wanted = {
        "features": math.prod(shape),
        "task": "regression" if regression else "classification",
        "classes": max(2, imported.model.output_node.output_shape[-1]),
    }
    return {"dataset": name, **{k: v for k, v in wanted.items() if k in keys}}


__all__ = ["ImportResult", "import_model"]
