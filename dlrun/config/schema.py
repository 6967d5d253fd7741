"""The config language: sections, their keys, types, ranges and defaults.

`parse_config` checks a loaded YAML tree against the schema and fills defaults, giving a `Config`
with the resolved values and the positions of the original keys. Parts owned by other modules
(layers, losses, optimizers, callbacks, datasets) are checked by those modules' registries, through
`Config.error`, so every error names the file, line and key path.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from dlrun.checks import FRACTION, NON_NEGATIVE, NUMBER, POSITIVE, POSITIVE_INT, Bounds, choices
from dlrun.config.loader import Located, LocDict, LocList, Position, load_yaml_file, to_plain
from dlrun.config.overrides import apply_overrides
from dlrun.errors import ConfigError, clip, short
from dlrun.registry import did_you_mean

REQUIRED = object()


@dataclass
class Key:
    """One config key: accepted types, default, and the bounds its value must keep, as data (the
    validator and the JSON Schema both read them). `check` is for structure bounds cannot say; it
    returns an error or None."""

    types: tuple[type, ...]
    default: Any = REQUIRED
    bounds: Bounds | None = None
    doc: str = ""
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None


def _type_name(types: tuple[type, ...]) -> str:
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return " or ".join(names.get(t, t.__name__) for t in types)


def _statistics(v: Any) -> str | None:
    mean, std = v.get("mean"), v.get("std")
    ok = (
        set(v) == {"mean", "std"}
        and isinstance(mean, list)
        and isinstance(std, list)
        and mean
        and len(mean) == len(std)
        and all(isinstance(m, (int, float)) for m in mean)
        and all(isinstance(s, (int, float)) and s > 0 for s in std)
    )
    return None if ok else "must be {mean: [..], std: [..]}: one number per channel, std > 0"


# The run folder is runs/<name>/: a name is one folder name that cannot reach outside it. One rule
# for `name:` and for the file stems that name runs without one (`run_name` makes a stem follow it):
# letters of any script and digits (str.isalnum, which is what `\w` matches besides `_`), `_ . + -`,
# starting with a letter or digit; at most 100 characters and 255 bytes (the file systems' limit).
RUN_NAME_LENGTH = 100
RUN_NAME = Bounds(
    (str,),
    pattern=r"[^\W_][\w.+-]*",
    max_length=RUN_NAME_LENGTH,
    text=f"a plain folder name of at most {RUN_NAME_LENGTH} characters: letters (of any script), digits, _ . + -, "
    "starting with a letter or digit, e.g. fashion_mnist_mlp",
)


def _fits_a_folder_name(name: str) -> str | None:
    size = len(name.encode("utf-8", "surrogatepass"))
    return None if size <= 255 else f"must fit a folder name: {size} bytes in UTF-8, at most 255"


def run_name(stem: str) -> str:
    """The run name for a config file without `name:`: its stem made into a RUN_NAME, other
    characters (spaces, parentheses, ...) replaced by `_` ("my config (1)" -> "my_config_1")."""
    name = re.sub(r"[^\w.+-]+$", "", stem)  # trailing ones dropped, not turned into a dangling `_`
    name = re.sub(r"[^\w.+-]+", "_", name)
    name = re.sub(r"^[\W_]+", "", name)[:RUN_NAME_LENGTH]
    while len(name.encode("utf-8", "surrogatepass")) > 255:
        name = name[:-1]
    return name or "run"


SHAPE = Bounds(items=POSITIVE_INT, min_length=1, text="a list of positive integers, e.g. [28, 28, 1]")
SPEC = (str, dict)

SCHEMA: dict[str, Any] = {
    "name": Key(
        (str,),
        None,
        RUN_NAME,
        nullable=True,
        doc="run name, the folder runs/<name>/: letters (any script), digits, _ . + -; "
        "default: the config file's stem, other characters replaced by _",
        check=_fits_a_folder_name,
    ),
    "seed": Key((int,), 42, NON_NEGATIVE, "seed for initialisation, dropout, shuffling and splits"),
    "device": Key((str,), "auto", choices("auto", "cpu", "gpu"), "auto | cpu | gpu (CuPy)"),
    "data": {
        "dataset": Key((str,), REQUIRED, None, "which dataset"),  # its choices: DatasetKeys.names()
        "validation_split": Key(NUMBER, 0.0, FRACTION, "fraction of the training set held out (seeded, shuffled)"),
        "stratify": Key((bool,), False, None, "keep the class proportions in the validation and test splits"),
        "test_split": Key(NUMBER, 0.0, FRACTION, "fraction held out as the test set (datasets without one)"),
        "limit": Key((int,), None, POSITIVE, "use only the first N training samples", nullable=True),
        "normalize": Key(
            (str,),
            "auto",
            choices("auto", "scale", "standardize", "none"),
            "scale (uint8 to [0, 1]) | standardize (training-split mean/std per channel) | none; "
            "auto: what the dataset suggests (scale for uint8 images, standardize for tables, none otherwise)",
        ),
        "statistics": Key(
            (dict,),
            None,
            None,
            "standardize: the training split's per-channel {mean, std}, "
            "written here by dlrun when training (reused by evaluate/predict)",
            nullable=True,
            check=_statistics,
        ),
        "class_names": Key(
            (list,),
            None,
            Bounds(items=Bounds((str,))),
            "the class names the training data had, written here by dlrun when training on a dataset "
            "whose files name them (csv, npz labels), so predict shows names",
            nullable=True,
        ),
        "augmentation": Key(
            (list,),
            [],
            None,  # checked by the data layer (DatasetKeys.check)
            "image augmentation of training batches, Keras names: "
            "[{RandomFlip: {mode: horizontal}}, {RandomCrop: {padding: 4}}, ...]",
        ),
        "prefetch": Key(
            (int,),
            None,
            NON_NEGATIVE,
            "batches prepared ahead in a background thread (0: none; null: 2 when augmenting or on a GPU, else 0)",
            nullable=True,
        ),
        # ... and each dataset's own keys (DatasetKeys.keys())
    },
    "model": {
        "input_shape": Key((list,), None, SHAPE, "input shape without the batch axis", nullable=True),
        "layers": Key((list,), REQUIRED, None, "the layer entries"),
        "inputs": Key((dict,), None, None, "graph models: named inputs and their shapes", nullable=True),
        "outputs": Key((str,), None, None, "graph models: the output layer's name", nullable=True),
        "weights": Key(
            (str,),
            None,
            None,
            "initial weights before training: a dlrun checkpoint (.npz), a .keras or a .weights.h5 file "
            "(relative to this config file)",
            nullable=True,
        ),
    },
    "loss": Key(SPEC, REQUIRED, None, "a Keras loss name or {type: ..., from_logits: ...}"),
    "optimizer": Key(SPEC, "rmsprop", None, "a Keras optimizer name or {type: ..., learning_rate: ...}"),
    "metrics": Key((list,), [], None, "metric names, e.g. [accuracy]"),
    "training": {
        "epochs": Key((int,), 1, POSITIVE, "number of epochs"),
        "batch_size": Key((int,), 32, POSITIVE, "mini-batch size"),
        "shuffle": Key((bool,), True, None, "shuffle the training set every epoch"),
        "warmup_epochs": Key(
            (int,), 0, NON_NEGATIVE, "ramp the learning rate up linearly over this many epochs (large global batches)"
        ),
    },
    "callbacks": Key((list,), [], None, "callback entries (EarlyStopping, ModelCheckpoint, ...)"),
}


@dataclass
class Config:
    """A validated config: `resolved` holds plain values with defaults; `raw` keeps positions."""

    raw: LocDict
    resolved: dict[str, Any]
    file: str | None = None
    _errors_at: dict[str, Position] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.resolved["name"]

    def position(self, node: Any, key: Any = None) -> Position | None:
        if isinstance(node, Located):
            return node.pos_of(key) if key is not None else node.pos
        return None

    def error(
        self, message: str, node: Any = None, key: Any = None, path: str | None = None, hint: str | None = None
    ) -> ConfigError:
        """A ConfigError pointing at `node[key]` (or the node) in the config file, or at its `--set`."""
        path = clip(path) if path else path  # a key path is made of the config's keys: as long as they are
        if isinstance(node, Located) and key in node.overridden:
            return ConfigError(message, file=node.overridden[key], path=path, hint=hint)
        pos = self.position(node, key)
        return ConfigError(
            message, file=self.file, line=pos[0] if pos else None, column=pos[1] if pos else None, path=path, hint=hint
        )


class DatasetKeys(Protocol):
    """What the data layer adds to the data section: config imports no data (dlrun.data.registry
    installs its table with `use_datasets` when it is imported)."""

    def names(self) -> list[str]:
        """The values data.dataset takes."""
        ...

    def keys(self) -> dict[str, Key]:
        """Every dataset's own keys, beyond the common ones above."""
        ...

    def check(self, cfg: Config, data: dict[str, Any], node: Any) -> None:
        """Check the resolved data section against its dataset (raising `cfg.error`s); drop the
        other datasets' keys from it."""
        ...


_datasets: DatasetKeys | None = None


def use_datasets(table: DatasetKeys) -> None:
    """Install the table every later parse asks (the last one installed wins)."""
    global _datasets
    _datasets = table


def _installed() -> DatasetKeys:
    if _datasets is None:
        raise RuntimeError("no dataset table installed: import dlrun.data before parsing configs")
    return _datasets


def full_schema() -> dict[str, Any]:
    """SCHEMA with the data section completed by the datasets: their names and their keys."""
    datasets = _installed()
    data = dict(SCHEMA["data"])
    data["dataset"] = replace(data["dataset"], bounds=choices(*datasets.names()))
    return {**SCHEMA, "data": {**data, **datasets.keys()}}


def _check_key(cfg: Config, spec: Key, value: Any, parent: Any, key: str, path: str) -> Any:
    if value is None:
        if spec.nullable or spec.default is None:
            return None
        raise cfg.error(f"needs a value ({_type_name(spec.types)})", parent, key, path)
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok and float in spec.types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise cfg.error(f"must be {_type_name(spec.types)}, got {short(value)}", parent, key, path)
    problem = spec.bounds.problem(value) if spec.bounds is not None else None
    if not problem and spec.check is not None:
        problem = spec.check(value)
    if problem:
        raise cfg.error(f"{problem}; got {short(value)}", parent, key, path)
    return value


def _check_section(
    cfg: Config, schema: dict[str, Any], node: Any, path: str, parent: Any = None, key: Any = None
) -> dict[str, Any]:
    if node is None:
        node = LocDict()
    if not isinstance(node, dict):
        raise cfg.error(
            f"must be a mapping of keys ({', '.join(schema)}), got {short(node)}",
            parent,
            key,
            path or "<top level>",
        )
    for key in node:
        if key not in schema:
            hint = did_you_mean(str(key), schema)
            where = f"{path}.{key}" if path else str(key)
            raise cfg.error(
                f"unknown key {short(key)}", node, key, where, hint=hint or f"valid keys here: {', '.join(schema)}"
            )
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        where = f"{path}.{key}" if path else key
        if isinstance(spec, dict):
            out[key] = _check_section(cfg, spec, node.get(key), where, node, key)
            continue
        if key not in node:
            if spec.default is REQUIRED:
                raise cfg.error(f"the key {where!r} is required ({spec.doc})", node, None, path or None)
            out[key] = copy.deepcopy(spec.default)
            continue
        out[key] = to_plain(_check_key(cfg, spec, node[key], node, key, where))
    return out


def parse_config(tree: Any, file: str | None = None) -> Config:
    """Validate a loaded YAML tree and fill defaults; raises ConfigError pointing at the mistake."""
    if not isinstance(tree, LocDict):
        if tree is None:
            raise ConfigError("the config file is empty", file=file, hint="start from one of the files in configs/")
        kind = "a list" if isinstance(tree, list) else f"a {type(tree).__name__}"
        raise ConfigError(
            f"the config must be a mapping of sections (name:, data:, model:, ...), got {kind}", file=file
        )
    cfg = Config(tree, {}, file)
    resolved = _check_section(cfg, full_schema(), tree, "")
    if resolved["name"] is None:
        resolved["name"] = run_name(Path(file).stem) if file else "run"
    _installed().check(cfg, resolved["data"], tree.get("data") or {})
    cfg.resolved = resolved
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, apply `--set` overrides, validate."""
    tree = load_yaml_file(path)
    if overrides:
        tree = apply_overrides(tree if tree is not None else LocDict(), overrides)
    return parse_config(tree, str(path))


def section_node(cfg: Config, *keys: Any) -> Any:
    """The raw (positioned) node at `keys`, or None when absent."""
    node: Any = cfg.raw
    for k in keys:
        if (isinstance(node, dict) and k in node) or (isinstance(node, list) and isinstance(k, int) and k < len(node)):
            node = node[k]
        else:
            return None
    return node


__all__ = [
    "SCHEMA",
    "Config",
    "DatasetKeys",
    "Key",
    "LocList",
    "full_schema",
    "load_config",
    "parse_config",
    "run_name",
    "section_node",
    "use_datasets",
]
