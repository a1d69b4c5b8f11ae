"""Shared pieces of the tests that kill plausible wrong versions of eisbench.tools
(test_mutants_tools_*.py): tiny models (a linear layer or a 6-unit MLP on 1x8x8 images), 40
fixed images, a model wrapper that counts the images it sees, and exact comparison of whole
results.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from eisbench.models import build, features
from eisbench.tools import scan as sc
from eisbench.tools import snafue as sn
from eisbench.tools import trigger_reconstruction as tr

G = torch.Generator
Cases = list[tuple[dict[str, Any], str]]  # keyword arguments, the error message they raise


def _g(seed: int = 0) -> torch.Generator:
    return G().manual_seed(seed)


def _mlp(k: int = 3, seed: int = 4) -> nn.Module:
    """A 64-6-k ReLU MLP with ``features`` (6 units): cheap, non-linear, deterministic. The
    default puts 28 of the 40 images of :data:`X` in class 0, 12 in class 1, none in class 2."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build("mlp", in_shape=(1, 8, 8), num_classes=k, width=6, depth=1)
    return net.eval()


def _lin(w: torch.Tensor, b: torch.Tensor | None = None) -> nn.Sequential:
    """logits = w . x + b on flattened images; w (K, P)."""
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.zeros(w.shape[0]) if b is None else b)
    return nn.Sequential(nn.Flatten(), lin)


_gx = _g(1)
X = torch.rand(40, 1, 8, 8, generator=_gx) * torch.rand(40, 1, 1, 1, generator=_gx)  # 40 images


class Counting(nn.Module):
    """Delegates to ``net`` and records (batch size, grad enabled) of every forward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[int, bool]] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return features(self.net, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), torch.is_grad_enabled()))
        out: torch.Tensor = self.net(x)
        return out


def _flat(v: Any) -> list[torch.Tensor]:
    """Every tensor and number inside a result, in order (for exact comparisons)."""
    if isinstance(v, torch.Tensor):
        return [v.detach().float()]
    if isinstance(v, list | tuple):
        return [t for e in v for t in _flat(e)]
    if isinstance(v, int | float):
        return [torch.tensor(float(v))]
    if isinstance(v, sc.ScanResult):
        return _flat([v.reconstructions, v.anomaly_index, v.flagged, -1 if v.suspect is None
                      else v.suspect])
    if isinstance(v, tr.Reconstruction):
        return _flat([v.mask, v.pattern, v.l1, v.success, v.bbox, v.target])
    if isinstance(v, nn.Module):
        return _flat(list(v.state_dict().values()))
    if isinstance(v, sn.SnafueResult):
        return _flat([v.bank, v.adversarial, v.similarity, v.target_prob, v.chosen])
    raise TypeError(type(v))


def _same(a: Any, b: Any) -> None:
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb)
    for u, v in zip(fa, fb, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)
