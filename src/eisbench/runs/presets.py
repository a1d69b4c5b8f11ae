"""The config a run starts from: a preset (``quick``, ``full`` or one of the experiment's own,
such as ``cifar10``) with the common options
(dataset, data folder, seeds, device), Python keyword fields and ``"key=value"`` overrides.

The command line (``eisbench run``/``bench``) and the Python API (:func:`eisbench.run`) both
build their config here, so the same flags give the same config, field for field.

Example:
    >>> from eisbench.experiments import EXPERIMENTS
    >>> cfg = configure(EXPERIMENTS.get("goh-linear"), dataset="digits", seeds=2, eps=0.25,
    ...                 overrides=["classes=1,7"])
    >>> cfg.dataset, cfg.seeds, cfg.eps, cfg.classes
    ('digits', (0, 1), 0.25, (1, 7))
    >>> configure(EXPERIMENTS.get("goh-linear"), epss=0.25)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown config field 'epss' of GohLinearConfig; did you mean eps? (fields: ...)
    >>> configure(EXPERIMENTS.get("goh-linear"), eps=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: eps must be a finite number >= 0, got nan

Every value is checked as it is set, and the whole config once built
(:func:`eisbench.runs.validation.check_config`), so a bad one fails here, before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from eisbench.runs import overrides as text_overrides
from eisbench.runs.experiment import Experiment
from eisbench.runs.validation import check_config, check_field

PRESETS = ("quick", "full")
"""The presets every experiment has; some add their own (:attr:`Experiment.presets`)."""
MAX_SEED_COUNT = 10_000
"""The largest count ``seeds=N`` may give (seeds 0..N-1)."""


def configure(exp: Experiment, preset: str = "quick", *, dataset: str | None = None,
              data_root: str | None = None, seeds: int | Sequence[int] | None = None,
              device: str = "cpu", overrides: Sequence[str] = (), **fields: Any) -> Any:
    """``exp``'s ``preset`` config with the given changes, in this order: ``device``,
    ``dataset``, ``data_root`` and ``seeds`` (an int N means seeds 0..N-1), then ``fields``
    (Python values; a dict for a nested config changes some of its fields), then
    ``overrides`` (``"a.b=value"`` strings, as ``--set`` on the command line).

    A bad preset, fewer than one seed, an unknown field (with the closest names) or a value
    of the wrong type or out of its range (:mod:`eisbench.runs.validation`) raises ValueError.
    """
    names = exp.presets
    if preset not in names:
        close = difflib.get_close_matches(preset, names, n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {preset!r}{hint} (presets of {exp.name}: "
                         f"{', '.join(names)})")
    changes: dict[str, Any] = {"device": device}
    if dataset:
        changes["dataset"] = dataset
    if data_root:
        changes["data_root"] = data_root
    if seeds is not None:
        changes["seeds"] = seed_list(seeds)
    cfg = replace_fields(exp.preset(preset), changes)
    cfg = replace_fields(cfg, fields)
    cfg = text_overrides.apply(cfg, list(overrides))
    return check_config(cfg, name=exp.name)


def seed_list(seeds: int | Sequence[int]) -> tuple[int, ...]:
    """``seeds`` as a tuple: an int N gives (0, ..., N-1); a sequence of integers is kept as
    given (a bool, a float or a string is refused, never rounded).

    Example:
        >>> seed_list(3), seed_list([4, 7])
        ((0, 1, 2), (4, 7))
    """
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_SEED_COUNT:
            raise ValueError(f"seeds must be >= 1 and <= {MAX_SEED_COUNT} (a count N: seeds "
                             f"0..N-1) or a sequence of seeds, got {seeds}")
        return tuple(range(seeds))
    if not isinstance(seeds, Iterable) or isinstance(seeds, str | bytes):
        raise ValueError(f"seeds must be a count N (seeds 0..N-1) or a sequence of integers, "
                         f"got {seeds!r} ({type(seeds).__name__})")
    out = tuple(_seed(s) for s in seeds)
    if not out:
        raise ValueError("seeds must name at least one seed")
    return out


def _seed(s: Any) -> int:
    """``s`` as an int if it is an integer (a Python or numpy int, not a bool)."""
    try:
        if isinstance(s, bool):
            raise TypeError
        return operator.index(s)
    except TypeError:
        raise ValueError(f"seeds must be integers, got {s!r} ({type(s).__name__})") from None


def replace_fields(cfg: Any, fields: Mapping[str, Any], *, prefix: str = "") -> Any:
    """The frozen dataclass ``cfg`` with ``fields`` replaced; a dict value for a field that is
    itself a dataclass replaces some of its fields; a list for a tuple field becomes a tuple.
    Each new value is checked (:func:`~eisbench.runs.validation.check_field`): a ValueError
    names the field with its dotted path.

    Example:
        >>> from eisbench.training import TrainConfig
        >>> replace_fields(TrainConfig(), {"epochs": 3}).epochs
        3
    """
    known = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in known:
            _unknown(cfg, prefix + name)
        old = getattr(cfg, name)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(old):
            value = replace_fields(old, value, prefix=f"{prefix}{name}.")
        elif isinstance(old, tuple) and isinstance(value, list | tuple):
            value = _tuples(value)
        elif isinstance(old, tuple) and not isinstance(value, tuple | None):
            raise ValueError(f"config field {prefix + name!r} holds a tuple, got {value!r}: "
                             f"pass e.g. {name}=({value!r},)")
        changes[name] = check_field(type(cfg), name, value, path=prefix + name)
    if not changes:
        return cfg
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as e:  # a config's own cross-field check
        raise ValueError(f"{prefix.rstrip('.') or type(cfg).__name__}: {e}") from None


def _tuples(value: Any) -> Any:
    """``value`` with every list in it (nested too) turned into a tuple."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _unknown(cfg: Any, full: str) -> None:
    names = [f.name for f in dataclasses.fields(cfg)]
    close = difflib.get_close_matches(full.rpartition(".")[2], names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown config field {full!r} of {type(cfg).__name__}{hint} "
                     f"(fields: {', '.join(names)})")


__all__ = ["PRESETS", "configure", "replace_fields", "seed_list"]
