"""Projected gradient descent (Madry et al. 2018) and FGSM, Linf and L2, (un)targeted."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.attacks.core import ATTACKS, RESTARTS, Hyper, check_inputs
from eisbench.attacks.projection import (
    NORMS,
    assert_within_budget,
    linf_bounds,
    project,
    random_start,
    steepest_direction,
)
from eisbench.core.tensors import eval_mode


def _success(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(1)  # (B,)
    return pred == y if targeted else pred != y


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
         steps: int, norm: str, targeted: bool, rand_init: bool, early_exit: bool,
         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One PGD run. Returns (x_adv (B,C,H,W), success (B,) bool) judged on the returned points."""
    x_adv = random_start(x, norm=norm, eps=eps, generator=generator) if rand_init else x.clone()
    sign = -1.0 if targeted else 1.0
    if not early_exit:  # fixed steps on the whole batch: no gather/scatter per step
        bounds = linf_bounds(x, eps) if norm == "linf" else None
        for _ in range(steps):
            xa = x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(xa), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                x_adv = project(x, xa + sign * step_size * steepest_direction(grad, norm),
                                norm=norm, eps=eps, bounds=bounds)
        with torch.no_grad():
            return x_adv.detach(), _success(model(x_adv), y, targeted)
    # Early exit: an example's adversarial example is frozen the first time it succeeds. Fooled
    # examples are dropped from the batch only once they make up 1/8 of it, so that a robust
    # model (few successes) pays no gather/scatter per step.
    out, done = x_adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    active = torch.arange(len(x), device=x.device)  # indices of the rows of xs
    xs, x0, ya = x_adv, x, y
    bounds = linf_bounds(x0, eps) if norm == "linf" else None
    for _ in range(steps):
        xa = xs.requires_grad_(True)  # (A, C, H, W)
        logits = model(xa)
        new = _success(logits.detach(), ya, targeted) & ~done[active]  # (A,)
        if bool(new.any()):
            out[active[new]] = xa.detach()[new]
            done[active[new]] = True
        loss = F.cross_entropy(logits, ya, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        with torch.no_grad():
            xs = project(x0, xa + sign * step_size * steepest_direction(grad, norm), norm=norm,
                         eps=eps, bounds=bounds)
        finished = done[active]
        if float(finished.float().mean()) >= 0.125:
            keep = ~finished
            active, xs, x0, ya = active[keep], xs[keep], x0[keep], ya[keep]
            bounds = None if bounds is None else (bounds[0][keep], bounds[1][keep])
            if len(active) == 0:
                break
    with torch.no_grad():
        rest = ~done[active]
        if bool(rest.any()):
            idx = active[rest]
            out[idx] = xs[rest]
            done[idx] = _success(model(xs[rest]), ya[rest], targeted)
    return out.detach(), done


@ATTACKS.register("pgd", norms=NORMS, white_box=True, params={
    "steps": Hyper(40, int, "iterations per run", lo=1),
    "step_size": Hyper(None, float, "step of each iteration; None: 2.5 * eps / steps", lo=0.0),
    "restarts": RESTARTS,
    "random_start": Hyper(True, bool, "start the first run at a random point of the eps-ball"),
    "early_exit": Hyper(False, bool, "stop attacking an example once it is fooled"),
})
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
        step_size: float | None = None, steps: int = 40, norm: str = "linf",
        targeted: bool = False, random_start: bool = True, restarts: int = 1,
        early_exit: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy loss.

    Args:
        model: maps (B, C, H, W) images in [0,1] to logits (B, K).
        x: clean images (B, C, H, W) in [0,1].  y: labels (B,), or target labels if ``targeted``.
        eps: radius of the ``norm`` ball.  step_size: defaults to ``2.5 * eps / steps``.
        restarts: extra random restarts are run only on examples not yet fooled (worst case).
        early_exit: stop attacking an example as soon as it is fooled (for evaluation: cheaper
            and never weaker, since a fooled example is never "un-fooled" by later steps).
        generator: seeds the random start, for reproducibility.

    Returns:
        x_adv (B, C, H, W) within the budget and in [0,1].

    Example:
        >>> x_adv = pgd(model, x, y, eps=0.3, steps=40, restarts=2, early_exit=True)
    """
    check_inputs(x, y, norm=norm, eps=eps, attack="pgd", steps=steps, step_size=step_size,
                 restarts=restarts, random_start=random_start, early_exit=early_exit)
    step = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    with eval_mode(model):
        out = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for r in range(max(restarts, 1)):
            xa, ok = _run(model, x[todo], y[todo], eps=eps, step_size=step, steps=steps,
                          norm=norm, targeted=targeted, rand_init=random_start or r > 0,
                          early_exit=early_exit, generator=generator)
            out[todo] = xa
            todo = todo[~ok]
            if len(todo) == 0:
                break
    assert_within_budget(x, out, norm=norm, eps=eps)
    return out


@ATTACKS.register("fgsm", norms=NORMS, white_box=True, params={})
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
         targeted: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fast gradient (sign) method: one step of size ``eps`` from ``x`` (Goodfellow et al. 2015).

    Shapes as :func:`pgd`. ``generator`` is accepted for a uniform signature and unused.
    """
    del generator
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, norm=norm, targeted=targeted,
               random_start=False)
