"""Interpretability tools under test: feature synthesis and trigger reconstruction (one file
per tool, one registry), attribution."""

from __future__ import annotations

import eisbench.tools.neural_cleanse  # noqa: F401  (registers "neural-cleanse")
import eisbench.tools.tabor  # noqa: F401  (registers "tabor")
from eisbench.tools import adversarial_patch, feature_adversary, feature_vis, snafue  # noqa
from eisbench.tools.core import TOOLS, Tool, check_tool_output

__all__ = ["TOOLS", "Tool", "check_tool_output"]
