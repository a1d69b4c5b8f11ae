"""The model spec of a checkpoint, and its strict parser: a spec names a registered
architecture, never code to import.

A checkpoint's ``<name>.json`` is data read from disk, so :func:`parse_spec` accepts only an
architecture registered in :data:`~eisbench.models.core.MODELS`, with every field checked for type
and range, and raises ``ValueError`` naming the field otherwise. Your own model class comes only
from an explicit ``--model package.module:Class`` (CLI) or
``eisbench.load_model("package.module:Class", ...)`` (Python).

Two kinds of registered names:

- a plain name (``"mlp"``): a builder called as ``builder(in_shape=..., num_classes=...,
  **kwargs)``;
- a class registered under its module path (``"pkg.mod:Class"``, e.g. an experiment's own
  network): called as ``Class(**kwargs)``, the spec's kwargs being its full arguments.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from torch import nn

from eisbench.models.core import MODELS, Normalized, build

SPEC_VERSION = 1
MAX_SIDE = 65_536  # largest channel count, height or width of a spec's in_shape
MAX_INPUT = 2**27  # largest C*H*W
MAX_CLASSES = 100_000
MAX_INT_KWARG = 1_000_000  # largest integer keyword argument (widths, depths, ...)
BYO_HINT = ("a checkpoint spec only names a registered architecture; your own model class comes "
            "from an explicit --model package.module:Class (CLI) or "
            "eisbench.load_model('package.module:Class', weights=..., kwargs=...) (Python)")
_FIELDS = ("version", "arch", "in_shape", "num_classes", "kwargs", "mean", "std")
_SHAPE_FIELDS = ("in_shape", "num_classes")


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model: a registered architecture name (see module doc)."""

    arch: str
    in_shape: tuple[int, int, int]
    num_classes: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def build(self) -> nn.Module:
        """A freshly initialised model for this spec (weights are random); imports nothing."""
        if takes_full_kwargs(self.arch):
            net = MODELS.get(self.arch)(**self.kwargs)
        else:
            net = build(self.arch, in_shape=self.in_shape, num_classes=self.num_classes,
                        **self.kwargs)
        if self.mean is not None and self.std is not None:
            net = Normalized(net, mean=list(self.mean), std=list(self.std))
        return net


def takes_full_kwargs(arch: str) -> bool:
    """Whether ``arch`` is a class registered under its module path (called as
    ``Class(**kwargs)``) rather than a builder given ``in_shape`` and ``num_classes``."""
    return ":" in arch


def parse_spec(meta: object) -> ModelSpec:
    """The :class:`ModelSpec` of a checkpoint's decoded JSON ``meta``; ``ValueError`` naming the
    field for anything but a registered architecture with well-typed, in-range fields.

    Example:
        >>> parse_spec({"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}).in_shape
        (1, 8, 8)
        >>> parse_spec({"arch": "this:Zen", "in_shape": [1, 8, 8], "num_classes": 10})
        Traceback (most recent call last):
        ...
        ValueError: arch: 'this:Zen' is not a registered architecture ...
    """
    if not isinstance(meta, dict):
        raise ValueError(f"a model spec is a JSON object, got {type(meta).__name__}")
    unknown = sorted(_show(k) for k in meta if k not in _FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; a model spec has "
                         f"{', '.join(_FIELDS)}")
    for key in ("arch", "in_shape", "num_classes"):
        if key not in meta:
            raise ValueError(f"{key}: missing")
    if "version" in meta and (_int(meta["version"]) is None or meta["version"] != SPEC_VERSION):
        raise ValueError(f"version: expected {SPEC_VERSION}, got {_show(meta['version'])}")
    arch = _arch(meta["arch"])
    in_shape, num_classes = _in_shape(meta["in_shape"]), _num_classes(meta["num_classes"])
    mean, std = _stats(meta.get("mean"), "mean", in_shape), _stats(meta.get("std"), "std", in_shape)
    if (mean is None) != (std is None):
        raise ValueError("mean, std: give both or neither")
    if std is not None and min(std) <= 0:
        raise ValueError(f"std: every value must be > 0, got {list(std)}")
    kwargs = _kwargs(arch, meta.get("kwargs", {}))
    return ModelSpec(arch=arch, in_shape=in_shape, num_classes=num_classes, kwargs=kwargs,
                     mean=mean, std=std)


def _int(v: object) -> int | None:
    """``v`` if it is an int (not a bool), else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _number(v: object) -> bool:
    """Whether ``v`` is a finite number (an int, not a bool, of at most 1e300, or a float)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return abs(v) <= 1e300 if isinstance(v, int) else math.isfinite(v)


def _show(v: object) -> str:
    """``repr(v)`` cut to 200 characters (or its type, where it has no printable repr)."""
    try:
        return repr(v)[:200]
    except (ValueError, RecursionError):
        return f"<{type(v).__name__}>"


def _arch(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"arch: must be a string, got {type(v).__name__}")
    if v not in MODELS:
        raise ValueError(f"arch: {v[:200]!r} is not a registered architecture (registered: "
                         f"{', '.join(MODELS.names())}); {BYO_HINT}")
    return v


def _in_shape(v: object) -> tuple[int, int, int]:
    sides = [_int(s) for s in v] if isinstance(v, list | tuple) else []
    if len(sides) != 3 or any(s is None or not 1 <= s <= MAX_SIDE for s in sides):
        raise ValueError(f"in_shape: must be 3 ints (C, H, W) in [1, {MAX_SIDE}], got "
                         f"{_show(v)}")
    c, h, w = (int(s) for s in sides if s is not None)
    if c * h * w > MAX_INPUT:
        raise ValueError(f"in_shape: {c}x{h}x{w} exceeds {MAX_INPUT} values per image")
    return c, h, w


def _num_classes(v: object) -> int:
    n = _int(v)
    if n is None or not 2 <= n <= MAX_CLASSES:
        raise ValueError(f"num_classes: must be an int in [2, {MAX_CLASSES}], got {_show(v)}")
    return n


def _stats(v: object, name: str, in_shape: tuple[int, int, int]) -> tuple[float, ...] | None:
    """Per-channel ``mean`` / ``std``: None, or 1 or C finite numbers."""
    if v is None:
        return None
    ok = isinstance(v, list | tuple) and len(v) in (1, in_shape[0]) and all(
        _number(t) for t in v)
    if not ok:
        counts = " or ".join(map(str, sorted({1, in_shape[0]})))
        raise ValueError(f"{name}: must be null or a list of {counts} finite numbers (one per "
                         f"channel or one for all), got {_show(v)}")
    assert isinstance(v, list | tuple)
    return tuple(float(t) for t in v)


def _kwargs(arch: str, v: object) -> dict[str, Any]:
    """``v`` checked against the signature (names, required names, annotated types) of
    ``arch``'s builder or class."""
    if not isinstance(v, dict):
        raise ValueError(f"kwargs: must be a JSON object, got {type(v).__name__}")
    params, hints = _signature(arch)
    full = takes_full_kwargs(arch)
    for key, value in v.items():
        if key not in params or (not full and key in _SHAPE_FIELDS):
            allowed = [p for p in params if full or p not in _SHAPE_FIELDS]
            raise ValueError(f"kwargs: {_show(key)} is not an argument of {arch!r} "
                             f"(allowed: {', '.join(allowed) or 'none'})")
        if key == "in_shape":
            _in_shape(value)
        elif key == "num_classes":
            _num_classes(value)
        elif not _fits(value, hints.get(key, object)):
            hint = hints.get(key, "unannotated")
            raise ValueError(f"kwargs.{key}: {_show(value)} does not fit the argument's type "
                             f"{getattr(hint, '__name__', hint)} in {arch!r} (numbers finite, "
                             f"integers in [0, {MAX_INT_KWARG}])")
    missing = [p for p, required in params.items()
               if required and p not in v and (full or p not in _SHAPE_FIELDS)]
    if missing:
        raise ValueError(f"kwargs: {arch!r} needs {', '.join(missing)}")
    return dict(v)


def _signature(arch: str) -> tuple[dict[str, bool], dict[str, Any]]:
    """The keyword arguments of ``arch`` (name -> required) and their resolved annotations."""
    target: Callable[..., Any] = MODELS.get(arch)
    init = target.__init__ if isinstance(target, type) else target  # type: ignore[misc]
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = {name: p.default is inspect.Parameter.empty
              for name, p in inspect.signature(target).parameters.items() if p.kind in kinds}
    try:
        hints = typing.get_type_hints(init)
    except (NameError, TypeError):
        hints = {}
    return params, hints


def _fits(value: object, hint: Any) -> bool:
    """Whether the JSON value ``value`` fits the annotation ``hint`` (an unknown one: no)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return _fits(value, int | float | bool | str | None)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool or hint is str:
        return isinstance(value, hint)
    if hint is int:
        n = _int(value)
        return n is not None and 0 <= n <= MAX_INT_KWARG
    if hint is float:
        return _number(value)
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, a) for a in args)
    if origin in (tuple, list, Sequence) and isinstance(value, list | tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return len(value) <= MAX_INT_KWARG and all(_fits(t, args[0] if args else Any)
                                                   for t in value)
    if origin in (dict, Mapping) and isinstance(value, dict):
        kt, vt = args if args else (str, Any)
        return all(_fits(k, kt) and _fits(t, vt) for k, t in value.items())
    return False


__all__ = ["SPEC_VERSION", "ModelSpec", "parse_spec", "takes_full_kwargs"]
