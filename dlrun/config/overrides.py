"""`--set key.path=value` overrides, applied to the loaded YAML tree before validation.

Values are parsed as YAML (`3e-4`, `true`, `[1, 2]`). The schema then validates the result exactly
as it validates the file, so an unknown key is an error, never silently added; errors about an
overridden value point at the `--set` argument instead of a file line.
"""

from __future__ import annotations

import re
from typing import Any

from dlrun.config.loader import LocDict, LocList, from_plain, load_yaml_text
from dlrun.errors import ConfigError, clip, short

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(path: str) -> list[str | int]:
    """`model.layers[1].Dense.units` -> ["model", "layers", 1, "Dense", "units"]."""
    tokens: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(path):
        between = path[pos : m.start()]
        if between not in ("", "."):
            raise ValueError(f"cannot read the key path {short(path)} near {short(between)}")
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not tokens or path[pos:]:
        raise ValueError(f"cannot read the key path {short(path)}")
    return tokens


def apply_overrides(tree: Any, overrides: list[str]) -> Any:
    """Apply each `path=value` to the tree in place (returns the tree)."""
    for text in overrides:
        where = f"--set {clip(text)}"
        if "=" not in text:
            raise ConfigError(f"{where}: expected KEY=VALUE, e.g. training.epochs=20")
        key, raw_value = text.split("=", 1)
        try:
            path = parse_path(key.strip())
        except ValueError as exc:
            raise ConfigError(
                f"{where}: {exc}",
                hint="write keys with dots and list items with [i], e.g. model.layers[1].Dense.units=256",
            ) from None
        value = from_plain(load_yaml_text(raw_value, where)) if raw_value.strip() else None
        node = tree
        for i, step in enumerate(path[:-1]):
            step = path[i] = _index_of(node, step)
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    size = len(node) if isinstance(node, list) else 0
                    raise ConfigError(f"{where}: {_show(path[: i + 1])} does not exist (the list has {size} items)")
                child = node[step]
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"{where}: {_show(path[:i])} is not a mapping")
                child = node.get(step)
                if child is None:
                    child = LocDict()
                    node[step] = child
            if isinstance(child, str) and isinstance(path[i + 1], str):
                # A bare name takes arguments once expanded: a layer `- Flatten` -> {Flatten: {}},
                # `optimizer: adam` -> {type: adam}.
                child = LocDict({child: LocDict()}) if isinstance(node, LocList) else LocDict({"type": child})
                node[step] = child
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"{where}: {_show(path[: i + 1])} is {short(child)}, not a mapping or list")
            node = child
        last = path[-1] = _index_of(node, path[-1])
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError(f"{where}: {_show(path)} does not exist")
            node[last] = value
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {_show(path[:-1])} is not a mapping")
            node[last] = value
        node.overridden[last] = where
    return tree


def _index_of(node: Any, step: str | int) -> str | int:
    """`layers.1` means `layers[1]` where the node is a list: the form MLflow keeps in its param keys,
    which may not hold brackets, is a `--set` path too."""
    if isinstance(node, list) and isinstance(step, str) and step.isdigit():
        return int(step)
    return step


def _show(path: list[str | int]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"training.epochs": 5, "model.layers[1].Dense.units": 100, ...}."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(config, list) and config and any(isinstance(v, (dict, list)) for v in config):
        for i, v in enumerate(config):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = config
    return out
