"""Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021), Linf and L2, (un)targeted.

FMN looks for the smallest perturbation that changes the decision. It descends the logit
difference ``m`` (true logit minus the largest other one; for a target ``t``: the largest other
logit minus ``z_t``; the point is adversarial where ``m < 0``) with normalised gradient steps,
and projects the perturbation onto an Lp-ball whose radius ``eps_k`` adapts at every step:

* adversarial: shrink, ``eps_k = min(eps_{k-1}, ||delta||) * (1 - gamma_k)``;
* not adversarial, an adversarial already seen: grow, ``eps_k = eps_{k-1} * (1 + gamma_k)``;
* not adversarial, none seen yet: the linear estimate of the boundary,
  ``eps_k = max(||delta|| + |m| / ||grad m||_dual, ||delta|| * (1 + gamma_k))`` (the dual of
  Linf is L1, of L2 is L2),

capped at the largest distance the [0,1] box allows. ``gamma_k`` and the step size ``alpha_k``
follow cosine annealing over the steps, ``gamma`` from 0.05 to 0.001 and ``alpha`` from
``alpha_init`` to ``alpha_init / 100``. The step is ``delta -= alpha_k * g / ||g||_2`` for L2
(``alpha_init = 1``, as in the paper) and ``delta -= alpha_k * eps_k * sign(g)`` for Linf
(``alpha_init = 0.5``): a sign step measured in units of the current radius, so that it needs no
knowledge of the image scale. After the ball, ``x + delta`` is clamped to [0,1]. The smallest
adversarial seen is kept.

Two small departures from the paper, both for pixels and points the paper's rule handles badly:
gradient components that would push a pixel already at 0 or 1 out of the box are zeroed before
the step and the boundary estimate (the clamp would undo them, and on images with a saturated
background they otherwise eat most of an L2 step, so the radius stalls); and while no adversarial
has been seen the radius grows by at least ``(1 + gamma_k)``, so an iterate sitting exactly on
a tie of the logits still moves.

``fmn`` turns the minimum-norm search into an attack at a fixed budget ``eps``, which is how an
AutoAttack-style suite uses it (in the role of FAB-T).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eisbench.attacks.core import ATTACKS, RESTARTS, STEPS, check_inputs
from eisbench.attacks.projection import (
    NORMS,
    assert_within_budget,
    distance,
    project,
    random_start,
    steepest_direction,
)
from eisbench.core.tensors import eval_mode

GAMMA_INIT = 0.05
GAMMA_FINAL = 0.001


def logit_margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Logit difference (B,) of logits (B, K) for labels or targets ``y`` (B,); < 0 = success."""
    z_y = logits.gather(1, y[:, None])[:, 0]  # (B,)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
    other = logits.masked_fill(mask, float("-inf")).amax(1)  # (B,) largest other logit
    return other - z_y if targeted else z_y - other


def _success(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(1)  # (B,)
    return pred == y if targeted else pred != y


def _cosine(start: float, end: float, k: int, steps: int) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    flat = g.flatten(1)  # (B, D)
    return flat.abs().sum(1) if norm == "linf" else flat.norm(dim=1)


def _onto_ball(delta: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
    """Project each ``delta`` (B, C, H, W) onto the ``norm``-ball of its own ``radius`` (B,)."""
    r = _view(radius, delta)  # (B, 1, 1, 1)
    if norm == "linf":
        return torch.minimum(torch.maximum(delta, -r), r)
    n = _view(distance(torch.zeros_like(delta), delta, norm="l2"), delta)  # (B, 1, 1, 1)
    return delta * (r / n.clamp_min(1e-12)).clamp(max=1.0)


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor, *, norm: str,
         steps: int, targeted: bool, alpha_init: float | None, budget: float | None,
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FMN run from ``x + delta0`` (B, C, H, W).

    Returns ``(x_best, best_norm, x_in, m_in)``: the smallest adversarial seen (x where none) and
    its norm (B,) (inf where none); the iterate within ``budget`` of lowest margin and that margin
    (B,) (x and +inf when ``budget`` is None). With a budget, an example stops being attacked once
    it has an adversarial within it.
    """
    n = len(x)
    if alpha_init is None:
        alpha_init = 0.5 if norm == "linf" else 1.0
    delta = delta0.clone()  # (B, C, H, W)
    worst = distance(x, (x <= 0.5).to(x.dtype), norm=norm)  # (B,) farthest box corner
    radius = worst.clone()  # (B,) eps_k
    best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    x_best, x_in = x.clone(), x.clone()
    m_in = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    seen = torch.zeros(n, dtype=torch.bool, device=x.device)
    active = torch.arange(n, device=x.device)  # indices still attacked
    for k in range(steps + 1):
        xa = (x[active] + delta[active]).clamp(0.0, 1.0).requires_grad_(True)  # (A, C, H, W)
        logits = model(xa)  # (A, K)
        if k == 0 and len(y) and (logits.shape[1] < 2 or int(y.min()) < 0
                                  or int(y.max()) >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}) and the model must have "
                             f"at least 2 classes; got labels in [{int(y.min())}, {int(y.max())}]")
        m = logit_margin(logits, y[active], targeted)  # (A,)
        with torch.no_grad():
            ok = _success(logits, y[active], targeted)  # (A,)
            dn = distance(x[active], xa, norm=norm)  # (A,)
            better = ok & (dn < best_norm[active])
            best_norm[active[better]] = dn[better]
            x_best[active[better]] = xa[better].detach()
            seen[active] |= ok
            if budget is not None:
                lower = (dn <= budget) & (m.detach() < m_in[active])
                m_in[active[lower]] = m.detach()[lower].to(m_in.dtype)
                x_in[active[lower]] = xa[lower].detach()
        if k == steps:
            break
        (g,) = torch.autograd.grad(m.sum(), xa)  # (A, C, H, W)
        with torch.no_grad():
            blocked = ((xa <= 0) & (g > 0)) | ((xa >= 1) & (g < 0))  # descent leaves the box
            g = g.masked_fill(blocked, 0.0)  # (A, C, H, W)
            gamma = _cosine(GAMMA_INIT, GAMMA_FINAL, k, steps)
            alpha = _cosine(alpha_init, alpha_init / 100, k, steps)
            to_boundary = torch.maximum(  # (A,) linear estimate, and at least a growth by gamma
                dn + m.detach().abs() / _dual_norm(g, norm).clamp_min(1e-12), dn * (1 + gamma))
            r = radius[active]
            r = torch.where(ok, torch.minimum(r, dn) * (1 - gamma),
                            torch.where(seen[active], r * (1 + gamma), to_boundary))
            r = torch.minimum(r, worst[active])  # (A,)
            radius[active] = r
            size = alpha * _view(r, g) if norm == "linf" else alpha  # Linf: in units of eps_k
            d = _onto_ball(delta[active] - size * steepest_direction(g, norm), r, norm)
            delta[active] = (x[active] + d).clamp(0.0, 1.0) - x[active]
            if budget is not None:
                active = active[~(best_norm[active] <= budget)]
                if len(active) == 0:
                    break
    return x_best, best_norm, x_in, m_in


def _start(x: torch.Tensor, radius: float, norm: str,
           generator: torch.Generator | None) -> torch.Tensor:
    if radius <= 0:
        return torch.zeros_like(x)
    return random_start(x, norm=norm, eps=radius, generator=generator) - x  # (B, C, H, W)


def fmn_min_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf",
                 steps: int = 100, targeted: bool = False, alpha_init: float | None = None,
                 init_radius: float = 0.0, generator: torch.Generator | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest adversarial perturbation FMN finds for each example.

    Args:
        model: maps (B, C, H, W) images in [0,1] to logits (B, K), K >= 2.
        x: clean images (B, C, H, W) in [0,1].  y: labels (B,), or target labels if ``targeted``.
        alpha_init: first step size (cosine-annealed to ``alpha_init / 100``); for Linf a
            fraction of the current radius (default 0.5), for L2 a length (default 1.0).
        init_radius: start from a random point of this ``norm``-ball (drawn from ``generator``)
            instead of from ``x``.

    Returns:
        ``(x_best, norms)``: x_best (B, C, H, W) in [0,1], the smallest adversarial found (``x``
        where none was found), and its ``norm`` distance to ``x`` (B,), ``inf`` where none.

    Example:
        >>> x_best, norms = fmn_min_norm(model, x, y, norm="l2", steps=100)
        >>> robust_at_half = (norms > 0.5).float().mean()
    """
    check_inputs(x, y, norm=norm, eps=init_radius)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with eval_mode(model):
        x_best, norms, _, _ = _run(model, x, y, _start(x, init_radius, norm, generator),
                                   norm=norm, steps=steps, targeted=targeted,
                                   alpha_init=alpha_init, budget=None)
    return x_best, norms


@ATTACKS.register("fmn", norms=NORMS, white_box=True, params={
    "steps": STEPS,
    "restarts": RESTARTS,
})
def fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
        steps: int = 100, targeted: bool = False, restarts: int = 1,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """FMN at a fixed budget: an adversarial example within ``eps`` where FMN finds one.

    Per example, the returned point is the first adversarial found within ``eps`` (the run stops
    attacking an example once it has one). Otherwise it is whichever of two in-budget candidates
    has the lower logit margin: the smallest adversarial found, projected into the eps-ball, and
    the lowest-margin iterate that lay inside the ball. Restart ``r >= 1`` attacks only the
    examples still unbroken, from a random point of the ``eps / 2``-ball drawn from ``generator``.

    Args:
        model: maps (B, C, H, W) images in [0,1] to logits (B, K), K >= 2.
        x: clean images (B, C, H, W) in [0,1].  y: labels (B,), or target labels if ``targeted``.
        eps: radius of the ``norm`` ball.  steps: FMN steps per run.

    Returns:
        x_adv (B, C, H, W) within the budget and in [0,1].

    Example:
        >>> x_adv = fmn(model, x, y, eps=0.3, norm="linf", steps=100, restarts=2,
        ...             generator=torch.Generator().manual_seed(0))
    """
    check_inputs(x, y, norm=norm, eps=eps, attack="fmn", steps=steps, restarts=restarts)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with eval_mode(model):
        out = x.clone()  # (B, C, H, W)
        out_margin = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
        todo = torch.arange(len(x), device=x.device)
        for r in range(max(restarts, 1)):
            if r > 0 and eps <= 0:
                break
            xs, ys = x[todo], y[todo]
            x_best, norms, x_in, m_in = _run(
                model, xs, ys, _start(xs, eps / 2 if r > 0 else 0.0, norm, generator),
                norm=norm, steps=steps, targeted=targeted, alpha_init=None, budget=eps)
            with torch.no_grad():
                x_proj = project(xs, x_best, norm=norm, eps=eps)  # (T, C, H, W)
                m_proj = logit_margin(model(x_proj), ys, targeted)  # (T,)
                use_proj = m_proj < m_in
                cand = torch.where(_view(use_proj, xs), x_proj, x_in)
                m_cand = torch.minimum(m_proj, m_in)
                found = norms <= eps
                cand = torch.where(_view(found, xs), x_best, cand)
                m_cand = torch.where(found, -math.inf, m_cand)
                broken = found | _success(model(cand), ys, targeted)
                keep = broken | (m_cand < out_margin[todo])
                out[todo[keep]] = cand[keep]
                out_margin[todo[keep]] = m_cand[keep].to(out_margin.dtype)
            todo = todo[~broken]
            if len(todo) == 0:
                break
    assert_within_budget(x, out, norm=norm, eps=eps)
    return out
