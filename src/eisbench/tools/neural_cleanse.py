"""Neural Cleanse (Wang et al. 2019) as a tool of the trojan benchmark.

The verb returns ``n`` reconstructed triggers for ``target``, each alone on black
(``mask * pattern``), from ``n`` restarts that start from different draws of ``generator``
and are optimised in parallel (see :mod:`eisbench.tools.trigger_reconstruction`). The trigger
alone is what the judge's options show (``Trigger.image``), so every image is directly
comparable with them; restarts show which parts of the trigger are stable.

Example:
    >>> imgs = TOOLS.get("neural-cleanse")(model, target=0, data=x[:256],  # doctest: +SKIP
    ...                                    generator=torch.Generator().manual_seed(0))
    >>> imgs.shape  # doctest: +SKIP
    torch.Size([10, 1, 28, 28])
"""

from __future__ import annotations

import torch
from torch import nn

from eisbench.tools.core import TOOLS
from eisbench.tools.trigger_reconstruction import restart_images


@TOOLS.register("neural-cleanse", family="trigger-reconstruction", steps=150)
def neural_cleanse(model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
                   generator: torch.Generator, device: str | torch.device = "cpu",
                   steps: int = 150, lr: float = 0.1, lam: float = 1e-3,
                   batch_size: int = 16, schedule: str = "eisbench-v1") -> torch.Tensor:
    """``n`` Neural Cleanse triggers for class ``target`` on clean images ``data``
    (N, C, H, W): (n, C, H, W) in [0,1], smallest successful trigger first.

    ``schedule``: eisbench's recipe by default (``"eisbench-v1"``: the L1 weight moves at every
    check, ``steps`` Adam steps), the one the trojan benchmark's figures were measured with;
    ``schedule="wang2019"`` is Wang et al.'s published one
    (:data:`~eisbench.tools.cost_schedule.WANG2019`: one check per pass over ``data``, the cost
    set and moved only after ``patience`` checks, early stop; e.g. ``steps=2000,
    batch_size=32``). The published schedule is not the default until its 8-way success and
    cost are measured on the zoo (``benchmarks/scan_recipes.py``): on the 8x8 digits it took
    about 25x the time. ``batch_size`` images per step are shared by the ``n`` restarts
    (n * batch_size passes).
    """
    return restart_images(model, target=target, data=data, n=n, method="neural-cleanse",
                          generator=generator, device=device, steps=steps, lr=lr, lam=lam,
                          batch_size=batch_size, schedule=schedule)
