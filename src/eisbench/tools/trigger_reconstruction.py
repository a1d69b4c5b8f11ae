"""Trigger reconstruction: Neural Cleanse (Wang et al. 2019) and TABOR (Guo et al. 2019).

For a candidate target class t, search the smallest trigger that sends clean images to t. A
trigger is a mask m (1, H, W) and a pattern p (C, H, W), both in [0,1], stamped as
``x' = (1 - m) * x + m * p``. Both are parameterised through tanh (``m = (tanh(a) + 1) / 2``)
so that the optimiser works unconstrained, as in the paper. Neural Cleanse minimises::

    CE(f(x'), t) + lam * |m|_1

with Adam (lr 0.1, betas (0.5, 0.9)). ``lam`` adapts as in Wang et al.: every
``check_every`` steps the attack success rate (ASR) of the current trigger is measured on a
fixed batch; at >= 99% ``lam`` is raised (x1.5), otherwise lowered (/1.5^1.5). The smallest
mask seen that reached the threshold is kept. A trojaned class needs a much smaller mask than
the others: that is what ``eisbench scan`` flags (:mod:`eisbench.tools.scan`).

TABOR adds four regularisers to the same objective (:class:`TaborWeights`): overly large
triggers (elastic net ``|m|_1 + |m|_2^2``), scattered triggers (total variation of m),
blocking triggers (the image with the trigger region removed, ``x * (1 - m)``, keeps the class
the model gives the clean image) and overlaying triggers (the trigger alone on black,
``m * p``, is still classified as t).

Several reconstructions (one target each, any mix) are optimised in parallel on one shared
image batch (:func:`reconstruct_triggers`); their losses are summed, so each one's gradient,
Adam state and ``lam`` stay its own.

Example:
    >>> rec = reconstruct_trigger(model, target=0, data=x_clean,  # doctest: +SKIP
    ...                           generator=torch.Generator().manual_seed(0))
    >>> rec.l1, rec.success, rec.bbox  # doctest: +SKIP
    (6.1, 1.0, (5, 5, 7, 7))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.core.registry import Registry
from eisbench.core.tensors import check_images, eval_mode, predict
from eisbench.tools.core import check_tool_output

SUCCESS = 0.99  # the ASR at which a trigger counts as found (Wang et al.)
LAM_UP, LAM_DOWN = 1.5, 1.5 ** 1.5  # Wang et al.'s cost multipliers
EVAL_N = 128  # images of the fixed batch that drives lam and the choice of the best trigger


@dataclass(frozen=True)
class TaborWeights:
    """TABOR's extra terms. ``l2`` and ``tv`` are relative to the adaptive ``lam`` (they
    measure the trigger's size and shape, as the L1 term does); ``block`` and ``overlay`` weigh
    cross-entropies and stay fixed."""

    l2: float = 1.0  # overly large: lam * (|m|_1 + l2 * |m|_2^2)
    tv: float = 0.5  # scattered: lam * tv * TV(m)
    block: float = 0.5  # blocking: CE(f(x * (1 - m)), f(x).argmax())
    overlay: float = 0.5  # overlaying: CE(f(m * p), t)


TABOR = TaborWeights()


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """A reconstructed trigger for class ``target``.

    mask: (1, H, W) in [0,1]; pattern: (C, H, W) in [0,1]; l1 = mask.sum(); success: the
    fraction of the clean images not already predicted as ``target`` that the stamped trigger
    sends to ``target``; bbox: (row0, col0, row1, col1), inclusive, of :func:`mask_bbox`.
    """

    target: int
    method: str
    mask: torch.Tensor
    pattern: torch.Tensor
    l1: float
    success: float
    bbox: tuple[int, int, int, int]

    def image(self) -> torch.Tensor:
        """The trigger alone on black, ``mask * pattern``: (C, H, W) in [0,1]."""
        return self.mask * self.pattern

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on images x (N, C, H, W): ``(1 - mask) * x + mask * pattern``."""
        m, p = self.mask.to(x), self.pattern.to(x)
        return (1 - m) * x + m * p


def mask_bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1), inclusive, around the pixels of ``mask`` (1, H, W) above 0.5;
    where none is, around its top-k pixels with k = round(mask.sum()) (at least 1)."""
    m = mask.detach().reshape(mask.shape[-2:]).float()  # (H, W)
    on = m > 0.5
    if not on.any():
        k = max(1, min(m.numel(), round(float(m.sum()))))
        on = m >= m.flatten().topk(k).values[-1]
    rows = torch.nonzero(on.any(1)).flatten()
    cols = torch.nonzero(on.any(0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def _squash(raw: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(raw) + 1) / 2


def _stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W), mask (R, 1, H, W), pattern (R, C, H, W) -> (R * B, C, H, W), grouped
    by trigger."""
    xs = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # (R, B, C, H, W)
    return xs.flatten(0, 1)


def _total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of masks (R, 1, H, W): (R,)."""
    dh = (mask[..., 1:, :] - mask[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (mask[..., :, 1:] - mask[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


Objective = Callable[..., torch.Tensor]
RECONSTRUCTION_METHODS: Registry[Objective] = Registry("trigger reconstruction method")
"""The objective of each method: ``objective(model, x, label, mask, pattern, targets, lam,
tabor) -> (R,)`` for images x (B, C, H, W) whose clean predictions are ``label`` (B,), masks
(R, 1, H, W), patterns (R, C, H, W), targets (R,) and ``lam`` (R,)."""


def _target_loss(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE of the stamped images towards each trigger's target (R,), the masks' L1 (R,))."""
    r, b = len(targets), len(x)
    logits = model(_stamp(x, mask, pattern))  # (R * B, K)
    ce = F.cross_entropy(logits, targets.repeat_interleave(b), reduction="none")
    return ce.view(r, b).mean(1), mask.flatten(1).sum(1)  # the mask is >= 0


@RECONSTRUCTION_METHODS.register("neural-cleanse")
def neural_cleanse_objective(model: nn.Module, x: torch.Tensor, label: torch.Tensor,
                             mask: torch.Tensor, pattern: torch.Tensor, targets: torch.Tensor,
                             lam: torch.Tensor, tabor: TaborWeights) -> torch.Tensor:
    """``CE(f(x'), t) + lam * |m|_1`` per trigger (R,)."""
    del label, tabor  # the objectives share one signature
    loss, size = _target_loss(model, x, mask, pattern, targets)
    return loss + lam * size


@RECONSTRUCTION_METHODS.register("tabor")
def tabor_objective(model: nn.Module, x: torch.Tensor, label: torch.Tensor, mask: torch.Tensor,
                    pattern: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor,
                    tabor: TaborWeights) -> torch.Tensor:
    """Neural Cleanse's objective with TABOR's four terms (:class:`TaborWeights`) per trigger
    (R,)."""
    r, b = len(targets), len(x)
    loss, size = _target_loss(model, x, mask, pattern, targets)
    size = size + tabor.l2 * mask.pow(2).flatten(1).sum(1) + tabor.tv * _total_variation(mask)
    blocked = model(((1 - mask[:, None]) * x[None]).flatten(0, 1))  # (R * B, K)
    block = F.cross_entropy(blocked, label.repeat(r), reduction="none").view(r, b).mean(1)
    overlay = F.cross_entropy(model(mask * pattern), targets, reduction="none")  # (R,)
    return loss + lam * size + tabor.block * block + tabor.overlay * overlay


@torch.no_grad()
def _success(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
             pattern: torch.Tensor, targets: torch.Tensor, *, device: torch.device,
             chunk: int = 4096) -> torch.Tensor:
    """ASR (R,) of each trigger on x (N, C, H, W), over the images whose clean prediction
    ``pred`` (N,) is not its target (all of them where none is)."""
    r = len(targets)
    hits = torch.zeros(r, device=device)
    keep = pred.to(device)[None] != targets[:, None]  # (R, N)
    keep[keep.sum(1) == 0] = True
    step = max(1, chunk // r)
    for i in range(0, len(x), step):
        xb = x[i:i + step].to(device)
        out = model(_stamp(xb, mask, pattern)).argmax(1).view(r, len(xb))  # (R, b)
        hits += ((out == targets[:, None]) & keep[:, i:i + step]).sum(1)
    return hits / keep.sum(1)


def reconstruct_triggers(model: nn.Module, *, targets: Sequence[int], data: torch.Tensor,
                         method: str = "neural-cleanse", steps: int = 200, lr: float = 0.1,
                         lam: float = 1e-3, batch_size: int = 64, generator: torch.Generator,
                         device: str | torch.device = "cpu", threshold: float = SUCCESS,
                         check_every: int = 10, tabor: TaborWeights = TABOR
                         ) -> list[Reconstruction]:
    """One trigger per entry of ``targets`` (R,), optimised in parallel on clean images
    ``data`` (N, C, H, W) in [0,1]; each starts from its own random draw of ``generator``.

    ``method``: one of :data:`RECONSTRUCTION_METHODS`; ``steps`` Adam steps of ``batch_size``
    images (shared by the R triggers, so a step costs R * batch_size forward and backward
    passes);
    ``lam``: the initial weight of the mask's L1 norm (adaptive, see the module docstring).
    The model is used in eval mode and returned in the mode it came in; no gradient is left on
    its parameters. Returns R :class:`Reconstruction` s, in the order of ``targets``.
    """
    objective = RECONSTRUCTION_METHODS.get(method)
    check_images(data, what="clean images (data)")
    if len(data) == 0 or len(targets) == 0:
        raise ValueError("reconstruction needs at least one clean image and one target")
    if steps < 1 or batch_size < 1 or check_every < 1:
        raise ValueError("steps, batch_size and check_every must be >= 1")
    dev = torch.device(device)
    t = torch.as_tensor(list(targets), dtype=torch.long, device=dev)  # (R,)
    n, c, h, w = data.shape
    r = len(t)
    pred = predict(model, data, device=dev)  # (N,) clean predictions, on CPU
    pick = torch.randperm(n, generator=generator)[:max(EVAL_N, batch_size)]
    x_eval, p_eval = data[pick].to(dev), pred[pick]
    u = torch.rand(r, 1 + c, h, w, generator=generator)  # uniform initial mask and pattern
    raw = torch.atanh((u - 0.5) * 1.8).to(dev)
    m_raw, p_raw = raw[:, :1].clone().requires_grad_(), raw[:, 1:].clone().requires_grad_()
    opt = torch.optim.Adam([m_raw, p_raw], lr=lr, betas=(0.5, 0.9))
    lam_r = torch.full((r,), float(lam), device=dev)
    best_m, best_p = torch.zeros(r, 1, h, w, device=dev), torch.zeros(r, c, h, w, device=dev)
    best_l1 = torch.full((r,), math.inf, device=dev)
    with eval_mode(model):
        for step in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
            loss = objective(model, data[idx].to(dev), pred[idx].to(dev), _squash(m_raw),
                             _squash(p_raw), t, lam_r, tabor).sum()
            m_raw.grad, p_raw.grad = torch.autograd.grad(loss, [m_raw, p_raw])
            opt.step()
            if (step + 1) % check_every and step + 1 < steps:
                continue
            with torch.no_grad():
                mask, pat = _squash(m_raw), _squash(p_raw)
                ok = _success(model, x_eval, p_eval, mask, pat, t, device=dev) >= threshold
                l1 = mask.flatten(1).sum(1)  # (R,)
                better = ok & (l1 < best_l1)
                best_m[better], best_p[better] = mask[better], pat[better]
                best_l1[better] = l1[better]
                lam_r = torch.where(ok, lam_r * LAM_UP, lam_r / LAM_DOWN)
        with torch.no_grad():
            found = torch.isfinite(best_l1).view(r, 1, 1, 1)
            mask = torch.where(found, best_m, _squash(m_raw)).detach()
            pat = torch.where(found, best_p, _squash(p_raw)).detach()
            asr = _success(model, data, pred, mask, pat, t, device=dev).cpu()
    mask, pat = mask.cpu(), pat.cpu()
    return [Reconstruction(target=int(t[i]), method=method, mask=mask[i], pattern=pat[i],
                           l1=float(mask[i].sum()), success=float(asr[i]),
                           bbox=mask_bbox(mask[i])) for i in range(r)]


def reconstruct_trigger(model: nn.Module, *, target: int, data: torch.Tensor,
                        method: str = "neural-cleanse", steps: int = 200, lr: float = 0.1,
                        lam: float = 1e-3, batch_size: int = 64, generator: torch.Generator,
                        device: str | torch.device = "cpu", threshold: float = SUCCESS,
                        check_every: int = 10, tabor: TaborWeights = TABOR
                        ) -> Reconstruction:
    """The smallest trigger (mask (1, H, W), pattern (C, H, W)) that sends the clean images
    ``data`` (N, C, H, W) to class ``target``; see :func:`reconstruct_triggers`.

    Example:
        >>> rec = reconstruct_trigger(model, target=0, data=x[:200],  # doctest: +SKIP
        ...                           generator=torch.Generator().manual_seed(0))
    """
    return reconstruct_triggers(model, targets=[target], data=data, method=method, steps=steps,
                                lr=lr, lam=lam, batch_size=batch_size, generator=generator,
                                device=device, threshold=threshold, check_every=check_every,
                                tabor=tabor)[0]


def trigger_images(recs: Sequence[Reconstruction], *, threshold: float = SUCCESS
                   ) -> torch.Tensor:
    """The triggers alone on black (len(recs), C, H, W): the ones that reach ``threshold``
    first, then by increasing mask L1 (the most trigger-like first)."""
    order = sorted(range(len(recs)), key=lambda i: (recs[i].success < threshold, recs[i].l1, i))
    out = torch.stack([recs[i].image() for i in order]).clamp(0, 1)
    return check_tool_output(out, n=len(recs), shape=tuple(out.shape[1:]))


def restart_images(model: nn.Module, *, target: int, data: torch.Tensor, n: int,
                   method: str, generator: torch.Generator, device: str | torch.device,
                   steps: int, lr: float, lam: float, batch_size: int) -> torch.Tensor:
    """The tool verb of Neural Cleanse and TABOR: ``n`` restarts for ``target`` from different
    draws of ``generator``, optimised in parallel; their triggers alone on black
    (n, C, H, W), best first (:func:`trigger_images`)."""
    recs = reconstruct_triggers(model, targets=[target] * n, data=data, method=method,
                                steps=steps, lr=lr, lam=lam, batch_size=batch_size,
                                generator=generator, device=device)
    return trigger_images(recs)
