"""The program search's features: template similarities and region ink statistics.

For a template T (D,) with values in [0,1] and an image x (D,), with ``1-T`` its complement:

- ``dot(x, T)`` = <x, T>
- ``dot(x, T) - dot(x, 1-T)`` = <x, T> - <x, 1-T>
- ``cos(x, T)`` = <x, T> / (|x| |T|)
- ``cos(x, T) - cos(x, 1-T)``

(for signed templates such as principal components only ``dot`` and ``cos``), and for a
rectangle of the image ``ink[r0:r1, c0:c1]``, the mean pixel value inside it (over channels).

Candidate templates come from the data (:func:`candidates`): the first ``n_data`` images of the
distillation set (named ``x[i]``, minus any index in ``exclude``), any named ``extra`` templates
in [0,1] (e.g. those recovered from the network by :mod:`eisbench.replace.recover`), the mean
image of each class the model predicts (``mean[c]``) and the top principal components (``pc1``,
...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FEATURE_KINDS = ("dot", "contrast", "cos", "cos-contrast")
SIGNED_KINDS = ("dot", "cos")  # kinds that make sense for templates with negative values
_EPS = 1e-8


@dataclass(frozen=True)
class Feature:
    """One scalar feature of an image: a template similarity (``template`` indexes the
    template bank) or the ink of a region (``region`` = (r0, r1, c0, c1), half-open)."""

    kind: str  # one of FEATURE_KINDS, or "ink"
    template: int = -1
    region: tuple[int, int, int, int] = (0, 0, 0, 0)
    name: str = ""


def template_feature_name(kind: str, t: str) -> str:
    return {"dot": f"dot(x, {t})", "contrast": f"dot(x, {t}) - dot(x, 1-{t})",
            "cos": f"cos(x, {t})", "cos-contrast": f"cos(x, {t}) - cos(x, 1-{t})"}[kind]


def candidates(x: torch.Tensor, y: torch.Tensor, *, num_classes: int, n_data: int,
               exclude: tuple[int, ...], n_pca: int,
               extra: tuple[tuple[str, torch.Tensor], ...] = ()
               ) -> tuple[torch.Tensor, list[str], list[bool]]:
    """Candidate templates (M, D) drawn from images x (N, C, H, W) and the model's labels y
    (N,), plus ``extra`` (name, image (C, H, W) in [0,1]), their names, and whether each lies
    in [0,1] (complements are defined)."""
    xf = x.flatten(1).float()  # (N, D)
    keep = [i for i in range(min(n_data, len(x))) if i not in set(exclude)]
    temps = [xf[i] for i in keep]
    names = [f"x[{i}]" for i in keep]
    bounded = [True] * len(keep)
    for name, t in extra:
        if tuple(t.shape) != tuple(x.shape[1:]) or float(t.min()) < 0 or float(t.max()) > 1:
            raise ValueError(f"extra template {name!r} must be one image {tuple(x.shape[1:])} "
                             f"in [0,1], got shape {tuple(t.shape)}")
        if name in names:
            raise ValueError(f"duplicate template name {name!r}")
        temps.append(t.flatten().float())
        names.append(name)
        bounded.append(True)
    for c in range(num_classes):
        if bool((y == c).any()):
            temps.append(xf[y == c].mean(0))
            names.append(f"mean[{c}]")
            bounded.append(True)
    if n_pca > 0:
        centred = xf - xf.mean(0)
        q = min(n_pca, min(centred.shape))
        _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v: (r, D)
        for j in range(q):
            temps.append(v[j])
            names.append(f"pc{j + 1}")
            bounded.append(False)
    if not temps:
        return torch.zeros(0, xf.shape[1]), [], []
    return torch.stack(temps), names, bounded


def regions(shape: tuple[int, int, int], grid: int) -> list[tuple[int, int, int, int]]:
    """The whole image plus a ``grid`` x ``grid`` tiling (the cells of adaptive pooling)."""
    _, h, w = shape
    gh, gw = min(grid, h), min(grid, w)
    out = [(0, h, 0, w)]
    for i in range(gh):
        for j in range(gw):
            out.append((i * h // gh, -(-(i + 1) * h // gh), j * w // gw, -(-(j + 1) * w // gw)))
    return out


def bank(shape: tuple[int, int, int], names: list[str], bounded: list[bool],
         grid: int) -> list[Feature]:
    """Every feature of the search over templates ``names`` and the ink regions."""
    out: list[Feature] = []
    for m, (t, ok) in enumerate(zip(names, bounded, strict=True)):
        for kind in FEATURE_KINDS if ok else SIGNED_KINDS:
            out.append(Feature(kind=kind, template=m, name=template_feature_name(kind, t)))
    for r in regions(shape, grid):
        r0, r1, c0, c1 = r
        out.append(Feature(kind="ink", region=r, name=f"ink[{r0}:{r1}, {c0}:{c1}]"))
    return out


def compute(x: torch.Tensor, feats: list[Feature], templates: torch.Tensor) -> torch.Tensor:
    """Feature values (N, F) of images x (N, C, H, W) for ``feats`` over ``templates`` (M, D)."""
    xf = x.flatten(1).float()  # (N, D)
    out = torch.empty(len(x), len(feats))
    need = sorted({f.template for f in feats if f.kind != "ink"})
    if need:
        t = templates[need]  # (m, D)
        col = {m: i for i, m in enumerate(need)}
        dots = xf @ t.T  # (N, m)
        comp = xf.sum(1, keepdim=True) - dots  # <x, 1-T>
        nx = xf.norm(dim=1, keepdim=True).clamp_min(_EPS)  # (N, 1)
        nt = t.norm(dim=1).clamp_min(_EPS)  # (m,)
        nc = (1 - t).norm(dim=1).clamp_min(_EPS)
        cos, cos_c = dots / (nx * nt), comp / (nx * nc)
        table = {"dot": dots, "contrast": dots - comp, "cos": cos, "cos-contrast": cos - cos_c}
    for k, f in enumerate(feats):
        if f.kind == "ink":
            r0, r1, c0, c1 = f.region
            out[:, k] = x[:, :, r0:r1, c0:c1].float().mean((1, 2, 3))
        else:
            out[:, k] = table[f.kind][:, col[f.template]]
    return out
