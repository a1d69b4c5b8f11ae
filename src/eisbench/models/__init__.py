"""Model architectures (a registry), normalisation wrapper, checkpoints and bring-your-own models.

All models take images in [0,1] (NCHW) and return logits. Normalisation, if any, lives inside
:class:`Normalized`, never in attacks.
"""

from __future__ import annotations

from eisbench.models import architectures as _architectures  # noqa: F401  (registers models)
from eisbench.models.core import MODELS, Normalized, Scaled, build, features, num_params
from eisbench.models.io import load_checkpoint, load_foreign, save_checkpoint
from eisbench.models.layers import FeaturesAt, LayerError, find_layers
from eisbench.models.spec import ModelSpec, parse_spec

__all__ = [
    "MODELS",
    "FeaturesAt",
    "LayerError",
    "ModelSpec",
    "Normalized",
    "Scaled",
    "build",
    "features",
    "find_layers",
    "load_checkpoint",
    "load_foreign",
    "num_params",
    "parse_spec",
    "save_checkpoint",
]
