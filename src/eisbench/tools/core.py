"""The registry of feature-synthesis tools under test in the trojan benchmark.

Every tool is one plain function with one verb::

    tool(model, *, target, data, n=10, generator, device="cpu") -> images (n, C, H, W) in [0,1]

``model`` maps (B, C, H, W) images in [0,1] to logits and is left in the mode it came in, with
no hook left behind; ``target`` is the class whose trojan the tool should reveal (tools that
reconstruct a trigger for every class are run per class by ``eisbench scan``); ``data`` holds
clean images (N, C, H, W) of the task, which the tool may use (Neural Cleanse stamps its
candidate trigger on them; SNAFUE searches natural patches cut from them). Randomness comes
only from ``generator``: the same seed gives the same images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eisbench.core.registry import Registry

Tool = Callable[..., torch.Tensor]
TOOLS: Registry[Tool] = Registry("tool")


def check_tool_output(images: torch.Tensor, *, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Raise unless ``images`` is (n, *shape), finite and in [0,1]; return it detached on CPU."""
    if tuple(images.shape) != (n, *shape):
        raise ValueError(f"tool returned {tuple(images.shape)}, expected {(n, *shape)}")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError("tool images must be finite and in [0,1]")
    return images.detach().cpu()
