"""Paths a config names inside the run folder (CSVLogger's filename, ModelCheckpoint's filepath,
log folders to come): one check that keeps them inside the folder and off the run's own files.

A config may not write anywhere else: an absolute path, `~` or a `..` component would reach out of
the run folder, a hidden name is the lock's or a temporary's, and the files dlrun writes itself
(config.yaml, history.json, checkpoints/last.npz, ...) must not be overwritten by a callback.
"""

from __future__ import annotations

import re
import string
from pathlib import PurePosixPath
from typing import Any

from dlrun.errors import ArgumentError, short

#: What dlrun writes at the top of a run folder (runs/folder.py, runs/manifest.py, api/training.py).
RUN_FILES = ("config.yaml", "summary.txt", "history.json", "metrics.json", "manifest.json", "history.png")
#: The folder of the run's checkpoints: other files may go in it, these two are the run's own.
CHECKPOINTS = "checkpoints"
RUN_CHECKPOINTS = ("last.npz", "best.npz")

_MAX_PART_BYTES = 255  # a file name, as most file systems limit it
_MAX_LENGTH = 1024

#: A format spec without fill or alignment (which could put "/" or "." into a name) and without the
#: `c` type (a number as a character): `03d`, `.4f`, `+.2e`, `,`.
_PLAIN_SPEC = re.compile(r"[+\- ]?#?0?\d*[,_]?(\.\d+)?[bdeEfFgGnoxX%]?")


_INSIDE = "write a path relative to the run folder, where dlrun puts the file"


def _problem(name: str) -> tuple[str, str] | None:
    """(what is wrong, hint) for a path that may not be written inside the run folder, or None."""
    if not name.strip():
        return "must be a non-empty file name", _INSIDE
    if len(name) > _MAX_LENGTH:
        return f"must be at most {_MAX_LENGTH} characters long", _INSIDE
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "must not contain control characters", _INSIDE
    if "\\" in name:
        return "must separate folders with /, not \\", _INSIDE
    if name.startswith(("/", "~")) or re.match(r"[A-Za-z]:/", name):
        return "must be inside the run folder, not an absolute path", _INSIDE
    parts = PurePosixPath(name).parts  # "a/./b//c" -> ("a", "b", "c")
    if ".." in parts:
        return "must stay inside the run folder: `..` is not allowed", _INSIDE
    for part in parts:
        if part.startswith("."):
            return "must not name a hidden file or folder", "names starting with . are dlrun's (the lock, temporaries)"
        if len(part.encode("utf-8", "surrogatepass")) > _MAX_PART_BYTES:
            return f"has a file or folder name over {_MAX_PART_BYTES} bytes", "use a shorter name"
    folded = [p.casefold() for p in parts]  # case-insensitive file systems would clash too
    if folded == [CHECKPOINTS]:
        mine = "folder checkpoints"
    elif folded[0] in RUN_FILES:
        mine = f"file {parts[0]}"
    elif folded[0] == CHECKPOINTS and folded[1] in RUN_CHECKPOINTS:
        mine = f"file {parts[0]}/{parts[1]}"
    else:
        return None
    own = ", ".join([*RUN_FILES, *(f"{CHECKPOINTS}/{c}" for c in RUN_CHECKPOINTS)])
    return (
        f"would overwrite the run's own {mine}",
        f"choose another name; dlrun writes {own} and the folder {CHECKPOINTS}",
    )


def _refuse(what: str, name: Any, problem: str, hint: str) -> ArgumentError:
    return ArgumentError(f"{what} {problem}. Received: {what}={short(name)}", what, name, hint=hint)


def run_path(name: Any, what: str) -> str:
    """`name` as a path relative to the run folder (normalised, `/`-separated), or an ArgumentError
    naming the argument `what` when it would leave the folder, clash with the run's own files, or
    cannot be a file name."""
    if not isinstance(name, str):
        raise _refuse(what, name, "must be a file name", _INSIDE)
    problem = _problem(name)
    if problem is not None:
        raise _refuse(what, name, *problem)
    return str(PurePosixPath(name))


def run_path_pattern(pattern: Any, what: str) -> tuple[str, list[str]]:
    """A path with `{field}`s (ModelCheckpoint's `checkpoints/epoch{epoch:03d}.npz`): (the pattern,
    its field names). Fields are plain names with a plain format spec (no attribute or index
    access, no `!r` conversions, no fill characters, so a filled-in field is a number's text); the
    pattern with its fields filled in must be a `run_path`."""
    if not isinstance(pattern, str):
        raise _refuse(what, pattern, "must be a file name", "e.g. checkpoints/epoch{epoch:03d}.npz")
    hint = "fields are names with an optional format, e.g. {epoch:03d} or {val_loss:.4f}"
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise _refuse(what, pattern, f"is not a valid pattern ({exc})", hint) from None
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or conversion is not None or not _PLAIN_SPEC.fullmatch(spec or ""):
            text = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise _refuse(what, pattern, f"has the field {short(text)}, which is not a plain name and format", hint)
        fields.append(field)
    # Filled in as it will be (`{epoch:09999d}` is 9,999 characters), so its length is checked now.
    problem = _problem("".join(literal + ("" if f is None else _sample(spec)) for literal, f, spec, _ in parsed))
    if problem is not None:
        raise _refuse(what, pattern, *problem)
    return pattern, fields


def _sample(spec: str | None) -> str:
    """A field filled in with a typical value: an epoch for integer formats, a loss for the rest."""
    for value in (1, 0.5):
        try:
            return format(value, spec or "")
        except ValueError:
            continue
    return "1"


__all__ = ["CHECKPOINTS", "RUN_CHECKPOINTS", "RUN_FILES", "run_path", "run_path_pattern"]
