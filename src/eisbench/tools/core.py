"""The registry of feature-synthesis tools under test in the trojan benchmark.

Every tool is one plain function with one verb::

    tool(model, *, target, data, n=10, generator, device="cpu") -> images (n, C, H, W) in [0,1]

``model`` maps (B, C, H, W) images in [0,1] to logits and is left in the mode it came in, with
no hook left behind; ``target`` is the class whose trojan the tool should reveal (tools that
reconstruct a trigger for every class are run per class by ``eisbench scan``); ``data`` holds
clean images (N, C, H, W) of the task, which the tool may use (Neural Cleanse stamps its
candidate trigger on them; SNAFUE searches natural patches cut from them). Randomness comes
only from ``generator``: the same seed gives the same images.

Each tool declares where it is registered what a benchmark needs to know about it
(:data:`TOOL_SCHEMA`): its ``family`` (:data:`FAMILIES`), the side of its patch as a fraction
of the image side (``patch_side``, None for a tool that gives no patch) and its default number
of optimisation ``steps`` (the default of its ``steps`` argument)::

    @TOOLS.register("adversarial-patch", family="patch", patch_side=0.25, steps=100)
"""


from __future__ import annotations

from collections.abc import Callable

import torch

from eisbench.core.registry import MetaKey, Registry

FAMILIES = ("trigger-reconstruction", "patch", "feature-synthesis")
"""trigger-reconstruction: a mask and a pattern per target (Neural Cleanse, TABOR), shown as
the trigger alone on black; patch: square patches, each centred on black at image size;
feature-synthesis: whole images synthesised for the target."""

TOOL_SCHEMA = {
    "family": MetaKey(str, choices=FAMILIES, doc="one of FAMILIES"),
    "patch_side": MetaKey((float, type(None)), default=None,
                          doc="side of the tool's patch / side of the image; None: no patch"),
    "steps": MetaKey(int, doc="the default of the tool's `steps` argument"),
}

Tool = Callable[..., torch.Tensor]
TOOLS: Registry[Tool] = Registry("tool", schema=TOOL_SCHEMA)


def check_tool_output(images: torch.Tensor, *, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Raise unless ``images`` is (n, *shape), finite and in [0,1]; return it detached on CPU."""
    if tuple(images.shape) != (n, *shape):
        raise ValueError(f"tool returned {tuple(images.shape)}, expected {(n, *shape)}")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError("tool images must be finite and in [0,1]")
    return images.detach().cpu()
