"""Held-out view families: trigger views drawn by transforms the judge never saw in training.

The judge's encoder (:mod:`eisbench.trojans.judge`) is trained on views from
:func:`eisbench.trojans.views.render` with :class:`~eisbench.trojans.views.ViewConfig`'s
ranges, and :func:`~eisbench.trojans.judge_checks.validate` scores it on fresh views from the *same*
generator. A validation on the training distribution cannot reveal overfitting to that
distribution: an encoder that only recognises a trigger at the scales, blurs and contrasts it
was shown passes it. A tool's images need not respect those ranges, so the judge is also
scored here on families of views whose transform lies outside them.

Each family applies one transform, its parameter uniform in a range disjoint from training's
(:func:`disjointness` checks any ViewConfig), on a black, clean-data or flat grey canvas, and is
otherwise neutral: scale 1, contrast 1, no blur, noise, occlusion, second copy or difference
image, a random position as in training. Its accuracy thus isolates its transform.

============= =============================================== ==============================
family        held-out parameter (uniform)                    training (``ViewConfig()``)
============= =============================================== ==============================
rotate        angle 15-35 degrees, either way, about the      no rotation (0)
              trigger's centre (textures reflected)
small         scale 0.5-0.7                                   scale 0.8-1.25
large         scale 1.4-1.8 (patches: ValueError if one       scale 0.8-1.25
              does not fit the image at 1.4; capped to fit
              above it; textures are just rescaled)
heavy-blur    Gaussian sigma 1.0-1.6, 7x7 kernel              sigma 0.3-0.8, 3x3 kernel
low-contrast  contrast 0.2-0.45 about the image mean          contrast 0.6-1.4
big-occlusion a black rectangle of side 0.5-0.6 of the        side 0.34 of the trigger's
              trigger's side (0.25-0.36 of its area)          side (0.12 of its area)
edge-crop     35-50% of the trigger's opacity mass pushed     at most 31% outside, at a
              across one edge (top, bottom, left or right),   corner, for patches of >= 3 px
              zero outside (textures too: not reflected)      (half-pixel centring; textures
                                                              are reflected: none)
============= =============================================== ==============================

Not a family: polarity inversion (1 - view). Whether an inverted trigger "is" the trigger is
undefined (an inverted two-tone icon can equal another icon of the bank).

Questions on one trigger are not independent: each rate carries, beside its Wilson interval,
``ci_by_trigger``, a cluster bootstrap over the triggers (the unit of replication).

Example:
    >>> lay = layers(bank, (1, 28, 28))
    >>> x = held_out_views(lay, torch.tensor([0, 3]), family="rotate", data=None,
    ...                    generator=torch.Generator().manual_seed(0))  # (2, 1, 28, 28)
    >>> rep = validate_held_out(encoder_answer(enc, shape=shape), bank=banks, shape=shape,
    ...                         n_trials=5, generator=g)  # rep["worst"]: the weakest family
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from eisbench.core.stats import cluster_bootstrap_ci, wilson_ci
from eisbench.runs.preregistered import threshold
from eisbench.trojans import views as _views  # its internals: _warp, _occlude, _u
from eisbench.trojans.stamp import Trigger
from eisbench.trojans.views import CANVASES, Layers, ViewConfig, canvases, layers

HELD_OUT_RANGES: dict[str, tuple[str, float, float]] = {
    "rotate": ("angle", 15.0, 35.0),  # |degrees|
    "small": ("scale", 0.5, 0.7),
    "large": ("scale", 1.4, 1.8),
    "heavy-blur": ("blur_sigma", 1.0, 1.6),
    "low-contrast": ("contrast", 0.2, 0.45),
    "big-occlusion": ("occlude", 0.5, 0.6),
    "edge-crop": ("outside", 0.35, 0.5),  # share of the trigger's opacity mass
}
"""family -> (the quantity it moves, low, high); see the module's table."""

HELD_OUT_FAMILIES: tuple[str, ...] = tuple(HELD_OUT_RANGES)
NEUTRAL = {"angle": 0.0, "scale": 1.0, "blur_sigma": 0.0, "contrast": 1.0, "occlude": 0.0,
           "outside": 0.0}  # the value of each quantity that leaves a view untouched
HELD_OUT_TARGET = threshold("trojans.judge.held_out_target")
"""Pooled true-trigger accuracy over the families that a judge must reach (``meets_target``).
Fixed, with every range above, before any judge was measured on these families; lower than the
in-distribution 0.95 because occlusion and edge-crop hide up to half of a trigger."""
CANVAS_WEIGHTS = tuple(1.0 if c in ("black", "data", "grey") else 0.0 for c in CANVASES)
BLUR_KERNEL = 7


def _training_outside(cfg: ViewConfig, lay: Layers | None) -> float:
    """Largest share of a patch's opacity that a training view puts outside the image.

    Training centres a drawing half a pixel off when H - h is odd, then shifts it as far as
    its box allows, so its top row and left column can leave by half a pixel (measured here
    at scale 1 by posing it at each corner of its room; 0.5/h of its box per axis at any
    scale), plus what a patch larger than the image at ``cfg.scale``'s top loses. Textures:
    reflected, none. Without ``lay``: 11/36, the bound for opaque patches of >= 3 px a side.
    """
    if lay is None:
        return 1 - (1 - 0.5 / 3) ** 2
    _, h_img, w_img = lay.shape
    keep = (~lay.full).nonzero().flatten()
    if len(keep) == 0:
        return 0.0
    hw = lay.size[keep]  # (k, 2)
    room = (torch.tensor([h_img, w_img]) - hw) / 2  # (k, 2)
    worst = torch.zeros(len(keep))
    for signs in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
        shift = room * torch.tensor(signs, dtype=torch.float32)
        _, alpha = pose(lay, keep, scale=torch.ones(len(keep)), angle=torch.zeros(len(keep)),
                        shift=shift, reflect=False)
        inside = alpha.sum((1, 2, 3)) / lay.alpha[keep].sum((1, 2, 3)).clamp_min(1e-12)
        worst = torch.maximum(worst, 1 - inside)
    crop = (1 - torch.tensor([h_img, w_img]) / (cfg.scale[1] * hw)).clamp_min(0)  # (k, 2)
    worst = worst + 1 - (1 - crop[:, 0]) * (1 - crop[:, 1])
    return float(worst.clamp(0, 1).max())


def training_ranges(cfg: ViewConfig | None = None, lay: Layers | None = None
                    ) -> dict[str, tuple[float, float]]:
    """The range of each quantity of :data:`HELD_OUT_RANGES` in training views drawn with
    ``cfg`` (None: ``ViewConfig()``) of the triggers of ``lay`` (None: any shipped bank's);
    ``outside``: the share of a trigger's opacity outside the image (:func:`_training_outside`).
    """
    cfg = cfg or ViewConfig()
    return {"angle": (0.0, 0.0), "scale": cfg.scale, "blur_sigma": cfg.blur_sigma,
            "contrast": cfg.contrast, "occlude": (cfg.occlude, cfg.occlude),
            "outside": (0.0, _training_outside(cfg, lay))}


TRAINING_RANGES = training_ranges()


def disjointness(cfg: ViewConfig | None = None, lay: Layers | None = None
                 ) -> dict[str, bool]:
    """family -> whether its held-out range and the training range (:func:`training_ranges`)
    of the same quantity do not overlap (both closed intervals).

    Example:
        >>> all(disjointness().values())
        True
        >>> disjointness(ViewConfig(scale=(0.6, 1.25)))["small"]
        False
    """
    train = training_ranges(cfg, lay)
    out = {}
    for family, (quantity, lo, hi) in HELD_OUT_RANGES.items():
        t_lo, t_hi = train[quantity]
        out[family] = hi < t_lo or lo > t_hi
    return out


def pose(lay: Layers, idx: torch.Tensor, *, scale: torch.Tensor, angle: torch.Tensor,
         shift: torch.Tensor, reflect: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, rotate (``angle`` degrees, counter-clockwise as displayed) and then shift
    (``shift`` (n, 2) pixels: rows, cols) the centred drawings of identities idx (n,).

    Returns (ink (n, C, H, W), alpha (n, 1, H, W)); textures are reflected at the border when
    ``reflect``, everything else is zero outside. ``angle=90``, scale 1, no shift is
    ``torch.rot90(drawing, 1, (-2, -1))`` on square images.
    """
    n = len(idx)
    c, h_img, w_img = lay.shape
    rad = angle * math.pi / 180
    cos, sin = torch.cos(rad), torch.sin(rad)
    half = torch.tensor([w_img / 2, h_img / 2])  # D = diag(W/2, H/2): pixels per unit (x, y)
    inv = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # R(-a)
    inv = inv / scale.view(-1, 1, 1)  # (n, 2, 2): output pixels -> source pixels (x, y)
    theta = torch.zeros(n, 2, 3)
    theta[:, :, :2] = inv * half.view(1, 1, 2) / half.view(1, 2, 1)  # D^-1 R(-a) D / s
    xy = shift.flip(1)  # (n, 2) x (cols), y (rows)
    theta[:, :, 2] = -(inv @ xy.unsqueeze(2)).squeeze(2) / half  # -D^-1 R(-a) shift / s
    full = lay.full[idx] if reflect else torch.zeros(n, dtype=torch.bool)
    both = _views._warp(torch.cat([lay.ink[idx], lay.alpha[idx]], 1), theta, full)  # (n, C+1, H, W)
    return both[:, :c], both[:, c:].clamp(0, 1)


def blur7(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur (7x7 kernel, replicate padding) of x (n, C, H, W), one sigma (n,) per
    image; sigma 0 leaves an image untouched."""
    n, c, h, w = x.shape
    r = BLUR_KERNEL // 2
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    s = sigma.clamp_min(1e-3).view(-1, 1)
    k1 = torch.exp(-(t.view(1, -1) ** 2) / (2 * s**2))  # (n, 7)
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1.view(n, -1, 1) * k1.view(n, 1, -1)).repeat_interleave(c, 0)  # (n*C, 7, 7)
    out = F.conv2d(F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate"),
                   k2.unsqueeze(1), groups=n * c).view(n, c, h, w)
    return torch.where((sigma > 0).view(-1, 1, 1, 1), out, x)


def _footprint(lay: Layers, idx: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor
               ) -> torch.Tensor:
    """Half extents (n, 2) (rows, cols) in pixels of the scaled, rotated trigger box."""
    hw = lay.size[idx]  # (n, 2)
    rad = angle * math.pi / 180
    cos, sin = torch.cos(rad).abs().view(-1, 1), torch.sin(rad).abs().view(-1, 1)
    return scale.view(-1, 1) * (cos * hw + sin * hw.flip(1)) / 2


def _random_shift(lay: Layers, idx: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """Shifts (n, 2) as in training: patches anywhere inside, textures up to half the image."""
    _, h_img, w_img = lay.shape
    frame = torch.tensor([h_img / 2, w_img / 2])
    room = (frame - _footprint(lay, idx, scale, angle)).clamp_min(0)  # (n, 2)
    room = torch.where(lay.full[idx].view(-1, 1), frame, room)
    return (2 * torch.rand(len(idx), 2, generator=generator) - 1) * room


def _edge_shift(lay: Layers, idx: torch.Tensor, outside: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """Shifts (n, 2) that push ``outside`` (n,) of each drawing's opacity mass across one
    random edge (zero outside); the other axis stays inside (textures: centred)."""
    n = len(idx)
    _, h_img, w_img = lay.shape
    g = generator
    axis = torch.randint(2, (n,), generator=g)  # 0: rows, 1: cols
    towards_end = torch.rand(n, generator=g) < 0.5  # bottom / right
    other = torch.rand(n, generator=g)
    shift = torch.zeros(n, 2)
    for i in range(n):  # n marginals of H or W entries: cheap
        a = lay.alpha[int(idx[i]), 0]  # (H, W)
        ax = int(axis[i])
        m = a.sum(1 - ax)  # (L,) opacity per row (ax 0) or column (ax 1)
        m = m if bool(towards_end[i]) else m.flip(0)
        tail = torch.cat([torch.zeros(1), m.flip(0).cumsum(0)])  # mass beyond the edge, k px
        goal = float(outside[i]) * float(m.sum())
        k = int(torch.searchsorted(tail, torch.tensor([goal]), right=True)) - 1
        k = min(max(k, 0), len(m) - 1)
        step = float(tail[k + 1] - tail[k])
        d = k + ((goal - float(tail[k])) / step if step > 0 else 0.0)
        shift[i, ax] = d if bool(towards_end[i]) else -d
        if not bool(lay.full[int(idx[i])]):  # the other axis: anywhere the trigger fits
            keep = (a.sum(ax) > 0).nonzero().flatten()  # occupied rows (ax 1) / cols (ax 0)
            size = (h_img, w_img)[1 - ax]
            lo, hi = -float(keep.min()), float(size - 1 - keep.max())
            shift[i, 1 - ax] = lo + float(other[i]) * (hi - lo)
    return shift


def _values(family: str, n: int, generator: torch.Generator) -> torch.Tensor:
    _, lo, hi = HELD_OUT_RANGES[family]
    v = _views._u(n, lo, hi, generator)
    if family == "rotate":
        v = v * torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    return v


def _check_family(family: str) -> None:
    if family not in HELD_OUT_RANGES:
        raise ValueError(f"unknown view family {family!r}; the held-out families are "
                         f"{', '.join(HELD_OUT_FAMILIES)}")


def _draw(lay: Layers, idx: torch.Tensor, *, family: str, data: torch.Tensor | None,
          generator: torch.Generator, value: torch.Tensor | float | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(views (n, C, H, W), placed alpha (n, 1, H, W) before occlusion, the family's drawn
    parameter (n,)). ``value`` replaces the drawn parameter after it is drawn (the same
    random stream otherwise): ``NEUTRAL`` values give the same view without the transform."""
    _check_family(family)
    if idx.dim() != 1 or len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(lay.ink):
        raise ValueError(f"idx must be (n,) with n >= 1 identities in [0, {len(lay.ink)}), "
                         f"got {tuple(idx.shape)} {idx.tolist()[:8]}")
    n, g = len(idx), generator
    quantity = HELD_OUT_RANGES[family][0]
    canvas, _ = canvases(n, lay.shape, data=data, weights=CANVAS_WEIGHTS, generator=g)
    v = _values(family, n, g)
    if value is not None:
        v = torch.as_tensor(value, dtype=torch.float32).expand(n).clone()
    scale = v if quantity == "scale" else torch.ones(n)
    angle = v if quantity == "angle" else torch.zeros(n)
    if family == "large":
        scale = v = _fit_scale(lay, idx, scale)
    if quantity == "outside":
        shift = _edge_shift(lay, idx, v, g)
    else:
        shift = _random_shift(lay, idx, scale, angle, g)
    ink, alpha = pose(lay, idx, scale=scale, angle=angle, shift=shift,
                      reflect=quantity != "outside")
    out = canvas * (1 - alpha) + ink
    if quantity == "occlude":
        _, h_img, w_img = lay.shape
        centre = torch.tensor([h_img / 2, w_img / 2]) + shift
        half = _footprint(lay, idx, scale, angle)
        box = torch.cat([centre - half, centre + half], 1)  # (n, 4) top, left, bottom, right
        occluded = torch.cat([_views._occlude(out[i:i + 1], box[i:i + 1], frac=float(v[i]),
                                              generator=g) for i in range(n)])
        out = torch.where((v > 0).view(-1, 1, 1, 1), occluded, out)
    elif quantity == "contrast":
        mean = out.mean((1, 2, 3), keepdim=True)
        out = mean + v.view(-1, 1, 1, 1) * (out - mean)
    elif quantity == "blur_sigma":
        out = blur7(out, v)
    return out.clamp(0, 1), alpha, v


def _fit_scale(lay: Layers, idx: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    _, h_img, w_img = lay.shape
    hw = lay.size[idx]  # (n, 2)
    fit = torch.minimum(h_img / hw[:, 0], w_img / hw[:, 1])
    fit = torch.where(lay.full[idx], torch.full_like(fit, math.inf), fit)
    low = HELD_OUT_RANGES["large"][1]
    if bool((fit < low).any()):
        i = int((fit < low).nonzero()[0])
        raise ValueError(f"the 'large' family is undefined for a {int(hw[i, 0])}x"
                         f"{int(hw[i, 1])} patch on {h_img}x{w_img} images: it does not fit "
                         f"at scale {low}")
    return torch.minimum(scale, fit)


def held_out_views(lay: Layers, idx: torch.Tensor, *, family: str, data: torch.Tensor | None,
                   generator: torch.Generator) -> torch.Tensor:
    """Views (n, C, H, W) in [0,1] of the identities idx (n,) (all >= 0) of ``lay`` drawn by
    the held-out ``family`` (one of :data:`HELD_OUT_FAMILIES`; see the module's table).
    ``data``: clean images (N, C, H, W) for the data canvas (None: black and grey only).

    Example:
        >>> held_out_views(layers(bank, (1, 8, 8)), torch.tensor([0, 0, 5]), family="small",
        ...                data=None, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 8, 8])
    """
    return _draw(lay, idx, family=family, data=data, generator=generator)[0]


Answerer = Callable[[torch.Tensor, list[Trigger]], int]  # as judge_checks.AnswerFn


def _rate(questions: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """Accuracy, Wilson interval and trigger-clustered bootstrap interval of (right, trigger)."""
    n, correct = len(questions), sum(ok for ok, _ in questions)
    lo, hi = wilson_ci(correct, n)
    names = [name for _, name in questions]
    by_trigger = None
    if len(set(names)) >= 2:
        boot = torch.Generator().manual_seed(0)  # its own stream: the views' is untouched
        by_trigger = list(cluster_bootstrap_ci([float(ok) for ok, _ in questions], names,
                                               n_boot=1000, generator=boot))
    return {"accuracy": correct / n, "ci": [lo, hi], "ci_by_trigger": by_trigger, "n": n}


def validate_held_out(answer: Answerer, *, bank: Mapping[str, Sequence[Trigger]]
                      | Sequence[Trigger], shape: tuple[int, int, int], n_trials: int,
                      generator: torch.Generator, data: torch.Tensor | None = None,
                      n_images: int = 10, families: Sequence[str] = HELD_OUT_FAMILIES,
                      target: float = HELD_OUT_TARGET) -> dict[str, Any]:
    """True-trigger accuracy of a judge on views it never saw in training.

    ``bank``: the options, kind -> triggers (or one list). Per family, per kind, per trigger,
    ``n_trials`` questions whose ``n_images`` images are that family's views of the trigger
    (on ``data``, clean *test* images (N, C, H, W), if given); the options are shuffled per
    question and ``answer(images (n_images, C, H, W), options)`` returns the chosen index.

    Returns a JSON-able dict: ``families`` (family -> accuracy, Wilson ``ci``, ``ci_by_trigger``
    (cluster bootstrap over triggers), ``n`` questions, ``per_kind``, ``per_trigger``,
    ``range``), ``overall`` (pooled), ``worst`` (family, accuracy), ``chance`` (mean 1/K),
    ``target`` and ``meets_target`` (pooled accuracy >= ``target``), ``n_images``, ``n_trials``.

    Example:
        >>> rep = validate_held_out(encoder_answer(enc, shape=(1, 8, 8)), bank=bank,
        ...                         shape=(1, 8, 8), n_trials=5, generator=g)
        >>> rep["families"]["small"]["accuracy"], rep["worst"]
    """
    banks = ({k: list(v) for k, v in sorted(bank.items()) if v} if isinstance(bank, Mapping)
             else {"bank": list(bank)})
    if n_trials < 1 or n_images < 1 or not families or not all(banks.values()):
        raise ValueError("validate_held_out needs n_trials >= 1, n_images >= 1, a family and "
                         "a trigger")
    for f in families:
        _check_family(f)
    lays = {kind: layers(trigs, shape) for kind, trigs in banks.items()}
    fam_out: dict[str, Any] = {}
    every: list[tuple[int, str]] = []  # (right, trigger) of every question
    for family in families:
        per_kind: dict[str, list[tuple[int, str]]] = {}
        for kind, triggers in banks.items():
            per_kind[kind] = []
            for t, trig in enumerate(triggers):
                imgs = held_out_views(lays[kind], torch.full((n_trials * n_images,), t),
                                      family=family, data=data, generator=generator)
                for x in imgs.view(n_trials, n_images, *shape):
                    perm = torch.randperm(len(triggers), generator=generator)
                    choice = answer(x, [triggers[int(i)] for i in perm])
                    if not 0 <= int(choice) < len(triggers):
                        raise ValueError(f"answer returned {choice!r}, not an index in "
                                         f"[0, {len(triggers)})")
                    per_kind[kind].append((int(int(perm[int(choice)]) == t), trig.name))
        pooled = [q for qs in per_kind.values() for q in qs]
        per_trigger: dict[str, float] = {}
        for ok, name in pooled:
            per_trigger[name] = per_trigger.get(name, 0.0) + ok / n_trials
        fam_out[family] = _rate(pooled) | {
            "per_kind": {kind: _rate(qs) for kind, qs in per_kind.items()},
            "per_trigger": per_trigger, "range": list(HELD_OUT_RANGES[family])}
        every += pooled
    worst = min(fam_out, key=lambda f: fam_out[f]["accuracy"])
    overall = _rate(every)
    return {"families": fam_out, "overall": overall, "target": target,
            "meets_target": overall["accuracy"] >= target,
            "worst": {"family": worst, "accuracy": fam_out[worst]["accuracy"]},
            "chance": sum(1 / len(v) for v in banks.values()) / len(banks),
            "n_images": n_images, "n_trials": n_trials}
