"""Argument bounds as data. One `Bounds` gives both the check (an `ArgumentError` that names the
argument) and the JSON Schema constraint, for config keys and constructor arguments alike.

A class declares its arguments' bounds in a `bounds = declare(units=...)` table (merged along its bases),
checks them with `checked(self, "units", units)`, and api/schema.py reads the same table through `declared(cls)`:
a bound written once is enforced by dlrun and by editors validating against `dlrun schema`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from dlrun.errors import ArgumentError, short
from dlrun.registry import did_you_mean

NUMBER = (int, float)
_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
}
_NOUNS = {int: "integer", float: "number", str: "string", list: "list", tuple: "list", dict: "mapping"}


@dataclass(frozen=True)
class Bounds:
    """What a value must be. Empty `types` leave the type to the caller (config keys check it)."""

    types: tuple[type, ...] = ()
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    #: the bounds of every item of a list
    items: Bounds | None = None
    #: least length of a string or a list
    min_length: int | None = None
    #: greatest length of a string or a list
    max_length: int | None = None
    pattern: str | None = None
    #: also refuse infinities (NaN is never a valid number)
    finite: bool = False
    nullable: bool = False
    #: one value or a list of `repeat` of them (Keras's `kernel_size=3` or `[3, 3]`)
    repeat: int | None = None
    #: the description in messages, where the generated one would not say enough
    text: str | None = None

    # -- the check -----------------------------------------------------------------------------------
    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.repeat is not None:
            one = Bounds(**{**vars(self), "repeat": None, "nullable": False})
            items = [value] * self.repeat if not isinstance(value, (list, tuple)) else value
            return len(items) == self.repeat and all(one.accepts(v) for v in items)
        return self._type_ok(value) and self._within(value)

    def _type_ok(self, value: Any) -> bool:
        if not self.types:
            return True
        if isinstance(value, bool):
            return bool in self.types
        if float in self.types and isinstance(value, int):
            return True
        return isinstance(value, self.types)

    def _within(self, value: Any) -> bool:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(value) or (self.finite and not math.isfinite(value)):
                return False
            if self.minimum is not None and value < self.minimum:
                return False
            if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
                return False
            if self.maximum is not None and value > self.maximum:
                return False
            if self.exclusive_maximum is not None and value >= self.exclusive_maximum:
                return False
        if self.choices is not None and not (isinstance(value, (str, int, float)) and value in self.choices):
            return False
        if self.pattern is not None and not (isinstance(value, str) and re.fullmatch(self.pattern, value)):
            return False
        if self.min_length is not None and isinstance(value, (str, list, tuple)) and len(value) < self.min_length:
            return False
        if self.max_length is not None and isinstance(value, (str, list, tuple)) and len(value) > self.max_length:
            return False
        if self.items is not None and isinstance(value, (list, tuple)):
            return all(self.items.accepts(v) for v in value)
        return True

    # -- words ---------------------------------------------------------------------------------------
    def _range(self) -> tuple[str, str]:
        """(adjective, trailing phrase): ("positive", ""), ("", "in [0, 1)"), ("", ">= 2")."""
        lo, lo_open = (self.exclusive_minimum, True) if self.exclusive_minimum is not None else (self.minimum, False)
        hi, hi_open = (self.exclusive_maximum, True) if self.exclusive_maximum is not None else (self.maximum, False)
        if hi is None:
            if lo is None:
                return "", ""
            if (lo == 0 and lo_open) or (self.types == (int,) and lo == 1 and not lo_open):
                return "positive", ""
            if lo == 0:
                return "non-negative", ""
            return "", f"{'>' if lo_open else '>='} {lo}"
        if lo is None:
            return "", f"{'<' if hi_open else '<='} {hi}"
        return "", f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def _phrase(self, plural: bool = False) -> str:
        if self.text:
            return self.text
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        types = [t for t in self.types if not (t is int and float in self.types)]
        if types == [bool]:
            return "true or false"
        adjective, tail = self._range()
        if self.min_length == 1 and types in ([str], [list]):
            adjective = "non-empty"
        noun = " or ".join(_NOUNS.get(t, t.__name__) for t in types) or "value"
        if types == [list] and self.items is not None:
            noun = f"list of {self.items._phrase(plural=True)}"
        words = " ".join(w for w in (adjective, noun + ("s" if plural else ""), tail) if w)
        return words if plural else ("an " if words[0] in "aeiou" else "a ") + words

    def describe(self) -> str:
        """What the value must be, as a noun phrase: "a positive integer", "a number in [0, 1)"."""
        one = self._phrase()
        return f"{one} or a list of {self.repeat} of them" if self.repeat else one

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of the right type, config style ("must be positive"), or None."""
        if self.accepts(value):
            return None
        note = _non_finite(value)
        if note:
            return f"must be {self.text or self._phrase()}, {note}"
        if self.text:
            return f"must be {self.text}"
        if self.choices is not None:
            hint = did_you_mean(value, [str(c) for c in self.choices]) if isinstance(value, str) else ""
            return f"must be {self._phrase()}. {hint}".rstrip()
        adjective, tail = self._range()
        wording = {"non-negative": "zero or more"}.get(adjective, adjective or tail)
        return f"must be {wording or self.describe()}"

    # -- the JSON Schema constraint ------------------------------------------------------------------
    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.types:
            names = sorted({_JSON_TYPES[t] for t in self.types})
            if "number" in names and "integer" in names:
                names.remove("integer")
            out["type"] = names[0] if len(names) == 1 else names
        for key, word in (
            ("minimum", "minimum"),
            ("exclusive_minimum", "exclusiveMinimum"),
            ("maximum", "maximum"),
            ("exclusive_maximum", "exclusiveMaximum"),
            ("pattern", "pattern"),
        ):
            if getattr(self, key) is not None:
                out[word] = getattr(self, key) if key != "pattern" else f"^(?:{self.pattern})$"
        if self.choices is not None:
            out["enum"] = list(self.choices)
        if self.items is not None:
            out["items"] = self.items.json_schema()
        if self.min_length is not None:
            out["minLength" if self.types == (str,) or self.pattern else "minItems"] = self.min_length
        if self.max_length is not None:
            out["maxLength" if self.types == (str,) or self.pattern else "maxItems"] = self.max_length
        if self.repeat is not None:
            out = {"anyOf": [out, {"type": "array", "items": out, "minItems": self.repeat, "maxItems": self.repeat}]}
        if self.nullable:
            if "type" in out:
                out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
            if "enum" in out:
                out["enum"].append(None)
            if "anyOf" in out:
                out["anyOf"].append({"type": "null"})
        return out


def _non_finite(value: Any) -> str:
    """ "not NaN" / "not infinite" for such a number (whose message would otherwise read as if it were
    in range: `inf` is positive), else ""."""
    if isinstance(value, float) and not math.isfinite(value):
        return "not NaN" if math.isnan(value) else "not infinite"
    return ""


def check(name: str, value: Any, bounds: Bounds) -> Any:
    """`value` if within `bounds` (numbers as floats, repeated values as tuples), else an ArgumentError
    in Keras's words: "units must be a positive integer. Received: units=0"."""
    if not bounds.accepts(value):
        note = _non_finite(value)
        raise ArgumentError(
            f"{name} must be {bounds.describe()}{', ' + note if note else ''}. Received: {name}={short(value)}",
            name,
            value,
        )
    if value is None:
        return None
    if bounds.repeat is not None:
        return tuple(value) if isinstance(value, (list, tuple)) else (value,) * bounds.repeat
    if float in bounds.types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def declare(**bounds: Bounds) -> Mapping[str, Bounds]:
    """A class's table of argument bounds: `bounds = declare(units=POSITIVE_INT)` (read-only)."""
    return MappingProxyType(bounds)


@functools.cache
def declared(cls: type) -> dict[str, Bounds]:
    """The `bounds` tables of a class and its bases, the subclass's entries winning."""
    out: dict[str, Bounds] = {}
    for klass in reversed(cls.__mro__):
        out.update(vars(klass).get("bounds", {}))
    return out


def checked(owner: object, name: str, value: Any) -> Any:
    """Check a constructor argument against the bounds its class declares for it."""
    return check(name, value, declared(type(owner))[name])


def int_tuple(name: str, value: Any, n: int, allow_zero: bool = False) -> tuple[int, ...]:
    """An int or a length-n sequence of ints as a tuple (Keras's standardize_tuple)."""
    return check(name, value, Bounds((int,), minimum=0 if allow_zero else 1, repeat=n))


# The bounds most arguments share.
POSITIVE_INT = Bounds((int,), minimum=1)
NON_NEGATIVE_INT = Bounds((int,), minimum=0)
# Numbers are finite unless a bound says otherwise: no argument or key means anything by `.inf`
# (None says "no limit"), and an infinite rate, scale or threshold only makes a run of NaNs.
POSITIVE = Bounds(NUMBER, exclusive_minimum=0, finite=True)
NON_NEGATIVE = Bounds(NUMBER, minimum=0, finite=True)
FRACTION = Bounds(NUMBER, minimum=0, exclusive_maximum=1, finite=True)
ANY_NUMBER = Bounds(NUMBER, finite=True)
#: What an initializer's values and spreads may be: float32 weights drawn from them stay finite
#: (float32 ends at 3.4e38; a normal draw is within ~7 standard deviations of its mean).
WEIGHT_VALUE = Bounds(NUMBER, minimum=-1e30, maximum=1e30, finite=True)
WEIGHT_SPREAD = Bounds(NUMBER, minimum=0, maximum=1e30, finite=True)
BOOL = Bounds((bool,))
INT = Bounds((int,))
NON_EMPTY_STR = Bounds((str,), min_length=1)
PAIR_OR_INT = Bounds((int,), minimum=1, repeat=2)
NON_NEGATIVE_PAIR_OR_INT = Bounds((int,), minimum=0, repeat=2)


def choices(*options: Any, nullable: bool = False) -> Bounds:
    return Bounds(choices=options, nullable=nullable)


def nullable(bounds: Bounds) -> Bounds:
    return Bounds(**{**vars(bounds), "nullable": True})


__all__ = [
    "ANY_NUMBER",
    "BOOL",
    "FRACTION",
    "INT",
    "NON_EMPTY_STR",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "NUMBER",
    "POSITIVE",
    "POSITIVE_INT",
    "WEIGHT_SPREAD",
    "WEIGHT_VALUE",
    "Bounds",
    "check",
    "checked",
    "choices",
    "declare",
    "declared",
    "int_tuple",
    "nullable",
]
