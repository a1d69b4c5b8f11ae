"""Latent adversarial training (LAT; Casper et al. 2024, "Defending Against Unforeseen Failure
Modes with Latent Adversarial Training"): adversarial perturbations of hidden activations,
found by PGD in latent space, with one bound per layer.

For a batch x (B, C, H, W), y (B,) and layers l with bounds :class:`LatentBound`, the
adversary adds d_l (the shape of layer l's output) to each layer's output (a forward hook,
:func:`eisbench.edit.layers.add_to_outputs`) and maximises the cross-entropy by ``steps``
steps of PGD, each d_l projected onto its own ball ``||d_l[i]|| <= r_l`` per example.

A bound is *relative* by default: ``r_l = eps * scale_l`` where ``scale_l`` is measured on the
batch's clean activations a_l (detached): the mean per-example L2 norm ``mean_i ||a_l[i]||_2``
for the L2 ball, the root mean square of a_l's entries for the Linf ball. So ``eps = 0.5``
means "up to half the size of the layer's typical activation", whatever the layer's units.
With ``relative=False``, ``r_l = eps``.

The training loss is ``clean_weight * CE(f(x), y) + (1 - clean_weight) * CE(f_d(x), y)``
(f_d: the model with the adversary's d added). LAT is the training loop's registered method
"latent-at" (:func:`latent_adversary` perturbs, :func:`lat_loss` is the loss, options in
:class:`LatTrainConfig`): :func:`lat_finetune` runs it with the fine-tuning budget of every
edit (trojan removal); :func:`lat_train` trains a model from scratch with it.

Example:
    >>> cfg = LatConfig(bounds=(LatentBound("body.3", eps=0.5),))
    >>> deltas, radii = latent_pgd(net, x, y, cfg=cfg, generator=torch.Generator())
    >>> fixed = lat_finetune(net, x_def, y_def, lat=cfg, seed=0)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.core.tensors import eval_mode
from eisbench.edit.layers import add_to_outputs, capture, resolve_layer
from eisbench.edit.unlearn import DEFAULT_FT, FinetuneConfig, finetune_loop
from eisbench.training import Batch, TrainConfig, register_method

NORMS = ("l2", "linf")


@dataclass(frozen=True)
class LatentBound:
    """The adversary's budget at one layer (a ``named_modules`` name or an alias of
    :func:`~eisbench.edit.layers.resolve_layer`)."""

    layer: str = "last-conv"
    eps: float = 0.5
    norm: str = "l2"
    relative: bool = True  # eps in units of the layer's clean activation scale

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"latent bound norm must be one of {NORMS}, got {self.norm!r}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"latent bound eps must be finite and >= 0, got {self.eps}")


@dataclass(frozen=True)
class LatConfig:
    """The latent adversary: its bounds (one per layer), PGD steps and step size (a fraction
    of the radius per step), and the weight of the clean loss."""

    bounds: tuple[LatentBound, ...] = (LatentBound(),)
    steps: int = 5
    step_frac: float = 0.5  # step = step_frac * radius (2.5 / steps for steps = 5)
    clean_weight: float = 0.5
    random_start: bool = True

    def __post_init__(self) -> None:
        if not self.bounds:
            raise ValueError("LAT needs at least one latent bound")
        if self.steps < 1 or self.step_frac <= 0:
            raise ValueError("steps must be >= 1 and step_frac > 0")
        if not 0 <= self.clean_weight < 1:
            raise ValueError(f"clean_weight must be in [0, 1), got {self.clean_weight}")


DEFAULT_LAT = LatConfig()


def _per_example(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm (B,) of t (B, ...)."""
    flat = t.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(1)


def _scale(a: torch.Tensor, norm: str) -> torch.Tensor:
    """The clean activation scale of a (B, ...): mean per-example L2 norm, or RMS entry."""
    if norm == "l2":
        return a.flatten(1).norm(dim=1).mean()
    return a.pow(2).mean().sqrt()


def project_latent(d: torch.Tensor, radius: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project each example's perturbation d (B, ...) onto the ``norm`` ball of ``radius``."""
    if norm == "linf":
        r = torch.as_tensor(radius, dtype=d.dtype, device=d.device)
        return torch.maximum(torch.minimum(d, r), -r)
    n = _per_example(d, "l2").clamp_min(1e-12)  # (B,)
    factor = (torch.as_tensor(radius, dtype=d.dtype, device=d.device) / n).clamp(max=1.0)
    return d * factor.view(-1, *([1] * (d.dim() - 1)))


def radii(model: nn.Module, x: torch.Tensor, bounds: tuple[LatentBound, ...]
          ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(radius per layer, clean activations per layer (B, ...)) for the batch x."""
    names = [resolve_layer(model, b.layer, example=x) for b in bounds]
    if len(set(names)) != len(names):
        raise ValueError(f"two latent bounds name the same layer: {names}")
    with torch.no_grad(), capture(model, names) as acts:
        model(x)
    out = {n: float(b.eps * _scale(acts[n], b.norm)) if b.relative else float(b.eps)
           for n, b in zip(names, bounds, strict=True)}
    return out, dict(acts)


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``objective(logits (B, K), y (B,)) -> scalar`` that the latent adversary ascends, summed
over the batch (so each example's step does not depend on the batch size)."""


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The untargeted adversary's objective: the cross-entropy of logits (B, K), y (B,),
    summed over the batch."""
    return F.cross_entropy(logits, y, reduction="sum")


def latent_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: LatConfig,
               generator: torch.Generator, objective: Objective = summed_cross_entropy
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The latent adversary on the batch x (B, C, H, W), y (B,): perturbations
    ``{layer: d (B, ...)}`` (detached, each example inside its layer's ball) that maximise
    ``objective`` (default: the cross-entropy; targeted LAT ascends the negative of its
    toward and away losses, :mod:`eisbench.edit.lat_targeted`), and the radius used per layer.
    Runs the model in eval mode and returns it in its mode; no gradient is left on its
    parameters."""
    with eval_mode(model):
        rad, acts = radii(model, x, cfg.bounds)
        norms = {resolve_layer(model, b.layer, example=x): b.norm for b in cfg.bounds}
        deltas: dict[str, torch.Tensor] = {}
        for n, a in acts.items():
            if cfg.random_start:
                u = torch.rand(a.shape, generator=generator).to(a) * 2 - 1  # (B, ...)
                d = project_latent(u * rad[n], rad[n], norms[n])
            else:
                d = torch.zeros_like(a)
            deltas[n] = d.requires_grad_(True)
        for _ in range(cfg.steps):
            with add_to_outputs(model, deltas):
                loss = objective(model(x), y)
            grads = torch.autograd.grad(loss, list(deltas.values()))
            with torch.no_grad():
                for (n, d), g in zip(list(deltas.items()), grads, strict=True):
                    if norms[n] == "l2":
                        g = g / _per_example(g, "l2").clamp_min(1e-12).view(
                            -1, *([1] * (g.dim() - 1)))
                    else:
                        g = g.sign()
                    deltas[n] = project_latent(d + cfg.step_frac * rad[n] * g, rad[n],
                                               norms[n]).requires_grad_(True)
    return {n: d.detach() for n, d in deltas.items()}, rad


@dataclass(frozen=True)
class LatTrainConfig(TrainConfig):
    """The config of the "latent-at" training method: ``TrainConfig`` plus the adversary."""

    method: str = "latent-at"
    lat: LatConfig = DEFAULT_LAT


def _lat_of(cfg: TrainConfig) -> LatConfig:
    """The adversary of a run: ``cfg.lat`` of a :class:`LatTrainConfig`, else the default."""
    lat = getattr(cfg, "lat", DEFAULT_LAT)
    if not isinstance(lat, LatConfig):
        raise TypeError(f"latent-at needs a LatConfig as cfg.lat, got {type(lat).__name__}")
    return lat


def latent_adversary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
                     generator: torch.Generator) -> Batch:
    """The "latent-at" method's batch: the clean images x (B, C, H, W) and the perturbations
    of :func:`latent_pgd` (``cfg.lat``) to add to the hidden layers."""
    deltas, _ = latent_pgd(model, x, y, cfg=_lat_of(cfg), generator=generator)
    return Batch(x, hidden=deltas)


def lat_loss(model: nn.Module, batch: Batch, y: torch.Tensor, *,
             cfg: TrainConfig) -> torch.Tensor:
    """The LAT training loss of a batch (see the module docstring): the adversarial
    cross-entropy with ``batch.hidden`` added to its layers, mixed with the clean one."""
    lat = _lat_of(cfg)
    with add_to_outputs(model, batch.hidden):
        adv = F.cross_entropy(model(batch.x), y)
    if lat.clean_weight == 0:
        return adv
    return lat.clean_weight * F.cross_entropy(model(batch.x), y) + (1 - lat.clean_weight) * adv


register_method("latent-at", perturb=latent_adversary, loss=lat_loss, perturbs="hidden",
                guarded=False)


def lat_finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 lat: LatConfig = DEFAULT_LAT, cfg: FinetuneConfig = DEFAULT_FT,
                 seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """A copy of ``model`` fine-tuned with LAT on clean x (N, C, H, W), y (N,) with the
    budget ``cfg`` (its ``stamp_frac`` is unused: LAT sees no trigger). ``model`` is not
    changed; the copy comes back in its mode."""
    edited = copy.deepcopy(model)
    tcfg = LatTrainConfig(batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          schedule="constant", lat=lat)
    return finetune_loop(edited, x, y, cfg=tcfg, steps=cfg.steps, seed=seed, device=device,
                         desc="LAT fine-tune")


def lat_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lat: LatConfig,
              epochs: int = 5, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
              device: str | torch.device = "cpu") -> nn.Module:
    """Train ``model`` in place from scratch with LAT: ``epochs`` passes of Adam (constant
    ``lr``) over x (N, C, H, W), y (N,). Returns it in the mode it came in.

    Example:
        >>> net = lat_train(build("cnn-small", in_shape=(1, 28, 28), num_classes=10), x, y,
        ...                 lat=LatConfig(), epochs=5)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    tcfg = LatTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule="constant",
                          lat=lat)
    return finetune_loop(model, x, y, cfg=tcfg, seed=seed, device=device, desc="LAT train")
