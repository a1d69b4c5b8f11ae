"""What a CUDA device does faster: ``channels_last`` for convolutional models, and bf16 mixed
precision for the weight update of training. Neither runs on a CPU by default.

Policy (one place, by device type, so a stage's key, which holds the device type, says which
ran):

- :func:`place` moves a model to its device and, on CUDA, to ``channels_last`` memory when it
  has a 2-D convolution (cuDNN's NHWC kernels; the values agree with NCHW to rounding). On this
  project's 2-core CPU machines ``channels_last`` was measured at ~10-15% faster on attacks,
  but it changes the last bits of every sum, so CPU runs keep NCHW and their records stay
  comparable with every earlier one.
- :func:`mixed_precision` is bf16 autocast on CUDA (the forward and loss of the weight update;
  parameters, gradients and Adam's state stay float32, and bf16's range needs no loss scaling).
  On a CPU it is off: bf16 autocast is slower there. Attacks never run under it: the training
  loop takes its adversarial step (FGSM, PGD, TRADES' inner maximisation) in float32 and only
  the loss on the perturbed batch in bf16, the part Wong et al. 2020 also ran in mixed precision.
  ``enabled=True`` forces it (on a CPU too, for tests); ``enabled=False`` turns it off.

Example:
    >>> net = place(torch.nn.Conv2d(1, 4, 3), "cpu")
    >>> with mixed_precision("cpu"):
    ...     out = net(torch.rand(2, 1, 8, 8))
    >>> out.dtype
    torch.float32
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def is_cuda(device: str | torch.device) -> bool:
    """True for ``cuda`` and ``cuda:N``."""
    return torch.device(device).type == "cuda"


def amp_default(device: str | torch.device) -> bool:
    """Whether training on ``device`` runs its weight update in bf16 by default (CUDA only)."""
    return is_cuda(device)


def place(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` on ``device`` (in place; returned), in ``channels_last`` memory on CUDA when it
    has a ``Conv2d``."""
    model.to(device)
    if is_cuda(device) and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def mixed_precision(device: str | torch.device,
                    enabled: bool | None = None) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on ``device`` when ``enabled`` (None: :func:`amp_default`); otherwise a
    context that does nothing."""
    on = amp_default(device) if enabled is None else enabled
    if not on:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
