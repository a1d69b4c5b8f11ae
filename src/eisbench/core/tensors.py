"""Ground-floor tensor primitives: input checks, eval mode, batched prediction and accuracy.

Every layer above (data, attacks, training, tools, experiments) checks images and runs models
through these, so the checks and the eval-mode discipline live in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def check_images(x: torch.Tensor, *, what: str = "images") -> None:
    """Raise ``ValueError`` unless ``x`` is a float NCHW tensor in [0,1] without NaN.

    (``TypeError`` if ``x`` is not a tensor at all.)

    Args:
        x: (N, C, H, W) floating-point tensor with values in [0, 1].
        what: how to call ``x`` in the error message.

    Example:
        >>> check_images(torch.rand(2, 1, 28, 28))
    """
    check_layout(x, what=what)
    if x.numel() == 0:
        return
    lo, hi = round(float(x.min()), 6), round(float(x.max()), 6)  # 1.0499999523 -> 1.05
    if hi > 1.0:
        if hi <= 1.1:
            hint = "clamp it with x.clamp(0, 1)"
        elif hi <= 255.0:
            hint = "divide by 255 or pass --scale 255"
        else:
            hint = "rescale the data to [0,1] before passing it in"
        raise ValueError(f"expected {what} in [0,1], got max {hi}: {hint}")
    if lo < 0.0:
        raise ValueError(
            f"expected {what} in [0,1], got min {lo}: the data looks normalised; pass raw "
            "pixels in [0,1] and put the normalisation (mean/std) inside the model wrapper"
        )


def check_layout(x: torch.Tensor, *, what: str = "images") -> None:
    """The checks of :func:`check_images` that do not involve the value range."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected {what} as a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"expected {what} as a float tensor, got dtype {x.dtype}: "
            "convert with x.float() / 255 for uint8 pixels"
        )
    if x.dim() != 4:
        raise ValueError(
            f"expected {what} as a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}: "
            "add the missing batch/channel dimension, e.g. x.unsqueeze(1) for (N, H, W)"
        )
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError(f"{what} contain NaN: check the data source or the preprocessing")


def check_labels(y: torch.Tensor, n: int, num_classes: int, *, what: str = "labels") -> None:
    """Raise ``ValueError`` unless ``y`` is (n,) int64 with values in [0, num_classes)."""
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"expected {what} as a 1-D int64 tensor, got {got}")
    if len(y) != n:
        raise ValueError(f"{what} has {len(y)} labels for {n} inputs")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{what} has labels in [{int(y.min())}, {int(y.max())}], "
            f"expected [0, {num_classes - 1}]"
        )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration of an attack; restore every submodule's mode
    afterwards (a model handed over with mixed modes comes back with the same mix)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # safe: nn.Module.eval (mode switch)
    try:
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training


def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """Predicted classes (N,) for images (N, C, H, W), in batches, in eval mode, on ``device``.

    Example:
        >>> predict(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)),
        ...         torch.rand(5, 1, 2, 2)).shape
        torch.Size([5])
    """
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000,
             device: str | torch.device = "cpu") -> float:
    """Share of images (N, C, H, W) whose predicted class equals ``y`` (N,); 0-d input is an error.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> 0.0 <= accuracy(net, torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long)) <= 1.0
        True
    """
    if len(x) == 0:
        raise ValueError("accuracy of an empty set is undefined: pass at least one image")
    pred = predict(model, x, batch_size=batch_size, device=device)
    return float((pred == y.cpu()).float().mean())
