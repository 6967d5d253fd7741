"""One exception family for everything a user can get wrong.

Library code raises these; only the CLI turns them into a message and an exit code.
"""

from __future__ import annotations


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

    def __init__(self, message: str, name: str, value: object = None) -> None:
        super().__init__(message)
        self.name = name
        self.value = value


class UnknownArgumentError(ArgumentError, TypeError):
    """An argument the callee does not take, or a required one left out (a TypeError, as Python's own)."""
