"""Names and values as an experiment tracker accepts them: a record's config flattened to
dotted keys, and metric, param and tag names mapped onto MLflow's allowed characters.

MLflow (3.x) accepts names of at most 250 characters made of letters, digits, ``_ - . /``,
spaces and (not on Windows) ``:``, that stay the same under ``posixpath.normpath`` (no empty,
``.`` or ``..`` segment, no leading or trailing ``/``); a param value holds at most 6000
characters and a tag value 8000. eisbench's names use ``=`` and ``,`` (``robust_acc/eps=0.3``),
so :func:`unique_names` maps every other character to ``_`` deterministically, keeps names
distinct (a name that would collide gets ``_2``, ``_3``, ... in the order given) and returns
the mapping, which the tracker stores beside the run.

Example:
    >>> mlflow_name("ilyas/robust_acc/eps=0.3")
    'ilyas/robust_acc/eps_0.3'
    >>> unique_names(["a=1", "a_1", "b"])
    {'a=1': 'a_1', 'a_1': 'a_1_2', 'b': 'b'}
    >>> flatten({"train": {"epochs": 2, "lr": 0.002}, "eps": (0.1, 0.3), "root": None})
    {'train.epochs': '2', 'train.lr': '0.002', 'eps': '[0.1, 0.3]', 'root': 'None'}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_NAME = 250  # MLflow's MAX_ENTITY_KEY_LENGTH
MAX_PARAM_VALUE = 6000  # MLflow's MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MLflow's MAX_TAG_VAL_LENGTH
_BAD = re.compile(r"[^A-Za-z0-9_.\- /]")  # no ':' either: Windows servers refuse it


def mlflow_name(name: str, *, max_len: int = MAX_NAME) -> str:
    """``name`` with every character MLflow refuses replaced by ``_``, empty segments dropped,
    ``.``/``..`` segments replaced (``_``/``__``) and cut to ``max_len`` characters; never
    empty.

    Example:
        >>> mlflow_name("/a//b/../c (x,y)/")
        'a/b/__/c _x_y_'
    """
    segs = [s for s in _BAD.sub("_", name).split("/") if s]
    segs = ["_" * len(s) if s in (".", "..") else s for s in segs]
    out = "/".join(segs)[:max_len].rstrip("/")
    return out or "_"


def unique_names(names: Iterable[str], *, max_len: int = MAX_NAME) -> dict[str, str]:
    """Each of ``names`` (in order) -> its :func:`mlflow_name`, made unique: a name whose
    mapped form is taken gets the first free suffix ``_2``, ``_3``, ...; ``max_len`` caps the
    mapped names (suffix included)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        if name in out:
            continue
        base = mlflow_name(name, max_len=max_len)
        mapped, k = base, 1
        while mapped in taken:
            k += 1
            suffix = f"_{k}"
            mapped = base[:max_len - len(suffix)] + suffix
        out[name] = mapped
        taken.add(mapped)
    return out


def clip(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, ending in ``...`` when it was cut."""
    return value if len(value) <= limit else value[:limit - 3] + "..."


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config (a record's ``config``) as ``{dotted.key: text}``: mappings are
    descended into, lists and tuples written as JSON, scalars with ``str``; each value cut to
    MLflow's 6000 characters. An empty mapping is written as ``{}``."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, Mapping | list | tuple):
            out[name] = clip(json.dumps(value, default=str), MAX_PARAM_VALUE)
        else:
            out[name] = clip(str(value), MAX_PARAM_VALUE)
    return out


__all__ = ["MAX_NAME", "MAX_PARAM_VALUE", "MAX_TAG_VALUE", "clip", "flatten", "mlflow_name",
           "unique_names"]
