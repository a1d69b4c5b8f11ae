"""Trigger reconstruction: Neural Cleanse (Wang et al. 2019) and TABOR (Guo et al. 2019).

For a candidate target class t, search the smallest trigger that sends clean images to t. A
trigger is a mask m (1, H, W) and a pattern p (C, H, W), both in [0,1], stamped as
``x' = (1 - m) * x + m * p``. Both are parameterised through tanh (``m = (tanh(a) + 1) / 2``)
so that the optimiser works unconstrained, as in the paper. Neural Cleanse minimises::

    CE(f(x'), t) + lam * |m|_1

with Adam (lr 0.1, betas (0.5, 0.9)). How ``lam`` moves and when to stop is a
:class:`~eisbench.tools.cost_schedule.CostSchedule`: Wang et al.'s published one
(``"wang2019"``: ``lam`` is 0 until the trigger succeeds at 10 consecutive checks, then 1e-3,
moved up or down only after 10 consecutive successes or failures, early stop), or eisbench's
earlier one (``"eisbench-v1"``: moved at every check; the default of
:func:`reconstruct_triggers`, which the edit benchmark uses). The scan and the tools run each
method under its published schedule. The smallest mask seen that reached the threshold is kept.
A trojaned class needs a much smaller mask than the others: that is what ``eisbench scan``
flags (:mod:`eisbench.tools.scan`). Every check is recorded (:class:`LossCurve`), so whether a
class converged can be read off.

TABOR (method ``"tabor"``) adds its published regularisers with TrojanZoo's weights
(:mod:`eisbench.tools.tabor_terms`): overly large triggers (elastic net of the mask and of the
pattern outside the mask), scattered triggers (squared differences of neighbouring pixels of
both), blocking triggers (weight 0) and overlaying triggers (the trigger alone on black,
``m * p``, is still classified as t). ``"tabor-v1"`` is eisbench's earlier variant.

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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.core.registry import Registry
from eisbench.core.tensors import check_images, eval_mode, predict
from eisbench.tools.core import check_tool_output
from eisbench.tools.cost_schedule import (
    EISBENCH_V1,
    CostSchedule,
    CostState,
    converged_check,
    get_schedule,
    with_init_cost,
)
from eisbench.tools.tabor_terms import (
    TABOR,
    TABOR_V1,
    TaborV1Weights,
    TaborWeights,
    finite_or_inf,
    tabor_terms,
    total_variation,
)

SUCCESS = 0.99  # the ASR at which a trigger counts as found (Wang et al.)
LAM_UP, LAM_DOWN = EISBENCH_V1.up, EISBENCH_V1.down  # Wang et al.'s cost multipliers
EVAL_N = 128  # images of the fixed batch of the "fixed-batch" check (eisbench v1)


@dataclass(frozen=True)
class LossCurve:
    """A reconstruction's record, one entry per check: the Adam steps done, the mean objective,
    mask L1 and ASR over the check's mini-batches (the ASR on the fixed batch for a
    ``"fixed-batch"`` schedule), the L1 weight in force, and the best L1 found so far (inf
    before a trigger is found)."""

    step: tuple[int, ...]
    loss: tuple[float, ...]
    l1: tuple[float, ...]
    asr: tuple[float, ...]
    cost: tuple[float, ...]
    best_l1: tuple[float, ...]

    @property
    def converged_step(self) -> int | None:
        """The Adam step from which the best L1 no longer drops by more than 1%
        (:func:`~eisbench.tools.cost_schedule.converged_check`); None if it still did at the
        last check or no trigger was found."""
        i = converged_check(list(self.best_l1))
        return self.step[i] if i < len(self.step) else None

    def to_dict(self) -> dict[str, list[Any]]:
        return {"step": list(self.step), "loss": list(self.loss), "l1": list(self.l1),
                "asr": list(self.asr), "cost": list(self.cost),
                "best_l1": [finite_or_inf(v) for v in self.best_l1]}

    @classmethod
    def from_dict(cls, d: dict[str, list[Any]]) -> LossCurve:
        return cls(step=tuple(int(v) for v in d["step"]),
                   **{k: tuple(float(v) for v in d[k])
                      for k in ("loss", "l1", "asr", "cost", "best_l1")})


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """A reconstructed trigger for class ``target``.

    mask: (1, H, W) in [0,1]; pattern: (C, H, W) in [0,1]; l1 = mask.sum(); success: the
    fraction of the clean images not already predicted as ``target`` that the stamped trigger
    sends to ``target``; bbox: (row0, col0, row1, col1), inclusive, of :func:`mask_bbox`;
    curve: the record of every check (:class:`LossCurve`); schedule: the cost schedule's name.
    """

    target: int
    method: str
    mask: torch.Tensor
    pattern: torch.Tensor
    l1: float
    success: float
    bbox: tuple[int, int, int, int]
    curve: LossCurve | None = None
    schedule: str = ""

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


Objective = Callable[..., tuple[torch.Tensor, torch.Tensor]]
RECONSTRUCTION_METHODS: Registry[Objective] = Registry("trigger reconstruction method")
"""The objective of each method: ``objective(model, x, label, mask, pattern, targets, lam,
weights) -> (loss (R,), asr (R,))`` for images x (B, C, H, W) whose clean predictions are
``label`` (B,), masks (R, 1, H, W), patterns (R, C, H, W), targets (R,) and ``lam`` (R,);
``asr``: the detached fraction of the stamped batch classified as each target."""


def _target_loss(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CE of the stamped images towards each trigger's target (R,), the masks' L1 (R,), the
    stamped batch's ASR (R,), detached)."""
    r, b = len(targets), len(x)
    logits = model(_stamp(x, mask, pattern))  # (R * B, K)
    tt = targets.repeat_interleave(b)
    ce = F.cross_entropy(logits, tt, reduction="none")
    asr = (logits.detach().argmax(1) == tt).float().view(r, b).mean(1)
    return ce.view(r, b).mean(1), mask.flatten(1).sum(1), asr  # the mask is >= 0


@RECONSTRUCTION_METHODS.register("neural-cleanse")
def neural_cleanse_objective(model: nn.Module, x: torch.Tensor, label: torch.Tensor,
                             mask: torch.Tensor, pattern: torch.Tensor, targets: torch.Tensor,
                             lam: torch.Tensor, weights: object = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``CE(f(x'), t) + lam * |m|_1`` per trigger (R,), and the batch's ASR (R,)."""
    del label, weights  # the objectives share one signature
    loss, size, asr = _target_loss(model, x, mask, pattern, targets)
    return loss + lam * size, asr


@RECONSTRUCTION_METHODS.register("tabor")
def tabor_objective(model: nn.Module, x: torch.Tensor, label: torch.Tensor, mask: torch.Tensor,
                    pattern: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor,
                    weights: TaborWeights = TABOR) -> tuple[torch.Tensor, torch.Tensor]:
    """TABOR as published (:mod:`eisbench.tools.tabor_terms`): ``CE(f(x'), t) + lam * |m|_1
    + sum_i w_i R_i`` per trigger (R,), and the batch's ASR (R,)."""
    loss, size, asr = _target_loss(model, x, mask, pattern, targets)
    terms = tabor_terms(model, x, label, mask, pattern, targets,
                        with_block=weights.block != 0)  # (R, 6)
    return loss + lam * size + terms @ weights.vector().to(terms), asr


@RECONSTRUCTION_METHODS.register("tabor-v1")
def tabor_v1_objective(model: nn.Module, x: torch.Tensor, label: torch.Tensor,
                       mask: torch.Tensor, pattern: torch.Tensor, targets: torch.Tensor,
                       lam: torch.Tensor, weights: TaborV1Weights = TABOR_V1
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """eisbench's earlier TABOR (:class:`~eisbench.tools.tabor_terms.TaborV1Weights`) per
    trigger (R,), and the batch's ASR (R,)."""
    r, b = len(targets), len(x)
    loss, size, asr = _target_loss(model, x, mask, pattern, targets)
    size = size + weights.l2 * mask.pow(2).flatten(1).sum(1) + weights.tv * total_variation(mask)
    blocked = model(((1 - mask[:, None]) * x[None]).flatten(0, 1))  # (R * B, K)
    block = F.cross_entropy(blocked, label.repeat(r), reduction="none").view(r, b).mean(1)
    overlay = F.cross_entropy(model(mask * pattern), targets, reduction="none")  # (R,)
    return loss + lam * size + weights.block * block + weights.overlay * overlay, asr


DEFAULT_WEIGHTS: dict[str, TaborWeights | TaborV1Weights] = {"tabor": TABOR,
                                                             "tabor-v1": TABOR_V1}


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
                         method: str = "neural-cleanse", steps: int | None = None,
                         lr: float = 0.1, lam: float | None = None,
                         batch_size: int | None = None, generator: torch.Generator,
                         device: str | torch.device = "cpu", threshold: float | None = None,
                         check_every: int | None = None,
                         tabor: TaborWeights | TaborV1Weights | None = None,
                         schedule: str | CostSchedule | None = "eisbench-v1"
                         ) -> list[Reconstruction]:
    """One trigger per entry of ``targets`` (R,), optimised in parallel on clean images
    ``data`` (N, C, H, W) in [0,1]; each starts from its own random draw of ``generator``.

    ``method``: one of :data:`RECONSTRUCTION_METHODS`; ``schedule``: the L1 weight's schedule
    and stopping rule (:mod:`eisbench.tools.cost_schedule`; a name, or None for the method's
    published one); ``steps``: at most this many Adam steps of ``batch_size`` images (shared by
    the R triggers, so a step costs R * batch_size forward and backward passes), None: the
    schedule's ``max_checks`` checks; ``check_every``: mini-batches per check; ``lam``: the
    L1 weight once set; ``threshold``: the ASR of success; ``tabor``: the TABOR weights (None:
    the method's defaults). Every None takes the schedule's value. A trigger that stops early
    (the schedule's early stop) stops being optimised; the run ends when all have.
    The model is used in eval mode and returned in the mode it came in; no gradient is left on
    its parameters. Returns R :class:`Reconstruction` s, in the order of ``targets``.
    ``"tabor"`` under ``"eisbench-v1"`` is eisbench's measured TABOR: its earlier terms
    (``"tabor-v1"``), the ones that schedule was measured with.
    """
    sched = with_init_cost(get_schedule(schedule, method), lam)
    if method == "tabor" and sched.name == "eisbench-v1":
        method = "tabor-v1"
    objective = RECONSTRUCTION_METHODS.get(method)
    weights = tabor if tabor is not None else DEFAULT_WEIGHTS.get(method)
    check_images(data, what="clean images (data)")
    if len(data) == 0 or len(targets) == 0:
        raise ValueError("reconstruction needs at least one clean image and one target")
    batch_size = sched.batch_size if batch_size is None else batch_size
    thr = sched.threshold if threshold is None else threshold
    if batch_size < 1 or (check_every is not None and check_every < 1):
        raise ValueError("steps, batch_size and check_every must be >= 1")
    n, c, h, w = data.shape
    every = check_every or sched.mini_batches(n, batch_size)
    steps = sched.max_checks * every if steps is None else steps
    if steps < 1:
        raise ValueError("steps, batch_size and check_every must be >= 1")
    dev = torch.device(device)
    t = torch.as_tensor(list(targets), dtype=torch.long, device=dev)  # (R,)
    r = len(t)
    pred = predict(model, data, device=dev)  # (N,) clean predictions, on CPU
    pick = torch.randperm(n, generator=generator)[:max(EVAL_N, batch_size)]
    x_eval, p_eval = data[pick].to(dev), pred[pick]
    u = torch.rand(r, 1 + c, h, w, generator=generator)  # uniform initial mask and pattern
    raw = torch.atanh((u - 0.5) * 1.8).to(dev)
    m_raw, p_raw = raw[:, :1].clone().requires_grad_(), raw[:, 1:].clone().requires_grad_()
    opt = torch.optim.Adam([m_raw, p_raw], lr=lr, betas=(0.5, 0.9))
    state = CostState(sched, r, device=dev)
    best_m, best_p = torch.zeros(r, 1, h, w, device=dev), torch.zeros(r, c, h, w, device=dev)
    acc = torch.zeros(3, r, device=dev)  # loss, L1, ASR summed since the last check
    rows: list[torch.Tensor] = []  # per check (6, R): step, loss, l1, asr, cost, best
    done = torch.zeros(r, dtype=torch.bool, device=dev)  # stopped before this check
    with eval_mode(model):
        for step in range(steps):
            run = torch.nonzero(~state.stopped).flatten()
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
            mask, pat = _squash(m_raw), _squash(p_raw)
            loss, asr = objective(model, data[idx].to(dev), pred[idx].to(dev), mask[run],
                                  pat[run], t[run], state.cost[run].to(data.dtype), weights)
            m_raw.grad, p_raw.grad = torch.autograd.grad(loss.sum(), [m_raw, p_raw])
            opt.step()
            acc[:, run] += torch.stack([loss.detach(), mask[run].detach().flatten(1).sum(1),
                                        asr])
            k = (step % every) + 1
            if k < every and step + 1 < steps:
                continue
            with torch.no_grad():
                mean = acc / k
                acc.zero_()
                mask, pat = _squash(m_raw), _squash(p_raw)
                if sched.check_on == "fixed-batch":
                    mean[2] = _success(model, x_eval, p_eval, mask, pat, t, device=dev)
                    mean[1] = mask.flatten(1).sum(1)
                done = state.stopped.clone()
                cost = state.cost.to(acc.dtype)
                better = state.check(mean[2] >= thr, mean[1])
                best_m[better], best_p[better] = mask[better], pat[better]
                rows.append(torch.stack([torch.full((r,), step + 1.0, device=dev), *mean,
                                         cost, state.best]).masked_fill(done[None], math.nan))
            if bool(state.stopped.all()):
                break
        with torch.no_grad():
            found = torch.isfinite(state.best).view(r, 1, 1, 1)
            mask = torch.where(found, best_m, _squash(m_raw)).detach()
            pat = torch.where(found, best_p, _squash(p_raw)).detach()
            asr_all = _success(model, data, pred, mask, pat, t, device=dev).cpu()
    mask, pat = mask.cpu(), pat.cpu()
    table = torch.stack(rows, 2).cpu() if rows else torch.zeros(6, r, 0)  # (6, R, checks)
    return [Reconstruction(target=int(t[i]), method=method, mask=mask[i], pattern=pat[i],
                           l1=float(mask[i].sum()), success=float(asr_all[i]),
                           bbox=mask_bbox(mask[i]), curve=_curve(table[:, i]),
                           schedule=sched.name) for i in range(r)]


def _curve(rows: torch.Tensor) -> LossCurve:
    """The checks (6, checks) of one trigger, up to its early stop, as a :class:`LossCurve`."""
    rows = rows[:, ~torch.isnan(rows[0])]
    step, loss, l1, asr, cost, best = (tuple(float(v) for v in row) for row in rows)
    return LossCurve(step=tuple(int(v) for v in step), loss=loss, l1=l1, asr=asr, cost=cost,
                     best_l1=best)


def reconstruct_trigger(model: nn.Module, *, target: int, data: torch.Tensor,
                        method: str = "neural-cleanse", generator: torch.Generator,
                        **kwargs: Any) -> Reconstruction:
    """The smallest trigger (mask (1, H, W), pattern (C, H, W)) that sends the clean images
    ``data`` (N, C, H, W) to class ``target``; the keyword arguments are those of
    :func:`reconstruct_triggers`.

    Example:
        >>> rec = reconstruct_trigger(model, target=0, data=x[:200],  # doctest: +SKIP
        ...                           generator=torch.Generator().manual_seed(0))
    """
    return reconstruct_triggers(model, targets=[target], data=data, method=method,
                                generator=generator, **kwargs)[0]


def trigger_images(recs: Sequence[Reconstruction], *, threshold: float = SUCCESS
                   ) -> torch.Tensor:
    """The triggers alone on black (len(recs), C, H, W): the ones that reach ``threshold``
    first, then by increasing mask L1 (the most trigger-like first)."""
    order = sorted(range(len(recs)), key=lambda i: (recs[i].success < threshold, recs[i].l1, i))
    out = torch.stack([recs[i].image() for i in order]).clamp(0, 1)
    return check_tool_output(out, n=len(recs), shape=tuple(out.shape[1:]))


def restart_images(model: nn.Module, *, target: int, data: torch.Tensor, n: int,
                   method: str, generator: torch.Generator, device: str | torch.device,
                   steps: int | None, lr: float, lam: float | None, batch_size: int | None,
                   schedule: str | None) -> torch.Tensor:
    """The tool verb of Neural Cleanse and TABOR: ``n`` restarts for ``target`` from different
    draws of ``generator``, optimised in parallel; their triggers alone on black
    (n, C, H, W), best first (:func:`trigger_images`)."""
    recs = reconstruct_triggers(model, targets=[target] * n, data=data, method=method,
                                steps=steps, lr=lr, lam=lam, batch_size=batch_size,
                                generator=generator, device=device, schedule=schedule)
    return trigger_images(recs)
