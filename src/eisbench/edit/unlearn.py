"""Tool-guided trojan removal: fine-tune on the defender's clean data, with a fraction of each
batch stamped with a tool's reconstruction of the trigger and kept under its true label.

The edit never sees a poisoned label: what it unlearns is only what the tool's reconstruction
carries. A :data:`Stamper` turns clean images into stamped ones; there is one per kind of
reconstruction:

- :func:`mask_stamper`: Neural Cleanse / TABOR's mask m (1, H, W) and pattern p (C, H, W),
  ``(1 - m) * x + m * p`` (Wang et al. 2019's unlearning);
- :func:`patch_stamper`: opaque square patches (R, C, s, s) of the patch tools
  (adversarial patch, SNAFUE, feature-level adversaries), one drawn per image and pasted at
  a uniformly random position (:func:`eisbench.tools.adversarial_patch.paste`);
- :func:`trigger_stamper`: the true trigger (the oracle's reference row);
- ``None``: no stamp, which makes :func:`unlearn` plain fine-tuning on the same data, steps
  and seed (the other reference row, :func:`eisbench.edit.baselines.finetune`).

Every method runs the one training loop (:func:`eisbench.training.fit`, through
:func:`finetune_loop`) with one :class:`FinetuneConfig`, so the budget (steps, batch, learning
rate, clean images) is the same for all of them. Fine-tuning on stamped batches is the loop's
registered method "finetune" (:class:`StampTrainConfig`).

Example:
    >>> rec = reconstruct_trigger(net, target=3, data=x_def, generator=g)  # doctest: +SKIP
    >>> fixed = unlearn(net, x_def, y_def, stamper=mask_stamper(rec.mask, rec.pattern),
    ...                 cfg=FinetuneConfig(), seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from eisbench.core.tensors import check_images
from eisbench.tools.adversarial_patch import paste, random_positions
from eisbench.training import Batch, TrainConfig, fit, register_method
from eisbench.training.methods import cross_entropy
from eisbench.trojans.stamp import Trigger, stamp

Stamper = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``stamper(x (B, C, H, W), generator) -> stamped (B, C, H, W)`` in [0,1]."""


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning budget shared by every edit (Adam, constant learning rate)."""

    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    stamp_frac: float = 0.2  # fraction of each batch stamped (Wang et al.: 20%)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")
        if not 0 <= self.stamp_frac <= 1:
            raise ValueError(f"stamp_frac must be in [0, 1], got {self.stamp_frac}")


DEFAULT_FT = FinetuneConfig()


def mask_stamper(mask: torch.Tensor, pattern: torch.Tensor) -> Stamper:
    """Stamp a reconstructed trigger: mask (1, H, W) and pattern (C, H, W) in [0,1]."""
    if mask.dim() != 3 or mask.shape[0] != 1 or pattern.dim() != 3:
        raise ValueError(f"mask must be (1, H, W) and pattern (C, H, W), got "
                         f"{tuple(mask.shape)} and {tuple(pattern.shape)}")

    def stamper(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        m, p = mask.to(x), pattern.to(x)
        return ((1 - m) * x + m * p).clamp(0, 1)

    return stamper


def patch_stamper(patches: torch.Tensor) -> Stamper:
    """Paste one of the opaque square patches (R, C, s, s), drawn uniformly per image, at a
    uniformly random position (draws from the generator)."""
    if patches.dim() != 4 or patches.shape[-1] != patches.shape[-2] or len(patches) == 0:
        raise ValueError(f"patches must be (R, C, s, s) with R >= 1, got {tuple(patches.shape)}")

    def stamper(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, s = len(x), patches.shape[-1]
        pick = torch.randint(0, len(patches), (b,), generator=generator)
        rows, cols = random_positions(b, 1, tuple(x.shape[1:]), s, generator=generator)
        out = paste(x[:, None], patches[pick].to(x), rows, cols)  # (B, 1, C, H, W)
        return out[:, 0].clamp(0, 1)

    return stamper


def trigger_stamper(trigger: Trigger) -> Stamper:
    """Stamp the true trigger (the oracle), at its position or a random one."""
    def stamper(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return stamp(x, trigger, generator=generator)[0]

    return stamper


def centre_crop(images: torch.Tensor, side: int) -> torch.Tensor:
    """The centred ``side`` x ``side`` square of images (R, C, H, W): (R, C, side, side); the
    inverse of :func:`eisbench.tools.adversarial_patch.centred` (patch tools' output)."""
    h, w = images.shape[-2:]
    if not 1 <= side <= min(h, w):
        raise ValueError(f"patch side {side} does not fit images {h}x{w}")
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top:top + side, left:left + side]


def stamped_batch(x: torch.Tensor, y: torch.Tensor, stamper: Stamper | None, *, frac: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``round(frac * B)`` images of the batch x (B, C, H, W) stamped, labels y (B,)
    unchanged (the true ones)."""
    k = round(frac * len(x))
    if stamper is None or k == 0:
        return x, y
    return torch.cat([stamper(x[:k], generator), x[k:]]), y


@dataclass(frozen=True)
class StampTrainConfig(TrainConfig):
    """The config of the "finetune" training method: ``stamp_frac`` of every batch stamped by
    ``stamper`` under its true label (``None``: plain fine-tuning). Built from a
    :class:`FinetuneConfig` by :func:`stamp_train_config`."""

    method: str = "finetune"
    schedule: str = "constant"
    stamper: Stamper | None = None
    stamp_frac: float = 0.2


def stamp_train_config(cfg: FinetuneConfig, *, stamper: Stamper | None) -> StampTrainConfig:
    """The fine-tuning budget ``cfg`` (Adam, constant learning rate, ``cfg.stamp_frac``
    stamped by ``stamper``) as the loop's config."""
    return StampTrainConfig(batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            stamper=stamper, stamp_frac=cfg.stamp_frac)


def stamped(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
            generator: torch.Generator) -> Batch:
    """The "finetune" method's batch: :func:`stamped_batch` with the config's stamper."""
    xs, _ = stamped_batch(x, y, getattr(cfg, "stamper", None),
                          frac=getattr(cfg, "stamp_frac", 0.0), generator=generator)
    return Batch(xs)


register_method("finetune", perturb=stamped, loss=cross_entropy, perturbs="inputs", guarded=False)


def finetune_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
                  seed: int, steps: int | None = None, device: str | torch.device = "cpu",
                  after_step: Callable[[nn.Module], None] | None = None,
                  desc: str = "fine-tune") -> nn.Module:
    """Train ``model`` in place with the one loop (:func:`eisbench.training.fit`) on x
    (N, C, H, W) in [0,1], y (N,) for ``steps`` steps (None: ``cfg.epochs`` epochs) of the
    method ``cfg.method``; ``after_step(model)`` runs after each step (fine-pruning re-zeroes
    its pruned channels there). Returns the model in the mode it came in, gradients cleared."""
    check_images(x, what="fine-tuning images")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images (>0), got {len(x)} and {len(y)}")
    was_training = model.training
    model.to(device)
    try:
        fit(model, x, y, cfg=cfg, seed=seed, steps=steps, device=device, after_step=after_step,
            desc=desc)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return model


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, stamper: Stamper | None,
            cfg: FinetuneConfig = DEFAULT_FT, seed: int = 0,
            device: str | torch.device = "cpu", desc: str = "unlearn") -> nn.Module:
    """A copy of ``model`` fine-tuned on the clean images x (N, C, H, W), y (N,) with
    ``cfg.stamp_frac`` of every batch stamped by ``stamper`` under its true label (``None``:
    plain fine-tuning). ``model`` itself is not changed; the copy comes back in its mode.

    Example:
        >>> fixed = unlearn(net, x, y, stamper=trigger_stamper(trojan.trigger), seed=0)
    """
    edited = copy.deepcopy(model)
    return finetune_loop(edited, x, y, cfg=stamp_train_config(cfg, stamper=stamper),
                         steps=cfg.steps, seed=seed, device=device, desc=desc)
