"""SNAFUE (Casper et al. 2022, "Search for Natural Adversarial Features Using Embeddings"):
natural patches that act like the model's adversarial patches.

1. Build a bank of natural patches: ``bank_size`` square crops of random size (from the
   patch side up to the whole image) at random positions of the clean images ``data`` (and
   of ``natural``, another data set, when given), each resized to the patch side; crops with
   no ink (max below :data:`MIN_INK`) are dropped first.
2. Compute ``adversarial`` universal adversarial patches for the target
   (:func:`~eisbench.tools.adversarial_patch.optimise_patches`).
3. Embed every patch by the change it makes to the model's penultimate features
   (:func:`~eisbench.models.features`) when pasted into ``hosts`` clean images (same images
   and positions for every patch), averaged over the hosts. Subtracting the hosts' own
   features removes what every embedding shares (a small patch changes little of the hosts'
   features, so plain features are all nearly parallel), leaving the patch's effect.
4. Rank the bank by its best cosine similarity to any adversarial patch, keep the
   ``pool * n`` nearest, and return the ``n`` of them that, pasted into the hosts, give the
   target the highest mean probability (SNAFUE's final filter keeps the natural patches that
   are themselves adversarial; ``pool=1`` returns simply the ``n`` nearest).

The tool returns the chosen natural patches alone, centred on black at image size; every one
is a patch of the bank (:func:`search` returns the bank and the chosen indices).

Example:
    >>> imgs = TOOLS.get("snafue")(model, target=0, data=x[:512],  # doctest: +SKIP
    ...                            generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.core.tensors import eval_mode
from eisbench.models import features
from eisbench.tools.adversarial_patch import (
    SIDE_FRACTION,
    centred,
    default_side,
    optimise_patches,
    paste,
    random_positions,
)
from eisbench.tools.core import TOOLS, check_tool_output

MIN_INK = 0.1  # a natural patch whose brightest pixel is below this is empty


@dataclass(frozen=True, eq=False)
class SnafueResult:
    """bank (M, C, s, s); adversarial (A, C, s, s); similarity (M,): each bank patch's best
    cosine similarity to an adversarial patch; target_prob (M,): the mean target probability
    of the hosts with the bank patch pasted in; chosen (n,): indices into the bank, best
    first."""

    bank: torch.Tensor
    adversarial: torch.Tensor
    similarity: torch.Tensor
    target_prob: torch.Tensor
    chosen: torch.Tensor

    def images(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The chosen patches alone, centred on black in images of ``shape``: (n, C, H, W)."""
        return centred(self.bank[self.chosen], shape)


def natural_patches(sources: torch.Tensor, *, m: int, side: int,
                    generator: torch.Generator) -> torch.Tensor:
    """``m`` square crops (m, C, side, side) of random size in [side, min(H, W)] at random
    positions of images ``sources`` (N, C, H, W), resized to ``side`` (antialiased). Twice as
    many crops are drawn; those with ink (max >= :data:`MIN_INK`) come first."""
    n, _, h, w = sources.shape
    k = 2 * m
    sizes = torch.randint(side, min(h, w) + 1, (k,), generator=generator)
    which = torch.randint(0, n, (k,), generator=generator)
    u = torch.rand(k, 2, generator=generator)
    crops = []
    for i in range(k):
        sz = int(sizes[i])
        r, c = int(u[i, 0] * (h - sz + 1)), int(u[i, 1] * (w - sz + 1))
        crop = sources[int(which[i]), :, r:r + sz, c:c + sz][None]  # (1, C, sz, sz)
        if sz != side:
            crop = F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True,
                                 align_corners=False)
        crops.append(crop[0])
    bank = torch.stack(crops).clamp(0, 1)  # (k, C, side, side)
    empty = bank.flatten(1).amax(1) < MIN_INK
    order = torch.argsort(empty.to(torch.int8), stable=True)  # inked crops first
    return bank[order[:m]]


@torch.no_grad()
def embed(model: nn.Module, patches: torch.Tensor, hosts: torch.Tensor, rows: torch.Tensor,
          cols: torch.Tensor, *, target: int,
          chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The change (R, D) of the penultimate features of ``hosts`` (K, C, H, W) when each
    patch (R, C, s, s) is pasted at rows, cols (1, K), averaged over the hosts, and the mean
    probability (R,) of ``target`` on the patched hosts."""
    r, k = len(patches), len(hosts)
    step = max(1, chunk // k)
    base = features(model, hosts)  # (K, D)
    feats, probs = [], []
    for i in range(0, r, step):
        p = patches[i:i + step].to(hosts)
        xs = paste(hosts, p, rows.expand(len(p), k), cols.expand(len(p), k))  # (r', K, ...)
        xs = xs.flatten(0, 1)
        f = features(model, xs).view(len(p), k, -1) - base  # (r', K, D)
        feats.append(f.mean(1).cpu())  # (r', D)
        prob = model(xs).softmax(1)[:, target].view(len(p), k).mean(1)  # (r',)
        probs.append(prob.cpu())
    return torch.cat(feats), torch.cat(probs)


def search(model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
           generator: torch.Generator, device: str | torch.device = "cpu",
           natural: torch.Tensor | None = None, side: int | None = None,
           bank_size: int = 1024, adversarial: int = 10, hosts: int = 16, pool: int = 2,
           steps: int = 60, lr: float = 0.1, batch_size: int = 16) -> SnafueResult:
    """The SNAFUE search for ``target`` on clean images ``data`` (N, C, H, W) in [0,1]
    (see the module docstring); ``natural`` (N', C, H', W') adds a second source of natural
    patches (resized to H x W). ``adversarial`` patches are optimised for ``steps`` steps of
    ``batch_size`` images each; ``hosts`` images carry the patches for the embedding.
    The model is used in eval mode and returned in its mode."""
    if data.dim() != 4 or len(data) == 0:
        raise ValueError(f"data must be clean images (N, C, H, W), got {tuple(data.shape)}")
    if min(n, bank_size, adversarial, hosts, pool) < 1:
        raise ValueError("n, bank_size, adversarial, hosts and pool must be >= 1")
    dev = torch.device(device)
    shape = tuple(data.shape[1:])
    s = default_side(shape, SIDE_FRACTION) if side is None else side
    sources = data
    if natural is not None:
        if natural.dim() != 4 or natural.shape[1] != data.shape[1]:
            raise ValueError(f"natural must be images with {data.shape[1]} channel(s), got "
                             f"{tuple(natural.shape)}")
        extra = natural
        if tuple(extra.shape[2:]) != shape[1:]:
            extra = F.interpolate(extra, size=shape[1:], mode="bilinear", antialias=True,
                                  align_corners=False).clamp(0, 1)
        sources = torch.cat([data, extra])
    bank = natural_patches(sources.cpu(), m=bank_size, side=s, generator=generator)
    adv, _ = optimise_patches(model, target=target, data=data, n=adversarial,
                              generator=generator, device=dev, side=s, steps=steps, lr=lr,
                              batch_size=batch_size)
    with eval_mode(model):
        pick = torch.randperm(len(data), generator=generator)[:4 * hosts]
        x = data[pick].to(dev)
        with torch.no_grad():
            keep = model(x).argmax(1) != target
        host = (x[keep] if keep.sum() >= hosts else x)[:hosts]  # (K, C, H, W)
        rows, cols = random_positions(1, len(host), shape, s, generator=generator)
        e_bank, p_bank = embed(model, bank, host, rows, cols, target=target)
        e_adv, _ = embed(model, adv, host, rows, cols, target=target)
    sim = F.cosine_similarity(e_adv[:, None], e_bank[None], dim=2)  # (A, M)
    best = sim.amax(0)  # (M,)
    near = torch.argsort(best, descending=True, stable=True)[:pool * n]
    order = torch.argsort(p_bank[near], descending=True, stable=True)
    chosen = near[order][:n]
    chosen = chosen[torch.arange(n) % len(chosen)]  # a bank smaller than n repeats
    return SnafueResult(bank=bank, adversarial=adv, similarity=best, target_prob=p_bank,
                        chosen=chosen)


@TOOLS.register("snafue", family="patch", patch_side=SIDE_FRACTION, steps=60)
def snafue(model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
           generator: torch.Generator, device: str | torch.device = "cpu",
           natural: torch.Tensor | None = None, side: int | None = None,
           bank_size: int = 1024, adversarial: int = 10, hosts: int = 16, pool: int = 2,
           steps: int = 60) -> torch.Tensor:
    """``n`` natural patches (from ``data`` (N, C, H, W) and ``natural``, if given) nearest
    in the model's latent space to its adversarial patches for ``target``, each alone and
    centred on black: (n, C, H, W) in [0,1], the most adversarial first (:func:`search`)."""
    res = search(model, target=target, data=data, n=n, generator=generator, device=device,
                 natural=natural, side=side, bank_size=bank_size, adversarial=adversarial,
                 hosts=hosts, pool=pool, steps=steps)
    shape = tuple(data.shape[1:])
    return check_tool_output(res.images(shape), n=n, shape=shape)
