"""Nakkiran 2019's non-transferable targeted attack (part (a) of
:mod:`eisbench.experiments.nakkiran`): the attack itself, its cached D_det stage, and the
transfer rate of its examples to another model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.attacks.core import check_inputs
from eisbench.attacks.projection import assert_within_budget, project, steepest_direction
from eisbench.core.progress import progress
from eisbench.core.tensors import eval_mode
from eisbench.runs.stages import Context, Tensors


def non_transferable_pgd(model: nn.Module, ensemble: Sequence[nn.Module], x: torch.Tensor,
                         y: torch.Tensor, target: torch.Tensor, *, eps: float, steps: int,
                         step_size: float, norm: str = "l2",
                         ensemble_weight: float = 1.0) -> torch.Tensor:
    """Targeted PGD that fools ``model`` but not ``ensemble`` (Nakkiran 2019).

    Minimises ``CE(model(x'), target) + ensemble_weight * mean_i CE(ensemble[i](x'), y)`` over
    the ``norm`` ball of radius ``eps`` around x (and the [0,1] box), from x itself, with
    ``steps`` normalised steepest-descent steps of ``step_size``; with an empty ensemble it is
    plain targeted PGD. With ``ensemble_weight=1`` this is Nakkiran's "decorrelated loss"
    ``L(f, x, y_targ) + E_i[L(f_i, x, y)]`` (Distill 2019, "Adversarial Examples are Just
    Bugs, Too", distillpub/post--ilyas-response-5 ``index.html``): a mean over the ensemble,
    added. The losses are summed over the batch only so that each example's gradient is its
    own loss's (the steps are normalised per example).

    Args:
        model: the target model, (B, C, H, W) images in [0,1] -> logits (B, K).
        ensemble: independently trained copies, same signature.
        x: clean images (B, C, H, W).  y: their true labels (B,).  target: targets (B,).

    Returns:
        x_adv (B, C, H, W) within the budget (asserted) and in [0,1].

    Example:
        >>> x_adv = non_transferable_pgd(f, [f1, f2, f3], x, y, (y + 1) % 10, eps=3.0,
        ...                              steps=60, step_size=0.125)
    """
    check_inputs(x, target, norm=norm, eps=eps)
    if y.shape != target.shape:
        raise ValueError(f"labels {tuple(y.shape)} and targets {tuple(target.shape)} differ")
    with contextlib.ExitStack() as stack:
        for m in (model, *ensemble):
            stack.enter_context(eval_mode(m))
        x_adv = x.clone()  # (B, C, H, W)
        for _ in range(steps):
            xa = x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(xa), target, reduction="sum")
            if ensemble:
                keep = sum(F.cross_entropy(m(xa), y, reduction="sum") for m in ensemble)
                loss = loss + ensemble_weight * keep / len(ensemble)
            (grad,) = torch.autograd.grad(loss, xa)  # (B, C, H, W)
            with torch.no_grad():
                x_adv = project(x, xa - step_size * steepest_direction(grad, norm), norm=norm,
                                eps=eps)
    x_adv = x_adv.detach()
    assert_within_budget(x, x_adv, norm=norm, eps=eps)
    return x_adv


def non_transferable_stage(ctx: Context, *, model: tuple[nn.Module, str],
                           ensemble: Sequence[tuple[nn.Module, str]], data: Tensors,
                           num_classes: int, seed: int, hyper: dict[str, Any],
                           batch_size: int = 500) -> Tensors:
    """D_det of the non-transferable attack on ``data`` (cached): (x_adv, y + 1 mod K)."""
    target = (data.y + 1) % num_classes  # (N,)

    def compute(work: Path) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty_like(data.x)  # (N, C, H, W)
        dev = ctx.device
        for i in progress(range(0, len(data.x), batch_size), desc="non-transferable PGD",
                          unit="batch"):
            sl = slice(i, i + batch_size)
            out[sl] = non_transferable_pgd(model[0], [m for m, _ in ensemble],
                                           data.x[sl].to(dev), data.y[sl].to(dev),
                                           target[sl].to(dev), **hyper).cpu()
        return out, target

    def save(out: tuple[torch.Tensor, torch.Tensor], d: Path) -> None:
        save_file({"x": out[0].contiguous(), "y": out[1].contiguous()}, str(d / "data.safetensors"))

    def load(d: Path) -> tuple[torch.Tensor, torch.Tensor]:
        t = load_file(str(d / "data.safetensors"))
        return t["x"], t["y"]

    (x, y), key = ctx.store.run(
        "construct", {"name": "nakkiran-non-transferable", "hyper": hyper, "seed": seed},
        inputs=(model[1], *(k for _, k in ensemble), data.key), compute=compute, save=save,
        load=load, log=ctx.log)
    return Tensors(x, y, key)


def transfer_rate(pred_target: torch.Tensor, pred_other: torch.Tensor,
                  t: torch.Tensor) -> float:
    """Of the examples on which the target model predicts t (N,), the fraction another model
    also labels t (0 when there is none); predictions (N,)."""
    hit = pred_target == t  # (N,)
    return float((pred_other[hit] == t[hit]).float().sum() / max(int(hit.sum()), 1))
