"""Robust feature-level adversaries (Casper et al. 2021; two variants benchmarked by Casper et
al. 2023): adversarial patches drawn by an image generator, so that the adversary is a
feature the generator can draw rather than a pixel pattern.

Casper et al. perturb the activations of a pretrained BigGAN at a chosen layer (earlier layers
change coarser features), decode them to an image, shrink it to a patch, paste it at random
positions into natural images and minimise the cross-entropy towards the target plus a
total-variation penalty. Here the generator is the decoder of a small autoencoder trained on
the task's clean images (:mod:`eisbench.tools.decoder`, cached), and the two tools differ by
where the optimisation acts on it (z: latent code, a1 / a2: its first and second
activations, see :class:`~eisbench.tools.decoder.Autoencoder`):

- ``feature-adversary-generator``: the generator's own input space. The latent code z and an
  additive perturbation of the first-layer activations a1 are optimised; the image is
  ``head(mid(stem(z) + d1))``. A Gaussian prior keeps z within the spread of the data's codes
  and an L2 penalty keeps d1 small, so the patch stays close to what the generator draws.
- ``feature-adversary-perturbation``: a perturbation d2 of the later activations a2 of a
  decoded natural image (``head(a2 + d2)``, a2 fixed), penalised in L2: finer-grained
  freedom, closer to a pixel attack but still smoothed by the generator's last layer.

(Casper et al. 2023 name a "generator" and a "perturbation" parameterisation without more
detail; the split above, coarse control through the generator's input against fine control
through a late activation, is this module's reading of it.) Every optimised quantity is in
units of its natural spread over the clean codes (z = mu + sd * u, perturbations scaled by
the standard deviation of the activation they perturb), so one learning rate fits all.

Both start each of the ``n`` candidates from the code of a random clean image (draws of the
generator), add a total-variation penalty on the patch, optimise all candidates together
(:func:`~eisbench.tools.adversarial_patch.fit_patches`: random positions, ``batch_size``
images per candidate and step) and return the patches alone, centred on black at image size,
the most successful first. The default patch side is a third of the image (9 px on 28 x 28):
decoded objects need more room than a pixel patch.

Example:
    >>> imgs = TOOLS.get("feature-adversary-generator")(model, target=0,  # doctest: +SKIP
    ...     data=x[:512], generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.tools.adversarial_patch import centred, default_side, evaluate_patches, fit_patches
from eisbench.tools.core import TOOLS, check_tool_output
from eisbench.tools.decoder import Autoencoder, AutoencoderConfig, trained_autoencoder

SIDE_FRACTION = 1 / 3


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean anisotropic total variation of images x (B, C, H, W) per pixel, summed over B."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return (dh + dw).sum()


def _shrink(img: torch.Tensor, side: int) -> torch.Tensor:
    """Images (B, C, H, W) -> patches (B, C, side, side), antialiased (differentiable)."""
    if tuple(img.shape[-2:]) == (side, side):
        return img
    out = F.interpolate(img, size=(side, side), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.clamp(0, 1)


def _setup(data: torch.Tensor, *, n: int, generator: torch.Generator,
           train_data: torch.Tensor | None, autoencoder: AutoencoderConfig | None,
           side: int | None,
           device: torch.device) -> tuple[Autoencoder, torch.Tensor, torch.Tensor, int]:
    """(frozen generator on ``device``, start codes (n, L) of n random clean images, codes of
    up to 512 clean images (M, L), patch side)."""
    if data.dim() != 4 or len(data) == 0:
        raise ValueError(f"data must be clean images (N, C, H, W), got {tuple(data.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cfg = AutoencoderConfig() if autoencoder is None else autoencoder
    ae = trained_autoencoder(data if train_data is None else train_data, cfg, device=device)
    ae = ae.to(device).requires_grad_(False)
    shape = tuple(data.shape[1:])
    s = default_side(shape, SIDE_FRACTION) if side is None else side
    if not 1 <= s <= min(shape[1:]):
        raise ValueError(f"patch side {s} does not fit images of shape {shape}")
    start = torch.randint(0, len(data), (n,), generator=generator)
    ref = torch.randperm(len(data), generator=generator)[:512]
    with torch.no_grad():
        return (ae, ae.encode(data[start].to(device)), ae.encode(data[ref].to(device)), s)


def _finish(model: nn.Module, patches: torch.Tensor, data: torch.Tensor, *, target: int,
            generator: torch.Generator, device: torch.device) -> torch.Tensor:
    success = evaluate_patches(model, patches, data, target=target, generator=generator,
                               device=device)
    order = torch.argsort(success, descending=True, stable=True)
    shape = tuple(data.shape[1:])
    return check_tool_output(centred(patches.cpu()[order], shape), n=len(patches), shape=shape)


@TOOLS.register("feature-adversary-generator", family="patch", patch_side=SIDE_FRACTION,
                steps=100)
def feature_adversary_generator(model: nn.Module, *, target: int, data: torch.Tensor,
                                n: int = 10, generator: torch.Generator,
                                device: str | torch.device = "cpu", side: int | None = None,
                                steps: int = 100, lr: float = 0.1, batch_size: int = 16,
                                prior: float = 0.01, first_layer: float = 0.5,
                                tv: float = 0.5, train_data: torch.Tensor | None = None,
                                autoencoder: AutoencoderConfig | None = None) -> torch.Tensor:
    """``n`` generator-drawn adversarial patches for ``target`` (n, C, H, W) in [0,1], each
    alone and centred on black, the most successful on ``data`` (N, C, H, W) first.

    Optimises, for ``steps`` Adam steps of ``batch_size`` images per candidate, latent codes
    z = mu + sd * u (n, L) (mu, sd: mean and spread of the clean codes) and first-layer
    perturbations s1 * d1 (n, 2w, H/4, W/4) (s1: the spread of the clean first-layer
    activations), so that ``lr`` is in units of the natural variation. Penalties (weights per
    candidate): ``prior`` * mean(u^2), ``first_layer`` * mean(d1^2), ``tv`` * total variation
    of the patch. The generator is trained on ``train_data`` (default ``data``) with
    ``autoencoder`` (default :class:`AutoencoderConfig`; cached).
    """
    dev = torch.device(device)
    ae, z0, ref, s = _setup(data, n=n, generator=generator, train_data=train_data,
                            autoencoder=autoencoder, side=side, device=dev)
    mu = ref.mean(0)  # (L,)
    sd = ref.std(0).clamp_min(1e-3) if len(ref) > 1 else torch.ones_like(mu)
    with torch.no_grad():
        s1 = ae.stem(ref).std().clamp_min(1e-3)
    u = ((z0 - mu) / sd).requires_grad_(True)  # (n, L)
    d1 = torch.zeros_like(ae.stem(z0)).requires_grad_(True)  # (n, 2w, H/4, W/4)

    def make() -> torch.Tensor:
        return _shrink(ae.head(ae.mid(ae.stem(mu + sd * u) + s1 * d1)), s)  # (n, C, s, s)

    def penalty(patches: torch.Tensor) -> torch.Tensor:
        return (prior * u.pow(2).mean(1).sum() + first_layer * d1.pow(2).flatten(1).mean(1).sum()
                + tv * total_variation(patches))

    patches = fit_patches(model, make, [u, d1], target=target, data=data, generator=generator,
                          device=dev, steps=steps, lr=lr, batch_size=batch_size,
                          penalty=penalty)
    return _finish(model, patches, data, target=target, generator=generator, device=dev)


@TOOLS.register("feature-adversary-perturbation", family="patch", patch_side=SIDE_FRACTION,
                steps=100)
def feature_adversary_perturbation(model: nn.Module, *, target: int, data: torch.Tensor,
                                   n: int = 10, generator: torch.Generator,
                                   device: str | torch.device = "cpu",
                                   side: int | None = None, steps: int = 100, lr: float = 0.1,
                                   batch_size: int = 16, l2: float = 0.5, tv: float = 0.5,
                                   train_data: torch.Tensor | None = None,
                                   autoencoder: AutoencoderConfig | None = None
                                   ) -> torch.Tensor:
    """``n`` adversarial patches for ``target`` made by perturbing the generator's second
    activations a2 of decoded clean images: (n, C, H, W) in [0,1], each alone and centred on
    black, the most successful on ``data`` (N, C, H, W) first.

    Optimises the perturbation s2 * d2 (n, w, H/2, W/2) (s2: the spread of the clean a2, so
    that ``lr`` is in units of the natural variation) for ``steps`` Adam steps of
    ``batch_size`` images per candidate, with penalties ``l2`` * mean(d2^2) and ``tv`` * total
    variation of the patch (per candidate). The generator is trained on ``train_data``
    (default ``data``) with ``autoencoder`` (default :class:`AutoencoderConfig`; cached).
    """
    dev = torch.device(device)
    ae, z0, ref, s = _setup(data, n=n, generator=generator, train_data=train_data,
                            autoencoder=autoencoder, side=side, device=dev)
    with torch.no_grad():
        a2 = ae.mid(ae.stem(z0))  # (n, w, H/2, W/2)
        s2 = ae.mid(ae.stem(ref)).std().clamp_min(1e-3)
    d2 = torch.zeros_like(a2).requires_grad_(True)

    def make() -> torch.Tensor:
        return _shrink(ae.head(a2 + s2 * d2), s)  # (n, C, s, s)

    def penalty(patches: torch.Tensor) -> torch.Tensor:
        return l2 * d2.pow(2).flatten(1).mean(1).sum() + tv * total_variation(patches)

    patches = fit_patches(model, make, [d2], target=target, data=data, generator=generator,
                          device=dev, steps=steps, lr=lr, batch_size=batch_size,
                          penalty=penalty)
    return _finish(model, patches, data, target=target, generator=generator, device=dev)
