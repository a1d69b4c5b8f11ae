"""The config a run starts from: a preset (``quick`` or ``full``) with the common options
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
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from eisbench.runs import overrides as text_overrides
from eisbench.runs.experiment import Experiment

PRESETS = ("quick", "full")


def configure(exp: Experiment, preset: str = "quick", *, dataset: str | None = None,
              data_root: str | None = None, seeds: int | Sequence[int] | None = None,
              device: str = "cpu", overrides: Sequence[str] = (), **fields: Any) -> Any:
    """``exp``'s ``preset`` config with the given changes, in this order: ``device``,
    ``dataset``, ``data_root`` and ``seeds`` (an int N means seeds 0..N-1), then ``fields``
    (Python values; a dict for a nested config changes some of its fields), then
    ``overrides`` (``"a.b=value"`` strings, as ``--set`` on the command line).

    A bad preset, fewer than one seed or an unknown field raises ValueError (unknown fields
    with the closest names).
    """
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {preset!r}{hint} (presets: {', '.join(PRESETS)})")
    changes: dict[str, Any] = {"device": device}
    if dataset:
        changes["dataset"] = dataset
    if data_root:
        changes["data_root"] = data_root
    if seeds is not None:
        changes["seeds"] = seed_list(seeds)
    cfg = replace_fields(exp.preset(preset), changes)
    cfg = replace_fields(cfg, fields)
    return text_overrides.apply(cfg, list(overrides))


def seed_list(seeds: int | Sequence[int]) -> tuple[int, ...]:
    """``seeds`` as a tuple: an int N gives (0, ..., N-1); a sequence is kept as given.

    Example:
        >>> seed_list(3), seed_list([4, 7])
        ((0, 1, 2), (4, 7))
    """
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 (the number of seeds 0..N-1), got {seeds}")
        return tuple(range(seeds))
    out = tuple(int(s) for s in seeds)
    if not out:
        raise ValueError("seeds must name at least one seed")
    return out


def replace_fields(cfg: Any, fields: Mapping[str, Any], *, prefix: str = "") -> Any:
    """The frozen dataclass ``cfg`` with ``fields`` replaced; a dict value for a field that is
    itself a dataclass replaces some of its fields; a list for a tuple field becomes a tuple.

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
        elif isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(old, tuple) and not isinstance(value, tuple | None):
            raise ValueError(f"config field {prefix + name!r} holds a tuple, got {value!r}: "
                             f"pass e.g. {name}=({value!r},)")
        changes[name] = value
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _unknown(cfg: Any, full: str) -> None:
    names = [f.name for f in dataclasses.fields(cfg)]
    close = difflib.get_close_matches(full.rpartition(".")[2], names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown config field {full!r} of {type(cfg).__name__}{hint} "
                     f"(fields: {', '.join(names)})")


__all__ = ["PRESETS", "configure", "replace_fields", "seed_list"]
