"""Strict name -> object registries, whose entries may carry checked metadata.

Every model, attack, dataset, training method and experiment named in a config lives in a
:class:`Registry`. Registering a name twice raises; looking up an unknown name raises with the
closest registered names, so a typo in a config fails loudly and helpfully.

A registry may declare a metadata schema (key -> :class:`MetaKey`): each entry then states the
facts about itself where it is registered (``register(name, family="patch", steps=100)``),
and the registration checks them, so a misspelt or missing key fails at import rather than
where the fact is first read.

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp")
    ... def mlp() -> int:
    ...     return 1
    >>> MODELS.get("mlp")()
    1
    >>> TOOLS = Registry("tool", schema={"steps": MetaKey(int)})
    >>> _ = TOOLS.register("fast", steps=10)(mlp)
    >>> TOOLS.meta("fast")["steps"]
    10
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the closest matches."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of a :class:`MetaKey` that every entry must give."""


@dataclass(frozen=True)
class MetaKey:
    """One metadata key of a registry's schema: the type(s) its values must have, the values
    allowed (empty: any of that type), and its default (:data:`REQUIRED`: no default)."""

    type: type | tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple[Any, ...] = ()
    doc: str = ""

    def check(self, kind: str, name: str, key: str, value: Any) -> None:
        """Raise TypeError / ValueError unless ``value`` fits this key."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        is_bool = isinstance(value, bool) and bool not in types  # True is an int too
        if is_bool or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise TypeError(f"{kind} {name!r}: metadata {key!r} must be {want}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{kind} {name!r}: metadata {key!r} must be one of "
                             f"{', '.join(map(repr, self.choices))}; got {value!r}")


def _closest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.4)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


class Registry(Generic[T]):
    """A mapping from unique names to objects of one kind (``kind`` names it in errors), each
    with the metadata that ``schema`` (key -> :class:`MetaKey`) declares (none by default)."""

    def __init__(self, kind: str, *, schema: Mapping[str, MetaKey] | None = None) -> None:
        self.kind = kind
        self.schema: Mapping[str, MetaKey] = MappingProxyType(dict(schema or {}))
        self._items: dict[str, T] = {}
        self._meta: dict[str, Mapping[str, Any]] = {}

    def _checked(self, name: str, meta: Mapping[str, Any]) -> Mapping[str, Any]:
        """``meta`` with the schema's defaults filled in; raise for an unknown, missing or
        ill-typed key."""
        for key in meta:
            if key not in self.schema:
                known = ", ".join(sorted(self.schema)) or "none"
                raise TypeError(f"{self.kind} {name!r}: unknown metadata key {key!r}"
                                f"{_closest(key, self.schema)} (known: {known})")
        out = {}
        for key, spec in self.schema.items():
            if key not in meta and spec.default is REQUIRED:
                raise TypeError(f"{self.kind} {name!r} must declare the metadata {key!r}"
                                + (f" ({spec.doc})" if spec.doc else ""))
            value = meta.get(key, spec.default)
            spec.check(self.kind, name, key, value)
            out[key] = value
        return MappingProxyType(out)

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` with metadata ``meta``
        (checked against the schema now); a duplicate name raises."""
        checked = self._checked(name, meta)

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            self._meta[name] = checked
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name raises :class:`UnknownNameError`."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{_closest(name, self._items)} "
                f"(known: {', '.join(sorted(self._items))})"
            ) from None

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata of ``name`` (read-only, every schema key present); an unknown name
        raises :class:`UnknownNameError`."""
        self.get(name)
        return self._meta[name]

    def names(self, **where: Any) -> list[str]:
        """The registered names, sorted; with ``where``, only those whose metadata equals
        every given value (``TOOLS.names(family="patch")``)."""
        for key in where:
            if key not in self.schema:
                hint = _closest(key, self.schema)
                raise TypeError(f"{self.kind}s have no metadata {key!r}{hint}")
        return sorted(n for n, m in self._meta.items()
                      if all(m[k] == v for k, v in where.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
