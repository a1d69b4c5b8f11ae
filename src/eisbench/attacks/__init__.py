"""Attacks: PGD and FGSM (registered), representation inversion, evaluation helpers."""

from __future__ import annotations

from eisbench.attacks import pgd as _pgd  # noqa: F401  (registers attacks)
from eisbench.attacks.core import ATTACKS, check_inputs
from eisbench.attacks.evaluate import AttackConfig, correct_under_attack, predict
from eisbench.attacks.inversion import invert_representation, representation_distance
from eisbench.attacks.pgd import fgsm, pgd
from eisbench.attacks.projection import BudgetViolation, assert_within_budget, eval_mode, project

__all__ = [
    "ATTACKS",
    "AttackConfig",
    "BudgetViolation",
    "assert_within_budget",
    "check_inputs",
    "correct_under_attack",
    "eval_mode",
    "fgsm",
    "invert_representation",
    "pgd",
    "predict",
    "project",
    "representation_distance",
]
