"""A second judge for the trojan benchmark: a classical normalised cross-correlation (NCC)
template matcher, and the measures of how far two judges agree.

Why a second judge. The learned judge (:mod:`eisbench.trojans.judge`) is a CNN trained and
validated on rendered views (:mod:`eisbench.trojans.views`): its blind spots are its
validation's too. A judge of another representation fails in other ways; this one has no
training, no embedding and no background class, and slides each option's pixels over the
tool's images. Where the judges answer alike (Cohen's kappa, :func:`agreement`) and rank the
tools alike (:func:`rank_changes`, :func:`rank_correlation`), a verdict does not rest on one
encoder's quirks; where not, the questions and tools that differ are named.

How it scores. For an image x (C, H, W) and an option's trigger (icon (C, h, w), opacity
alpha (1, h, w)), :func:`ncc_similarities` takes the largest zero-mean normalised
cross-correlation between the trigger and the image window under it, over every position,
the rescalings ``scales`` and half-pixel offsets (:data:`OFFSETS`). Pixels are weighted by
alpha (a natural object counts its own pixels, not the square around it), all channels
jointly, and each drawing is tried as drawn on black (alpha x icon) and as the icon itself::

    ncc = sum w (T - mean_w T)(X - mean_w X) / sqrt(sum w (T - mean_w T)^2 sum w (X - mean_w X)^2)

It lies in [-1, 1] and ignores brightness and contrast (x -> a x + b, a > 0); a window or
template flatter than :data:`FLAT_STD` scores 0, never NaN. Triggers smaller than the image
slide over every position where they fit (unfold); full-size ones (style textures) are
compared at every circular shift (FFT), rescaled about the centre with reflection.

:func:`ncc_ask` answers like :func:`eisbench.trojans.judge.ask`: similarity_k = the mean over
the tool's n images of option k's NCC minus its mean over noise images
(:func:`noise_baseline`); the answer is the largest (the first on a tie). The plain mean NCC
(``null=0``) is unfair on noise: the best of many positions is higher for some templates, and on
the MNIST banks it sent 83-93% of a kind's noise questions to one texture or object; less the
baseline, 18-25%: partly by construction, as judge_checks.validate asks on the same noise families.

Example:
    >>> ours = [ncc_ask(images=q.images, options=bank, shape=(1, 28, 28)).choice for q in qs]
    >>> theirs = [ask(enc, images=q.images, options=bank, shape=(1, 28, 28)).choice for q in qs]
    >>> sorted(agreement(ours, theirs))
    ['agreement', 'kappa', 'n']
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from eisbench.trojans.judge import Answer
from eisbench.trojans.stamp import Trigger
from eisbench.trojans.zoo import trigger_digest

__all__ = ["FLAT_STD", "NULL_IMAGES", "OFFSETS", "agreement", "agreement_on_correct",
           "competition_ranks", "ncc_answer", "ncc_ask", "ncc_similarities", "noise_baseline",
           "rank_changes", "rank_correlation"]

FLAT_STD = 2e-3
"""A window (or template) whose alpha-weighted standard deviation is below this (half an
8-bit grey level) is flat: its NCC is 0, never NaN."""

OFFSETS = ((0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5))
"""Sub-pixel offsets (rows, cols) at which patches and objects are also drawn: a stamp moved
by half a pixel is a blur of itself (a 1-px checker turns grey)."""

Shape = tuple[int, int, int]


def _check(images: torch.Tensor, shape: Sequence[int], options: Sequence[Trigger]) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(shape) or len(images) == 0:
        raise ValueError(f"images must be (n, {', '.join(map(str, shape))}) with n >= 1, got "
                         f"{tuple(images.shape)}")
    if not options:
        raise ValueError("ask needs at least one option")


def _drawn(icons: torch.Tensor, alphas: torch.Tensor, shape: Shape, s: float,
           off: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """B triggers of one size (icons (B, C, h, w), alphas (B, 1, h, w)) drawn at scale ``s``
    and offset ``off`` (rows, cols) as a warped stamp is, the drawing (alpha x icon) and alpha
    resampled bilinearly (textures about the centre, reflected): (B, C, h', w'), (B, 1, h', w')."""
    c, h_img, w_img = shape
    b, _, h, w = icons.shape
    both = torch.cat([alphas * icons, alphas], 1)  # (B, C+1, h, w)
    if s == 1.0 and off == (0.0, 0.0):
        out = both
    elif h >= h_img and w >= w_img:
        theta = torch.tensor([[1 / s, 0.0, 0.0], [0.0, 1 / s, 0.0]]).expand(b, 2, 3)
        grid = F.affine_grid(theta, list(both.shape), align_corners=False)
        out = F.grid_sample(both, grid, mode="bilinear", padding_mode="reflection",
                            align_corners=False)
    else:  # output pixel i (centre i + 0.5) shows the source point (i + 0.5 - off) / s
        ho = min(h_img, max(2, math.ceil(s * h + off[0] - 1e-9)))
        wo = min(w_img, max(2, math.ceil(s * w + off[1] - 1e-9)))
        rows = (torch.arange(ho) + 0.5 - off[0]) / s * 2 / h - 1
        cols = (torch.arange(wo) + 0.5 - off[1]) / s * 2 / w - 1
        gy, gx = torch.meshgrid(rows, cols, indexing="ij")  # (ho, wo) each
        grid = torch.stack([gx, gy], -1).expand(b, ho, wo, 2)
        out = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return out[:, :c].clamp(0, 1), out[:, c:].clamp(0, 1)  # (B, C, h', w'), (B, 1, h', w')


@dataclass(frozen=True)
class _Group:
    """Templates of one size: G drawings of some options, with U distinct weight maps."""

    option: torch.Tensor  # (G,) long: the option each template draws
    zero_mean: torch.Tensor  # (G, C, h, w): weight x (icon - its weighted mean)
    weights: torch.Tensor  # (U, C, h, w): the distinct weight maps (alpha on every channel)
    which: torch.Tensor  # (G,) long: each template's weight map
    var_t: torch.Tensor  # (G,): sum of weight x (icon - mean)^2
    sw: torch.Tensor  # (G,): sum of the weights
    full: bool  # full-size texture: compared at every circular shift


def _templates(options: Sequence[Trigger], shape: Shape, scales: Sequence[float]
               ) -> list[_Group]:
    """Every option at every scale and (below full size) offset, grouped by size. Each drawing
    is a template as drawn on black (alpha x icon) and, where alpha varies, as the icon under
    the same weights (for canvases that show through its soft edges)."""
    c, h_img, w_img = shape
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, t in enumerate(options):
        _, h, w = t.icon.shape
        if h > h_img or w > w_img:
            raise ValueError(f"trigger {t.name!r} ({h}x{w}) is larger than images {shape}")
        if t.icon.shape[0] not in (1, c):
            raise ValueError(f"trigger {t.name!r} has {t.icon.shape[0]} channels, images "
                             f"have {c}")
        by_size.setdefault((h, w), []).append(k)
    drawn: dict[tuple[bool, int, int], list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for (h, w), ks in by_size.items():
        full = h >= h_img and w >= w_img
        icons = torch.stack([options[k].icon.float().expand(c, h, w) for k in ks])
        alphas = torch.stack([options[k].alpha.float() for k in ks])  # (B, 1, h, w)
        for s in scales:
            for off in ((0.0, 0.0),) if full else OFFSETS:
                ink, alpha = _drawn(icons, alphas, shape, float(s), off)
                own = torch.where(alpha > 1e-6, ink / alpha.clamp_min(1e-6), 0.0).clamp(0, 1)
                group = drawn.setdefault((full, *ink.shape[2:]), [])
                for k, i, o, a in zip(ks, ink, own, alpha, strict=True):
                    uniform = float(a.max() - a.min()) < 1e-6  # then o = i / a: same NCC
                    group.extend([(k, i, a)] if uniform else [(k, i, a), (k, o, a)])
    return [_group(items, full=full) for (full, _, _), items in drawn.items()]


def _group(items: list[tuple[int, torch.Tensor, torch.Tensor]], *, full: bool) -> _Group:
    icon = torch.stack([i for _, i, _ in items])  # (G, C, h, w)
    wk = torch.stack([a for _, _, a in items]).expand_as(icon)  # (G, C, h, w)
    uniq, which = torch.unique(wk.flatten(1), dim=0, return_inverse=True)  # (U, C*h*w), (G,)
    sw = wk.sum((1, 2, 3))  # (G,)
    mean = (wk * icon).sum((1, 2, 3)) / sw.clamp_min(1e-12)  # (G,)
    dev = icon - mean.view(-1, 1, 1, 1)
    return _Group(option=torch.tensor([k for k, _, _ in items]), zero_mean=wk * dev,
                  weights=uniq.view(-1, *icon.shape[1:]), which=which,
                  var_t=(wk * dev * dev).sum((1, 2, 3)), sw=sw, full=full)


def _sums(x: torch.Tensor, g: _Group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over all channels of images x (n, C, H, W) under the zero-mean templates t and
    weight maps w, at the L positions where they fit (unfold) or, full size, the L = H W
    circular shifts (FFT): (sum t x (n, G, L), sum w x (n, U, L), sum w x^2 (n, U, L))."""
    g_n = len(g.option)
    both = torch.cat([g.zero_mean, g.weights])  # (G + U, C, h, w)
    if g.full:
        h, w = x.shape[2:]
        fx, ft = torch.fft.rfft2(torch.stack([x, x * x])), torch.fft.rfft2(both).conj()
        a = torch.fft.irfft2(torch.einsum("nchw,gchw->nghw", fx[0], ft), s=(h, w)).flatten(2)
        sq = torch.fft.irfft2(torch.einsum("nchw,gchw->nghw", fx[1], ft[g_n:]), s=(h, w))
        return a[:, :g_n], a[:, g_n:], sq.flatten(2)
    cols = F.unfold(x, tuple(g.zero_mean.shape[2:]))  # (n, C h w, L)
    a = both.flatten(1) @ cols  # (n, G + U, L)
    return a[:, :g_n], a[:, g_n:], g.weights.flatten(1) @ cols.square()


def _best(x: torch.Tensor, g: _Group) -> torch.Tensor:
    """Max over positions of each template's weighted NCC with images x (n, C, H, W): (n, G)."""
    num, s1, s2 = _sums(x, g)  # (n, G, L), (n, U, L), (n, U, L)
    s1, s2 = s1[:, g.which], s2[:, g.which]  # (n, G, L)
    sw = g.sw.view(1, -1, 1)
    var_x = (s2 - s1 * s1 / sw.clamp_min(1e-12)).clamp_min(0)  # (n, G, L)
    flat = (var_x <= FLAT_STD**2 * sw) | (g.var_t <= FLAT_STD**2 * g.sw).view(1, -1, 1)
    ncc = num / (g.var_t.view(1, -1, 1) * var_x).clamp_min(1e-30).sqrt()
    return ncc.masked_fill(flat, 0.0).clamp(-1, 1).amax(2)


def ncc_similarities(images: torch.Tensor, options: Sequence[Trigger], *, shape: Shape,
                     scales: Sequence[float] = (0.8, 1.0, 1.25), chunk: int = 64
                     ) -> torch.Tensor:
    """Per image and option, the largest alpha-weighted zero-mean NCC between the option's
    trigger (at each of ``scales`` and each sub-pixel offset of :data:`OFFSETS`) and the image,
    over every position where it fits (every circular shift for full-size textures).

    images: (n, C, H, W) in [0,1]; options: K triggers; returns (n, K) in [-1, 1], float32;
    ``chunk`` images at a time (memory: chunk x templates x positions floats).

    Example:
        >>> sim = ncc_similarities(bank[3].image(S)[None], bank, shape=S)  # bank: 8 patches
        >>> int(sim.argmax()), round(float(sim[0, 3]), 3)
        (3, 1.0)
    """
    _check(images, shape, options)
    if not scales or any(not float(s) > 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {tuple(scales)}")
    shp: Shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    groups = _templates(options, shp, scales)
    x = images.detach().to("cpu", torch.float32)  # (n, C, H, W)
    x = x - x.mean((1, 2, 3), keepdim=True)  # NCC ignores offsets; smaller sums, less rounding
    out = torch.full((len(x), len(options)), -1.0)  # (n, K)
    for g in groups:
        best = torch.cat([_best(part, g) for part in x.split(chunk)])  # (n, G)
        out = out.scatter_reduce(1, g.option.expand(len(x), -1), best, reduce="amax")
    return out


NULL_IMAGES = 256
"""Noise images per family behind :func:`noise_baseline` (uniform and Gaussian: 512 in all)."""

_BASELINES: dict[tuple[Any, ...], float] = {}  # (digest, shape, scales, n, seed) -> mean


def noise_baseline(options: Sequence[Trigger], *, shape: Shape,
                   scales: Sequence[float] = (0.8, 1.0, 1.25), n: int = NULL_IMAGES,
                   seed: int = 0) -> torch.Tensor:
    """Each option's mean :func:`ncc_similarities` over ``n`` uniform and ``n`` Gaussian
    (0.5 + 0.25 N(0, 1), clipped) noise images, the noise of the judge checks, seeded by
    ``seed``: what the option scores on images that show nothing. (K,).

    It differs by template: the best of many positions is higher where nearby positions
    correlate less (1-px patterns, fine gratings) and for smaller templates. Cached by
    trigger content, shape, scales, n and seed.

    Example:
        >>> noise_baseline(trigger_bank("style", dataset="mnist", shape=S), shape=S).shape
        torch.Size([8])
    """
    if n < 1:
        raise ValueError(f"noise_baseline needs n >= 1 noise images, got {n}")
    shp: Shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    keys = [(trigger_digest(t), shp, tuple(float(s) for s in scales), n, seed) for t in options]
    missing = [k for k, key in enumerate(keys) if key not in _BASELINES]
    if missing:
        g = torch.Generator().manual_seed(seed)
        x = torch.cat([torch.rand(n, *shp, generator=g),
                       (0.5 + 0.25 * torch.randn(n, *shp, generator=g)).clamp(0, 1)])
        means = ncc_similarities(x, [options[k] for k in missing], shape=shp,
                                 scales=scales).mean(0)  # (M,)
        if len(_BASELINES) > 4096:
            _BASELINES.clear()
        _BASELINES.update({keys[k]: float(m) for k, m in zip(missing, means, strict=True)})
    return torch.tensor([_BASELINES[key] for key in keys])


def ncc_ask(*, images: torch.Tensor, options: Sequence[Trigger], shape: Shape,
            scales: Sequence[float] = (0.8, 1.0, 1.25), null: int = NULL_IMAGES) -> Answer:
    """Which option do ``images`` (n, C, H, W) in [0,1] (a tool's output) show, by template
    matching? Same questions, inputs and errors as :func:`eisbench.trojans.judge.ask`.

    similarity_k = mean over the n images of :func:`ncc_similarities` minus option k's
    :func:`noise_baseline` over ``null`` noise images per family (how far the option matches
    the images better than it matches noise); ``null=0``: the plain mean NCC. The answer is
    the most similar option (the first on a tie).

    Example:
        >>> ncc_ask(images=x, options=bank, shape=(1, 28, 28)).choice
        5
    """
    if null < 0:
        raise ValueError(f"null must be >= 0 noise images, got {null}")
    sim = ncc_similarities(images, options, shape=shape, scales=scales).mean(0)  # (K,)
    if null:
        sim = sim - noise_baseline(options, shape=shape, scales=scales, n=null)
    return Answer(choice=int(sim.argmax()), similarities=sim)


def ncc_answer(*, shape: Shape, scales: Sequence[float] = (0.8, 1.0, 1.25),
               null: int = NULL_IMAGES) -> Callable[[torch.Tensor, list[Trigger]], int]:
    """:func:`ncc_ask` as an answer function ``(images, options) -> index``, the form the
    judge checks take (:func:`eisbench.trojans.judge_checks.validate`).

    Example:
        >>> rep = validate(ncc_answer(shape=S), bank=banks, shape=S, n_trials=5, generator=g)
    """
    def answer(images: torch.Tensor, options: list[Trigger]) -> int:
        return ncc_ask(images=images, options=options, shape=shape, scales=scales, null=null).choice
    return answer


# --- agreement between two judges --------------------------------------------------------

def agreement(a: Sequence[int], b: Sequence[int]) -> dict[str, Any]:
    """How far two judges' answers to the same questions agree: Cohen's kappa, the raw share
    of equal answers and n. ``a``, ``b``: paired categorical choices (e.g. the chosen trigger
    of each question, as bank indices, not option positions).

    kappa = (p_o - p_e) / (1 - p_e) (sklearn.metrics.cohen_kappa_score), p_o the share of equal
    answers, p_e the share expected from the judges' marginals alone: 1 = always the same,
    0 = as often as chance, < 0 = less often. Degenerate cases, never NaN: both judges constant
    and equal (p_e = 1, 0/0) -> 1.0 (they always agree); both constant but different, or one
    constant -> 0.0 (the formula's value). Raises on empty or unequal-length input.

    Example:
        >>> agreement([0, 1, 2, 3], [0, 1, 2, 0])
        {'kappa': 0.6666666666666667, 'agreement': 0.75, 'n': 4}
    """
    from sklearn.metrics import cohen_kappa_score

    xa, xb = [int(v) for v in a], [int(v) for v in b]
    if len(xa) != len(xb) or not xa:
        raise ValueError(f"agreement needs two equal, non-empty sequences, got {len(xa)} and "
                         f"{len(xb)} answers")
    same = sum(u == v for u, v in zip(xa, xb, strict=True)) / len(xa)
    labels = sorted(set(xa) | set(xb))
    if len(labels) == 1:
        kappa = 1.0  # both constant and equal: p_e = p_o = 1
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kappa = float(cohen_kappa_score(xa, xb, labels=labels))
    return {"kappa": kappa, "agreement": same, "n": len(xa)}


def agreement_on_correct(a_correct: Sequence[bool], b_correct: Sequence[bool]
                         ) -> dict[str, Any]:
    """Do two judges call the same questions right? :func:`agreement` over the paired booleans,
    each judge's accuracy and the 2x2 counts (both, only a, only b, neither).

    Example:
        >>> agreement_on_correct([True, True, False], [True, False, False])["only_a"]
        1
    """
    xa, xb = [bool(v) for v in a_correct], [bool(v) for v in b_correct]
    out = agreement([int(v) for v in xa], [int(v) for v in xb])
    pairs = list(zip(xa, xb, strict=True))
    return out | {"accuracy_a": sum(xa) / len(xa), "accuracy_b": sum(xb) / len(xb),
                  "both": pairs.count((True, True)), "only_a": pairs.count((True, False)),
                  "only_b": pairs.count((False, True)), "neither": pairs.count((False, False))}


# --- tool rankings under two judges ------------------------------------------------------

def competition_ranks(values: Mapping[str, float]) -> dict[str, int]:
    """Rank 1 = the highest value; ties share the better rank and the next rank skips
    ("1224" competition ranking).

    Example:
        >>> competition_ranks({"a": 0.9, "b": 0.5, "c": 0.9, "d": 0.1})
        {'a': 1, 'b': 3, 'c': 1, 'd': 4}
    """
    vals = {k: float(v) for k, v in values.items()}
    if any(math.isnan(v) for v in vals.values()):
        raise ValueError("competition_ranks: a value is NaN")
    return {k: 1 + sum(u > v for u in vals.values()) for k, v in vals.items()}


def _paired(success_a: Mapping[str, float], success_b: Mapping[str, float]) -> list[str]:
    if set(success_a) != set(success_b):
        raise ValueError(f"both judges must grade the same tools; only in a: "
                         f"{sorted(set(success_a) - set(success_b))}, only in b: "
                         f"{sorted(set(success_b) - set(success_a))}")
    return sorted(success_a)


def rank_changes(success_a: Mapping[str, float], success_b: Mapping[str, float]
                 ) -> list[dict[str, Any]]:
    """The tools whose rank (:func:`competition_ranks` of their success rate) differs between
    judge a and judge b, with both ranks and both rates, ordered by rank under a, then name.

    Example:
        >>> [c["tool"] for c in rank_changes({"x": 0.8, "y": 0.6, "z": 0.1},
        ...                                  {"x": 0.5, "y": 0.7, "z": 0.1})]
        ['x', 'y']
    """
    tools = _paired(success_a, success_b)
    ra, rb = competition_ranks(success_a), competition_ranks(success_b)
    moved = [t for t in tools if ra[t] != rb[t]]
    return [{"tool": t, "rank_a": ra[t], "rank_b": rb[t], "success_a": float(success_a[t]),
             "success_b": float(success_b[t])} for t in sorted(moved, key=lambda t: (ra[t], t))]


def rank_correlation(success_a: Mapping[str, float], success_b: Mapping[str, float]
                     ) -> dict[str, Any]:
    """Spearman's rho of the tools' success rates under two judges (scipy), p-value and n;
    None, with the reason, where undefined (< 2 tools, or one judge rates all tools alike).

    Example:
        >>> rank_correlation({"x": 0.8, "y": 0.6, "z": 0.1}, {"x": 0.5, "y": 0.7, "z": 0.1})
        {'spearman': 0.5, 'p': 0.6666666666666666, 'n': 3}
    """
    from scipy.stats import spearmanr

    tools = _paired(success_a, success_b)
    va, vb = [float(success_a[t]) for t in tools], [float(success_b[t]) for t in tools]
    if len(tools) < 2 or len(set(va)) < 2 or len(set(vb)) < 2:
        return {"spearman": None, "p": None, "n": len(tools),
                "reason": "undefined: fewer than 2 tools or a judge gives all the same rate"}
    res = spearmanr(va, vb)
    return {"spearman": float(res.statistic), "p": float(res.pvalue), "n": len(tools)}
