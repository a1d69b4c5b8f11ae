"""The contract every model eisbench attacks, scans or audits must honour: it takes
(B, C, H, W) images in [0,1] of the dataset and returns finite logits (B, K)."""

from __future__ import annotations

import torch
from torch import nn

from eisbench.core.tensors import eval_mode


def check_model(model: nn.Module, x: torch.Tensor, *, num_classes: int | None,
                device: torch.device) -> tuple[int, str]:
    """Run ``model`` on the first 8 images x (N, C, H, W) in [0,1] and refuse (ValueError
    saying what is wrong and how to fix it) a model whose forward raises on them, does not return
    finite logits (B, K), returns ``K != num_classes`` (None: any K >= 2), or returns
    probabilities (rows in [0,1] summing to 1: attacks and the trojan scan need logits).
    Returns (K, "logits" | "log-probabilities"); log-probabilities (rows whose log-sum-exp
    is 0, a log-softmax output) are fine for attacks and the scan."""
    xb = x[:8].to(device)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(xb)
    except Exception as e:  # any failure of the forward (KeyError, AttributeError, ...)
        raise ValueError(f"the model fails on images of shape {tuple(xb.shape)} in [0,1]: "
                         f"{type(e).__name__}: {e}. It must take (B, C, H, W) images of the "
                         "dataset and return logits; fix its forward, or wrap a model that "
                         "expects another shape or pixel range (eisbench attack and scan take "
                         "--scale 255 for raw pixels)") from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(xb):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits (B, K) for images (B, C, H, W); for "
                         f"{len(xb)} images it returned {got}")
    k = int(out.shape[1])
    if k < 2 or (num_classes is not None and k != num_classes):
        raise ValueError(f"the model returns {k} logits per image; the dataset has "
                         f"{num_classes if num_classes is not None else 'at least 2'} classes")
    if not torch.isfinite(out).all():
        raise ValueError("the model returns non-finite outputs (NaN or inf) on test images: "
                         "attacks, scans and audits need finite logits. Check its weights and "
                         "the pixel range it expects (--scale)")
    sums = out.sum(1)
    if out.min() >= 0 and out.max() <= 1 and torch.allclose(sums, torch.ones_like(sums),
                                                            atol=1e-4):
        raise ValueError("the model returns probabilities (every row is in [0,1] and sums to "
                         "1): attacks and the trojan scan need logits. Remove the final softmax "
                         "(or return its input)")
    lse = torch.logsumexp(out, 1)
    if out.max() <= 0 and torch.allclose(lse, torch.zeros_like(lse), atol=1e-4):
        return k, "log-probabilities"
    return k, "logits"
