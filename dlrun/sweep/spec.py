"""The sweep file: which base config, which search method, which metric, which `--set` paths to vary.

Validated as configs are (the same loader, so every error names the sweep file's line and column);
what a path means is checked later against the base config itself (dlrun.api.sweep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrun.checks import NON_NEGATIVE_INT, POSITIVE_INT, Bounds, choices
from dlrun.config.loader import LocDict, load_yaml_file, to_plain
from dlrun.config.overrides import parse_path
from dlrun.config.schema import RUN_NAME, Config, Key
from dlrun.errors import ConfigError
from dlrun.registry import did_you_mean

REQUIRED = object()
METHODS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")
GOALS = ("minimize", "maximize")

SCHEMA: dict[str, Key] = {
    "name": Key((str,), None, RUN_NAME, "the sweep's name (its folder, its Optuna study); default: the file's stem"),
    "config": Key((str,), REQUIRED, None, "the base config, relative to this file"),
    "method": Key((str,), "tpe", choices(*METHODS), "grid | random | tpe (Optuna's samplers, seeded)"),
    "metric": Key((dict,), REQUIRED, None, "{name: val_loss, goal: minimize}: any value the run logs"),
    "trials": Key(
        (int,), None, POSITIVE_INT, "how many trials (grid: at most the grid's size; default 20, grid: its size)"
    ),
    "parallel": Key((int,), 1, POSITIVE_INT, "trials at once on this machine (processes)"),
    "pruner": Key((str,), "none", choices(*PRUNERS), "none | median | hyperband: stop weak trials after an epoch"),
    "seed": Key((int,), 0, NON_NEGATIVE_INT, "the sampler's seed"),
    "storage": Key(
        (str,),
        None,
        None,
        "Optuna storage URL; default: study.db (SQLite) in the sweep folder. "
        "A database URL (postgresql://...) shares one study between machines",
        nullable=True,
    ),
    "parameters": Key((dict,), REQUIRED, None, "dotted `--set` paths -> {values: [...]} or {min, max, log, step}"),
}
METRIC_KEYS = {
    "name": Key((str,), REQUIRED, Bounds((str,), min_length=1), "a value the run logs (val_loss, val_accuracy, ...)"),
    "goal": Key((str,), None, choices(*GOALS), "minimize | maximize; default: what the name says (loss: minimize)"),
}
PARAMETER_KEYS = {
    "values": Key((list,), None, Bounds((list,), min_length=1), "the choices (categorical)"),
    "min": Key((int, float), None, None, "the lower bound (ints when both bounds are ints)"),
    "max": Key((int, float), None, None, "the upper bound"),
    "log": Key((bool,), False, None, "sample on a log scale"),
    "step": Key((int, float), None, Bounds((int, float), exclusive_minimum=0), "a grid step between min and max"),
}


@dataclass
class Parameter:
    """One `--set` path and what it ranges over."""

    path: str
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        return self.values is None and all(isinstance(v, int) for v in (self.low, self.high))

    def plain(self) -> dict[str, Any]:
        if self.values is not None:
            return {"values": list(self.values)}
        out: dict[str, Any] = {"min": self.low, "max": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass
class SweepSpec:
    """A validated sweep file. `cfg` keeps the positions, for errors found later (paths, metric)."""

    name: str
    config: Path
    method: str
    metric: str
    goal: str | None
    trials: int
    parallel: int
    pruner: str
    seed: int
    storage: str | None
    parameters: list[Parameter]
    file: str | None = None
    cfg: Config | None = field(default=None, repr=False)

    def resolved(self, goal: str) -> dict[str, Any]:
        """sweep.yaml in the sweep folder: every default filled, the config as an absolute path."""
        return {
            "name": self.name,
            "config": str(self.config),
            "method": self.method,
            "metric": {"name": self.metric, "goal": goal},
            "trials": self.trials,
            "parallel": self.parallel,
            "pruner": self.pruner,
            "seed": self.seed,
            "storage": self.storage,
            "parameters": {p.path: p.plain() for p in self.parameters},
        }

    def error(self, message: str, *keys: Any, hint: str | None = None, path: str | None = None) -> ConfigError:
        """A ConfigError at the sweep file's node `keys` (e.g. "parameters", path, "values", 0)."""
        if self.cfg is None:
            return ConfigError(message, file=self.file, hint=hint, path=path)
        node: Any = self.cfg.raw
        for k in keys[:-1]:
            node = node[k]
        return self.cfg.error(message, node, keys[-1] if keys else None, path=path, hint=hint)

    def grid_size(self) -> int:
        return math.prod(len(p.values or []) for p in self.parameters)


def _check(cfg: Config, table: dict[str, Key], node: Any, where: str, parent: Any, key: Any) -> dict[str, Any]:
    """The keys of one mapping: no unknown ones (with the closest name), types, bounds, defaults."""
    if not isinstance(node, dict):
        raise cfg.error(
            f"must be a mapping ({', '.join(table)}), got {to_plain(node)!r}", parent, key, where or "<top level>"
        )
    for k in node:
        if k not in table:
            hint = did_you_mean(str(k), table) or f"valid keys here: {', '.join(table)}"
            raise cfg.error(f"unknown key {k!r}", node, k, f"{where}.{k}" if where else str(k), hint=hint)
    out: dict[str, Any] = {}
    for k, spec in table.items():
        path = f"{where}.{k}" if where else k
        if k not in node:
            if spec.default is REQUIRED:
                raise cfg.error(f"the key {path!r} is required ({spec.doc})", node, None, where or None)
            out[k] = spec.default
            continue
        value = node[k]
        if value is None:
            if spec.nullable or (spec.default is None and spec.default is not REQUIRED):
                out[k] = None
                continue
            raise cfg.error("needs a value", node, k, path)
        ok = isinstance(value, spec.types) and (bool in spec.types or not isinstance(value, bool))
        if not ok:
            names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
            names.update({list: "a list", dict: "a mapping"})
            what = " or ".join(dict.fromkeys(names[t] for t in spec.types))
            raise cfg.error(f"must be {what}, got {to_plain(value)!r}", node, k, path)
        problem = spec.bounds.problem(value) if spec.bounds is not None else None
        if problem:
            raise cfg.error(f"{problem}; got {to_plain(value)!r}", node, k, path)
        out[k] = value
    return out


def parse_sweep(tree: Any, file: str | Path | None) -> SweepSpec:
    """Validate a loaded sweep file; raises ConfigError at the offending line."""
    file_s = str(file) if file is not None else None
    if not isinstance(tree, LocDict):
        raise ConfigError(
            "a sweep file is a mapping (name, config, method, metric, trials, parameters, ...)",
            file=file_s,
            hint="see `dlrun schema --sweep` or the README's Sweeps section",
        )
    cfg = Config(tree, {}, file_s)
    top = _check(cfg, SCHEMA, tree, "", None, None)
    metric = _check(cfg, METRIC_KEYS, tree["metric"], "metric", tree, "metric")
    params_node = tree["parameters"]
    if not params_node:
        raise cfg.error("needs at least one parameter", tree, "parameters", "parameters")
    parameters = [_parameter(cfg, str(path), node, params_node) for path, node in params_node.items()]
    base = Path(top["config"]).expanduser()
    if not base.is_absolute():
        base = (Path(file_s).parent if file_s else Path.cwd()) / base
    name = top["name"] or (Path(file_s).stem if file_s else "sweep")
    if top["name"] is None and not Bounds(pattern=RUN_NAME.pattern).accepts(name):
        raise ConfigError(f"the file's stem {name!r} is not a folder name", file=file_s, hint="set name: in the file")
    spec = SweepSpec(
        name=name,
        config=base.resolve(),
        method=top["method"],
        metric=metric["name"],
        goal=metric["goal"],
        trials=top["trials"] or 0,
        parallel=top["parallel"],
        pruner=top["pruner"],
        seed=top["seed"],
        storage=top["storage"],
        parameters=parameters,
        file=file_s,
        cfg=cfg,
    )
    if spec.method == "grid":
        for p in parameters:
            if p.values is None:
                raise spec.error(
                    "grid search takes `values: [...]` for every parameter, not min/max",
                    "parameters",
                    p.path,
                    path=f"parameters.{p.path}",
                    hint="list the values to try, e.g. {values: [0.001, 0.01]}, or use method: random or tpe",
                )
        size = spec.grid_size()
        if top["trials"] is not None and top["trials"] > size:
            raise spec.error(
                f"a grid of {size} point{'s' if size != 1 else ''} cannot run {top['trials']} trials",
                "trials",
                path="trials",
                hint=f"trials: {size} (or leave trials out: a grid runs each point once)",
            )
        spec.trials = top["trials"] or size
    elif not spec.trials:
        spec.trials = 20
    if not Path(spec.config).is_file():
        raise spec.error(
            f"the base config {spec.config} does not exist",
            "config",
            path="config",
            hint="a path relative to this file",
        )
    return spec


def _parameter(cfg: Config, path: str, node: Any, parent: Any) -> Parameter:
    where = f"parameters.{path}"
    try:
        parse_path(path)
    except ValueError as exc:
        raise cfg.error(
            str(exc),
            parent,
            path,
            where,
            hint="dots between keys and [i] for list items, e.g. model.layers[1].Dense.units",
        ) from None
    keys = _check(cfg, PARAMETER_KEYS, node, where, parent, path)
    if keys["values"] is not None:
        extra = [k for k in ("min", "max", "log", "step") if k in node]
        if extra:
            raise cfg.error(f"takes values or min/max, not both (drop {extra[0]})", node, extra[0], where)
        for i, v in enumerate(keys["values"]):
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise cfg.error(
                    f"values must be numbers, strings or true/false, got {to_plain(v)!r}",
                    keys["values"],
                    i,
                    f"{where}.values[{i}]",
                )
        if len(set(map(repr, keys["values"]))) != len(keys["values"]):
            raise cfg.error("lists a value twice", node, "values", where)
        return Parameter(path, values=list(to_plain(keys["values"])))
    for k in ("min", "max"):
        if keys[k] is None:
            raise cfg.error(f"needs `values: [...]` or both min and max ({k} is missing)", parent, path, where)
        if not math.isfinite(keys[k]):
            raise cfg.error(f"{k} must be a finite number", node, k, where)
    low, high, log, step = keys["min"], keys["max"], keys["log"], keys["step"]
    if not low < high:
        raise cfg.error(f"min ({low}) must be below max ({high})", node, "max", where)
    if log and low <= 0:
        raise cfg.error(f"a log scale needs min > 0, got {low}", node, "min", where)
    if log and step is not None:
        raise cfg.error("takes log or step, not both (Optuna samples a log scale continuously)", node, "step", where)
    if step is not None and isinstance(low, int) and isinstance(high, int) and not isinstance(step, int):
        raise cfg.error(f"integer bounds take an integer step, got {step}", node, "step", where)
    if step is not None:
        # Optuna would silently shrink the range to the last whole step: [0.001, 0.01] by 0.1 is {0.001}.
        steps = (high - low) / step
        if steps < 1 or abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
            raise cfg.error(
                f"step {step} does not divide the range [{low}, {high}] into whole steps",
                node,
                "step",
                where,
                hint=f"pick a step such as {(high - low) / max(1, round(steps)) if steps >= 1 else (high - low) / 10:g}",
            )
    return Parameter(path, low=low, high=high, log=log, step=step)


def load_sweep(path: str | Path) -> SweepSpec:
    return parse_sweep(load_yaml_file(path), path)


def json_schema() -> dict[str, Any]:
    """The sweep file's JSON Schema (draft 2020-12), from the same key tables the validator reads."""

    def key(spec: Key) -> dict[str, Any]:
        types = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
        names = sorted({types[t] for t in spec.types})
        if "number" in names and "integer" in names:
            names.remove("integer")
        if spec.nullable or spec.default is None:
            names.append("null")
        out: dict[str, Any] = {"description": spec.doc, "type": names[0] if len(names) == 1 else names}
        if spec.default not in (REQUIRED, None):
            out["default"] = spec.default
        if spec.bounds is not None:
            out.update({k: v for k, v in spec.bounds.json_schema().items() if k != "type"})
        return out

    def section(table: dict[str, Key]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {k: key(v) for k, v in table.items()},
            "required": [k for k, v in table.items() if v.default is REQUIRED],
            "additionalProperties": False,
        }

    root = section(SCHEMA)
    root["properties"]["metric"] = {**root["properties"]["metric"], **section(METRIC_KEYS)}
    parameter = section(PARAMETER_KEYS)
    parameter["properties"]["values"]["items"] = {"type": ["number", "string", "boolean", "null"]}
    parameter["oneOf"] = [{"required": ["values"]}, {"required": ["min", "max"]}]
    root["properties"]["parameters"] = {
        **root["properties"]["parameters"],
        "minProperties": 1,
        "additionalProperties": parameter,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://dlrun.dev/schema/sweep.json",
        "title": "dlrun sweep file",
        **root,
    }
