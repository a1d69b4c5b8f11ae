"""Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021), Linf and L2, (un)targeted.

FMN looks for the smallest perturbation that changes the decision. It descends the logit
difference ``m`` (true logit minus the largest other one; for a target ``t``: the largest other
logit minus ``z_t``; the point is adversarial where ``m < 0``) with normalised gradient steps,
and projects the perturbation onto an Lp-ball whose radius ``eps_k`` adapts at every step
(:func:`next_radius`):

* adversarial: shrink, ``eps_k = min(eps_{k-1} (1 - gamma_k), best)``, ``best`` the smallest
  adversarial norm so far;
* not adversarial, an adversarial already seen: grow, ``eps_k = eps_{k-1} (1 + gamma_k)``;
* not adversarial, none seen yet: the linear estimate of the boundary,
  ``eps_k = ||delta|| + |m| / ||grad m||_dual`` (the dual of Linf is L1, of L2 is L2),

capped at the largest distance the [0,1] box allows (``eps_0`` is infinite, so the first
radius is that cap or one of the rules). ``gamma_k`` and the step size ``alpha_k`` follow cosine
annealing over the steps, ``gamma`` from 0.05 to 0.001 and ``alpha`` from ``alpha_init = 1`` to
``alpha_init / 100``. The step is ``delta -= alpha_k g / ||g||_2`` for both norms, then onto the
eps_k-ball, then ``x + delta`` is clamped to [0,1]. The smallest adversarial seen is kept.

Against the reference implementation (adversarial-library, Rony & Pintor,
``adv_lib/attacks/fast_minimum_norm.py`` at 9dec220, "adapted from" maurapintor's; the same rules
in pralab/Fast-Minimum-Norm-FMN-Attack ``src/attacks/fmn.py`` at 98c68c2, lines 166-218):

=====================  ===========================  ==========================================
rule                   reference (fast_minimum_norm  here, ``recipe=``
                       .py line)
=====================  ===========================  ==========================================
Linf step              ``alpha g / ||g||_2`` (204-205) same in ``guarded``/``reference``;
                                                    ``eisbench-v1`` stepped
                                                    ``alpha eps_k sign(g)``, alpha_init 0.5
shrink when adv.       ``min(eps (1-gamma), best)``  same; ``eisbench-v1`` shrank
                       (198)                        ``min(eps, ||delta||) (1 - gamma)``
grow when adv. seen    ``eps (1+gamma)`` (199)       same
estimate, none seen    ``||delta|| + |m|/||g||_*``   ``guarded``, ``eisbench-v1``: at least
                       (196, 199)                   ``||delta|| (1 + gamma)`` (guard 2)
gradient at the box    unchanged (181)              ``guarded``, ``eisbench-v1``: components
                                                    pushing a pixel at 0 or 1 outwards are zeroed
                                                    before the step and the estimate (guard 1)
gamma, alpha schedule  cosine, 0.05 to 0.001, a to  same
                       a/100 (166-168)
eps_0, cap             inf; ``||max(x, 1-x)||``     same
                       (157, 160, 202)
projection, clamp      ball then [0,1] (207-209)    same
best bookkeeping       strict ``<``, from the cap   strict ``<``, from inf: "none found" is inf
                       (160-161, 184-188)           (an adversarial at exactly the cap counts)
points judged          ``steps`` (165)              ``steps + 1``: the last step's point too
=====================  ===========================  ==========================================

The two guards are for pixels and points the reference's rules handle badly, and both are
measured (``tests/test_fmn.py``): (1) on images with a saturated background the clamp undoes most
of an L2 step that pushes background pixels out of the box, so the radius stalls (8x8 digits,
a small CNN, 200 test images, 100 steps: the reference finds an L2 adversarial for 76, the
guarded rules for all 200; ``fmn`` at L2 eps 0.5 leaves 89.5% robust under the reference's rules,
50.5% under the guarded ones and under ``eisbench-v1``, 50.5% under PGD-40; at Linf eps 0.1 the
three give 53.0%, 53.0%, 53.5%); (2) a linear model's linear estimate is exact, so the first step
lands on a tie of the logits, which is not adversarial, and without growth the radius stays
there (the closed-form minimal distances of a 2-D linear model are not reached).
``recipe="reference"`` runs the reference's rules alone, ``"eisbench-v1"`` this module's earlier
ones.

``fmn`` turns the minimum-norm search into an attack at a fixed budget ``eps``, which is how an
AutoAttack-style suite uses it (in the role of FAB-T).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eisbench.attacks.core import ATTACKS, RESTARTS, STEPS, Hyper, check_inputs
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


RECIPES = ("guarded", "reference", "eisbench-v1")
"""``guarded`` (the default): the reference implementation's step and radius rules plus two
guards; ``reference``: the reference's rules alone; ``eisbench-v1``: this module's earlier rules
(module docstring)."""


def next_radius(radius: torch.Tensor, *, norm_now: torch.Tensor, best_norm: torch.Tensor,
                margin: torch.Tensor, grad_dual: torch.Tensor, adversarial: torch.Tensor,
                seen: torch.Tensor, gamma: float, worst: torch.Tensor,
                recipe: str = "guarded") -> torch.Tensor:
    """FMN's radius eps_k (B,) from eps_{k-1} ``radius`` (B,) and the current iterate.

    ``norm_now`` = ||delta_k||, ``best_norm`` the smallest adversarial norm so far (this iterate
    included), ``margin`` its logit margin m, ``grad_dual`` = ||grad m||_dual, ``adversarial``
    / ``seen`` whether this iterate / any iterate so far is adversarial (all (B,)). Reference:
    ``min(eps (1 - gamma), best_norm)`` if adversarial, else ``eps (1 + gamma)`` once an
    adversarial was seen, else ``||delta|| + |m| / ||grad m||_dual``; then at most ``worst``.
    ``guarded`` grows the last by at least ``(1 + gamma)``; ``eisbench-v1`` does too and shrinks
    ``min(eps, ||delta||) (1 - gamma)`` instead.

    Example:
        >>> r = next_radius(torch.tensor([1.0]), norm_now=torch.tensor([0.5]),
        ...                 best_norm=torch.tensor([0.5]), margin=torch.tensor([-0.1]),
        ...                 grad_dual=torch.tensor([2.0]), adversarial=torch.tensor([True]),
        ...                 seen=torch.tensor([True]), gamma=0.05, worst=torch.tensor([9.0]))
        >>> float(r)  # min(1.0 * 0.95, 0.5)
        0.5
    """
    to_boundary = norm_now + margin.abs() / grad_dual.clamp_min(1e-12)  # (B,) linear estimate
    if recipe != "reference":  # guard: an iterate on a tie of the logits still moves out
        to_boundary = torch.maximum(to_boundary, norm_now * (1 + gamma))
    if recipe == "eisbench-v1":
        shrink = torch.minimum(radius, norm_now) * (1 - gamma)
    else:
        shrink = torch.minimum(radius * (1 - gamma), best_norm)
    r = torch.where(adversarial, shrink, torch.where(seen, radius * (1 + gamma), to_boundary))
    return torch.minimum(r, worst)


def _check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor, *, norm: str,
         steps: int, targeted: bool, alpha_init: float | None, budget: float | None,
         recipe: str = "guarded",
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FMN run from ``x + delta0`` (B, C, H, W).

    Returns ``(x_best, best_norm, x_in, m_in)``: the smallest adversarial seen (x where none) and
    its norm (B,) (inf where none); the iterate within ``budget`` of lowest margin and that margin
    (B,) (x and +inf when ``budget`` is None). With a budget, an example stops being attacked once
    it has an adversarial within it.
    """
    _check_recipe(recipe)
    v1 = recipe == "eisbench-v1"
    n = len(x)
    if alpha_init is None:
        alpha_init = 0.5 if norm == "linf" and v1 else 1.0
    delta = delta0.clone()  # (B, C, H, W)
    worst = distance(x, (x <= 0.5).to(x.dtype), norm=norm)  # (B,) farthest box corner
    radius = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)  # (B,) eps_k
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
            if recipe != "reference":  # guard: no descent component that leaves the box
                blocked = ((xa <= 0) & (g > 0)) | ((xa >= 1) & (g < 0))
                g = g.masked_fill(blocked, 0.0)  # (A, C, H, W)
            gamma = _cosine(GAMMA_INIT, GAMMA_FINAL, k, steps)
            alpha = _cosine(alpha_init, alpha_init / 100, k, steps)
            r = next_radius(radius[active], norm_now=dn, best_norm=best_norm[active],
                            margin=m.detach(), grad_dual=_dual_norm(g, norm), adversarial=ok,
                            seen=seen[active], gamma=gamma, worst=worst[active], recipe=recipe)
            radius[active] = r
            if not v1 or norm == "l2":  # alpha g / ||g||_2 for every norm
                step = alpha * steepest_direction(g, "l2")
            else:  # eisbench-v1 Linf: a sign step in units of the radius
                step = alpha * _view(r, g) * g.sign()
            d = _onto_ball(delta[active] - step, r, norm)
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
                 recipe: str = "guarded") -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest adversarial perturbation FMN finds for each example.

    Args:
        model: maps (B, C, H, W) images in [0,1] to logits (B, K), K >= 2.
        x: clean images (B, C, H, W) in [0,1].  y: labels (B,), or target labels if ``targeted``.
        alpha_init: first step size, an L2 length (cosine-annealed to ``alpha_init / 100``;
            default 1.0; under ``recipe="eisbench-v1"`` a fraction of the radius for Linf,
            default 0.5).
        init_radius: start from a random point of this ``norm``-ball (drawn from ``generator``)
            instead of from ``x``.
        recipe: ``"guarded"`` (the reference implementation's rules and two guards),
            ``"reference"`` (its rules alone) or ``"eisbench-v1"`` (the earlier rules); see
            the module docstring.

    Returns:
        ``(x_best, norms)``: x_best (B, C, H, W) in [0,1], the smallest adversarial found (``x``
        where none was found), and its ``norm`` distance to ``x`` (B,), ``inf`` where none.

    Example:
        >>> x_best, norms = fmn_min_norm(model, x, y, norm="l2", steps=100)
        >>> robust_at_half = (norms > 0.5).float().mean()
    """
    check_inputs(x, y, norm=norm, eps=init_radius)
    _check_recipe(recipe)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with eval_mode(model):
        x_best, norms, _, _ = _run(model, x, y, _start(x, init_radius, norm, generator),
                                   norm=norm, steps=steps, targeted=targeted,
                                   alpha_init=alpha_init, budget=None, recipe=recipe)
    return x_best, norms


@ATTACKS.register("fmn", norms=NORMS, white_box=True, params={
    "steps": STEPS,
    "restarts": RESTARTS,
    "recipe": Hyper("guarded", str, "FMN's rules: guarded (the reference's and two guards), "
                    "reference (the reference's alone) or eisbench-v1 (the earlier ones)",
                    choices=RECIPES),
})
def fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
        steps: int = 100, targeted: bool = False, restarts: int = 1,
        generator: torch.Generator | None = None, recipe: str = "guarded") -> torch.Tensor:
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
        recipe: FMN's rules (:data:`RECIPES`, module docstring).

    Returns:
        x_adv (B, C, H, W) within the budget and in [0,1].

    Example:
        >>> x_adv = fmn(model, x, y, eps=0.3, norm="linf", steps=100, restarts=2,
        ...             generator=torch.Generator().manual_seed(0))
    """
    check_inputs(x, y, norm=norm, eps=eps, attack="fmn", steps=steps, restarts=restarts,
                 recipe=recipe)
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
                norm=norm, steps=steps, targeted=targeted, alpha_init=None, budget=eps,
                recipe=recipe)
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
