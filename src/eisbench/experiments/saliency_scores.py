"""The scores of exhibit A (:mod:`eisbench.experiments.saliency`): attribution maps and their
alignment with the strokes, and representation inversions labelled by an independent judge.

- :func:`attributions`: |attribution| maps of four captum methods for the true class;
- :func:`alignment`: share of |attribution| on stroke pixels and its rank correlation with
  pixel intensity;
- :func:`other_class_starts`: inversion starts, an image of another class per target;
- :func:`inversion_scores`: invert a model's representation of target images from a start and
  score the result by the judge's and the model's own labels and by feature distances;
- :func:`aggregate`: every per-seed score, and each robust model's paired difference from the
  standard one, as a metric over seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients, Saliency
from scipy.stats import rankdata
from torch import nn

from eisbench.attacks.inversion import invert_representation, representation_distance
from eisbench.core.tensors import eval_mode
from eisbench.runs.claims import metric_over_seeds
from eisbench.runs.record import Metric
from eisbench.runs.stages import Tensors


def attributions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, ig_steps: int,
                 smooth_samples: int, smooth_sigma: float,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """|attribution| maps (B, C, H, W) for class y (B,) of images x (B, C, H, W), by method:
    gradient (captum Saliency), smoothgrad (mean |gradient| over Gaussian-noised copies),
    ig-black / ig-grey (captum IntegratedGradients from a 0 / 0.5 baseline).

    Example:
        >>> maps = attributions(net, x[:8], y[:8], ig_steps=16, smooth_samples=8,
        ...                     smooth_sigma=0.15, generator=torch.Generator().manual_seed(0))
    """
    out: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        sal = Saliency(model)
        out["gradient"] = sal.attribute(x.clone().requires_grad_(True), target=y).detach()
        acc = torch.zeros_like(x)  # (B, C, H, W)
        for _ in range(smooth_samples):
            noisy = x + smooth_sigma * torch.randn(x.shape, generator=generator)
            acc += sal.attribute(noisy.requires_grad_(True), target=y).detach()
        out["smoothgrad"] = acc / max(smooth_samples, 1)
        ig = IntegratedGradients(model)
        for name, base in (("ig-black", 0.0), ("ig-grey", 0.5)):
            a = ig.attribute(x.clone().requires_grad_(True), baselines=base, target=y,
                             n_steps=ig_steps, internal_batch_size=512)
            out[name] = a.detach().abs()
    return out


def alignment(attr: torch.Tensor, x: torch.Tensor, *, threshold: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per image: share of |attr| on stroke pixels (channel-mean intensity > threshold), and
    Spearman rank correlation (ties averaged) between |attr| and intensity over pixels.

    Args:
        attr: attributions (B, C, H, W); absolute values are taken, channels summed.
        x: the images (B, C, H, W) in [0,1].

    Returns:
        (share (B,), rank_corr (B,)) as float64 arrays; rank_corr is 0 for a constant map.
    """
    a = attr.abs().sum(1).flatten(1).double().numpy()  # (B, H*W)
    v = x.mean(1).flatten(1).double().numpy()  # (B, H*W)
    share = (a * (v > threshold)).sum(1) / np.maximum(a.sum(1), 1e-300)
    ra, rv = rankdata(a, axis=1), rankdata(v, axis=1)
    ra, rv = ra - ra.mean(1, keepdims=True), rv - rv.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rv ** 2).sum(1))
    corr = np.where(den > 0, (ra * rv).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    return share, corr


def other_class_starts(x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, *,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target label (M,), a random image of x (N, C, H, W) whose label y (N,)
    differs; returns (images (M, C, H, W), their labels (M,))."""
    idx = []
    for t in targets.tolist():
        cand = (y != t).nonzero().flatten()
        if len(cand) == 0:
            raise ValueError(f"no start image of a class other than {t}: raise the test set")
        idx.append(int(cand[torch.randint(len(cand), (1,), generator=generator)]))
    sel = torch.tensor(idx)
    return x[sel], y[sel]


def predict_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels (B,) of images x (B, C, H, W), in eval mode, without gradient."""
    with eval_mode(model), torch.no_grad():
        out: torch.Tensor = model(x).argmax(1)
        return out


def accuracy(model: nn.Module, d: Tensors, dev: torch.device) -> float:
    """Accuracy of ``model`` on all of ``d`` (moved to ``dev`` at once)."""
    return float((predict_labels(model, d.x.to(dev)).cpu() == d.y).float().mean())


def inversion_scores(model: nn.Module, judge: nn.Module, x0: torch.Tensor,
                     y0: torch.Tensor | None, x_tgt: torch.Tensor, y_tgt: torch.Tensor, *,
                     steps: int, step_size: float, device: torch.device
                     ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Invert ``model``'s penultimate representation of targets x_tgt (M, C, H, W) from starts
    x0 (M, C, H, W) and score the inversions.

    Returns (scores, inversions (M, C, H, W) on ``device``, the judge's labels (M,) on the
    CPU). Scores: the share of inversions the judge (and the model itself) labels as the
    target's class y_tgt (M,), the mean feature distance to the target after and before, and,
    when the starts' labels y0 (M,) are given, the share the judge still labels as the start.
    """
    inv = invert_representation(model, x0.to(device), x_tgt.to(device), steps=steps,
                                step_size=step_size)
    pj, ps = predict_labels(judge, inv).cpu(), predict_labels(model, inv).cpu()
    r: dict[str, float] = {
        "judge_target_rate": float((pj == y_tgt).float().mean()),
        "self_target_rate": float((ps == y_tgt).float().mean()),
        "feature_distance": float(representation_distance(model, inv, x_tgt.to(device)).mean()),
        "start_feature_distance": float(representation_distance(
            model, x0.to(device), x_tgt.to(device)).mean())}
    if y0 is not None:
        r["judge_start_rate"] = float((pj == y0).float().mean())
    return r, inv, pj


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Metric]:
    """Mean and 95% CI over seeds of every per-seed number (``saliency/<model>/...``), and of
    the paired per-seed differences of each robust model from the standard one
    (``saliency/<model>-vs-standard/...-diff``)."""
    flat = [_flatten(r) for r in per_seed]
    out: dict[str, Metric] = {}
    for k in flat[0]:
        vals = [f[k] for f in flat]
        if k.endswith("-diff") or k.endswith("rank_corr"):
            out[k] = metric_over_seeds(vals, lower=-1.0)
        elif k.endswith("distance"):
            out[k] = metric_over_seeds(vals, higher_is_better=False, upper=float("inf"))
        else:
            out[k] = metric_over_seeds(vals)
    return out


def _flatten(r: dict[str, Any]) -> dict[str, float]:
    """One seed's numbers under their metric names, plus the differences from standard."""
    f = {"saliency/stroke_fraction": r["stroke_fraction"],
         "saliency/judge/std_acc": r["judge"]["std_acc"],
         "saliency/judge/target_acc": r["judge"]["target_acc"]}
    for name, m in r["models"].items():
        f[f"saliency/{name}/std_acc"] = m["std_acc"]
        f[f"saliency/{name}/robust_acc"] = m["robust_acc"]
        for meth, a in m["attribution"].items():
            for k, v in a.items():
                f[f"saliency/{name}/{meth}/{k}"] = v
        for start, inv in m["inversion"].items():
            for k, v in inv.items():
                f[f"saliency/{name}/inversion_{start}/{k}"] = v
    base = r["models"]["standard"]
    for name, m in r["models"].items():
        if name == "standard":
            continue
        p = f"saliency/{name}-vs-standard"
        f[f"{p}/robust-diff"] = m["robust_acc"] - base["robust_acc"]
        for meth, a in m["attribution"].items():
            f[f"{p}/{meth}/stroke-share-diff"] = a["stroke_share"] - \
                base["attribution"][meth]["stroke_share"]
        for start, inv in m["inversion"].items():
            f[f"{p}/inversion_{start}/judge-target-diff"] = inv["judge_target_rate"] - \
                base["inversion"][start]["judge_target_rate"]
    return f
