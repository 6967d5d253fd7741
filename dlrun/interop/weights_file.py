"""`model.weights: PATH`: a model's initial weights from a dlrun checkpoint (.npz), a `.keras` file,
a Keras 3 `.weights.h5` (save_weights) or a legacy `.h5`.

dlrun checkpoints match by layer and weight name. Keras files match as Keras's own `load_weights`
does: Keras 3 files by weight group (`layers/<snake_case(class)>[_N]`, counted in layer order, so
the layer names need not agree), legacy `.h5` files in order over the layers that have weights.
Any difference (a layer missing or extra, a shape) is a ConfigError at the `weights:` line that
lists each one with the layer's name and both shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlrun.config.schema import Config, section_node
from dlrun.errors import CheckpointError, DlrunError
from dlrun.graph.model import Model
from dlrun.interop.keras_format import keras_groups
from dlrun.interop.keras_reader import WeightsMismatch, fit_weights, keras3_weights, legacy_weights, open_keras_file
from dlrun.runs import checkpoint as ckpt_mod


def weights_path(cfg: Config) -> Path | None:
    """The `model.weights` file: relative to the config file's folder (to the working directory
    when it came from `--set` or the config has no file); None when unset."""
    value = cfg.resolved["model"].get("weights")
    if not value:
        return None
    path = Path(value).expanduser()
    node = section_node(cfg, "model")
    from_set = node is not None and "weights" in getattr(node, "overridden", {})
    if not path.is_absolute() and cfg.file and not from_set:
        path = Path(cfg.file).resolve().parent / path
    return path.resolve()


def load_initial_weights(cfg: Config, model: Model) -> Path | None:
    """Set `model`'s weights from `model.weights` (when set); returns the file read.

    The resolved config then names the file by its absolute path (the run folder's config.yaml
    is read from elsewhere)."""
    path = weights_path(cfg)
    if path is None:
        return None
    node = section_node(cfg, "model")

    def error(message: str, hint: str | None = None) -> DlrunError:
        return cfg.error(message, node, "weights", "model.weights", hint=hint)

    if not path.is_file():
        raise error(
            f"the weights file {path} does not exist" if not path.exists() else f"{path} is not a regular file",
            hint="a dlrun checkpoint (.npz), a .keras file or a .weights.h5 file; relative paths are relative "
            "to the config file",
        )
    try:
        weights = _read(path, model)
    except WeightsMismatch as exc:
        shown = exc.problems[:20]
        more = f"\n  ... and {len(exc.problems) - 20} more" if len(exc.problems) > 20 else ""
        raise error(
            f"the weights in {path} do not fit the model:\n" + "\n".join(f"  - {p}" for p in shown) + more,
            hint="the file must hold weights for exactly this model's layers, with the same shapes",
        ) from None
    except DlrunError as exc:
        raise error(f"cannot read the weights file: {exc.message}", hint=exc.hint) from None
    model.set_weights(weights)
    cfg.resolved["model"]["weights"] = str(path)
    return path


def _read(path: Path, model: Model) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        head = f.read(4)
    if path.suffix == ".npz" or (head[:2] == b"PK" and path.suffix != ".keras"):
        try:
            return _checkpoint_weights(ckpt_mod.load(path).weights, model)
        except CheckpointError:
            if path.suffix == ".npz":
                raise
    with open_keras_file(path) as kf:
        if kf.kind in ("keras", "weights.h5"):
            return keras3_weights(kf, model, keras_groups(model))
        return legacy_weights(kf, model, by_name=False)


def _checkpoint_weights(weights: dict[str, np.ndarray], model: Model) -> dict[str, np.ndarray]:
    found: dict[str, Any] = dict(weights)
    expected = {f"{n.name}/{w.name}" for n in model.nodes for w in n.layer.weight_specs}
    extra = sorted({k.split("/")[0] for k in weights if k not in expected})
    problems = [f"the file has weights for layer {layer!r}, which the model lacks" for layer in extra]
    return fit_weights(model, found, {}, problems)


__all__ = ["load_initial_weights", "weights_path"]
