"""The training loop: one function, any method, resumable from per-epoch checkpoints."""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.attacks.pgd import pgd
from eisbench.core.progress import progress
from eisbench.core.tensors import check_images, eval_mode
from eisbench.training.methods import DEFAULT_GRAD_REG, LOSSES, METHODS, Loss, Perturb


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all of them end up in the record)."""

    method: str = "standard"  # standard | pgd-at | fast-at | input-grad
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate (Adam)
    schedule: str = "onecycle"  # onecycle (linear up for 2/5, down to 0) | constant
    weight_decay: float = 0.0
    eps: float = 0.3  # adversarial budget (pgd-at, fast-at)
    norm: str = "linf"
    alpha: float | None = None  # attack step; fast-at default 1.25 eps, pgd-at 2.5 eps/steps
    attack_steps: int = 40  # pgd-at only
    eps_warmup_epochs: int = 0  # linearly ramp eps over the first epochs (helps fast-at on MNIST)
    # Adversarial methods: after each epoch, PGD-10 accuracy at the full eps on a fixed batch of
    # training images; if it falls this far below its best (catastrophic overfitting, Wong et al.
    # 2020), restore the best epoch's weights and stop. 0 turns the guard off.
    overfit_guard: float = 0.2


@dataclass(frozen=True)
class InputGradConfig(TrainConfig):
    """Input-gradient regularisation (Ross & Doshi-Velez 2018): ``TrainConfig`` plus its weight.

    A subclass rather than a new ``TrainConfig`` field: stage caches hash every field of a
    config, so a field added to ``TrainConfig`` would invalidate every cached model.
    """

    method: str = "input-grad"
    grad_reg: float = DEFAULT_GRAD_REG  # lambda of ``CE + lambda * ||grad_x CE||_2^2``


UNGUARDED = ("standard", "input-grad")  # methods without an attack to overfit to


def _lr_at(cfg: TrainConfig, t: float) -> float:
    """Learning rate at training progress ``t`` in [0, 1]."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "onecycle":
        return cfg.lr * (t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6))
    raise ValueError(f"unknown schedule {cfg.schedule!r}: expected onecycle or constant")


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig, seed: int,
          device: str | torch.device = "cpu", resume_dir: Path | None = None,
          desc: str = "train") -> nn.Module:
    """Train ``model`` in place on images ``x`` (N, C, H, W) in [0,1] and labels ``y`` (N,).

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
    perturb = METHODS.get(cfg.method)
    model.to(device)
    _train(model, x, y, perturb=perturb, loss_fn=LOSSES.get(cfg.method, _cross_entropy),
           cfg=cfg, seed=seed, device=device, resume_dir=resume_dir, desc=desc)
    return model.eval()  # safe: nn.Module.eval (mode switch)


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   cfg: TrainConfig) -> torch.Tensor:
    """The default training loss: mean cross-entropy of the batch x (B, C, H, W), y (B,)."""
    return F.cross_entropy(model(x), y)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, perturb: Perturb,
           loss_fn: Loss, cfg: TrainConfig, seed: int, device: str | torch.device,
           resume_dir: Path | None, desc: str) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    guard = cfg.overfit_guard > 0 and cfg.method not in UNGUARDED
    state: dict = {"epoch": 0, "history": [], "best": None, "best_acc": -1.0, "stopped": False}
    ckpt = resume_dir / "train_state.pt" if resume_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state.pop("model"))
        opt.load_state_dict(state.pop("opt"))
        gen.set_state(state.pop("gen"))
    n_batches = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * n_batches
    for epoch in range(int(state["epoch"]), cfg.epochs):
        if state["stopped"]:
            break
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        ramp = min(1.0, (epoch + 1) / cfg.eps_warmup_epochs) if cfg.eps_warmup_epochs else 1.0
        ecfg = cfg if ramp == 1.0 else _with_eps(cfg, cfg.eps * ramp)
        loss_sum = 0.0
        bar = progress(range(n_batches), desc=f"{desc} {epoch + 1}/{cfg.epochs}")
        for b in bar:
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, (epoch * n_batches + b) / total)
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            xt = perturb(model, xb, yb, cfg=ecfg, generator=gen)
            loss = loss_fn(model, xt, yb, cfg=ecfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(yb)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"{desc}: training loss became {loss_sum} in epoch {epoch + 1}"
                                     "; lower the learning rate")
        entry = {"epoch": epoch + 1, "loss": loss_sum / len(x), "eps": ecfg.eps}
        if guard:
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
                              f"{state['best_acc']:.2f} to {acc:.2f} in epoch {epoch + 1} "
                              "(catastrophic overfitting); kept the best epoch and stopped",
                              stacklevel=2)
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        if ckpt is not None:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({**state, "model": model.state_dict(), "opt": opt.state_dict(),
                        "gen": gen.get_state()}, tmp)
            tmp.replace(ckpt)
    if resume_dir is not None:
        (resume_dir / "history.json").write_text(json.dumps(state["history"], indent=1))


GUARD_N = 512  # training images probed by the overfitting guard


def _guard_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
                    device: str | torch.device) -> float:
    """PGD-10 accuracy (fixed start, so the same every call) on the first GUARD_N images."""
    xb, yb = x[:GUARD_N].to(device), y[:GUARD_N].to(device)
    x_adv = pgd(model, xb, yb, eps=cfg.eps, steps=10, norm=cfg.norm, random_start=True,
                generator=torch.Generator().manual_seed(0))
    with eval_mode(model), torch.no_grad():
        return float((model(x_adv).argmax(1) == yb).float().mean())


def _with_eps(cfg: TrainConfig, eps: float) -> TrainConfig:
    from dataclasses import replace

    alpha = cfg.alpha * eps / cfg.eps if cfg.alpha is not None else None
    return replace(cfg, eps=eps, alpha=alpha)
