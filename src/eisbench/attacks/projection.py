"""The one code path that defines, enforces and checks a perturbation budget.

Every attack steps, starts and projects through these functions, so the budget is enforced in a
single place and asserted (:func:`assert_within_budget`) before any attack returns.
"""

from __future__ import annotations

import torch

NORMS: tuple[str, ...] = ("linf", "l2")
_TOL = 1e-5


class BudgetViolation(AssertionError):
    """An adversarial example left its eps-ball or the [0,1] box."""


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: expected one of {', '.join(NORMS)}")


def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)  # (B, D)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def steepest_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit-norm steepest-ascent direction for ``grad`` (B, ...): sign for Linf, g/||g|| for L2."""
    if norm == "linf":
        return grad.sign()
    n = _flat_norm(grad, "l2").clamp_min(1e-12)  # (B,)
    return grad / n.view(-1, *([1] * (grad.dim() - 1)))


def linf_bounds(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel bounds (lo, hi), each shaped like ``x``, of the Linf ball intersected with [0,1].

    Attacks that project many times onto the same ball compute these once and pass them to
    :func:`project` (one clamp per step instead of five element-wise operations).
    """
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def project(x: torch.Tensor, x_adv: torch.Tensor, *, norm: str, eps: float,
            bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x`` and then onto the [0,1] box.

    Clamping to the box after the ball never leaves the ball (each coordinate moves towards x).
    For Linf the two together are one clamp to :func:`linf_bounds` (pass ``bounds`` to reuse).
    """
    if norm == "linf":
        lo, hi = bounds if bounds is not None else linf_bounds(x, eps)
        return torch.clamp(x_adv, lo, hi)
    delta = x_adv - x  # (B, C, H, W)
    n = _flat_norm(delta, "l2")  # (B,)
    factor = (eps / n.clamp_min(1e-12)).clamp(max=1.0)
    delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, *, norm: str, eps: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random point of the eps-ball around ``x`` (B, C, H, W), clipped to [0,1]."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
        delta = (2 * u - 1) * eps
    else:
        g = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        d = x[0].numel()
        r = torch.rand(len(x), generator=generator, device="cpu").to(x.device) ** (1.0 / d)
        delta = steepest_direction(g, "l2") * (eps * r).view(-1, *([1] * (x.dim() - 1)))
    return project(x, x + delta, norm=norm, eps=eps)


def assert_within_budget(x: torch.Tensor, x_adv: torch.Tensor, *, norm: str, eps: float) -> None:
    """Raise :class:`BudgetViolation` if any ``x_adv`` is outside its eps-ball or outside [0,1]."""
    dist = _flat_norm(x_adv - x, norm)  # (B,)
    worst = float(dist.max()) if len(dist) else 0.0
    if worst > eps * (1 + _TOL) + _TOL:
        raise BudgetViolation(f"{norm} distance {worst:.6g} exceeds eps={eps}")
    if len(x_adv) and (float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0):
        raise BudgetViolation("adversarial example outside the [0,1] image box")


def distance(x: torch.Tensor, x_adv: torch.Tensor, *, norm: str) -> torch.Tensor:
    """Per-example ``norm`` distance (B,) between two batches."""
    return _flat_norm(x_adv - x, norm)
