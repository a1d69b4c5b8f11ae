"""``--set key=value`` overrides of frozen experiment configs, checked against field types.

Nested dataclass fields use dots: ``--set robust_train.epochs=10 --set eval_attack.eps=0.1``.
A tuple takes comma-separated items (``--set seeds=0,1,2``; an empty value is the empty tuple,
which only fields that allow it accept); ``none`` sets an optional field to None. Every value
is converted from text and then checked (:func:`eisbench.runs.validation.check_field`): a
value that cannot be read, is empty, or is out of its field's range raises ``ValueError``
naming the ``--set`` item, the field and what it takes.

Example:
    >>> from eisbench.training import TrainConfig
    >>> apply(TrainConfig(), ["epochs=3", "alpha=none"]).epochs
    3
    >>> apply(TrainConfig(), ["epochs="])
    Traceback (most recent call last):
    ...
    ValueError: --set epochs=: empty value; expected a value of type int (an integer)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from eisbench.runs.validation import check_field

_SCALARS: dict[Any, str] = {int: "an integer", float: "a number", str: "a string",
                            bool: "true, false, 1 or 0"}


def _scalar(text: str, typ: Any, item: str) -> Any:
    """``text`` read as one value of the scalar type ``typ``."""
    want = f"a value of type {typ.__name__} ({_SCALARS[typ]})"
    if not text:
        raise ValueError(f"--set {item}: empty value; expected {want}")
    if typ is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {item}: expected {want}, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        return typ(text)
    except ValueError:  # also int() of more than 4300 digits
        raise ValueError(f"--set {item}: expected {want}, got {text!r}") from None


def _convert(text: str, typ: Any, item: str) -> Any:
    """``text`` read as a value of the type hint ``typ`` (a scalar, an optional scalar or a
    tuple of scalars); ``item`` is the ``--set`` item, for messages."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if text.lower() in ("none", "null") and len(rest) < len(args):
            return None
        if len(rest) == 1:
            return _convert(text, rest[0], item)
    elif typ in _SCALARS:
        return _scalar(text, typ, item)
    elif origin is tuple and all(a in _SCALARS or a is Ellipsis for a in args):
        pieces = [t.strip() for t in text.split(",")] if text else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_scalar(t, args[0], item) for t in pieces)
        if len(pieces) != len(args):
            raise ValueError(f"--set {item}: expected {len(args)} comma-separated values, got "
                             f"{len(pieces)}")
        return tuple(_scalar(t, a, item) for t, a in zip(pieces, args, strict=True))
    name = getattr(typ, "__name__", str(typ))
    raise ValueError(f"--set {item}: fields of type {name} cannot be set from the command line")


def apply(cfg: Any, assignments: list[str]) -> Any:
    """Return ``cfg`` with each ``"a.b=value"`` applied; unknown keys raise with suggestions,
    unreadable or out-of-range values with the field and its range (all ``ValueError``).

    Example:
        >>> from eisbench.experiments.ilyas import QUICK
        >>> cfg = apply(QUICK, ["n_construct=500", "robust_train.epochs=3", "seeds=0,4"])
        >>> cfg.n_construct, cfg.robust_train.epochs, cfg.seeds
        (500, 3, (0, 4))
        >>> apply(QUICK, ["n_test_robust=0"])
        Traceback (most recent call last):
        ...
        ValueError: n_test_robust must be an integer >= 1, got 0
    """
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = key.strip(), text.strip()
        cfg = _set(cfg, key.split("."), text, f"{key}={text}")
    return cfg


def _set(obj: Any, path: list[str], text: str, item: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name, full = path[0], item.partition("=")[0]
    if name not in fields:
        close = difflib.get_close_matches(name, list(fields), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown config field {full!r}{hint} (fields: {', '.join(fields)})")
    hints = typing.get_type_hints(type(obj))
    if len(path) == 1:
        value = check_field(type(obj), name, _convert(text, hints[name], item), path=full)
    else:
        child = getattr(obj, name)
        if not dataclasses.is_dataclass(child):
            raise ValueError(f"--set {full}: {name} has no sub-fields")
        value = _set(child, path[1:], text, item)
    try:
        return dataclasses.replace(obj, **{name: value})
    except ValueError as e:  # a config's own cross-field check
        raise ValueError(f"--set {item}: {e}") from None


DATA_LAYER_REMEDY = "pass root=DIR (--root DIR)"
"""How the data loaders say where to point them (``root=`` in Python, ``--root`` of
``eisbench data fetch``): inside a run the setting is a config field instead."""


def root_remedy(message: str, cfg: Any, *, prefix: str = "") -> str:
    """``message`` (a missing-data error) with the data loaders' remedy replaced by the
    settings that point ``cfg`` (a run's config) at the files: ``--data-root DIR`` for
    ``data_root``, ``--set <prefix><field>=DIR`` for every other ``*_root`` field (``prefix``:
    ``"overrides=wallace:"`` inside the evidence suite).

    Example:
        >>> @dataclasses.dataclass
        ... class Cfg:
        ...     data_root: str | None = None
        ...     foreign_root: str | None = None
        >>> for way in root_remedy("missing: pass root=DIR (--root DIR)", Cfg()).split(" or "):
        ...     print(way)
        missing: pass --data-root DIR (the dataset)
        --set foreign_root=DIR (the foreign images)
    """
    if DATA_LAYER_REMEDY not in message or not dataclasses.is_dataclass(cfg):
        return message
    ways = []
    for f in dataclasses.fields(cfg):
        if f.name == "data_root":
            ways.append("--data-root DIR (the dataset)")
        elif f.name.endswith("_root"):
            what = f.name.removesuffix("_root")
            ways.append(f"--set {prefix}{f.name}=DIR (the {what} images)")
    return message.replace(DATA_LAYER_REMEDY, "pass " + " or ".join(ways)) if ways else message

