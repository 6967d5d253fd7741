"""JSON that every reader accepts (RFC 8259): NaN and infinities, which a diverging run logs, are
written as `null`. Readers of history.json and metrics.json take `null` back as NaN."""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:  # a NumPy scalar
        return finite_or_none(value.item())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps, with NaN and infinities as null (`allow_nan=False` proves none slipped through)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def number(value: Any) -> float:
    """A logged value read back: `null` (a non-finite value when written) becomes NaN."""
    return math.nan if value is None else float(value)
