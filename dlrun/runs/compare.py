"""What `dlrun compare` shows of two run folders' configs."""
from __future__ import annotations

from typing import Any

from dlrun.config.overrides import flatten


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) where they differ; a key one config lacks counts as None."""
    fa, fb = flatten(a), flatten(b)
    return [(key, fa.get(key), fb.get(key)) for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]
