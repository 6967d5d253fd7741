"""What `dlrun compare` shows of two run folders' configs: a diff by key path, in YAML.

Lists of entries (layers, callbacks, augmentations) are aligned as sequences, so a layer inserted
into a model reads as one inserted layer, not as every later layer changed.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import yaml


def config_diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, value in a, value in b) where they differ, in the `--set` path syntax.

    A key one config lacks counts as None (so `bias_regularizer: null` against no such key is no
    difference). An entry only one list has is a row whose other side is None."""
    if isinstance(a, dict) and isinstance(b, dict):
        rows: list[tuple[str, Any, Any]] = []
        for key in [*a, *(k for k in b if k not in a)]:
            rows.extend(config_diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if _entry_list(a) and _entry_list(b):
        return _list_diff(a, b, prefix)
    return [] if a == b else [(prefix, a, b)]


def _entry_list(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)


def _list_diff(a: list[Any], b: list[Any], prefix: str) -> list[tuple[str, Any, Any]]:
    keys_a, keys_b = [json.dumps(v, sort_keys=True) for v in a], [json.dumps(v, sort_keys=True) for v in b]
    rows: list[tuple[str, Any, Any]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if op == "replace" and i2 - i1 == j2 - j1:  # edited in place: which keys changed
            for i, j in zip(range(i1, i2), range(j1, j2)):
                rows.extend(config_diff(a[i], b[j], f"{prefix}[{i}]"))
            continue
        rows.extend((f"{prefix}[{i}]", a[i], None) for i in range(i1, i2))
        rows.extend((f"{prefix}[{j}]", None, b[j]) for j in range(j1, j2))
    return rows


def yaml_text(value: Any) -> str:
    """A value as one line of YAML flow style (`{units: 64, activation: relu}`), `-` for absent."""
    if value is None:
        return "-"
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip().removesuffix("...").strip()
    )
