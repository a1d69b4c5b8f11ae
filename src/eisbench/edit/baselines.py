"""Baselines of trojan removal that use no interpretability tool.

- :func:`finetune`: plain fine-tuning on the defender's clean data with the budget every
  edit gets (:class:`~eisbench.edit.unlearn.FinetuneConfig`).
- :func:`fine_prune`: fine-pruning (Liu, Dolan-Gavitt & Garg 2018, "Fine-Pruning"): prune
  the channels of the last convolutional layer in increasing order of their mean activation
  on clean data (dormant channels first: a backdoor hides in units that clean inputs leave
  idle) as long as clean accuracy stays within ``max_drop`` of the unpruned model's, then
  fine-tune with the same budget, keeping the pruned channels at zero.

Example:
    >>> fixed, info = fine_prune(net, x_def, y_def, cfg=FinetuneConfig(), seed=0)
    >>> info.pruned  # channel indices of the last conv layer, pruned first
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from eisbench.core.tensors import eval_mode
from eisbench.edit.layers import ablated, capture, get_layer, resolve_layer
from eisbench.edit.unlearn import (
    DEFAULT_FT,
    FinetuneConfig,
    finetune_loop,
    stamp_train_config,
    unlearn,
)

LIU_MAX_DROP = 0.04  # Liu et al. stop pruning once validation accuracy falls by 4 points


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             cfg: FinetuneConfig = DEFAULT_FT, seed: int = 0,
             device: str | torch.device = "cpu") -> nn.Module:
    """A copy of ``model`` fine-tuned on clean x (N, C, H, W), y (N,): :func:`unlearn`
    without a stamp, so the same data, steps and random draws as every tool's edit."""
    return unlearn(model, x, y, stamper=None, cfg=cfg, seed=seed, device=device,
                   desc="fine-tune")


@dataclass(frozen=True)
class PruneInfo:
    """What fine-pruning removed: ``pruned`` channel indices of ``layer`` (in pruning order),
    clean accuracy before and right after pruning (before fine-tuning), and the accuracy
    after each prefix of the dormancy order that was tried."""

    layer: str
    pruned: list[int]
    acc_before: float
    acc_pruned: float
    n_channels: int
    trace: list[float] = field(default_factory=list)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
              batch: int = 1000) -> float:
    hits = 0
    for i in range(0, len(x), batch):
        hits += int((model(x[i:i + batch].to(device)).argmax(1).cpu() == y[i:i + batch]).sum())
    return hits / len(x)


@torch.no_grad()
def dormancy_order(model: nn.Module, x: torch.Tensor, *, layer: str = "last-conv",
                   device: str | torch.device = "cpu", batch: int = 1000) -> torch.Tensor:
    """Channels (U,) of ``layer`` sorted by increasing mean activation (after the ReLU that
    follows a conv, i.e. the mean of max(0, output)) over clean images x (N, C, H, W)."""
    dev = torch.device(device)
    name = resolve_layer(model, layer, example=x[:2].to(dev))
    total: torch.Tensor | None = None
    with eval_mode(model), capture(model, [name]) as acts:
        for i in range(0, len(x), batch):
            model(x[i:i + batch].to(dev))
            a = acts[name].clamp_min(0)  # (b, U, ...)
            s = a.flatten(2).mean(2).sum(0) if a.dim() > 2 else a.sum(0)  # (U,)
            total = s if total is None else total + s
    assert total is not None
    return torch.argsort(total.cpu() / len(x), stable=True)


def fine_prune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               cfg: FinetuneConfig = DEFAULT_FT, seed: int = 0,
               layer: str = "last-conv", max_drop: float = LIU_MAX_DROP,
               max_frac: float = 0.9, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, PruneInfo]:
    """Fine-pruning: a copy of ``model`` with the most dormant channels of ``layer`` (a conv
    layer, default the last one) set to zero (weights and bias) and then fine-tuned on clean
    x (N, C, H, W), y (N,) with ``cfg`` (no stamp), the pruned channels held at zero.

    Channels are pruned one by one in :func:`dormancy_order` while clean accuracy on x stays
    >= (unpruned accuracy - ``max_drop``), and at most ``max_frac`` of them. ``model`` is not
    changed; the copy comes back in its mode. Returns (model, :class:`PruneInfo`).
    """
    if not 0 <= max_drop <= 1 or not 0 < max_frac <= 1:
        raise ValueError(f"max_drop must be in [0, 1] and max_frac in (0, 1], got {max_drop}, "
                         f"{max_frac}")
    dev = torch.device(device)
    name = resolve_layer(model, layer, example=x)
    conv = get_layer(model, name)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"fine-pruning prunes conv channels; layer {name!r} is a "
                         f"{type(conv).__name__}")
    edited = copy.deepcopy(model).to(dev)
    order = dormancy_order(edited, x, layer=name, device=dev)
    with eval_mode(edited):
        base = _accuracy(edited, x, y, dev)
        trace, keep = [], 0
        for k in range(1, int(max_frac * len(order)) + 1):
            with ablated(edited, name, order[:k]):
                acc = _accuracy(edited, x, y, dev)
            trace.append(acc)
            if acc < base - max_drop:
                break
            keep = k
    pruned = order[:keep]
    target = dict(edited.named_modules())[name]
    assert isinstance(target, nn.Conv2d)

    @torch.no_grad()
    def zero(m: nn.Module) -> None:
        target.weight[pruned] = 0.0
        if target.bias is not None:
            target.bias[pruned] = 0.0

    zero(edited)
    with eval_mode(edited):
        acc_pruned = _accuracy(edited, x, y, dev)
    finetune_loop(edited, x, y, cfg=stamp_train_config(cfg, stamper=None), steps=cfg.steps,
                  seed=seed, device=dev, after_step=zero, desc="fine-prune")
    return edited, PruneInfo(layer=name, pruned=[int(i) for i in pruned], acc_before=base,
                             acc_pruned=acc_pruned, n_channels=len(order), trace=trace)
