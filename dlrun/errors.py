"""One exception family for everything a user can get wrong.

Library code raises these; only the CLI turns them into a message and an exit code.
"""

from __future__ import annotations

import reprlib
from itertools import islice
from typing import Any


class _ShortRepr(reprlib.Repr):
    """reprlib, also for subclasses of the builtin containers (the YAML loader's LocDict/LocList,
    which plain reprlib would expand in full with `repr()`), dicts in their own order, and huge ints."""

    _BASES = (str, bytes, int, float, bool, list, tuple, dict, set, frozenset)

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 5
        self.maxdict = 4
        self.maxstring = 40
        self.maxlong = 30
        self.maxother = 40

    def repr1(self, x: Any, level: int) -> str:
        for base in self._BASES:
            if isinstance(x, base) and type(x) is not base:
                return getattr(self, f"repr_{base.__name__}")(x, level)
        return super().repr1(x, level)

    def repr_dict(self, x: Any, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in islice(x.items(), self.maxdict)]
        if len(x) > self.maxdict:
            pieces.append("...")
        return "{" + ", ".join(pieces) + "}"

    def repr_int(self, x: Any, level: int) -> str:
        if x.bit_length() > 128:  # repr() of a 5,000-digit int raises ValueError (Python's int-to-str limit)
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)

    def repr_bool(self, x: Any, level: int) -> str:
        return repr(x)

    def repr_float(self, x: Any, level: int) -> str:
        return repr(float(x))


_SHORT = _ShortRepr()


def short(value: Any, limit: int = 60) -> str:
    """A repr of `value` of at most about `limit` characters, for quoting user input in messages.

    Built on reprlib, so a huge or deeply nested value (a 10,000-item list, an alias tree) is
    summarised without ever being expanded: the cost is bounded whatever the value's size."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # a broken __repr__ must not hide the message it appears in
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def clip(text: str, limit: int = 60) -> str:
    """Plain text (a name, a `--set` argument) cut to about `limit` characters, for messages."""
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


class DlrunError(Exception):
    """Base of all errors meant for the user: a message and, where known, how to fix it."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.file = file
        self.line = line
        self.column = column
        self.path = path

    def where(self) -> str:
        """`file:line:col` (as much of it as is known), for the start of the message."""
        parts = [self.file or ""]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(p for p in parts if p)

    def __str__(self) -> str:
        text = self.message
        if self.path:
            text = f"{self.path}: {text}"
        where = self.where()
        if where:
            text = f"{where}: {text}"
        if self.hint:
            text = f"{text}\n  hint: {self.hint}"
        return text


class ConfigError(DlrunError):
    """The config file is wrong: bad YAML, unknown key, bad value, impossible model."""

    exit_code = 2


class UsageError(DlrunError):
    """The command line itself is wrong: options that exclude each other, a missing argument."""

    exit_code = 2


class DataError(DlrunError):
    """A dataset cannot be found, fetched, verified or parsed."""


class CheckpointError(DlrunError):
    """A checkpoint or run folder cannot be read or written."""


class TrainingInterrupted(DlrunError):
    """Training stopped on a signal after saving a resumable checkpoint."""

    exit_code = 130


class ArgumentError(ValueError):
    """A constructor argument is wrong. A ValueError (so `except ValueError` keeps working) that
    names the argument, so callers point at its line without reading the message."""

    def __init__(self, message: str, name: str, value: object = None, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.value = value
        self.hint = hint


class UnknownArgumentError(ArgumentError, TypeError):
    """An argument the callee does not take, or a required one left out (a TypeError, as Python's own)."""
