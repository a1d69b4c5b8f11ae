"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that adapts itself.

Two registered attacks, Linf and L2:

* ``apgd``: untargeted, cross-entropy (``loss="ce"``) or difference-of-logits-ratio (``"dlr"``).
* ``apgd-t``: targeted DLR towards ``n_targets`` wrong classes in turn, ranked
  (``target_selection``) by the clean logits, highest first (``"logits"``, AutoAttack's
  ``autopgd_base.py:655-668``), or by MALT's score (``"malt"``, :func:`malt_scores`).

The step size starts at ``2 eps`` and is halved at checkpoints ``w_j`` (``p_0 = 0``,
``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) where fewer than 75% of the
steps since the last checkpoint increased the loss, or where the step was not halved last time and
the best loss has not improved; then the iterate restarts from the best point. An example stops
being attacked as soon as it is misclassified (its adversarial example is kept), so only
unbroken examples cost compute.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.attacks.core import ATTACKS, RESTARTS, STEPS, Hyper, check_inputs
from eisbench.attacks.projection import (
    NORMS,
    assert_within_budget,
    project,
    random_start,
    steepest_direction,
)
from eisbench.core.tensors import eval_mode


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (B,) of logits (B, K >= 3) and labels (B,); higher = closer
    to misclassification. Invariant to shifts and rescaling of the logits.
    """
    srt, _ = logits.sort(dim=1, descending=True)  # (B, K)
    z_y = logits.gather(1, y[:, None])[:, 0]
    top_is_y = srt[:, 0] == z_y
    other = torch.where(top_is_y, srt[:, 1], srt[:, 0])  # largest logit of another class
    return -(z_y - other) / (srt[:, 0] - srt[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (B,) towards targets ``t`` (B,); needs K >= 4 classes."""
    srt, _ = logits.sort(dim=1, descending=True)  # (B, K)
    z_y = logits.gather(1, y[:, None])[:, 0]
    z_t = logits.gather(1, t[:, None])[:, 0]
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


def checkpoints(steps: int) -> list[int]:
    """Iterations at which the step size may be halved (Croce & Hein 2020, Sec. 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w = (math.ceil(round(q * steps, 6)) for q in p[1:])
    return sorted({v for v in w if v < steps})


def _loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
          loss: str) -> torch.Tensor:
    if t is not None:
        return dlr_targeted_loss(logits, y, t)
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return dlr_loss(logits, y)


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, *,
         eps: float, norm: str, steps: int, loss: str, momentum: float, rho: float,
         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run on (B, C, H, W). Returns (x_out (B, C, H, W), fooled (B,) bool); x_out is an
    adversarial example where fooled, else the point of highest loss.
    """
    n = len(x)
    x_out = random_start(x, norm=norm, eps=eps, generator=generator)  # (B, C, H, W)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    checks = set(checkpoints(steps))

    def grad_at(xa: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        xa = xa.clone().requires_grad_(True)
        logits = model(xa)  # (A, K)
        lv = _loss(logits, y[idx], None if t is None else t[idx], loss)  # (A,)
        (g,) = torch.autograd.grad(lv.sum(), xa)
        return lv.detach(), g, logits.detach().argmax(1) != y[idx]

    idx = torch.arange(n, device=x.device)  # original index of each active example
    cur = x_out.clone()
    lv, grad, wrong = grad_at(cur, idx)
    fooled |= wrong
    prev = cur.clone()
    best_x, best_l, best_g = cur.clone(), lv.clone(), grad.clone()
    last_l = lv.clone()  # loss of the previous iterate
    step = torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype)  # (n,)
    n_up = torch.zeros(n, device=x.device)
    since = 0  # steps since the last checkpoint
    best_at_check = best_l.clone()
    halved_last = torch.zeros(n, dtype=torch.bool, device=x.device)
    for k in range(steps):
        keep = ~fooled[idx]  # drop examples already fooled
        if not bool(keep.all()):
            idx, cur, prev, grad = idx[keep], cur[keep], prev[keep], grad[keep]
            best_x, best_l, best_g = best_x[keep], best_l[keep], best_g[keep]
            last_l, step, n_up = last_l[keep], step[keep], n_up[keep]
            best_at_check, halved_last = best_at_check[keep], halved_last[keep]
        if len(idx) == 0:
            break
        x0 = x[idx]
        view = (-1,) + (1,) * (x.dim() - 1)
        z = project(x0, cur + step.view(view) * steepest_direction(grad, norm), norm=norm, eps=eps)
        a = 1.0 if k == 0 else momentum
        nxt = project(x0, cur + a * (z - cur) + (1 - a) * (cur - prev), norm=norm, eps=eps)
        prev, cur = cur, nxt
        lv, grad, wrong = grad_at(cur, idx)
        x_out[idx[wrong]] = cur[wrong]
        fooled[idx[wrong]] = True
        n_up += (lv > last_l).float()
        last_l = lv
        better = lv > best_l
        best_x[better], best_l[better], best_g[better] = cur[better], lv[better], grad[better]
        since += 1
        if k + 1 in checks:
            halve = (n_up <= rho * since) | (~halved_last & (best_at_check >= best_l))
            step[halve] /= 2.0
            cur[halve], grad[halve] = best_x[halve], best_g[halve]
            halved_last, best_at_check = halve, best_l.clone()
            n_up.zero_()
            since = 0
    unbroken = idx[~fooled[idx]]
    if len(unbroken):
        x_out[unbroken] = best_x[~fooled[idx]]
    return x_out, fooled


DUAL_NORM = {"linf": 1.0, "l2": 2.0}  # the dual of each threat model's norm


def other_classes(y: torch.Tensor, k: int) -> torch.Tensor:
    """Every class but y (B, K-1), in increasing order, for labels y (B,)."""
    every = torch.arange(k, device=y.device).expand(len(y), k)  # (B, K)
    return every[every != y[:, None]].view(len(y), k - 1)


def malt_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MALT's score (Melamed, Yehudai & Shamir 2024) of each class t other than the label, for
    images x (B, C, H, W) with labels y (B,): the linearised distance from x to the boundary
    between y and t,

        (z_y(x) - z_t(x)) / ||grad_x (z_y - z_t)(x)||_q,

    q the dual norm of the threat model (1 for Linf, 2 for L2): for a linear model, the exact
    ``norm`` distance from x to that boundary. Returns (scores (B, K-1), classes (B, K-1): the
    class t of each score, :func:`other_classes`). Costs one forward and K-1 backward passes
    per example (one gradient of z_y - z_t per t, each counted by
    :func:`~eisbench.attacks.count_passes`).

    Example:
        >>> scores, classes = malt_scores(model, x, y, norm="linf")
        >>> nearest = classes.gather(1, scores.argsort(dim=1))[:, :3]  # three first targets
    """
    rows = torch.arange(len(x), device=x.device)
    with torch.enable_grad():
        xa = x.detach().clone().requires_grad_(True)
        logits = model(xa)  # (B, K)
        k = int(logits.shape[1])
        classes = other_classes(y, k)  # (B, K-1)
        z_y = logits[rows, y]  # (B,)
        norms = []
        for j in range(k - 1):
            (g,) = torch.autograd.grad((z_y - logits[rows, classes[:, j]]).sum(), xa,
                                       retain_graph=j < k - 2)  # (B, C, H, W)
            norms.append(g.flatten(1).norm(p=DUAL_NORM[norm], dim=1))
    z = logits.detach()
    gap = z[rows, y][:, None] - z.gather(1, classes)  # (B, K-1): z_y - z_t
    return gap / torch.stack(norms, dim=1).clamp_min(1e-12), classes


def target_order(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str,
                 selection: str, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Every class but y (B, K-1), first target first: by the clean logits, highest first
    (``"logits"``; pass ``logits`` (B, K) to spare a forward pass), or by
    :func:`malt_scores`, smallest first (``"malt"``); ties keep the lower class first.

    Example:
        >>> target_order(model, x, y, norm="linf", selection="malt")[:, 0]  # (B,) first targets
    """
    if selection == "malt":
        scores, classes = malt_scores(model, x, y, norm=norm)
        return classes.gather(1, scores.argsort(dim=1, stable=True))
    if logits is None:
        with torch.no_grad():
            logits = model(x)  # (B, K)
    order = logits.sort(dim=1, descending=True, stable=True).indices  # (B, K)
    return order[order != y[:, None]].view(len(x), -1)


def _check_classes(model: nn.Module, x: torch.Tensor, need: int, what: str) -> int:
    with torch.no_grad():
        k = int(model(x[:1]).shape[1])
    if k < need:
        raise ValueError(f"{what} needs at least {need} classes, the model has {k}: use "
                         "apgd with loss='ce' instead")
    return k


TARGET_SELECTION = Hyper(
    "logits", str, "how apgd-t ranks its targets: logits (highest clean logit first, as "
    "AutoAttack) or malt (smallest linearised distance to the boundary, Melamed et al. 2024; "
    "K-1 backward passes per example)", ("logits", "malt"))
_APGD_STEP = {"momentum": Hyper(0.75, float, "APGD's momentum", lo=0.0, hi=1.0),
              "rho": Hyper(0.75, float, "APGD's step-halving threshold", lo=0.0, hi=1.0)}


@ATTACKS.register("apgd", norms=NORMS, white_box=True, params={
    "steps": STEPS,
    "loss": Hyper("ce", str, "the loss APGD ascends (dlr needs >= 3 classes)", ("ce", "dlr")),
    "restarts": RESTARTS,
    **_APGD_STEP,
})
def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
         steps: int = 100, loss: str = "ce", restarts: int = 1, momentum: float = 0.75,
         rho: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted APGD with cross-entropy (``loss="ce"``) or DLR (``"dlr"``, K >= 3) loss.

    Args:
        model: maps (B, C, H, W) images in [0,1] to logits (B, K).
        x: clean images (B, C, H, W) in [0,1].  y: labels (B,).
        eps, norm: the threat model (``"linf"`` or ``"l2"``).
        steps: iterations per run.  restarts: further runs from new random starts, only on the
            examples not yet misclassified.
        generator: seeds the random starts, for reproducibility.

    Returns:
        x_adv (B, C, H, W) within the budget and in [0,1]: misclassified where the attack
        succeeded, else the point of highest loss found.

    Example:
        >>> x_adv = apgd(model, x, y, eps=0.3, loss="dlr")
    """
    check_inputs(x, y, norm=norm, eps=eps, attack="apgd", steps=steps, loss=loss,
                 restarts=restarts, momentum=momentum, rho=rho)  # loss: ce or dlr
    with eval_mode(model):
        if loss == "dlr" and len(x):
            _check_classes(model, x, 3, "the DLR loss")
        out = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for _ in range(max(restarts, 1)):
            if len(todo) == 0:
                break
            xa, ok = _run(model, x[todo], y[todo], None, eps=eps, norm=norm, steps=steps,
                          loss=loss, momentum=momentum, rho=rho, generator=generator)
            out[todo] = xa
            todo = todo[~ok]
    assert_within_budget(x, out, norm=norm, eps=eps)
    return out


@ATTACKS.register("apgd-t", norms=NORMS, white_box=True, min_classes=4, params={
    "steps": STEPS,
    "n_targets": Hyper(9, int, "target classes tried, first ranked first (apgd-t)", lo=1),
    "restarts": RESTARTS,
    "target_selection": TARGET_SELECTION,
    **_APGD_STEP,
})
def apgd_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
           norm: str = "linf", steps: int = 100, n_targets: int = 9, restarts: int = 1,
           target_selection: str = "logits", momentum: float = 0.75, rho: float = 0.75,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Targeted APGD with the targeted DLR loss, towards the ``n_targets`` first classes
    other than y in ``target_selection``'s ranking (:func:`target_order`: the highest clean
    logits, or the smallest MALT scores), one after the other, each only on the examples not
    yet misclassified. Needs K >= 4 classes. Shapes and return value as :func:`apgd`.

    Example:
        >>> x_adv = apgd_t(model, x, y, eps=0.3, n_targets=9)
        >>> x_adv = apgd_t(model, x, y, eps=0.3, n_targets=3, target_selection="malt")
    """
    check_inputs(x, y, norm=norm, eps=eps, attack="apgd-t", steps=steps, n_targets=n_targets,
                 restarts=restarts, target_selection=target_selection, momentum=momentum,
                 rho=rho)
    with eval_mode(model):
        if not len(x):
            return x.clone()
        k = _check_classes(model, x, 4, "the targeted DLR loss")
        with torch.no_grad():
            logits = model(x)  # (B, K)
        out = x.clone()
        todo = (logits.argmax(1) == y).nonzero().flatten()
        order = torch.zeros(len(x), k - 1, dtype=torch.long, device=x.device)  # (B, K-1)
        if len(todo):  # ranked only where attacked: MALT costs K-1 backward passes each
            order[todo] = target_order(model, x[todo], y[todo], norm=norm,
                                       selection=target_selection, logits=logits[todo])
        for j in range(min(n_targets, k - 1)):
            for _ in range(max(restarts, 1)):
                if len(todo) == 0:
                    break
                t = order[todo, j]
                xa, ok = _run(model, x[todo], y[todo], t, eps=eps, norm=norm, steps=steps,
                              loss="dlr", momentum=momentum, rho=rho, generator=generator)
                out[todo] = xa
                todo = todo[~ok]
    assert_within_budget(x, out, norm=norm, eps=eps)
    return out
