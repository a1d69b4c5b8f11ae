"""Trustworthy robust accuracy: named attack suites and the sanity checks attached to them."""

from __future__ import annotations

from eisbench.evaluation.checks import (
    CHECKS,
    CheckResult,
    Evaluation,
    EvaluationBudgetViolation,
    evaluate_robustness,
)
from eisbench.evaluation.suite import SUITES, SuiteResult, describe_suite, run_suite

__all__ = ["CHECKS", "SUITES", "CheckResult", "Evaluation", "EvaluationBudgetViolation",
           "SuiteResult", "describe_suite", "evaluate_robustness", "run_suite"]
