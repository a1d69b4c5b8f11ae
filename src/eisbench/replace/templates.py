"""Prototype/template rules: a few template images, each with a class and a threshold.

The replacement scores an image against every template by a dot product minus the
template's threshold and answers the class of the best-scoring template:

    label(x) = class[j*],  j* = argmax_j <x, T_j> - theta_j

Templates are k-means centroids (``per_class`` of them) of the images the model puts in each
class (k-means++-style seeding from ``generator``, Lloyd iterations); thresholds start at
``|T_j|^2 / 2`` (nearest-centroid in Euclidean distance) and are then tuned by gradient descent
on the cross-entropy against the model's labels (templates fixed, so they stay averages of
real images). ``size`` = the number of templates (each carries one threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.replace.core import as_shape, check_input, register, targets


@dataclass(frozen=True)
class TemplateRule:
    templates: torch.Tensor  # (T, C, H, W)
    thresholds: torch.Tensor  # (T,)
    classes: torch.Tensor  # (T,) int64
    num_classes: int

    @property
    def size(self) -> int:
        return len(self.templates)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """<x, T_j> - theta_j: (N, T)."""
        check_input(x, as_shape(self.templates))
        return x.flatten(1).float() @ self.templates.flatten(1).T - self.thresholds

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classes[self.scores(x).argmax(1)]

    def describe(self) -> str:
        per = torch.bincount(self.classes, minlength=self.num_classes).tolist()
        counts = ", ".join(f"{c}:{n}" for c, n in enumerate(per) if n)
        return (f"class of the best of {self.size} templates by <x, T> - threshold "
                f"(templates per class {counts})")


def _kmeans(x: torch.Tensor, k: int, *, generator: torch.Generator,
            iters: int = 15) -> torch.Tensor:
    """k centroids (k, D) of rows x (N, D): D^2-weighted seeding, then Lloyd iterations."""
    n = len(x)
    if n <= k:
        return x.clone()
    first = int(torch.randint(n, (1,), generator=generator))
    cent = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)  # (N,)
    for _ in range(1, k):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        i = int(torch.multinomial(p, 1, generator=generator))
        cent.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = torch.stack(cent)  # (k, D)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)  # (N,)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c


@register("templates", size_param="per_class", grid=(1, 2, 4, 8, 16), unit="templates",
          summary="best-matching template (dot product minus threshold), k-means templates")
def templates(model: nn.Module, x: torch.Tensor, *, generator: torch.Generator,
              device: str | torch.device = "cpu", per_class: int = 2,
              steps: int = 200, lr: float = 0.05) -> TemplateRule:
    """Distil ``model`` on images x (N, C, H, W) into ``per_class`` templates per predicted
    class (classes the model never predicts on x get none) with tuned thresholds."""
    if per_class < 1 or steps < 0:
        raise ValueError(f"need per_class >= 1 and steps >= 0, got {per_class}, {steps}")
    y, k = targets(model, x, device=device)
    xf = x.flatten(1).float()  # (N, D)
    temps, cls = [], []
    for c in range(k):
        members = xf[y == c]
        if len(members) == 0:
            continue
        cent = _kmeans(members, per_class, generator=generator)
        temps.append(cent)
        cls += [c] * len(cent)
    t = torch.cat(temps)  # (T, D)
    classes = torch.tensor(cls, dtype=torch.long)
    theta = ((t ** 2).sum(1) / 2).clone()  # (T,)
    if steps and len(classes.unique()) > 1:
        theta.requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=lr * float(theta.detach().abs().mean() + 1e-6))
        dots = xf @ t.T  # (N, T)
        member = F.one_hot(classes, k).T.bool()  # (K, T)
        for _ in range(steps):
            s = dots - theta  # (N, T)
            logits = torch.stack([s[:, member[c]].amax(1) if member[c].any()
                                  else torch.full((len(s),), -1e9) for c in range(k)], 1)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        theta = theta.detach()
    return TemplateRule(templates=t.view(-1, *as_shape(x)).contiguous(),
                        thresholds=theta.contiguous(), classes=classes, num_classes=k)
