"""The attack registry, the hyper-parameters each attack declares, and the input checks shared
by all attacks.

A registered attack is ``attack(model, x, y, *, eps, norm, generator, **hyper) -> x_adv`` (and
``targeted`` where it has a targeted mode). Where it is registered, an attack declares
(:data:`ATTACK_SCHEMA`) its hyper-parameters (every other keyword-only argument, each a
:class:`Hyper` with the argument's default), the norms it supports, whether it uses the model's
gradients and the fewest classes it needs. The command line builds its flags from these
declarations, and a contract test holds them to the function's signature.

Example:
    >>> ATTACKS.meta("pgd")["params"]["steps"].default
    40
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from eisbench.attacks.projection import NORMS, check_norm
from eisbench.core.registry import MetaKey, Registry
from eisbench.core.tensors import check_images
from eisbench.core.validate import finite, integer

CALL_ARGS = ("eps", "norm", "targeted", "generator")
"""Keyword arguments that are the caller's, not hyper-parameters: the threat model, what the
labels mean and the randomness."""


@dataclass(frozen=True)
class Hyper:
    """A hyper-parameter an attack declares: its default (the function's), the type the
    command line parses it as, a line of help, the values allowed (``choices``, empty: any)
    and, for a number, its range ``lo``..``hi`` (``lo`` excluded if ``lo_open``), which
    :func:`check_inputs` enforces."""

    default: Any
    type: type
    help: str
    choices: tuple[Any, ...] = ()
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False


RESTARTS = Hyper(1, int, "runs in all; each further run starts at random and attacks only the "
                 "examples not yet fooled", lo=1)
STEPS = Hyper(100, int, "iterations per run", lo=1)

ATTACK_SCHEMA = {
    "params": MetaKey(Mapping, doc="hyper-parameter name -> Hyper, for every keyword-only "
                      f"argument but {', '.join(CALL_ARGS)}"),
    "norms": MetaKey(tuple, doc=f"the norms the attack supports, of {NORMS}"),
    "white_box": MetaKey(bool, doc="whether the attack uses the model's gradients"),
    "min_classes": MetaKey(int, default=2, doc="the fewest classes the attack works with"),
}

ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("attack", schema=ATTACK_SCHEMA)


def declared_hypers() -> dict[str, tuple[Hyper, dict[str, Any]]]:
    """Every hyper-parameter some attack declares, by name (sorted): (its first declaration,
    {attack: its default there})."""
    out: dict[str, tuple[Hyper, dict[str, Any]]] = {}
    for name in ATTACKS.names():
        for key, h in ATTACKS.meta(name)["params"].items():
            first, defaults = out.setdefault(key, (h, {}))
            if h.type is not first.type:
                raise TypeError(f"attack {name!r} declares {key!r} as {h.type.__name__}, "
                                f"another attack as {first.type.__name__}")
            defaults[name] = h.default
    return dict(sorted(out.items()))


def check_inputs(x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
                 attack: str | None = None, **hypers: Any) -> None:
    """Raise ValueError with a fix for malformed attack inputs: images, labels, norm, a finite
    ``eps`` >= 0, and each of ``hypers`` against what registered ``attack`` declares for it
    (type, choices, range; None stays legal where the default is None)."""
    finite("eps", eps, lo=0.0)
    for key, value in hypers.items():
        _check_hyper(key, value, ATTACKS.meta(attack)["params"][key] if attack else None)
    check_images(x)
    check_norm(norm)
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"expected labels of shape ({len(x)},), got {tuple(y.shape)}")
    if y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"expected integer class labels, got dtype {y.dtype}")


def _check_hyper(key: str, value: Any, h: Hyper | None) -> None:
    if h is None or (value is None and h.default is None):
        return
    if h.choices and value not in h.choices:
        raise ValueError(f"{key} must be one of {', '.join(map(str, h.choices))}, got {value!r}")
    if h.type is int:
        integer(key, value, lo=None if h.lo is None else int(h.lo + h.lo_open),
                hi=None if h.hi is None else int(h.hi))
    elif h.type is float:
        finite(key, value, lo=h.lo, hi=h.hi, lo_open=h.lo_open)
    elif h.type is bool and not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
