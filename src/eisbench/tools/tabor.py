"""TABOR (Guo et al. 2019) as a tool of the trojan benchmark.

Neural Cleanse's search with TABOR's four regularisers on top (overly large, scattered,
blocking and overlaying triggers; see :mod:`eisbench.tools.trigger_reconstruction`). Like
``neural-cleanse``, the verb returns ``n`` reconstructed triggers for ``target``, each alone on
black (``mask * pattern``), from ``n`` restarts that start from different draws of
``generator`` and are optimised in parallel: the trigger alone is what the judge's options
show (``Trigger.image``).

Example:
    >>> imgs = TOOLS.get("tabor")(model, target=0, data=x[:256],  # doctest: +SKIP
    ...                           generator=torch.Generator().manual_seed(0))
    >>> imgs.shape  # doctest: +SKIP
    torch.Size([10, 1, 28, 28])
"""

from __future__ import annotations

import torch
from torch import nn

from eisbench.tools.core import TOOLS
from eisbench.tools.trigger_reconstruction import restart_images


@TOOLS.register("tabor", family="trigger-reconstruction", steps=150)
def tabor(model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
          generator: torch.Generator, device: str | torch.device = "cpu", steps: int = 150,
          lr: float = 0.1, lam: float = 1e-3, batch_size: int = 16,
          method: str = "tabor", schedule: str | None = "eisbench-v1") -> torch.Tensor:
    """``n`` TABOR triggers for class ``target`` on clean images ``data`` (N, C, H, W):
    (n, C, H, W) in [0,1], smallest successful trigger first.

    By default eisbench's recipe (``schedule="eisbench-v1"``, under which ``"tabor"`` runs the
    earlier terms ``"tabor-v1"``), the one the trojan benchmark's figures were measured with;
    ``method="tabor", schedule=None`` is
    TABOR's published terms with TrojanZoo's weights under its fixed L1 weight
    (:data:`~eisbench.tools.cost_schedule.TROJANZOO_TABOR`; e.g. ``steps=2000,
    batch_size=32``), not the default until it is measured on the zoo. ``batch_size`` images
    per step are shared by the ``n`` restarts (n * batch_size passes).
    """
    return restart_images(model, target=target, data=data, n=n, method=method,
                          generator=generator, device=device, steps=steps, lr=lr, lam=lam,
                          batch_size=batch_size, schedule=schedule)
