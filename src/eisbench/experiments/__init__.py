"""Experiments: registered functions ``run(cfg, *, out, store) -> Record``."""

from __future__ import annotations

from eisbench.experiments import frequency as _frequency  # noqa: F401  (registers)
from eisbench.experiments import goh_leakage as _goh  # noqa: F401  (registers)
from eisbench.experiments import goh_linear as _goh_lin  # noqa: F401  (registers)
from eisbench.experiments import ilyas as _fvb  # noqa: F401  (registers)
from eisbench.experiments import nakkiran as _nakkiran  # noqa: F401  (registers)
from eisbench.experiments import ntk as _ntk  # noqa: F401  (registers)
from eisbench.experiments import saliency as _saliency  # noqa: F401  (registers)
from eisbench.experiments import suite as _evidence  # noqa: F401  (registers)
from eisbench.experiments import superposition as _superposition  # noqa: F401  (registers)
from eisbench.experiments import transfer as _transfer  # noqa: F401  (registers)
from eisbench.experiments import tsipras as _tsipras  # noqa: F401  (registers)
from eisbench.experiments import wallace as _wallace  # noqa: F401  (registers)
from eisbench.experiments.core import EXPERIMENTS, Experiment

__all__ = ["EXPERIMENTS", "Experiment"]
