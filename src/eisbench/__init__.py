"""eisbench: an engineer's workbench for interpretability and adversarial robustness.

``import eisbench`` is cheap: each verb below is imported on first use.

- data and models: :func:`load_data` (a dataset as tensors in [0,1]), :func:`load_model` (an
  eisbench checkpoint or your own ``package.module:Class``), :func:`train` with
  :class:`TrainConfig`, :func:`predict`, :func:`accuracy`;
- attacks: :func:`pgd`, :func:`apgd`, :func:`fmn`, :func:`square` and the registry
  :data:`ATTACKS`; :func:`evaluate_robustness` (an attack suite with its sanity checks);
- tools: :data:`TOOLS`, :func:`tool`, :func:`scan` (a trojan scan of every class);
- runs: :func:`run` (an experiment of :data:`EXPERIMENTS` or a benchmark of
  :data:`BENCHMARKS`), :func:`audit` (one report on a model).

Example (the 8x8 digits, a linear model, a few steps of everything):
    >>> import torch, eisbench
    >>> d = eisbench.load_data("digits")
    >>> d.x_train.shape, d.num_classes
    (torch.Size([1437, 1, 8, 8]), 10)
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> net = eisbench.train(net, d.x_train, d.y_train,
    ...                      cfg=eisbench.TrainConfig(epochs=3, lr=1e-2), seed=0)
    >>> round(eisbench.accuracy(net, d.x_test, d.y_test), 3)
    0.856
    >>> eisbench.predict(net, d.x_test[:6]), d.y_test[:6]
    (tensor([2, 4, 8, 4, 9, 6]), tensor([2, 4, 8, 4, 9, 6]))
    >>> x, y, gen = d.x_test[:64], d.y_test[:64], torch.Generator().manual_seed(0)
    >>> adv = {"pgd": eisbench.pgd(net, x, y, eps=0.1, steps=10, generator=gen),
    ...        "apgd": eisbench.apgd(net, x, y, eps=0.1, steps=10, generator=gen),
    ...        "fmn": eisbench.fmn(net, x, y, eps=0.1, steps=10, generator=gen),
    ...        "square": eisbench.square(net, x, y, eps=0.1, n_queries=50, generator=gen)}
    >>> {k: round(eisbench.accuracy(net, v, y), 3) for k, v in adv.items()}
    {'pgd': 0.469, 'apgd': 0.453, 'fmn': 0.391, 'square': 0.547}
    >>> "pgd" in eisbench.ATTACKS and "neural-cleanse" in eisbench.TOOLS
    True
    >>> eisbench.tool("fv-class-fourier")(net, target=3, data=x, n=2, steps=3,
    ...                                   generator=gen).shape
    torch.Size([2, 1, 8, 8])
    >>> "goh-linear" in eisbench.EXPERIMENTS and "trojans" in eisbench.BENCHMARKS
    True

:func:`evaluate_robustness`, :func:`scan`, :func:`run` and :func:`audit` print as short
summaries with their confidence intervals (their own docstrings show them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eisbench.core.version import VERSION as __version__

_EXPORTS: dict[str, tuple[str, str]] = {
    "load_data": ("eisbench.data", "load"),
    "load_model": ("eisbench.api", "load_model"),
    "train": ("eisbench.training", "train"),
    "TrainConfig": ("eisbench.training", "TrainConfig"),
    "predict": ("eisbench.core.tensors", "predict"),
    "accuracy": ("eisbench.core.tensors", "accuracy"),
    "pgd": ("eisbench.attacks", "pgd"),
    "apgd": ("eisbench.attacks", "apgd"),
    "fmn": ("eisbench.attacks", "fmn"),
    "square": ("eisbench.attacks", "square"),
    "ATTACKS": ("eisbench.attacks", "ATTACKS"),
    "evaluate_robustness": ("eisbench.evaluation", "evaluate_robustness"),
    "TOOLS": ("eisbench.tools", "TOOLS"),
    "tool": ("eisbench.api", "tool"),
    "scan": ("eisbench.tools.scan", "scan"),
    "audit": ("eisbench.api", "audit"),
    "run": ("eisbench.api", "run"),
    "EXPERIMENTS": ("eisbench.experiments", "EXPERIMENTS"),
    "BENCHMARKS": ("eisbench.bench.registry", "BENCHMARKS"),
}
"""Each public name: (module, attribute), imported on first use (PEP 562)."""

__all__ = [
    "ATTACKS", "BENCHMARKS", "EXPERIMENTS", "TOOLS", "TrainConfig", "__version__", "accuracy",
    "apgd", "audit", "evaluate_robustness", "fmn", "load_data", "load_model", "pgd", "predict",
    "run", "scan", "square", "tool", "train",
]

if TYPE_CHECKING:
    from eisbench.api import audit, load_model, run, tool
    from eisbench.attacks import ATTACKS, apgd, fmn, pgd, square
    from eisbench.bench.registry import BENCHMARKS
    from eisbench.core.tensors import accuracy, predict
    from eisbench.data import load as load_data
    from eisbench.evaluation import evaluate_robustness
    from eisbench.experiments import EXPERIMENTS
    from eisbench.tools import TOOLS
    from eisbench.tools.scan import scan
    from eisbench.training import TrainConfig, train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eisbench' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
