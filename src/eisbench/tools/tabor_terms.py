"""TABOR's regularisers (Guo et al. 2019) and its detection score.

The terms and weights as TrojanZoo implements them (github.com/ain-soph/trojanzoo, commit
45d680c4, ``trojanvision/defenses/backdoor/model_inspection/tabor.py`` lines 45-86), for a mask
m (1, H, W) and a pattern p (C, H, W) in [0,1], ``q = (1 - m) * p`` the pattern *outside* the
mask:

- R1, overly large triggers: ``mask_r1 = |m|_1 + |m|_2^2`` (lines 52-55) and
  ``pattern_r1 = |q|_1 + |q|_2^2`` (lines 57-60);
- R2, scattered triggers: ``mask_r2``, the sum of squared differences of vertically and
  horizontally adjacent pixels of m (lines 62-65), and ``pattern_r2``, the same of q
  (lines 67-69);
- R3, blocking triggers: ``CE(f((1 - m) * x), y)`` (lines 71-74; TrojanZoo's y is the image's
  label, here the model's clean prediction);
- R4, overlaying triggers: ``CE(f(m * p), t)`` (lines 76-80);
- weights ``[1e-6, 1e-5, 1e-7, 1e-8, 0, 1e-2]`` in that order (line 45, the same as the
  authors' partial release github.com/UsmannK/TABOR, ``tabor/snooper.py`` line 83, which works
  on pixels in [0, 255]), added to ``CE(f(x'), t) + cost * |m|_1`` with a fixed cost of 1e-3
  (``abstract.py`` lines 313 and 498): :data:`~eisbench.tools.cost_schedule.TROJANZOO_TABOR`.

:class:`TaborV1Weights` are eisbench's earlier weights (kept for comparison, method
``"tabor-v1"``): relative to the adaptive L1 weight, an L2 term and an L1 total variation on m
only, no penalty outside the mask, and blocking and overlaying at 0.5 each.

TABOR's own detection score (:func:`tabor_score`) is Guo et al.'s trigger-quality metric as we
read it (§IV of the paper, arXiv:1908.01763; neither implementation above codes it:
UsmannK/TABOR lists it as a TODO and TrojanZoo prints the MAD of the mask norms and losses),
per class t::

    A_t = log(|m_t|_1 / d^2) + log(s(m_t * p_t) / d^2) - log(acc_att) - log(acc_ori)

with d^2 = H * W, ``s`` the anisotropic total variation of the trigger alone, ``acc_att`` its
attack success rate and ``acc_ori`` the fraction of images with the trigger region removed
(``(1 - m) * x``) that keep their clean prediction. Small, compact, effective triggers that do
not hide the object give a low A; the anomaly index of the MAD rule is then applied on the
low side, as for the mask L1. The paper's pruning of the trigger by an explanation method
before scoring is omitted. Constant terms (the ``/ d^2``) do not change the anomaly index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TERMS = ("mask_r1", "pattern_r1", "mask_r2", "pattern_r2", "block", "overlay")
SCORE_EPS = 1e-6  # keeps the logs finite for a blank trigger or a zero rate


@dataclass(frozen=True)
class TaborWeights:
    """TABOR's weights, TrojanZoo's defaults (``tabor.py`` line 45), in :data:`TERMS` order."""

    mask_r1: float = 1e-6
    pattern_r1: float = 1e-5
    mask_r2: float = 1e-7
    pattern_r2: float = 1e-8
    block: float = 0.0
    overlay: float = 1e-2

    def vector(self) -> torch.Tensor:
        return torch.tensor([getattr(self, k) for k in TERMS])


@dataclass(frozen=True)
class TaborV1Weights:
    """eisbench's earlier TABOR terms. ``l2`` and ``tv`` are relative to the adaptive ``lam``
    (``lam * (|m|_1 + l2 * |m|_2^2 + tv * TV(m))``); ``block`` and ``overlay`` weigh
    cross-entropies and stay fixed."""

    l2: float = 1.0
    tv: float = 0.5
    block: float = 0.5
    overlay: float = 0.5


TABOR = TaborWeights()
TABOR_V1 = TaborV1Weights()


def _sq_diffs(t: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences of vertically and horizontally adjacent pixels of
    t (R, C, H, W): (R,)."""
    dh = (t[..., 1:, :] - t[..., :-1, :]).pow(2).flatten(1).sum(1)
    dw = (t[..., :, 1:] - t[..., :, :-1]).pow(2).flatten(1).sum(1)
    return dh + dw


def total_variation(t: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of t (R, C, H, W): (R,)."""
    dh = (t[..., 1:, :] - t[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (t[..., :, 1:] - t[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


def tabor_terms(model: nn.Module, x: torch.Tensor, label: torch.Tensor, mask: torch.Tensor,
                pattern: torch.Tensor, targets: torch.Tensor, *, with_block: bool = True
                ) -> torch.Tensor:
    """TABOR's six terms (R, 6) in :data:`TERMS` order for masks (R, 1, H, W), patterns
    (R, C, H, W), targets (R,), on images x (B, C, H, W) whose clean predictions are ``label``
    (B,). ``with_block=False`` skips R3's forward pass (its column is 0), for a zero weight."""
    r, b = len(targets), len(x)
    out = (1 - mask) * pattern  # (R, C, H, W): the pattern outside the mask
    mask_r1 = mask.flatten(1).sum(1) + mask.pow(2).flatten(1).sum(1)
    pattern_r1 = out.abs().flatten(1).sum(1) + out.pow(2).flatten(1).sum(1)
    if with_block:
        blocked = model(((1 - mask[:, None]) * x[None]).flatten(0, 1))  # (R * B, K)
        block = F.cross_entropy(blocked, label.repeat(r), reduction="none").view(r, b).mean(1)
    else:
        block = torch.zeros(r, device=x.device)
    overlay = F.cross_entropy(model(mask * pattern), targets, reduction="none")  # (R,)
    return torch.stack([mask_r1, pattern_r1, _sq_diffs(mask), _sq_diffs(out), block, overlay],
                       1)


@torch.no_grad()
def tabor_score(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                pattern: torch.Tensor, asr: torch.Tensor) -> torch.Tensor:
    """TABOR's trigger-quality metric A (R,) (module docstring) of masks (R, 1, H, W) and
    patterns (R, C, H, W) whose attack success rates are ``asr`` (R,), on images x
    (N, C, H, W) with clean predictions ``pred`` (N,); lower is more trojan-like."""
    r = len(mask)
    d2 = mask.shape[-1] * mask.shape[-2]
    kept = torch.stack([(model((1 - mask[i]) * x).argmax(1) == pred).float().mean()
                        for i in range(r)]).cpu()
    size = mask.flatten(1).sum(1).cpu() / d2
    scatter = total_variation(mask * pattern).cpu() / d2
    return (torch.log(size + SCORE_EPS) + torch.log(scatter + SCORE_EPS)
            - torch.log(asr.cpu() + SCORE_EPS) - torch.log(kept + SCORE_EPS))


def finite_or_inf(v: float) -> float | str:
    """A float for JSON: itself, or "inf"/"-inf"."""
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
