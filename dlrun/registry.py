"""Name -> class tables with Keras-style lookups and "did you mean" errors.

One generic piece serves layers, losses, optimizers, metrics, initializers, regularizers and
callbacks: an identifier is a name (`"adam"`) or a mapping with a `type` (`{type: adam, ...}`),
matched case-insensitively, ignoring underscores.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from dlrun.errors import ArgumentError, UnknownArgumentError, short

T = TypeVar("T")


def _key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The few choices nearest to `word`, for "did you mean" hints."""
    choices = list(choices)
    by_key = {_key(c): c for c in choices}
    hits = difflib.get_close_matches(_key(word), list(by_key), n=n, cutoff=0.6)
    return [by_key[h] for h in hits] or difflib.get_close_matches(word, choices, n=n, cutoff=0.5)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    hits = closest(word, choices)
    return f"did you mean {' or '.join(repr(h) for h in hits)}?" if hits else ""


class Registry(Generic[T]):
    """A table of named factories. `canonical` names are what resolved configs and errors show."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._by_key: dict[str, tuple[str, T]] = {}
        self._canonical: list[str] = []

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(obj, name, *aliases)
            return obj

        return deco

    def add(self, obj: T, name: str, *aliases: str) -> None:
        self._canonical.append(name)
        for alias in (name, *aliases):
            self._by_key[_key(alias)] = (name, obj)

    def names(self) -> list[str]:
        return list(self._canonical)

    def keys(self) -> list[str]:
        """Every accepted spelling, normalised (lower case, no underscores or dashes)."""
        return list(self._by_key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._by_key

    def lookup(self, name: str) -> tuple[str, T]:
        """(canonical name, object) or ValueError quoting the name and the nearest valid ones."""
        try:
            return self._by_key[_key(name)]
        except KeyError:
            hint = did_you_mean(name, self._canonical)
            raise ValueError(
                f"unknown {self.kind} {short(name)}. {hint or 'Valid: ' + ', '.join(self._canonical)}".rstrip()
            ) from None


def check_kwargs(func: Callable[..., Any], kwargs: dict[str, Any], what: str, ignore: Iterable[str] = ()) -> None:
    """Reject unknown and missing keyword arguments before calling: an UnknownArgumentError naming the
    first (a TypeError, as Python's own), with a hint."""
    params: dict[str, inspect.Parameter] = {}
    # A class whose __init__ forwards **kwargs accepts its bases' keywords too (Adam -> Optimizer).
    for init in [c.__init__ for c in func.__mro__ if "__init__" in vars(c)] if inspect.isclass(func) else [func]:
        sig = inspect.signature(init)
        for n, p in sig.parameters.items():
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(n, p)
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    for key in kwargs:
        if key not in params and key not in ignore:
            hint = did_you_mean(key, params)
            raise UnknownArgumentError(
                f"{what} has no argument {short(key)}. {hint or 'Valid: ' + ', '.join(params)}".rstrip(), key
            )
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise UnknownArgumentError(
            f"{what} is missing the required argument{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)}",
            missing[0],
        )


def split_spec(spec: Any, kind: str) -> tuple[str, dict[str, Any]]:
    """`"adam"` or `{type: adam, learning_rate: 0.1}` -> ("adam", {"learning_rate": 0.1})."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        if "type" not in spec:
            raise ValueError(
                f"a {kind} given as a mapping needs a 'type' key, e.g. {{type: ..., ...}}. Received: {short(spec)}"
            )
        args = {k: v for k, v in spec.items() if k != "type"}
        if not isinstance(spec["type"], str):
            raise ArgumentError(
                f"{kind} 'type' must be a name. Received: type={short(spec['type'])}", "type", spec["type"]
            )
        return spec["type"], args
    raise ValueError(f"a {kind} is a name or a mapping with 'type'. Received: {short(spec)}")


def build_from_spec(registry: Registry[Any], spec: Any) -> Any:
    """Look up and construct an object from a name or `{type: ..., **args}` spec."""
    name, args = split_spec(spec, registry.kind)
    _, factory = registry.lookup(name)
    check_kwargs(factory, args, f"{registry.kind} {name!r}")
    return factory(**args)
