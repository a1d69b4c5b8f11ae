"""A small image generator for the feature-level adversaries: the decoder of a convolutional
autoencoder trained on the task's clean images, cached by the content of those images.

Casper et al. (2021) perturb the activations of a pretrained image generator (BigGAN on
ImageNet) so that the images it draws are adversarial features. No such generator exists for
28 x 28 digits or clothes, so eisbench trains its own: an autoencoder whose decoder maps a
``latent``-dimensional code through two stages of activations to an image,

    z (B, L) -stem-> a1 (B, 2w, H/4, W/4) -mid-> a2 (B, w, H/2, W/2) -head-> image (B, C, H, W)

(sizes rounded up; the image is resized to (H, W) when H or W is not a multiple of 4). The
encoder gives the latent codes of real images, so optimisations can start from natural
images. :func:`trained_autoencoder` trains it (Adam on the mean squared reconstruction error,
a few seconds on CPU at 28 x 28) or loads it from the stage cache
(:class:`~eisbench.runs.store.Store`), keyed on the hyper-parameters and a hash of the training
images.

Example:
    >>> ae = trained_autoencoder(x_train[:2000])  # doctest: +SKIP
    >>> ae.decode(ae.encode(x_train[:4])).shape  # doctest: +SKIP
    torch.Size([4, 1, 28, 28])
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.core.paths import cache_dir
from eisbench.runs.store import Store

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and training of the autoencoder (the cache key, with the data hash)."""

    latent: int = 16
    width: int = 16  # channels of a2; a1 has 2 * width
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0  # initial weights and batches


class Autoencoder(nn.Module):
    """Encoder (B, C, H, W) -> (B, L) and decoder (B, L) -> (B, C, H, W) in [0,1]; the decoder
    is split into ``stem`` (z -> a1), ``mid`` (a1 -> a2) and ``head`` (a2 -> image) so that its
    intermediate activations can be perturbed."""

    def __init__(self, shape: Shape, *, latent: int = 16, width: int = 16) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.h4, self.w4 = math.ceil(h / 4), math.ceil(w / 4)
        self.width = width
        self.encoder = nn.Sequential(
            nn.Conv2d(c, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), latent),
        )
        self.stem_fc = nn.Linear(latent, 2 * width * self.h4 * self.w4)
        self.mid_conv = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.head_conv = nn.ConvTranspose2d(width, c, 4, stride=2, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> latent codes (B, L)."""
        out: torch.Tensor = self.encoder(x)
        return out

    def stem(self, z: torch.Tensor) -> torch.Tensor:
        """(B, L) -> a1 (B, 2w, H/4, W/4)."""
        return torch.relu(self.stem_fc(z)).view(len(z), 2 * self.width, self.h4, self.w4)

    def mid(self, a1: torch.Tensor) -> torch.Tensor:
        """a1 (B, 2w, H/4, W/4) -> a2 (B, w, H/2, W/2)."""
        return torch.relu(self.mid_conv(a1))

    def head(self, a2: torch.Tensor) -> torch.Tensor:
        """a2 (B, w, H/2, W/2) -> images (B, C, H, W) in [0,1]."""
        img = torch.sigmoid(self.head_conv(a2))  # (B, C, 4 * H/4, 4 * W/4)
        size = self.shape[1:]
        if tuple(img.shape[-2:]) != size:
            img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
        return img

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, L) -> images (B, C, H, W) in [0,1]."""
        return self.head(self.mid(self.stem(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def _init(model: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every weight from ``generator`` with PyTorch's default scheme, uniform in
    +-1/sqrt(fan_in) (fan_in = weight.shape[1] * kernel size, as ``nn.init`` computes it)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                m.weight.copy_((2 * torch.rand(m.weight.shape, generator=generator) - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_((2 * torch.rand(m.bias.shape, generator=generator) - 1) * bound)


def train_autoencoder(x: torch.Tensor, cfg: AutoencoderConfig = AutoencoderConfig(), *,
                      device: str | torch.device = "cpu") -> Autoencoder:
    """Train an :class:`Autoencoder` on images x (N, C, H, W) in [0,1]; returned in eval mode
    on CPU. All randomness comes from ``cfg.seed``."""
    if x.dim() != 4 or len(x) == 0:
        raise ValueError(f"expected images (N, C, H, W), got {tuple(x.shape)}")
    g = torch.Generator().manual_seed(cfg.seed)
    dev = torch.device(device)
    ae = Autoencoder(tuple(x.shape[1:]), latent=cfg.latent,  # type: ignore[arg-type]
                     width=cfg.width)
    _init(ae, g)
    ae.to(dev).train()
    # not training.fit: trains a decoder on a reconstruction loss, not a classifier on labels
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        xb = x[torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=g)].to(dev)
        loss = F.mse_loss(ae(xb), xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return ae.cpu().eval()  # safe: nn.Module.eval (mode switch)


def data_hash(x: torch.Tensor) -> str:
    """sha256 (16 hex) of a tensor's shape, dtype and bytes: the cache key of a data set."""
    t = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def trained_autoencoder(x: torch.Tensor, cfg: AutoencoderConfig = AutoencoderConfig(), *,
                        store: Store | None = None,
                        device: str | torch.device = "cpu") -> Autoencoder:
    """:func:`train_autoencoder` on images x (N, C, H, W), cached in ``store`` (default: the
    eisbench cache) under ``cfg`` and :func:`data_hash` (x); returned in eval mode on CPU."""
    st = store if store is not None else Store(cache_dir())
    shape = tuple(x.shape[1:])

    def compute(work: Path) -> Autoencoder:
        return train_autoencoder(x, cfg, device=device)

    def save(ae: Autoencoder, d: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
        save_file(state, str(d / "autoencoder.safetensors"))

    def load(d: Path) -> Autoencoder:
        ae = Autoencoder(shape, latent=cfg.latent, width=cfg.width)  # type: ignore[arg-type]
        ae.load_state_dict(load_file(str(d / "autoencoder.safetensors")))
        return ae.eval()  # safe: nn.Module.eval (mode switch)

    config = {"cfg": asdict(cfg), "shape": list(shape), "device": torch.device(device).type}
    ae, _ = st.run("autoencoder", config,
                   inputs=(data_hash(x),), compute=compute, save=save, load=load)
    return ae
