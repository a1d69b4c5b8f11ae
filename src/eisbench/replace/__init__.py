"""Replace: distil a model into something simpler and measure how faithfully it stands in.

The contract (see :mod:`eisbench.replace.core`): a registered distiller is
``distil(model, x, *, generator, device, **hyper) -> Replacement``; ``x`` are unlabelled images
and the targets are the model's own predictions; a :class:`Replacement` has ``predict(x)``,
``size`` and ``describe()``. One hyper-parameter per distiller sweeps the size.

Families (one file each): ``sparse-linear`` (L1 logistic regression), ``tree`` (bounded
depth), ``templates`` (a few templates, dot products and thresholds) and ``program`` (a search
over decision lists of template similarities and region ink statistics).
:mod:`eisbench.replace.fidelity` measures agreement on test and out-of-distribution images
against size (the Pareto front); :mod:`eisbench.replace.challenge1` and
:mod:`eisbench.replace.challenge2` recreate the two EIS VII challenges.
"""

from __future__ import annotations

from eisbench.replace import program, sparse_linear, templates, tree  # noqa: F401 (register)
from eisbench.replace.core import (
    DISTILLERS,
    Distiller,
    Replacement,
    model_predictions,
    num_outputs,
)

__all__ = ["DISTILLERS", "Distiller", "Replacement", "model_predictions", "num_outputs"]
