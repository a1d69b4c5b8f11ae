"""Square attack (Andriushchenko et al. 2020): score-based random search, Linf and L2.

Gradient-free: it only reads the logits. Each iteration proposes, for every example not yet
misclassified, one random change localised in a square window and keeps it if it lowers the
margin loss ``z_y - max_{j != y} z_j`` (untargeted). The window side follows a fraction ``p`` of
the image area that starts at ``p_init`` and is halved at iterations 10, 50, 200, 500, 1000, 2000,
4000, 6000 and 8000 out of 10000 (rescaled to ``n_queries``).

* Linf: start from vertical stripes of +-eps (one random sign per channel and column); a
  proposal sets one window of every channel to a random +-eps (resampled per example until it
  differs from the current window).
* L2: start from a grid of tiles each holding a pair of opposite pseudo-Gaussian bumps of random
  sign, rescaled to norm eps. A proposal draws two windows: the perturbation of the second is
  moved into the first together with the budget left unused, a fresh pair of bumps is added there,
  and the whole perturbation is rescaled to norm eps, so its norm stays at eps.

An example stops being queried as soon as it is misclassified; examples misclassified on the clean
input are never queried again and are returned unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eisbench.attacks.core import ATTACKS, RESTARTS, Hyper, check_inputs
from eisbench.attacks.projection import NORMS, assert_within_budget, project
from eisbench.core.tensors import eval_mode

_P_MILESTONES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # out of 10000 iterations
_MAX_RESAMPLE = 32  # Linf: draws of new signs per window before giving up on a change


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` (B,) of logits (B, K >= 2); negative iff misclassified."""
    z_y = logits.gather(1, y[:, None])[:, 0]  # (B,)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)  # (B,)
    return z_y - other


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of the image a window covers at iteration ``it`` of ``n_iters``."""
    t = int(it / max(n_iters, 1) * 10000)
    return p_init / 2 ** sum(t > m for m in _P_MILESTONES)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [0, high)."""
    return int(torch.randint(high, (1,), generator=generator, device="cpu"))


def _signs(shape: tuple[int, ...], like: torch.Tensor,
           generator: torch.Generator | None) -> torch.Tensor:
    """Uniform +-1 of ``shape``, on ``like``'s device and dtype."""
    s = torch.randint(2, shape, generator=generator, device="cpu") * 2 - 1
    return s.to(device=like.device, dtype=like.dtype)


def _bump(rows: int, cols: int) -> torch.Tensor:
    """Unit-norm pseudo-Gaussian bump (rows, cols): a sum of concentric boxes, box k weighing
    1/(k+1)^2, so a cell at Chebyshev distance d from the centre holds sum_{k>=d} 1/(k+1)^2.
    """
    n_boxes = max(rows // 2, cols // 2) + 1
    weights = 1.0 / torch.arange(1, n_boxes + 1, dtype=torch.float64) ** 2  # (K,)
    tail = weights.flip(0).cumsum(0).flip(0)  # (K,) tail[d] = sum_{k>=d} weights[k]
    dr = (torch.arange(rows) - rows // 2).abs()  # (rows,)
    dc = (torch.arange(cols) - cols // 2).abs()  # (cols,)
    out = tail[torch.maximum(dr[:, None], dc[None, :])]  # (rows, cols)
    return out / out.norm().clamp_min(1e-12)


def _window_pattern(s: int, like: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Unit-norm (s, s) pattern: a bump on the top half minus a bump on the bottom half,
    transposed with probability 1/2.
    """
    top = s // 2
    pat = torch.cat([_bump(top, s), -_bump(s - top, s)], dim=0)  # (s, s)
    pat = pat / pat.norm().clamp_min(1e-12)
    if _randint(2, generator) == 1:
        pat = pat.t()
    return pat.to(device=like.device, dtype=like.dtype)


def _plane_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm (B, C, 1, 1) of each channel of ``t`` (B, C, h, w)."""
    return torch.linalg.vector_norm(t, dim=(2, 3), keepdim=True)


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """Square root of ``v >= 0`` through rsqrt: on a busy CPU, torch.sqrt of even a few hundred
    numbers can wait milliseconds on the thread pool, and this runs every iteration.
    """
    v = v.clamp_min(1e-30)
    return v * v.rsqrt()


def _init_linf(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    b, c, _, w = x.shape
    stripes = eps * _signs((b, c, 1, w), x, generator)  # (B, C, 1, W)
    return project(x, x + stripes, norm="linf", eps=eps)


def _init_l2(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    b, c, h, w = x.shape
    s = max(min(h, w) // 5, 1)
    r0, c0 = max((h - 5 * s) // 2, 0), max((w - 5 * s) // 2, 0)
    delta = torch.zeros_like(x)  # (B, C, H, W)
    for i in range(h // s):
        for j in range(w // s):
            r, q = r0 + i * s, c0 + j * s
            pat = _window_pattern(s, x, generator)[: h - r, : w - q]  # cropped at the border
            if pat.numel():
                sh, sw = pat.shape
                delta[:, :, r:r + sh, q:q + sw] += pat * _signs((b, c, 1, 1), x, generator)
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return project(x, x + delta / norm * eps, norm="l2", eps=eps)


def _propose_linf(x: torch.Tensor, x_best: torch.Tensor, eps: float, p: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    b, c, h, w = x.shape
    s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
    r, q = _randint(h - s + 1, generator), _randint(w - s + 1, generator)
    win = (slice(None), slice(None), slice(r, r + s), slice(q, q + s))
    x_win, best_win = x[win], x_best[win]  # (B, C, s, s)
    signs = _signs((b, c, 1, 1), x, generator)  # (B, C, 1, 1)
    new_win = (x_win + eps * signs).clamp(0.0, 1.0)  # (B, C, s, s)
    for _ in range(_MAX_RESAMPLE):
        same = ((new_win - best_win).abs() < 1e-7).flatten(1).all(1)  # (B,)
        n_same = int(same.sum())
        if n_same == 0:
            break
        signs[same] = _signs((n_same, c, 1, 1), x, generator)
        new_win = (x_win + eps * signs).clamp(0.0, 1.0)
    x_new = x_best.clone()  # (B, C, H, W)
    x_new[win] = new_win
    return project(x, x_new, norm="linf", eps=eps)


def _propose_l2(x: torch.Tensor, x_best: torch.Tensor, eps: float, p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    b, c, h, w = x.shape
    s = max(round(math.sqrt(p * h * w)), 3)
    s = min(s + 1 if s % 2 == 0 else s, h, w)
    r1, q1 = _randint(h - s + 1, generator), _randint(w - s + 1, generator)
    r2, q2 = _randint(h - s + 1, generator), _randint(w - s + 1, generator)
    win1 = (slice(None), slice(None), slice(r1, r1 + s), slice(q1, q1 + s))
    win2 = (slice(None), slice(None), slice(r2, r2 + s), slice(q2, q2 + s))
    delta = x_best - x  # (B, C, H, W)
    union = torch.zeros(1, 1, h, w, dtype=x.dtype, device=x.device)  # (1, 1, H, W)
    union[win1] = 1.0
    union[win2] = 1.0
    norm_union = _plane_norm(delta * union)  # (B, C, 1, 1)
    norm_img = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    old = delta[win1]  # (B, C, s, s)
    old = old / (_plane_norm(old) + 1e-10)
    fresh = _window_pattern(s, x, generator) * _signs((b, c, 1, 1), x, generator)  # (B, C, s, s)
    new = fresh + old
    new_norm = _plane_norm(new)  # (B, C, 1, 1)
    new = torch.where(new_norm > 1e-6, new / new_norm.clamp_min(1e-12), fresh)
    budget = _sqrt((eps ** 2 - norm_img ** 2).clamp_min(0.0) / c + norm_union ** 2)
    delta = delta.clone()
    delta[win2] = 0.0
    delta[win1] = new * budget  # (B, C, s, s)
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return project(x, x + delta / norm * eps, norm="l2", eps=eps)


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
         n_queries: int, p_init: float, generator: torch.Generator | None,
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random search from a fresh start on (B, C, H, W) examples.

    Returns (x_best (B, C, H, W), margin (B,), fooled (B,) bool), at most ``n_queries`` forward
    passes per example.
    """
    init, propose = (_init_linf, _propose_linf) if norm == "linf" else (_init_l2, _propose_l2)
    x_best = init(x, eps, generator)  # (B, C, H, W)
    logits = model(x_best)  # (B, K)
    margin = margin_loss(logits, y)  # (B,)
    fooled = logits.argmax(1) != y  # (B,)
    for it in range(n_queries - 1):
        active = (~fooled).nonzero()[:, 0]  # (A,)
        if len(active) == 0:
            break
        xa = x[active]  # (A, C, H, W)
        x_new = propose(xa, x_best[active], eps, p_schedule(p_init, it, n_queries), generator)
        logits = model(x_new)  # (A, K)
        m = margin_loss(logits, y[active])  # (A,)
        better = m < margin[active]  # (A,)
        idx = active[better]
        x_best[idx] = x_new[better]
        margin[idx] = m[better]
        fooled[idx] = logits[better].argmax(1) != y[idx]
    return x_best, margin, fooled


@ATTACKS.register("square", norms=NORMS, white_box=False, params={
    "n_queries": Hyper(5000, int, "forward passes per example and run (square)", lo=1),
    "p_init": Hyper(0.8, float, "initial fraction of the image changed per proposal (square)",
                    lo=0.0, hi=1.0, lo_open=True),
    "restarts": RESTARTS,
})
def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
           n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Square attack: untargeted random search on the margin loss, without gradients.

    Args:
        model: maps (B, C, H, W) images in [0,1] to logits (B, K), K >= 2.
        x: clean images (B, C, H, W) in [0,1].  y: labels (B,).
        eps: radius of the ``norm`` ball ("linf" or "l2").
        n_queries: forward passes per example and restart (the clean pass not counted).
        p_init: initial fraction of the image changed per proposal (0.8 as in AutoAttack).
        restarts: further runs from a new random start, only on examples not yet fooled.
        generator: CPU generator that drives every random choice, for reproducibility.

    Returns:
        x_adv (B, C, H, W) within the budget and in [0,1]: the first point found that is
        misclassified, else the point of lowest margin; ``x`` itself where the clean input is
        already misclassified.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x_adv = square(model, x, y, eps=8 / 255, norm="linf", n_queries=1000, generator=g)
    """
    check_inputs(x, y, norm=norm, eps=eps, attack="square", n_queries=n_queries, p_init=p_init,
                 restarts=restarts)
    with eval_mode(model), torch.no_grad():
        out = x.clone()  # (B, C, H, W)
        todo = (model(x).argmax(1) == y).nonzero()[:, 0]  # (T,) correctly classified
        best = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)  # (B,)
        for _ in range(max(restarts, 1)):
            if len(todo) == 0 or n_queries < 1:
                break
            xa, m, ok = _run(model, x[todo], y[todo], eps=eps, norm=norm,
                             n_queries=n_queries, p_init=p_init, generator=generator)
            keep = ok | (m < best[todo])  # (T,)
            out[todo[keep]] = xa[keep]
            best[todo[keep]] = torch.where(ok[keep], float("-inf"), m[keep])
            todo = todo[~ok]
    assert_within_budget(x, out, norm=norm, eps=eps)
    return out
