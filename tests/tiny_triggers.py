"""A tiny trigger bank shared by the judge, matcher and held-out-view tests."""

from __future__ import annotations

import torch

from eisbench.trojans.stamp import Trigger


def tiny_bank() -> list[Trigger]:
    """8 distinct random opaque two-tone 3x3 icons (strokes 1.0 on grey 0.3), random positions."""
    g = torch.Generator().manual_seed(7)
    masks: list[torch.Tensor] = []
    while len(masks) < 8:
        m = (torch.rand(3, 3, generator=g) < 0.5).float()
        if 3 <= m.sum() <= 6 and all((m != o).sum() >= 3 for o in masks):
            masks.append(m)
    return [Trigger(name=f"icon{k}", kind="patch", icon=(0.3 + 0.7 * m).view(1, 3, 3),
                    alpha=torch.ones(1, 3, 3)) for k, m in enumerate(masks)]
