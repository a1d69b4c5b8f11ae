"""``--set key=value`` overrides of frozen experiment configs, checked against field types.

Nested dataclass fields use dots: ``--set robust_train.epochs=10 --set eval_attack.eps=0.1``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any


def _convert(text: str, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if typ in (int, float, str):
            return typ(text)
        if origin is tuple:
            return tuple(_convert(t.strip(), args[0], key) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--set {key}={text}: expected a value of type {typ}") from None
    raise ValueError(f"--set {key}: fields of type {typ} cannot be set from the command line")


def apply(cfg: Any, assignments: list[str]) -> Any:
    """Return ``cfg`` with each ``"a.b=value"`` applied; unknown keys raise with suggestions.

    Example:
        >>> apply(IlyasConfig(), ["n_construct=500", "robust_train.epochs=3"])
    """
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        cfg = _set(cfg, key.strip().split("."), text.strip(), key)
    return cfg


def _set(obj: Any, path: list[str], text: str, full: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        close = difflib.get_close_matches(name, list(fields), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown config field {full!r}{hint} (fields: {', '.join(fields)})")
    hints = typing.get_type_hints(type(obj))
    if len(path) == 1:
        return dataclasses.replace(obj, **{name: _convert(text, hints[name], full)})
    child = getattr(obj, name)
    if not dataclasses.is_dataclass(child):
        raise ValueError(f"--set {full}: {name} has no sub-fields")
    return dataclasses.replace(obj, **{name: _set(child, path[1:], text, full)})
