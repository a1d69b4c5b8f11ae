"""The construction registry.

A construction is ``fn(model, x, y, *, num_classes, generator, **hyper) -> (x_new, y_new)``:
images (N, C, H, W) in [0,1] and labels (N,) in, a new labelled dataset of the same size out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eisbench.core.registry import Registry

Construction = Callable[..., tuple[torch.Tensor, torch.Tensor]]
CONSTRUCTIONS: Registry[Construction] = Registry("construction")
