"""Dataset constructions of Ilyas et al. 2019: D_R / D_NR (representation) and D_rand / D_det."""

from __future__ import annotations

from eisbench.construct.core import CONSTRUCTIONS
from eisbench.construct.representation import representation_dataset
from eisbench.construct.wrong_label import wrong_label_dataset

__all__ = ["CONSTRUCTIONS", "representation_dataset", "wrong_label_dataset"]
