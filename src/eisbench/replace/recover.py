"""Recover challenge 1's template from the network itself, without any candidate image.

Challenge 1's rule is a band on s(x) = cos(x, t) - cos(x, 1-t). Written with u = x/|x|,

    s(x) = <u, w(t)>,   w(t) = t/|t| - (1-t)/|1-t|

so the label is a band of a *linear* function of the unit image u. The recovery reads only
the model's outputs on unlabelled images x (the distillation set):

1. **Linear probe of the band** (:func:`band_direction`): along w the class inside the band
   is concentrated and the class outside it spread on both sides, so w is the top generalised
   eigenvector of (covariance of u outside the band, covariance inside it + ridge); which
   class is inside is the one that makes that ratio larger.
2. **Band fit** (:func:`fit_band`): w and the band (lo, hi) refined by gradient descent on the
   cross-entropy of a soft band, sigmoid(k(s-lo)) sigmoid(k(hi-s)), against the model's
   probabilities.
3. **Template** (:func:`template_for`): an image t in [0,1] whose rule score s_t is most
   correlated with the probe's score <u, w> on x, by gradient descent on t = sigmoid(z) from
   the mean image of x (a neutral start: no single image), for both signs of w (t and 1-t give
   the same rule with the band mirrored), keeping the better fit (of two equally good ones,
   the one nearer the mean image, i.e. the image-like one rather than its complement).
4. **Nearest images** (:func:`pool_correlation`): every image p of a pool (e.g. the whole
   training set) scored by the correlation, over x, of its own rule score <u, w(p)> with the
   probe's; the ``k`` best (by absolute value) are the candidate clue images.

:func:`recover` runs the four steps; :meth:`Recovery.candidates` gives the recovered image and
the nearest pool images as named templates for the program search
(``program(..., n_data=0, extra=rec.candidates(pool))``). Nothing here reads a label the
model did not produce, and no step starts from a candidate image.

Example:
    >>> rec = recover(net, x_fit, pool=x_train, k=16)
    >>> prog = DISTILLERS.get("program")(net, x_fit, generator=g, terms=1, n_data=0,
    ...                                  extra=rec.candidates(x_train))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.core.tensors import check_images, eval_mode
from eisbench.replace.program import best_intervals

_EPS = 1e-8


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` found: the recovered template (C, H, W) in [0,1] and how well its
    score matches the probe's on x (``template_corr``, signed), the probe direction (D,) with
    its band (class ``inside`` in [lo, hi]) and its agreement with the model on x, and the
    pool images nearest to the probe (indices (k,), correlations (k,), best first)."""

    template: torch.Tensor
    template_corr: float
    direction: torch.Tensor
    lo: float
    hi: float
    inside: int
    probe_agreement: float
    nearest: torch.Tensor
    nearest_corr: torch.Tensor

    def candidates(self, pool: torch.Tensor | None = None, *, pool_name: str = "train"
                   ) -> tuple[tuple[str, torch.Tensor], ...]:
        """The recovered image (``recovered``) and the nearest images of ``pool`` (N, C, H, W)
        (named ``{pool_name}[i]``) as (name, image (C, H, W)) templates."""
        out: list[tuple[str, torch.Tensor]] = [("recovered", self.template)]
        if len(self.nearest) and pool is None:
            raise ValueError("this recovery has nearest pool images: pass the same pool")
        for i in self.nearest.tolist():
            assert pool is not None
            out.append((f"{pool_name}[{i}]", pool[i].float()))
        return tuple(out)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Images x (N, ...) as unit rows u = x/|x| (N, D) (an all-zero image stays zero)."""
    return F.normalize(x.flatten(1).float(), dim=1, eps=_EPS)


def rule_direction(t: torch.Tensor) -> torch.Tensor:
    """w(t) = t/|t| - (1-t)/|1-t| (N, D) for templates t (N, ...) in [0,1]: the rule score of
    t is <u, w(t)>."""
    tf = t.flatten(1).float()
    return F.normalize(tf, dim=1, eps=_EPS) - F.normalize(1 - tf, dim=1, eps=_EPS)


def _cov(a: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(0)
    return a.T @ a / max(len(a) - 1, 1)  # (D, D)


def _band_agreement(s: torch.Tensor, inside: torch.Tensor) -> float:
    """The best agreement of a band on scores s (N,) with the inside/outside labels
    ``inside`` (N,) bool: a maximum-sum run of +1 (inside) / -1 (outside) over sorted s."""
    order = s.argsort()
    gain, _, _ = best_intervals((2 * inside[order].float() - 1)[None], s[order][None])
    return (float(gain[0]) + float((~inside).sum())) / len(s)


def band_direction(u: torch.Tensor, y: torch.Tensor, *, ridge: float = 0.1
                   ) -> tuple[torch.Tensor, int]:
    """The direction w (D,) of a band rule on unit images u (N, D) with binary labels y (N,),
    and the class inside the band: the top generalised eigenvector of (cov outside, cov inside
    + ``ridge`` x the mean variance), for whichever class as inside gives the better band on
    <u, w>."""
    if set(y.unique().tolist()) != {0, 1}:
        raise ValueError(f"need both labels 0 and 1 among the model's predictions, got "
                         f"{sorted(y.unique().tolist())}: the band cannot be located")
    covs = [_cov(u[y == c]) for c in (0, 1)]
    best: tuple[float, torch.Tensor, int] | None = None
    eye = torch.eye(u.shape[1])
    for inside in (0, 1):
        s_in, s_out = covs[inside], covs[1 - inside]
        reg = s_in + ridge * float(s_in.diagonal().mean().clamp_min(_EPS)) * eye
        li = torch.linalg.inv(torch.linalg.cholesky(reg))  # (D, D)
        _, vec = torch.linalg.eigh(li @ s_out @ li.T)
        w = li.T @ vec[:, -1]  # (D,)
        score = _band_agreement(u @ w, y == inside)
        if best is None or score > best[0]:
            best = (score, w, inside)
    assert best is not None
    return best[1], best[2]


def _soft_inside(s: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 log_k: torch.Tensor) -> torch.Tensor:
    k = log_k.exp()
    return (torch.sigmoid(k * (s - lo)) * torch.sigmoid(k * (hi - s))).clamp(1e-6, 1 - 1e-6)


def fit_band(u: torch.Tensor, p_inside: torch.Tensor, w0: torch.Tensor, *, steps: int = 300,
             lr: float = 0.01) -> tuple[torch.Tensor, float, float]:
    """Refine a band direction w0 (D,) on unit images u (N, D) against the model's probability
    of the inside class p_inside (N,): Adam on w, lo, hi and the sharpness of a soft band.
    Returns w (D,) (scaled so <u, w> has unit spread at the start) and the band (lo, hi)."""
    s0 = u @ w0
    w = (w0 / s0.std().clamp_min(_EPS)).clone().requires_grad_(True)
    s_in = (u @ w.detach())[p_inside > 0.5]
    lo = torch.quantile(s_in, 0.05).clone().requires_grad_(True)
    hi = torch.quantile(s_in, 0.95).clone().requires_grad_(True)
    log_k = torch.tensor(2.0).requires_grad_(True)
    opt = torch.optim.Adam([w, lo, hi, log_k], lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy(_soft_inside(u @ w, lo, hi, log_k), p_inside)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), float(lo.detach()), float(hi.detach())


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a @ b) / (a.norm() * b.norm()).clamp_min(_EPS)


def template_for(w: torch.Tensor, u: torch.Tensor, start: torch.Tensor, *, steps: int = 400,
                 lr: float = 0.05, tie: float = 0.01) -> tuple[torch.Tensor, float]:
    """The template t (D,) in [0,1] whose rule score <u, w(t)> on unit images u (N, D) best
    correlates with +-<u, w> (w (D,)), by Adam on t = sigmoid(z) from ``start`` (D,) in [0,1],
    once for each sign (t and 1-t are the same rule with the band mirrored). Of the two, the
    better fit, or within ``tie`` of it the one nearer ``start`` (the image-like one). Returns
    t and its correlation with <u, w> (signed)."""
    target = u @ w  # (N,)
    fits: list[tuple[float, torch.Tensor, float]] = []
    for sign in (1.0, -1.0):
        z = torch.logit(start.float().clamp(0.01, 0.99)).clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            loss = -sign * _corr(u @ rule_direction(torch.sigmoid(z)[None])[0], target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        t = torch.sigmoid(z.detach())
        c = float(_corr(u @ rule_direction(t[None])[0], target))
        fits.append((sign * c, t, c))
    best = max(f[0] for f in fits)
    near = [f for f in fits if f[0] >= best - tie]
    _, t, c = min(near, key=lambda f: float(((f[1] - start) ** 2).mean()))
    return t, c


def pool_correlation(w: torch.Tensor, u: torch.Tensor, pool: torch.Tensor, *,
                     chunk: int = 4096) -> torch.Tensor:
    """Per pool image p (P, ...) in [0,1]: the correlation over unit images u (N, D) of its
    rule score <u, w(p)> with <u, w> (w (D,)): (P,) in [-1, 1]. Computed through the
    covariance C of u: corr = w(p)^T C w / sqrt(w(p)^T C w(p) w^T C w)."""
    uc = u - u.mean(0)
    cov = uc.T @ uc / len(u)  # (D, D)
    g = cov @ w  # (D,)
    norm_w = float((w @ g).clamp_min(_EPS).sqrt())
    out = []
    for part in pool.split(chunk):
        wp = rule_direction(part)  # (chunk, D)
        den = ((wp @ cov) * wp).sum(1).clamp_min(_EPS).sqrt() * norm_w
        out.append(wp @ g / den)
    return torch.cat(out)


def _inside_probability(model: nn.Module, x: torch.Tensor, *,
                        device: str | torch.device, batch: int = 1024) -> torch.Tensor:
    """The model's softmax probabilities (N, 2) on images x."""
    with eval_mode(model), torch.no_grad():
        out = [model(b.to(device)).float().softmax(1).cpu() for b in x.split(batch)]
    p = torch.cat(out)
    if p.shape[1] != 2:
        raise ValueError(f"template recovery reads a binary band rule; the model has "
                         f"{p.shape[1]} outputs (need 2)")
    return p


def recover(model: nn.Module, x: torch.Tensor, *, pool: torch.Tensor | None = None,
            k: int = 16, ridge: float = 0.1, band_steps: int = 300,
            template_steps: int = 400, device: str | torch.device = "cpu") -> Recovery:
    """Recover a band rule's template from a binary ``model`` on unlabelled images x
    (N, C, H, W) in [0,1] (see the module docstring); ``pool`` (P, C, H, W): the images to
    search for the ``k`` nearest to the probe (none: only the recovered image).
    Deterministic (no random draws).

    Example:
        >>> rec = recover(net, x_fit, pool=x_train, k=16)
        >>> rec.nearest[:3], rec.probe_agreement
    """
    check_images(x)
    if k < 0 or band_steps < 0 or template_steps < 0 or ridge <= 0:
        raise ValueError(f"need k, band_steps, template_steps >= 0 and ridge > 0; got {k}, "
                         f"{band_steps}, {template_steps}, {ridge}")
    if pool is not None and tuple(pool.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(f"pool images {tuple(pool.shape[1:])} differ from x "
                         f"{tuple(x.shape[1:])}")
    prob = _inside_probability(model, x, device=device)  # (N, 2)
    u = unit_rows(x)  # (N, D)
    w0, inside = band_direction(u, prob.argmax(1), ridge=ridge)
    w, lo, hi = fit_band(u, prob[:, inside], w0, steps=band_steps)
    s = u @ w
    pred = torch.where((s >= lo) & (s <= hi), inside, 1 - inside)
    agree = float((pred == prob.argmax(1)).float().mean())
    start = x.flatten(1).float().mean(0)  # (D,): the mean image, no single image
    t, t_corr = template_for(w, u, start, steps=template_steps)
    nearest, near_corr = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    if pool is not None and k > 0:
        r = pool_correlation(w, u, pool)  # (P,)
        nearest = r.abs().topk(min(k, len(r))).indices
        near_corr = r[nearest]
    return Recovery(template=t.view(*x.shape[1:]), template_corr=t_corr, direction=w, lo=lo,
                    hi=hi, inside=inside, probe_agreement=agree, nearest=nearest,
                    nearest_corr=near_corr)
