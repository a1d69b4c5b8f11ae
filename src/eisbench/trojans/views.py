"""Views of triggers as an interpretability tool might show them: the judge's training and
validation images.

A tool that has found a trigger rarely returns the trigger itself. It returns the trigger
shifted, rescaled, blurred, at another contrast, partly hidden, repeated, stamped on a data
image, or as the difference between a stamped and a clean image. :func:`render` draws such
views of the triggers of a bank, one per requested identity, and *background* views
(identity -1: clean data images, noise, flat grey) that contain no trigger.

Every trigger is first drawn centred on an empty canvas (:func:`layers`, premultiplied ink
and opacity); a view moves and rescales that drawing with one affine warp per image
(reflected at the border for full-image style textures, so a shifted texture stays a
texture; zero elsewhere), composites it over a canvas, and applies photometric changes.

Example:
    >>> lay = layers(bank, (1, 28, 28))
    >>> x = render(lay, torch.tensor([0, 3, -1]), data=clean, generator=g)  # (3, 1, 28, 28)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eisbench.trojans.stamp import Trigger

BACKGROUND = -1  # identity of a view without a trigger


@dataclass(frozen=True)
class ViewConfig:
    """How views vary (probabilities per image; ranges are uniform)."""

    p_exact: float = 0.1  # the trigger's own image (Trigger.image), untouched
    scale: tuple[float, float] = (0.8, 1.25)
    p_second: float = 0.2  # a second copy elsewhere (tools often repeat a pattern)
    canvas_weights: tuple[float, ...] = (0.3, 0.35, 0.15, 0.1, 0.1)  # see CANVASES
    p_difference: float = 0.25  # on a data canvas: |stamped - clean| / its max
    contrast: tuple[float, float] = (0.6, 1.4)
    p_blur: float = 0.25
    blur_sigma: tuple[float, float] = (0.3, 0.8)
    p_noise: float = 0.5
    noise_sigma: float = 0.1  # upper end of the additive Gaussian noise
    p_occlude: float = 0.2
    occlude: float = 0.34  # occluded rectangle side, as a fraction of the trigger's side


CANVASES = ("black", "data", "uniform-noise", "gaussian-noise", "grey")


@dataclass(frozen=True)
class Layers:
    """Triggers drawn centred on an empty (C, H, W) canvas."""

    ink: torch.Tensor  # (K, C, H, W): alpha * icon
    alpha: torch.Tensor  # (K, 1, H, W)
    exact: torch.Tensor  # (K, C, H, W): Trigger.image(shape)
    size: torch.Tensor  # (K, 2): the trigger's (h, w) in pixels
    full: torch.Tensor  # (K,) bool: the trigger covers the whole image (a texture)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.ink.shape[1:]
        return int(c), int(h), int(w)


def layers(triggers: Sequence[Trigger], shape: tuple[int, int, int]) -> Layers:
    """Draw every trigger centred on an empty canvas of ``shape`` (C, H, W)."""
    c, h_img, w_img = shape
    k = len(triggers)
    ink, alpha = torch.zeros(k, c, h_img, w_img), torch.zeros(k, 1, h_img, w_img)
    size = torch.zeros(k, 2)
    for i, t in enumerate(triggers):
        _, h, w = t.icon.shape
        if h > h_img or w > w_img:
            raise ValueError(f"trigger {t.name!r} ({h}x{w}) is larger than images {shape}")
        r, q = (h_img - h) // 2, (w_img - w) // 2
        a = t.alpha.float()  # (1, h, w)
        alpha[i, :, r:r + h, q:q + w] = a
        ink[i, :, r:r + h, q:q + w] = a * t.icon.float().expand(c, h, w)
        size[i] = torch.tensor([h, w], dtype=torch.float32)
    exact = torch.stack([t.image(shape) for t in triggers]) if k else torch.zeros(0, *shape)
    full = (size[:, 0] >= h_img) & (size[:, 1] >= w_img)
    return Layers(ink=ink, alpha=alpha, exact=exact, size=size, full=full)


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def canvases(n: int, shape: tuple[int, int, int], *, data: torch.Tensor | None,
             weights: Sequence[float], generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """n canvases (n, C, H, W) drawn from :data:`CANVASES` with ``weights`` (the data
    canvas is dropped without ``data``); also returns their kind index (n,)."""
    w = torch.tensor([float(v) for v in weights])
    if len(w) != len(CANVASES):
        raise ValueError(f"canvas_weights needs {len(CANVASES)} entries ({CANVASES})")
    if data is None or len(data) == 0:
        w[CANVASES.index("data")] = 0.0
    kind = torch.multinomial(w / w.sum(), n, replacement=True, generator=generator)  # (n,)
    g = generator
    out = torch.zeros(n, *shape)
    out[kind == 2] = (torch.rand(n, *shape, generator=g)
                      * _u(n, 0.1, 1.0, g).view(-1, 1, 1, 1))[kind == 2]
    gauss = (_u(n, 0.2, 0.8, g).view(-1, 1, 1, 1)
             + _u(n, 0.05, 0.3, g).view(-1, 1, 1, 1) * torch.randn(n, *shape, generator=g))
    out[kind == 3] = gauss.clamp(0, 1)[kind == 3]
    out[kind == 4] = _u(n, 0.0, 1.0, g).view(-1, 1, 1, 1).expand(n, *shape)[kind == 4]
    if data is not None and len(data):
        pick = torch.randint(len(data), (n,), generator=g)
        out[kind == 1] = data[pick].to(out)[kind == 1]
    return out, kind


def _warp(src: torch.Tensor, theta: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Affine-warp src (n, D, H, W) by theta (n, 2, 3); reflect where ``full`` (n,)."""
    grid = F.affine_grid(theta, list(src.shape), align_corners=False)  # (n, H, W, 2)
    zero = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if not bool(full.any()):
        return zero
    refl = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)
    return torch.where(full.view(-1, 1, 1, 1), refl, zero)


def place(lay: Layers, idx: torch.Tensor, *, scale: tuple[float, float],
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move and rescale the drawings of identities idx (n,) (all >= 0) at random.

    Returns (ink (n, C, H, W), alpha (n, 1, H, W), box (n, 4) = top, left, bottom, right of
    the trigger in pixels after the warp). Patches stay inside the image; textures may shift
    by up to half the image (reflected at the border).
    """
    n = len(idx)
    _, h_img, w_img = lay.shape
    g = generator
    s = _u(n, *scale, g)  # (n,)
    hw = lay.size[idx]  # (n, 2)
    full = lay.full[idx]
    room = torch.stack([(h_img - s * hw[:, 0]) / 2, (w_img - s * hw[:, 1]) / 2], 1)  # (n, 2)
    room = torch.where(full.view(-1, 1), torch.tensor([h_img / 2, w_img / 2]), room.clamp_min(0))
    shift = (2 * torch.rand(n, 2, generator=g) - 1) * room  # (n, 2) rows, cols in pixels
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, 0, 2] = -2 * shift[:, 1] / w_img / s  # x (columns), normalised units
    theta[:, 1, 2] = -2 * shift[:, 0] / h_img / s
    both = _warp(torch.cat([lay.ink[idx], lay.alpha[idx]], 1), theta, full)  # (n, C+1, H, W)
    c = lay.shape[0]
    centre = torch.tensor([h_img / 2, w_img / 2]) + shift  # (n, 2)
    half = s.view(-1, 1) * hw / 2
    box = torch.cat([centre - half, centre + half], 1)  # (n, 4)
    return both[:, :c], both[:, c:].clamp(0, 1), box


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur (3x3 kernel) of x (n, C, H, W) with one sigma per image (n,)."""
    n, c, h, w = x.shape
    t = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-(t.view(1, 3) ** 2) / (2 * sigma.view(-1, 1) ** 2))  # (n, 3)
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1.view(n, 3, 1) * k1.view(n, 1, 3)).repeat_interleave(c, 0)  # (n*C, 3, 3)
    out = F.conv2d(F.pad(x.reshape(1, n * c, h, w), (1, 1, 1, 1), mode="replicate"),
                   k2.unsqueeze(1), groups=n * c)
    return out.view(n, c, h, w)


def _occlude(x: torch.Tensor, box: torch.Tensor, *, frac: float,
             generator: torch.Generator) -> torch.Tensor:
    """Black out one random rectangle (side ``frac`` of the box side) inside each box."""
    n, _, h, w = x.shape
    g = generator
    side = ((box[:, 2:] - box[:, :2]) * frac).clamp_min(1)  # (n, 2)
    lo = box[:, :2] + torch.rand(n, 2, generator=g) * (box[:, 2:] - box[:, :2] - side).clamp_min(0)
    rows = torch.arange(h).view(1, h, 1).float()
    cols = torch.arange(w).view(1, 1, w).float()
    inside = ((rows >= lo[:, 0].view(-1, 1, 1)) & (rows < (lo[:, 0] + side[:, 0]).view(-1, 1, 1))
              & (cols >= lo[:, 1].view(-1, 1, 1))
              & (cols < (lo[:, 1] + side[:, 1]).view(-1, 1, 1)))  # (n, H, W)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def render(lay: Layers, idx: torch.Tensor, *, data: torch.Tensor | None,
           generator: torch.Generator, cfg: ViewConfig = ViewConfig()) -> torch.Tensor:
    """Random views (n, C, H, W) in [0,1] of the identities idx (n,) of ``lay``
    (:data:`BACKGROUND` = no trigger). ``data``: clean images (N, C, H, W) for the data
    canvas (None: black, noise and grey canvases only). Randomness comes from ``generator``.
    """
    n = len(idx)
    g = generator
    shape = lay.shape
    canvas, kind = canvases(n, shape, data=data, weights=cfg.canvas_weights, generator=g)
    has = idx >= 0
    safe = idx.clamp_min(0)
    out = canvas.clone()
    box = torch.tensor([0.0, 0.0, float(shape[1]), float(shape[2])]).repeat(n, 1)  # (n, 4)
    for copy in range(2):
        ink, alpha, b = place(lay, safe, scale=cfg.scale, generator=g)
        use = has if copy == 0 else has & (torch.rand(n, generator=g) < cfg.p_second)
        m = use.view(-1, 1, 1, 1).float()
        out = out * (1 - m * alpha) + m * ink
        if copy == 0:
            box = torch.where(has.view(-1, 1), b, box)
    diff = (kind == 1) & has & (torch.rand(n, generator=g) < cfg.p_difference)
    d = (out - canvas).abs()
    d = d / d.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    out = torch.where(diff.view(-1, 1, 1, 1), d, out)
    occ = has & (torch.rand(n, generator=g) < cfg.p_occlude)
    out = torch.where(occ.view(-1, 1, 1, 1), _occlude(out, box, frac=cfg.occlude, generator=g),
                      out)
    c = _u(n, *cfg.contrast, g).view(-1, 1, 1, 1)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (mean + c * (out - mean)).clamp(0, 1)
    blur = torch.rand(n, generator=g) < cfg.p_blur
    out = torch.where(blur.view(-1, 1, 1, 1), _blur(out, _u(n, *cfg.blur_sigma, g)), out)
    sigma = _u(n, 0.0, cfg.noise_sigma, g) * (torch.rand(n, generator=g) < cfg.p_noise).float()
    out = (out + sigma.view(-1, 1, 1, 1) * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    exact = has & (torch.rand(n, generator=g) < cfg.p_exact)
    return torch.where(exact.view(-1, 1, 1, 1), lay.exact[safe], out)
