"""Control: edit a model and measure the edit against a ground truth.

- :mod:`~eisbench.edit.unlearn`: tool-guided trojan removal (fine-tune on clean data plus
  images stamped with a tool's reconstruction of the trigger, true labels);
- :mod:`~eisbench.edit.baselines`: plain fine-tuning and fine-pruning (Liu et al. 2018);
- :mod:`~eisbench.edit.lat`: latent adversarial training (PGD on hidden activations, a bound
  per layer), as a fine-tuning defence or to train from scratch;
- :mod:`~eisbench.edit.lat_targeted`: targeted LAT (the adversary pushes toward the trojan's
  target; away and retain losses);
- :mod:`~eisbench.edit.input_at`: input-space adversarial training on the same budget, LAT's
  baseline;
- :mod:`~eisbench.edit.ablation`: capability ablation (zero the units a tool names for one
  class; the class should fall and the rest hold, also out of distribution);
- :mod:`~eisbench.edit.metrics`: BackdoorBench's DER and paired comparisons;
- :mod:`~eisbench.edit.layers`: naming layers and the hooks (context managers only).
"""

from __future__ import annotations

from eisbench.edit.ablation import UNIT_SELECTORS, ablation_effects, top_ablation_units
from eisbench.edit.baselines import fine_prune, finetune
from eisbench.edit.input_at import InputAtConfig, input_at_finetune
from eisbench.edit.lat import LatConfig, LatentBound, lat_finetune, lat_train, latent_pgd
from eisbench.edit.lat_targeted import TargetedLatConfig, lat_targeted_finetune
from eisbench.edit.metrics import der
from eisbench.edit.unlearn import (
    FinetuneConfig,
    mask_stamper,
    patch_stamper,
    trigger_stamper,
    unlearn,
)

__all__ = ["UNIT_SELECTORS", "FinetuneConfig", "InputAtConfig", "LatConfig", "LatentBound",
           "TargetedLatConfig", "ablation_effects", "der", "fine_prune", "finetune",
           "input_at_finetune", "lat_finetune", "lat_targeted_finetune", "lat_train",
           "latent_pgd", "mask_stamper", "patch_stamper", "top_ablation_units",
           "trigger_stamper", "unlearn"]
