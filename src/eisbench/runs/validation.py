"""Every run's config checked before any work: types from the config's type hints, ranges from
one table of rules (:data:`RULES`), a ``ValueError`` naming the dotted field, the value and the
allowed range.

:func:`check_config` walks a frozen config dataclass (nested configs and tuples included):

- types: an ``int`` field takes an int (not a bool, not a float), a ``float`` field an int or a
  float (not a bool), never NaN or an infinity; a ``str`` field a non-empty string; ``None``
  only where the hint allows it; a tuple field a tuple whose items fit the item type;
- ranges: the first rule of :data:`RULES` whose pattern matches the field's own name (counts
  ``n_*``, ``*_steps``, ``*epochs``, ``*batch_size`` >= 1; budgets ``eps`` >= 0; learning rates
  > 0; fractions in [0, 1]; ``seeds`` a non-empty tuple of distinct ints in [0, 2**32 - 1];
  ...). A tuple's rule holds for each number in it; where 0 or None is a documented setting
  (no warm-up, no guard, a linear model, "all") it stays legal. A field may be declared
  unconstrained, with its reason.

:func:`check_field` checks one field as it is set (``--set``, Python keyword fields), so a bad
value is refused with its full name before a nested config's own checks see it.

Example:
    >>> from eisbench.training import TrainConfig
    >>> check_config(TrainConfig(), name="train") == TrainConfig()
    True
    >>> check_field(TrainConfig, "epochs", True, path="robust_train.epochs")
    Traceback (most recent call last):
    ...
    ValueError: robust_train.epochs must be an integer >= 1, got True (bool)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """The allowed range of a number (each number, for a tuple): ``lo``..``hi``, bounds
    included unless ``lo_open`` / ``hi_open``; for a tuple, ``nonempty`` and ``distinct``
    items. ``free``: the reason a field is declared unconstrained (then nothing is checked
    beyond its type)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    nonempty: bool = False
    distinct: bool = False
    free: str = ""


SEED_MAX = 2**32 - 1
COUNT = Rule(lo=1)
NONNEG = Rule(lo=0)
POSITIVE = Rule(lo=0, lo_open=True)
FRACTION = Rule(lo=0, hi=1)
GRID = Rule(lo=0, nonempty=True)  # a non-empty grid of budgets / weights, each >= 0

RULES: tuple[tuple[str, Rule], ...] = (
    # seeds: the unit of replication; numpy's and scikit-learn's seeds are in [0, 2**32 - 1]
    ("seeds", Rule(lo=0, hi=SEED_MAX, nonempty=True, distinct=True)),
    ("seed", Rule(lo=0, hi=SEED_MAX)),
    ("*seed_offset", Rule(lo=0, hi=SEED_MAX)),
    ("fourier_seeds", COUNT),
    # label indices and feature indices
    ("classes", Rule(lo=0, nonempty=True, distinct=True)),
    ("label_map", Rule(lo=0, nonempty=True)),  # dataset class -> model class
    ("n_show", Rule(lo=0)),  # feature indices (0-based) drawn in the report; () draws none
    ("suite_trojans", Rule(lo=0, distinct=True)),  # zoo indices; () scores none with the suite
    # training length and batches
    ("eps_warmup_epochs", NONNEG),  # 0: no warm-up
    ("warmup", NONNEG),  # steps of a learning-rate ramp; 0: none
    ("*epochs", COUNT),
    ("*batch_size", COUNT),
    # budgets (0: no perturbation, a legal corner: the clean point of a curve)
    ("train_eps", GRID),
    ("syn_eps", GRID),
    ("eps", GRID),  # a float budget >= 0; the audit's tuple of budgets: non-empty too
    ("*_eps", NONNEG),
    ("robust_eps_l2", NONNEG),
    ("eps_curve", NONNEG),  # () adds no extra point
    ("curve_linf", GRID),
    ("curve_l2", GRID),
    ("contamination", GRID),  # weight of the tail direction; 0 = none
    ("severities", NONNEG),  # per corruption: sigmas, contrast factors, fog weights
    # optimisation steps, step sizes, learning rates
    ("tool_steps", POSITIVE),  # a float factor on every tool's default steps
    ("*step_size", POSITIVE),
    ("steps", COUNT),
    ("*_steps", COUNT),
    ("*lr", POSITIVE),
    ("alpha", POSITIVE),
    ("weight_decay", NONNEG),
    ("grad_reg", NONNEG),
    ("probe_c", POSITIVE),  # inverse L2 strength
    ("probe_max_iter", COUNT),
    ("restarts", COUNT),
    # counts of images, models, features, samples
    ("n_*", COUNT),
    ("*_n_*", COUNT),
    ("*_n", COUNT),
    ("ensemble", COUNT),
    ("heldout", COUNT),
    ("judge_trials", COUNT),
    ("smoothgrad_samples", COUNT),
    ("ablation_k*", COUNT),
    ("c1_recover_k", COUNT),  # nearest training images offered beside a recovered template
    ("program_terms", Rule(lo=1, nonempty=True)),
    ("*_program_terms", Rule(lo=1, nonempty=True)),
    # architecture sizes
    ("width", COUNT),
    ("d_model", COUNT),
    ("d_mlp", COUNT),
    ("*_width", COUNT),
    ("depth", NONNEG),  # NTK: hidden layers, 0 = a linear model
    ("*_depth", COUNT),
    ("side", COUNT),
    ("chunk", COUNT),
    ("fourier_stride", COUNT),
    ("syn_d", COUNT),
    # fractions, probabilities, pixel levels, tolerances of decision rules
    ("defender_frac", Rule(lo=0, hi=1, lo_open=True)),
    ("*_frac", FRACTION),
    ("overfit_guard", FRACTION),  # 0 turns the guard off
    ("prune_max_drop", FRACTION),
    ("stroke_threshold", FRACTION),
    ("syn_p", FRACTION),
    ("low", FRACTION),
    ("high", FRACTION),
    ("noise", FRACTION),
    ("acc_tolerance", FRACTION),
    ("robust_margin", FRACTION),
    ("tolerance", FRACTION),
    ("l2_margin", NONNEG),  # relative
    ("scale_tolerance", NONNEG),  # relative
    # other scales
    ("scales", Rule(lo=0, lo_open=True, nonempty=True)),  # relu(c z) = c relu(z) needs c > 0
    ("syn_eta", POSITIVE),
    ("memory_gib", POSITIVE),
    ("rcond", NONNEG),
    ("fourier_norm", NONNEG),
    ("ensemble_weight", NONNEG),
    ("smoothgrad_sigma", NONNEG),
)
"""(pattern of a field's own name, rule): the first match holds. A new numeric field needs a
line here (a contract test parametrised over every preset says so); ``Rule(free="why")``
declares one unconstrained."""


def rule_for(field: str) -> Rule | None:
    """The first rule of :data:`RULES` whose pattern matches ``field`` (a name, no dots)."""
    for pattern, rule in RULES:
        if fnmatch.fnmatchcase(field, pattern):
            return rule
    return None


def _fail(path: str, want: str, value: Any, *, kind: bool = True) -> ValueError:
    """The error for ``value`` at ``path``; ``kind``: add the value's type."""
    got = f"{value!r} ({type(value).__name__})" if kind else repr(value)
    return ValueError(f"{path} must be {want}, got {got}")


def _num(x: float) -> str:
    """``x`` as a bound in a message: ``1``, ``0.5``, ``4294967295``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def describe(rule: Rule | None, item: Any = float) -> str:
    """What ``rule`` allows, in words, for numbers of type ``item`` (``"an integer >= 1"``)."""
    r = rule if rule is not None and not rule.free else Rule()
    noun = "an integer" if item is int else "a finite number"
    if r.lo is not None and r.hi is not None:
        span = (f"in {'(' if r.lo_open else '['}{_num(r.lo)}, {_num(r.hi)}"
                f"{')' if r.hi_open else ']'}")
    elif r.lo is not None:
        span = f"{'>' if r.lo_open else '>='} {_num(r.lo)}"
    elif r.hi is not None:
        span = f"{'<' if r.hi_open else '<='} {_num(r.hi)}"
    else:
        span = ""
    return " ".join(filter(None, (noun, span)))


def _tuple_want(typ: Any, rule: Rule | None) -> str:
    """``"a non-empty tuple of distinct integers >= 0"`` and the like."""
    args = [a for a in typing.get_args(typ) if a is not Ellipsis]
    kinds = {a for a in args if a in (int, float)}
    items = ""
    if len(kinds) == 1:
        one = describe(rule, kinds.pop())
        items = " of " + one.replace("an integer", "integers").replace("a finite number",
                                                                          "finite numbers")
        if rule is not None and rule.distinct:
            items = items.replace(" of ", " of distinct ", 1)
    size = "" if len(args) == 1 and typing.get_args(typ)[-1] is Ellipsis else f"{len(args)}-"
    empty = "non-empty " if rule is not None and rule.nonempty and not size else ""
    return f"a {empty}{size}tuple{items}"


def _check_number(path: str, value: Any, typ: type, rule: Rule | None) -> None:
    """An int (``typ`` int) or a finite real (``typ`` float; an int is fine), not a bool, within
    ``rule``'s range."""
    want = describe(rule, typ)
    ok_type = int if typ is int else int | float
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise _fail(path, want, value)
    r = rule if rule is not None and not rule.free else Rule()
    v: float = value  # an int is compared exactly
    if typ is float:
        try:
            v = float(value)
        except OverflowError:  # an int past float's range
            v = math.inf
        if not math.isfinite(v):
            raise _fail(path, want, value, kind=False)
    low = r.lo is not None and (v <= r.lo if r.lo_open else v < r.lo)
    high = r.hi is not None and (v >= r.hi if r.hi_open else v > r.hi)
    if low or high:
        raise _fail(path, want, value, kind=False)


def _check_tuple(path: str, value: Any, typ: Any, rule: Rule | None) -> None:
    args = typing.get_args(typ)
    want = _tuple_want(typ, rule)
    if not isinstance(value, tuple):
        raise _fail(path, want, value)
    fixed = not (len(args) == 2 and args[1] is Ellipsis)
    if (fixed and len(value) != len(args)) or (rule is not None and rule.nonempty and not value):
        raise _fail(path, want, value, kind=False)
    for i, item in enumerate(value):
        check_value(f"{path}[{i}]", item, args[i] if fixed else args[0], rule)
    if rule is not None and rule.distinct and len(set(value)) != len(value):
        raise _fail(path, want, value, kind=False)


def check_value(path: str, value: Any, typ: Any, rule: Rule | None) -> None:
    """Check ``value`` against the type hint ``typ`` and ``rule`` (see the module doc);
    ``path`` names it in the error."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:  # no such field in a config today: check nothing but None-ness
            return
        typ, origin = rest[0], typing.get_origin(rest[0])
    if isinstance(typ, type) and dataclasses.is_dataclass(typ):
        if not isinstance(value, typ):
            raise _fail(path, f"a {typ.__name__}", value)
        _walk(value, prefix=f"{path}.")
    elif typ is bool:
        if not isinstance(value, bool):
            raise _fail(path, "true or false", value)
    elif typ in (int, float):
        _check_number(path, value, typ, rule)
    elif typ is str:
        if not isinstance(value, str) or not value:
            raise _fail(path, "a non-empty string", value)
    elif origin is tuple:
        _check_tuple(path, value, typ, rule)


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    """The resolved type hints of the config class ``cls`` (cached)."""
    return typing.get_type_hints(cls)


def check_field(cls: type, field: str, value: Any, *, path: str | None = None) -> Any:
    """``value`` if it fits the field ``field`` of the config class ``cls`` (its type hint and
    its rule), else a ``ValueError`` naming ``path`` (default: ``field``)."""
    check_value(path or field, value, _hints(cls)[field], rule_for(field))
    return value


def _walk(cfg: Any, *, prefix: str = "") -> None:
    """Check every field of the config dataclass ``cfg`` (recursively); the first bad one
    raises its ``ValueError``."""
    for f in dataclasses.fields(cfg):
        check_field(type(cfg), f.name, getattr(cfg, f.name), path=prefix + f.name)


def check_config(cfg: Any, *, name: str = "") -> Any:
    """``cfg`` if every field (nested configs and tuples included) fits its type hint and its
    rule in :data:`RULES`, else a ``ValueError`` ``"<name>: <dotted field> must be <range>, got
    <value>"``.

    Example:
        >>> from eisbench.experiments import EXPERIMENTS
        >>> cfg = dataclasses.replace(EXPERIMENTS.get("ilyas").quick, n_construct=-5)
        >>> check_config(cfg, name="ilyas")
        Traceback (most recent call last):
        ...
        ValueError: ilyas: n_construct must be an integer >= 1, got -5
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ValueError(f"{name or 'config'}: expected a config dataclass, got "
                         f"{type(cfg).__name__}")
    try:
        _walk(cfg)
    except ValueError as e:
        raise ValueError(f"{name}: {e}" if name else str(e)) from None
    return cfg


def number_fields(cfg: Any, *, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, own name) of every field of ``cfg`` (recursively) whose type holds
    numbers: ints, floats, and tuples or optionals of them."""
    cls: Any = type(cfg)
    hints = _hints(cls)
    for f in dataclasses.fields(cfg):
        value, typ = getattr(cfg, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            yield from number_fields(value, prefix=f"{prefix}{f.name}.")
        elif _holds_numbers(typ):
            yield prefix + f.name, f.name


def _holds_numbers(typ: Any) -> bool:
    if typ in (int, float):
        return True
    return any(_holds_numbers(a) for a in typing.get_args(typ) if a is not Ellipsis)


__all__ = ["RULES", "Rule", "check_config", "check_field", "check_value", "number_fields",
           "rule_for"]
