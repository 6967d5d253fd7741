"""Safe YAML loading that remembers where every key and item was, for errors that name the line.

Mappings load as `LocDict` and sequences as `LocList`: plain dict/list subclasses that also carry
the (line, column) of the node and of each key/item. Only YAML's safe tags are accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from dlrun.errors import ConfigError, short

Position = tuple[int, int]  # 1-based line, column


class Located:
    """Mixin: the node's own position and its children's positions."""

    pos: Position | None = None
    child_pos: dict[Any, Position]
    #: key -> the `--set` argument that replaced its value (errors then point there, not at a line).
    overridden: dict[Any, str]

    def pos_of(self, key: Any) -> Position | None:
        return self.child_pos.get(key, self.pos)


class LocDict(dict, Located):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.child_pos = {}
        self.overridden = {}


class LocList(list, Located):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.child_pos = {}
        self.overridden = {}


def _pos(node: yaml.Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences keep positions and refuse duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    loader.flatten_mapping(node)
    out = LocDict()
    out.pos = _pos(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise ConfigError(
                f"a mapping key must be a plain value, not {type(key).__name__}",
                line=_pos(key_node)[0],
                column=_pos(key_node)[1],
            )
        if key in out:
            raise ConfigError(
                f"the key {short(key)} appears twice in the same mapping",
                line=_pos(key_node)[0],
                column=_pos(key_node)[1],
                hint="delete one of them",
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.child_pos[key] = _pos(key_node)
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList()
    out.pos = _pos(node)
    for i, child in enumerate(node.value):
        out.append(loader.construct_object(child, deep=True))
        out.child_pos[i] = _pos(child)
    return out


# YAML 1.1 (PyYAML) reads `3e-4` as a string; users write learning rates that way, so accept the
# YAML 1.2 float forms too. The resolver table is copied first so SafeLoader itself is untouched.
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


#: Bounds on what a config may expand to. Aliases let a few hundred bytes describe billions of
#: nodes (`&a [*a, *a, ...]` nested nine deep), which every later walk of the tree would expand.
MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64


def _check_expansion(text: str, file: str) -> None:
    """Refuse YAML whose tree, with every alias expanded, is too large or too deep.

    One pass over the parser's events (no recursion, no tree built): each collection's expanded size
    is the sum of its children's, an alias counts as the size of what its anchor expanded to."""
    anchored: dict[str, int] = {}
    stack: list[list[Any]] = []  # [anchor, expanded size so far] per open collection
    total = 0

    def refuse(what: str, mark: Any) -> ConfigError:
        return ConfigError(
            what,
            file=file,
            line=mark.line + 1,
            column=mark.column + 1,
            hint="write the values out; dlrun configs need neither deep nesting nor alias trees",
        )

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise refuse(f"the YAML nests deeper than {MAX_DEPTH} levels", event.start_mark)
            stack.append([event.anchor, 1])
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, size = None, anchored.get(event.anchor, 1)
        else:
            continue
        if anchor is not None:
            anchored[anchor] = size
        if stack:
            stack[-1][1] += size
        else:
            total += size
        if (stack[-1][1] if stack else total) > MAX_NODES:
            raise refuse(
                f"the YAML expands to more than {MAX_NODES:,} values (through aliases: *name)", event.start_mark
            )


def load_yaml_text(text: str, file: str = "<string>") -> Any:
    """Parse YAML text safely; syntax errors become ConfigError with the line and column.

    Only SafeLoader's tags, at most MAX_BYTES of text, and a tree of at most MAX_NODES values
    (aliases expanded) and MAX_DEPTH levels."""
    if len(text) > MAX_BYTES:
        raise ConfigError(
            f"the YAML is {len(text):,} characters long; configs are limited to {MAX_BYTES:,}",
            file=file,
            hint="is this really a dlrun config?",
        )
    try:
        _check_expansion(text, file)
        return yaml.load(text, Loader=_Loader)  # _Loader derives from SafeLoader
    except ConfigError as exc:
        exc.file = exc.file or file
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise ConfigError(
            f"YAML syntax error: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            hint="check indentation, colons and matching brackets/quotes on this line or the one before",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None


def load_yaml_file(path: str | Path) -> Any:
    path = Path(path)
    try:
        if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO or device would block
            raise ConfigError(f"{path} is not a regular file", hint="pass a YAML config file")
        if path.is_file() and path.stat().st_size > MAX_BYTES:  # refused before it is read into memory
            raise ConfigError(
                f"{path} is {path.stat().st_size:,} bytes; configs are limited to {MAX_BYTES:,}",
                hint="is this really a dlrun config?",
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", hint="check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file", hint="is this really a YAML config?") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return load_yaml_text(text, str(path))


def to_plain(value: Any) -> Any:
    """LocDict/LocList trees back to plain dicts and lists, tuples as lists (for yaml.safe_dump)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def from_plain(value: Any) -> Any:
    """Plain dicts and lists (e.g. a config stored in a checkpoint) as position-less Loc* trees."""
    if isinstance(value, dict):
        out = LocDict()
        out.update({k: from_plain(v) for k, v in value.items()})
        return out
    if isinstance(value, list):
        return LocList([from_plain(v) for v in value])
    return value
