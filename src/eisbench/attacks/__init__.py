"""Attacks: PGD, FGSM, APGD(-T), APGD-T with online discarding, FMN, Square (registered),
representation inversion, evaluation, and the count of an attack's forward and backward passes
(:func:`count_passes`)."""

from __future__ import annotations

from eisbench.attacks import apgd as _apgd  # noqa: F401  (registers attacks)
from eisbench.attacks import fmn as _fmn  # noqa: F401
from eisbench.attacks import osd as _osd  # noqa: F401
from eisbench.attacks import pgd as _pgd  # noqa: F401
from eisbench.attacks import square as _square  # noqa: F401
from eisbench.attacks.apgd import apgd, apgd_t, dlr_loss
from eisbench.attacks.core import ATTACKS, check_inputs
from eisbench.attacks.counting import Passes, count_passes
from eisbench.attacks.evaluate import AttackConfig, correct_under_attack
from eisbench.attacks.fmn import fmn, fmn_min_norm
from eisbench.attacks.inversion import invert_representation, representation_distance
from eisbench.attacks.pgd import fgsm, pgd
from eisbench.attacks.projection import BudgetViolation, assert_within_budget, project
from eisbench.attacks.square import square
from eisbench.core.tensors import eval_mode, predict

__all__ = [
    "apgd",
    "apgd_t",
    "dlr_loss",
    "fmn",
    "fmn_min_norm",
    "square",
    "ATTACKS",
    "AttackConfig",
    "BudgetViolation",
    "Passes",
    "assert_within_budget",
    "check_inputs",
    "correct_under_attack",
    "count_passes",
    "eval_mode",
    "fgsm",
    "invert_representation",
    "pgd",
    "predict",
    "project",
    "representation_distance",
]
