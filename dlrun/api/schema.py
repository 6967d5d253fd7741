"""A JSON Schema (draft 2020-12) of the config language, generated from the same tables the
validator uses: the section schema with its keys' bounds, the registries of layers, losses,
optimizers, metrics, and the argument bounds those classes declare (dlrun.checks).

Names are matched as dlrun matches them (case-insensitive, underscores optional), so the schema
accepts `Adam` and `adam` alike; `examples` lists the canonical spellings for editor completion.
"""

from __future__ import annotations

import inspect
from typing import Any

import dlrun.graph.layers  # noqa: F401  (registers the catalogue)
from dlrun.checks import declared
from dlrun.config import schema as cs
from dlrun.data.augment import AUGMENTATIONS
from dlrun.engine.losses import LOSSES
from dlrun.engine.metrics import METRICS
from dlrun.engine.optimizers import OPTIMIZERS
from dlrun.graph.layer import LAYERS
from dlrun.registry import Registry
from dlrun.training.callbacks_builtin import CALLBACKS


def _name_pattern(registry: Registry[Any]) -> str:
    """A regex matching every name and alias the registry accepts."""

    def one(key: str) -> str:
        return "[_-]?".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in key)

    return "^(?:" + "|".join(one(k) for k in sorted(registry.keys())) + ")$"


def _json_type(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, (list, tuple)):
        return {"type": "array"}
    return {}


_ANNOTATED = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "str": {"type": "string"},
}


def _arguments(cls: type, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Object schema of a class's constructor keywords (following **kwargs to its bases)."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        sig = inspect.signature(klass.__init__)
        for name, p in sig.parameters.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in props:
                continue
            if p.default is p.empty:
                props[name] = _ANNOTATED.get(str(p.annotation), {})
                required.append(name)
            else:
                # `Any` arguments take several forms (an int or a pair, a name or a mapping): the
                # default's type alone would refuse what dlrun accepts and writes itself.
                loose = str(p.annotation) == "Any"
                props[name] = {} if loose else _json_type(p.default)
                if p.default is not None and (props[name] or loose):
                    props[name]["default"] = list(p.default) if isinstance(p.default, tuple) else p.default
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    # The bounds the class checks its arguments against are the schema's constraints too.
    for name, bounds in declared(cls).items():
        if name in props:
            props[name] = {**props[name], **bounds.json_schema()}
            if "anyOf" in props[name]:
                props[name].pop("type", None)
    props.update(extra or {})
    out: dict[str, Any] = {"type": ["object", "null"], "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _entries(registry: Registry[Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A list item `Name` or `{Name: {args}}` for every entry of a registry of classes."""
    variants = []
    for canonical in registry.names():
        _, cls = registry.lookup(canonical)
        one = "[_-]?".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in canonical.replace("_", ""))
        variants.append((f"^{one}$", _arguments(cls, extra)))
    return {
        "anyOf": [
            {"type": "string", "pattern": _name_pattern(registry), "examples": registry.names()},
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "patternProperties": dict(variants),
                "additionalProperties": False,
            },
        ]
    }


def _spec(registry: Registry[Any]) -> dict[str, Any]:
    """`name` or `{type: name, **args}` (losses, optimizers)."""
    return {
        "anyOf": [
            {"type": "string", "pattern": _name_pattern(registry), "examples": registry.names()},
            {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"type": "string", "pattern": _name_pattern(registry)}},
            },
        ]
    }


def _key(key: cs.Key) -> dict[str, Any]:
    types = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    names = sorted({types[t] for t in key.types})
    if "number" in names and "integer" in names:
        names.remove("integer")
    out: dict[str, Any] = {"description": key.doc}
    if key.nullable or key.default is None:
        names.append("null")
    out["type"] = names[0] if len(names) == 1 else names
    if key.default is not cs.REQUIRED and key.default is not None:
        out["default"] = key.default
    if key.bounds is not None:
        # The key's own types decide the JSON type ("integer" for seed); the bounds add the rest.
        out.update({k: v for k, v in key.bounds.json_schema().items() if k != "type"})
        if "enum" in out and "null" in names and None not in out["enum"]:
            out["enum"].append(None)
    return out


def _section(section: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required = []
    for name, spec in section.items():
        if isinstance(spec, dict):
            props[name] = _section(spec)
            if any(isinstance(v, cs.Key) and v.default is cs.REQUIRED for v in spec.values()):
                required.append(name)
        else:
            props[name] = _key(spec)
            if spec.default is cs.REQUIRED:
                required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def json_schema() -> dict[str, Any]:
    """The whole config language: sections, keys and every registered name with its arguments."""
    root = _section(cs.full_schema())
    props = root["properties"]
    graph_args = {
        "name": {"type": "string"},
        "inputs": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    }
    props["model"]["properties"]["layers"]["items"] = _entries(LAYERS, graph_args)
    props["model"]["properties"]["layers"]["minItems"] = 1
    props["model"]["properties"]["inputs"]["additionalProperties"] = {
        "type": "array",
        "items": {"type": "integer", "minimum": 1},
        "minItems": 1,
    }
    props["loss"].update(_spec(LOSSES))
    props["optimizer"].update(_spec(OPTIMIZERS))
    props["metrics"]["items"] = {"type": "string", "pattern": _name_pattern(METRICS), "examples": METRICS.names()}
    props["callbacks"]["items"] = _entries(CALLBACKS)
    props["data"]["properties"]["augmentation"]["items"] = _entries(AUGMENTATIONS)
    for key in ("loss", "optimizer"):
        props[key].pop("type", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://dlrun.dev/schema/config.json",
        "title": "dlrun config",
        **root,
    }
