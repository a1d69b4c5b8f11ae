"""The one training loop: any registered method, resumable from per-epoch checkpoints.

:func:`fit` is the loop: Adam over mini-batches drawn in epochs of a random order (one
``torch.randperm`` per epoch from a generator seeded with ``seed``, which also feeds the
method's perturbation), the learning-rate schedule of the config, the method's perturbation
and loss each step, every :data:`~eisbench.training.guard.PROBE_EVERY` steps the within-epoch
overfitting guard (:mod:`eisbench.training.guard`), and after each epoch the history entry,
the per-epoch overfitting guard (both for the methods that declare ``guarded``) and the
checkpoint. :func:`train` trains a model with it from a
:class:`~eisbench.training.config.TrainConfig`; the fine-tuning edits of :mod:`eisbench.edit`
run it for a budget of steps.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eisbench.attacks.pgd import pgd
from eisbench.core.accel import mixed_precision, place
from eisbench.core.progress import progress
from eisbench.core.tensors import check_images, eval_mode
from eisbench.training import guard as co_guard
from eisbench.training.config import InputGradConfig, TrainConfig
from eisbench.training.methods import TRAINING_METHODS, TrainingMethod

__all__ = ["InputGradConfig", "TrainConfig", "fit", "train"]

GUARD_N = 512  # training images probed by the overfitting guard
SCHEDULES: dict[str, Callable[[float, float], float]] = {  # (peak lr, progress t in [0, 1]) -> lr
    "constant": lambda lr, t: lr,
    "onecycle": lambda lr, t: lr * (t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6)),
}


def _lr_at(cfg: TrainConfig, t: float) -> float:
    """Learning rate at training progress ``t`` in [0, 1]."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}: expected onecycle or constant")
    return SCHEDULES[cfg.schedule](cfg.lr, t)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig, seed: int,
          device: str | torch.device = "cpu", resume_dir: Path | None = None,
          desc: str = "train") -> nn.Module:
    """Train ``model`` in place on images ``x`` (N, C, H, W) in [0,1] and labels ``y`` (N,)
    for ``cfg.epochs`` epochs of :func:`fit`; returns it in eval mode.

    Randomness (shuffling, attack starts) comes from a generator seeded with ``seed``. If
    ``resume_dir`` is given, a checkpoint is written there after every epoch, and a later call
    with the same arguments resumes after the last finished epoch (same final weights).

    Example:
        >>> net = train(build("cnn-small", in_shape=(1, 28, 28), num_classes=10), x, y,
        ...             cfg=TrainConfig(method="fast-at", epochs=10), seed=0)
    """
    check_images(x, what="training images")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    place(model, device)
    fit(model, x, y, cfg=cfg, seed=seed, device=device, resume_dir=resume_dir, desc=desc)
    return model.eval()  # safe: nn.Module.eval (mode switch)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig, seed: int,
        steps: int | None = None, device: str | torch.device = "cpu",
        resume_dir: Path | None = None, after_step: Callable[[nn.Module], None] | None = None,
        desc: str = "train", amp: bool | None = None) -> list[dict[str, Any]]:
    """The training loop: train ``model`` (already on ``device``) in place on x (N, C, H, W),
    y (N,) with the method ``cfg.method`` of :data:`TRAINING_METHODS`; returns the history
    (one entry per epoch). Leaves the model in train mode.

    ``steps``: stop after this many optimiser steps (the last epoch may be partial); None:
    ``cfg.epochs`` epochs. ``after_step(model)`` runs after every optimiser step.
    ``resume_dir``: see :func:`train` (it also receives ``history.json``).
    ``amp``: the loss of each weight update in bf16 autocast (the method's perturbation stays
    float32); None: on CUDA only (:mod:`eisbench.core.accel`).

    Example:
        >>> fit(net, x, y, cfg=TrainConfig(schedule="constant"), seed=0, steps=200)
    """
    if len(x) == 0:
        raise ValueError("no training images")
    method = TRAINING_METHODS.get(cfg.method)
    guarded = TRAINING_METHODS.meta(cfg.method)["guarded"] and cfg.overfit_guard > 0
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    ckpt = resume_dir / "train_state.pt" if resume_dir is not None else None
    state = _resume(ckpt, model, opt, gen)
    if guarded and state.get("healthy") is None:  # what a collapse before the first probe restores
        state["healthy"] = {"model": copy.deepcopy(model.state_dict()),
                            "opt": copy.deepcopy(opt.state_dict())}
    per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = steps if steps is not None else cfg.epochs * per_epoch
    n_epochs = math.ceil(total / per_epoch)
    for epoch in range(int(state["epoch"]), n_epochs):
        if state["stopped"]:
            break
        ecfg = _epoch_cfg(cfg, epoch)
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        loss_sum, seen = 0.0, 0
        entry: dict[str, Any] = {"epoch": epoch + 1}
        batches = range(epoch * per_epoch, min(total, (epoch + 1) * per_epoch))
        for step in progress(batches, desc=f"{desc} (epoch {epoch + 1}/{n_epochs})",
                             unit="batch"):
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, step / total)
            b = step - epoch * per_epoch
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            scfg = _scaled(ecfg, co_guard.backoff_factor(state, step, per_epoch))
            loss_sum += _step(model, opt, method, xb, yb, cfg=scfg, generator=gen, amp=amp,
                              where=f"{desc}: step {step + 1} (epoch {epoch + 1})") * len(yb)
            seen += len(yb)
            if after_step is not None:
                after_step(model)
            if guarded and (step + 1) % co_guard.PROBE_EVERY == 0:
                msg = co_guard.watch(model, opt, x, y, eps=scfg.eps, norm=cfg.norm,
                                     margin=cfg.overfit_guard, device=device, step=step,
                                     state=state, entry=entry)
                if msg is not None:
                    warnings.warn(f"{desc}: {msg}", stacklevel=3)
                if state["stopped"]:
                    break
        entry.update(loss=loss_sum / seen, eps=ecfg.eps)
        if guarded and not state["stopped"]:
            _guard(model, x, y, cfg=cfg, device=device, state=state, entry=entry, desc=desc)
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        _checkpoint(ckpt, state, model, opt, gen)
    if resume_dir is not None:
        (resume_dir / "history.json").write_text(json.dumps(state["history"], indent=1))
    return list(state["history"])


def _step(model: nn.Module, opt: torch.optim.Optimizer, method: TrainingMethod,
          xb: torch.Tensor, yb: torch.Tensor, *, cfg: TrainConfig, generator: torch.Generator,
          where: str, amp: bool | None = None) -> float:
    """One optimiser step of ``method`` on the batch xb (B, C, H, W), yb (B,); its loss. The
    perturbation (an attack) runs in float32; the loss in bf16 autocast where ``amp`` says."""
    model.train()
    batch = method.perturb(model, xb, yb, cfg=cfg, generator=generator)
    with mixed_precision(xb.device, amp):
        loss = method.loss(model, batch, yb, cfg=cfg)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{where}: training loss became {value}; lower the learning rate")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return value


def _epoch_cfg(cfg: TrainConfig, epoch: int) -> TrainConfig:
    """The config of epoch ``epoch`` (0-based): eps (and alpha) ramped over the warm-up."""
    return _scaled(cfg, min(1.0, (epoch + 1) / cfg.eps_warmup_epochs)
                   if cfg.eps_warmup_epochs else 1.0)


def _scaled(cfg: TrainConfig, factor: float) -> TrainConfig:
    """``cfg`` with eps (and an explicit alpha) multiplied by ``factor``."""
    if factor == 1.0:
        return cfg
    return replace(cfg, eps=cfg.eps * factor,
                   alpha=cfg.alpha * factor if cfg.alpha is not None else None)


def _resume(ckpt: Path | None, model: nn.Module, opt: torch.optim.Optimizer,
            gen: torch.Generator) -> dict[str, Any]:
    """The loop's state: fresh, or read from ``ckpt`` (which also restores model, optimiser
    and generator)."""
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "best_acc": -1.0,
                             "stopped": False}
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state.pop("model"))
        opt.load_state_dict(state.pop("opt"))
        gen.set_state(state.pop("gen"))
    return state


def _checkpoint(ckpt: Path | None, state: dict[str, Any], model: nn.Module,
                opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    """Write the state after an epoch atomically (temp file, then rename)."""
    if ckpt is None:
        return
    tmp = ckpt.with_suffix(".tmp")
    torch.save({**state, "model": model.state_dict(), "opt": opt.state_dict(),
                "gen": gen.get_state()}, tmp)
    tmp.replace(ckpt)


def _guard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
           device: str | torch.device, state: dict[str, Any], entry: dict[str, Any],
           desc: str) -> None:
    """The overfitting guard after an epoch: keep the best epoch's weights; restore them and
    mark the run stopped if the probe accuracy fell more than ``cfg.overfit_guard``."""
    acc = _guard_accuracy(model, x, y, cfg=cfg, device=device)
    entry["guard_pgd10_acc"] = acc
    if acc >= state["best_acc"]:
        state["best_acc"] = acc
        state["best"] = copy.deepcopy(model.state_dict())
    elif acc < state["best_acc"] - cfg.overfit_guard:
        model.load_state_dict(state["best"])
        state["stopped"] = True
        entry["stopped"] = True
        warnings.warn(f"{desc}: PGD-10 accuracy on the guard batch fell from "
                      f"{state['best_acc']:.2f} to {acc:.2f} in epoch {entry['epoch']} "
                      "(catastrophic overfitting); kept the best epoch and stopped",
                      stacklevel=4)


def _guard_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
                    device: str | torch.device) -> float:
    """PGD-10 accuracy (fixed start, so the same every call) on the first GUARD_N images."""
    xb, yb = x[:GUARD_N].to(device), y[:GUARD_N].to(device)
    x_adv = pgd(model, xb, yb, eps=cfg.eps, steps=10, norm=cfg.norm, random_start=True,
                generator=torch.Generator().manual_seed(0))
    with eval_mode(model), torch.no_grad():
        return float((model(x_adv).argmax(1) == yb).float().mean())
