"""eisbench: an engineer's workbench for interpretability and adversarial robustness."""

__version__ = "0.1.0"
