"""Sanity checks attached to every robust-accuracy number (Carlini et al. 2019; Athalye et al.
2018; Croce & Hein 2020): each one catches a known way in which an evaluation overstates
robustness, and says what to do when it trips.

:func:`evaluate_robustness` runs an attack suite and every check, and returns both.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.attacks import ATTACKS, Passes, apgd, assert_within_budget, count_passes, fgsm, pgd
from eisbench.attacks.projection import BudgetViolation
from eisbench.core.registry import Registry
from eisbench.core.tensors import eval_mode
from eisbench.evaluation.suite import (
    Step,
    SuiteResult,
    run_suite,
    runnable,
    steps_of,
    suites_for,
    summary,
)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: ``passed`` is None when it could not run (``detail`` says why)."""

    name: str
    passed: bool | None
    detail: str
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "advice": self.advice}


@dataclass
class CheckInputs:
    """What the checks look at; ``sub``: the first n_checks examples, for the costly checks."""

    model: nn.Module
    x: torch.Tensor  # (N, C, H, W)
    y: torch.Tensor  # (N,)
    eps: float
    norm: str
    result: SuiteResult
    was_training: bool
    num_classes: int
    n_checks: int
    seed: int
    device: torch.device
    control: nn.Module | None = None
    surrogate: nn.Module | None = None
    skipped: tuple[str, ...] = ()  # attacks of the suite too few classes ran, each with why

    @property
    def sub(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:self.n_checks].to(self.device), self.y[:self.n_checks].to(self.device)

    def gen(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 7919 + salt)


Check = Callable[[CheckInputs], CheckResult]
CHECKS: Registry[Check] = Registry("sanity check")


def _robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return (model(x).argmax(1) == y).cpu()


def _tol(n: int) -> float:
    """Tolerance for a difference of two accuracies on n examples: max(1 point, 1 example)."""
    return max(0.01, 1.0 / max(n, 1))


@CHECKS.register("returns-logits")
def returns_logits(c: CheckInputs) -> CheckResult:
    """Fails when the model returns probabilities (rows in [0,1] summing to 1), not logits."""
    x, _ = c.sub
    with eval_mode(c.model), torch.no_grad():
        out = c.model(x[:64])  # (B, K)
    probs = bool(((out >= 0) & (out <= 1)).all()) and bool(
        torch.allclose(out.sum(1), torch.ones(len(out), device=out.device), atol=1e-3))
    return CheckResult("returns-logits", not probs,
                       "outputs are probabilities (rows in [0,1] summing to 1)" if probs
                       else "outputs are unnormalised scores",
                       "return logits: a softmax output flattens the cross-entropy gradient")


@CHECKS.register("deterministic")
def deterministic(c: CheckInputs) -> CheckResult:
    """Fails when two forward passes on the same images differ (a randomised model)."""
    x, _ = c.sub
    with eval_mode(c.model), torch.no_grad():
        a, b = c.model(x), c.model(x)
    diff = float((a - b).abs().max()) if len(a) else 0.0
    ok = diff <= 1e-5 * (1 + float(a.abs().max()) if len(a) else 1)
    return CheckResult("deterministic", ok, f"max |difference| of two forward passes {diff:.3g}",
                       "the model is randomised: attack the expectation over its randomness "
                       "(EoT, Athalye et al. 2018) before trusting this number")


@CHECKS.register("gradients")
def gradients(c: CheckInputs) -> CheckResult:
    """Fails on non-finite input gradients or more than 5% exactly zero (gradient masking)."""
    x, y = c.sub
    xa = x.clone().requires_grad_(True)
    with eval_mode(c.model):
        loss = F.cross_entropy(c.model(xa), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xa)
    norms = g.flatten(1).norm(dim=1)  # (B,)
    bad = int((~torch.isfinite(g)).flatten(1).any(1).sum())
    zero = int((norms == 0).sum())
    ok = bad == 0 and zero <= 0.05 * len(x)
    return CheckResult("gradients", ok,
                       f"{zero} of {len(x)} input gradients are exactly zero, {bad} non-finite",
                       "zero or broken gradients mean gradient masking (e.g. quantised inputs or "
                       "saturated outputs): use BPDA or a gradient-free attack")


@contextlib.contextmanager
def _count_autograd() -> Iterator[list[int]]:
    calls = [0]
    grad, backward = torch.autograd.grad, torch.Tensor.backward

    def g(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return grad(*a, **k)

    def b(self: torch.Tensor, *a: Any, **k: Any) -> Any:
        calls[0] += 1
        return backward(self, *a, **k)

    torch.autograd.grad, torch.Tensor.backward = g, b  # type: ignore[method-assign,assignment]
    try:
        yield calls
    finally:
        torch.autograd.grad, torch.Tensor.backward = grad, backward  # type: ignore[method-assign]


@CHECKS.register("no-autograd-in-forward")
def no_autograd_in_forward(c: CheckInputs) -> CheckResult:
    """Fails when the forward pass itself calls autograd (it optimises something inside)."""
    x, _ = c.sub
    with eval_mode(c.model), _count_autograd() as calls:
        c.model(x[:16])
    return CheckResult("no-autograd-in-forward", calls[0] == 0,
                       f"{calls[0]} autograd calls during one forward pass",
                       "the forward pass optimises something itself: gradients through it are "
                       "not the model's; attack it adaptively (Tramer et al. 2020)")


@CHECKS.register("eval-mode")
def eval_mode_check(c: CheckInputs) -> CheckResult:
    """Fails when the model was handed over in training mode."""
    return CheckResult("eval-mode", not c.was_training,
                       "model was handed over in training mode" if c.was_training
                       else "model was in eval mode",
                       "switch the model to eval mode (model.train(False)): dropout and "
                       "batch-norm statistics change the function (eisbench attacks and scores "
                       "in eval mode)")


@CHECKS.register("within-budget")
def within_budget(c: CheckInputs) -> CheckResult:
    """Fails on an attack whose output left the threat model (the suite records it and
    counts none of its examples as broken) or on a returned example outside it."""
    bad = [f"{a['name']}: {v}" for a in c.result.per_attack
           for v in a.get("budget_violations", [])]
    try:
        assert_within_budget(c.x, c.result.x_adv, norm=c.norm, eps=c.eps)
    except BudgetViolation as e:
        bad.append(f"returned examples: {e}")
    if bad:
        return CheckResult("within-budget", False, "; ".join(bad)[:500],
                           "an attack broke the threat model: its successes were not counted; "
                           "fix the attack before trusting any number from it")
    return CheckResult("within-budget", True, f"all {len(c.x)} adversarial examples within "
                       f"{c.norm} eps={c.eps:g} and in [0,1]")


@CHECKS.register("iterative-beats-single-step")
def iterative_beats_single_step(c: CheckInputs) -> CheckResult:
    """Fails when FGSM breaks examples the iterative suite left robust."""
    x, y = c.sub
    broken_fgsm = ~_robust(c.model, fgsm(c.model, x, y, eps=c.eps, norm=c.norm), y)
    missed = int((broken_fgsm & c.result.robust[:len(x)]).sum())
    return CheckResult("iterative-beats-single-step", missed == 0,
                       f"FGSM breaks {missed} of {len(x)} examples the suite left robust",
                       "a single step beating the iterative attacks means the loss surface is "
                       "masked or the iterative attacks are misconfigured")


@CHECKS.register("eps-curve")
def eps_curve(c: CheckInputs) -> CheckResult:
    """Fails unless APGD-CE accuracy falls with eps and reaches chance at the largest budget."""
    x, y = c.sub
    big = 1.0 if c.norm == "linf" else math.sqrt(x[0].numel())
    grid = [0.5 * c.eps, c.eps, 2 * c.eps, big]
    accs = [float(_robust(c.model, apgd(c.model, x, y, eps=e, norm=c.norm, steps=50,
                                        generator=c.gen(i)), y).double().mean())
            for i, e in enumerate(grid)]
    tol = _tol(len(x))
    monotone = all(b <= a + tol for a, b in zip(accs, accs[1:], strict=False))
    chance = accs[-1] <= 1.0 / c.num_classes + 0.05
    curve = ", ".join(f"{e:.3g}: {a:.3f}" for e, a in zip(grid, accs, strict=True))
    return CheckResult("eps-curve", monotone and chance,
                       f"APGD-CE robust accuracy by eps {{{curve}}}; monotone={monotone}, "
                       f"chance at eps={big:.3g}: {chance}",
                       "robust accuracy must fall with eps and reach chance when the budget "
                       "covers the whole image space; otherwise the attack does not work")


@CHECKS.register("more-steps-and-restarts")
def more_steps(c: CheckInputs) -> CheckResult:
    """Fails when APGD-CE with twice the steps and more restarts breaks more (> 1%, > 1 image)."""
    x, y = c.sub
    first = c.result.per_attack[0] if c.result.per_attack else {"hyper": {"steps": 100}}
    steps = 2 * int(first["hyper"].get("steps", 100))
    restarts = max(2, int(first["hyper"].get("restarts", 1)) + 1)  # more than the suite's
    strong = _robust(c.model, apgd(c.model, x, y, eps=c.eps, norm=c.norm, steps=steps,
                                   restarts=restarts, generator=c.gen(99)), y)
    extra = int((c.result.robust[:len(x)] & ~strong).sum())
    ok = extra <= _tol(len(x)) * len(x)
    return CheckResult("more-steps-and-restarts", ok,
                       f"APGD-CE with {steps} steps and {restarts} restarts breaks {extra} of "
                       f"{len(x)} examples the suite left robust",
                       "the number has not converged: raise steps and restarts until it stops "
                       "moving")


@CHECKS.register("black-box-not-stronger")
def black_box_not_stronger(c: CheckInputs) -> CheckResult:
    """Fails when gradient-free or transfer attacks break examples the white-box ones missed.

    Not run (None) when the suite has no gradient-free attack and no surrogate is given:
    then nothing could beat the white-box attacks and a pass would mean nothing."""
    if c.surrogate is None and all(ATTACKS.meta(a["name"])["white_box"]
                                   for a in c.result.per_attack):
        return CheckResult("black-box-not-stronger", None,
                           "no gradient-free attack in the suite and no surrogate given: "
                           "cannot run")
    by_black = sum(1 for b in c.result.broken_by if b and not ATTACKS.meta(b)["white_box"])
    detail = f"gradient-free attacks break {by_black} examples the white-box attacks missed"
    if c.surrogate is not None:
        x, y = c.sub
        xt = pgd(c.surrogate, x, y, eps=c.eps, norm=c.norm, steps=50, generator=c.gen(7))
        transfer = int((~_robust(c.model, xt, y) & c.result.robust[:len(x)]).sum())
        by_black += transfer
        detail += f"; transfer from the surrogate breaks {transfer}"
    ok = by_black <= 0.005 * len(c.x)
    return CheckResult("black-box-not-stronger", ok, detail,
                       "black-box or transfer attacks beating white-box ones is the signature "
                       "of gradient masking: the gradients mislead, so robustness may be lower "
                       "still (the suite's number includes these breaks); try more queries and "
                       "an adaptive attack")


@CHECKS.register("control-falls")
def control_falls(c: CheckInputs) -> CheckResult:
    """Fails when an undefended control model keeps more than 5% accuracy under attack.

    The ``fast`` suite on the control, less the attacks its class count cannot run (on 2
    classes: APGD-CE and Square)."""
    if c.control is None:
        return CheckResult("control-falls", None, "no undefended control model given")
    x, y = c.sub
    plan, _ = runnable(steps_of("fast"), c.num_classes)
    res = run_suite(c.control, x, y, eps=c.eps, norm=c.norm, steps=plan, seed=c.seed,
                    device=c.device)
    return CheckResult("control-falls", res.robust_acc <= 0.05,
                       f"undefended control: robust accuracy {res.robust_acc:.3f} "
                       f"(clean {res.clean_acc:.3f})",
                       "the attack cannot break an undefended model at this eps: it is too weak "
                       "or the budget too small to mean anything")


@CHECKS.register("enough-classes")
def enough_classes(c: CheckInputs) -> CheckResult:
    """Fails when the suite had to skip attacks for want of classes (APGD-T on fewer than 4)."""
    fit = ", ".join(suites_for(c.num_classes)) or "none"
    return CheckResult("enough-classes", not c.skipped,
                       f"{c.num_classes} classes"
                       + (f"; skipped {', '.join(c.skipped)}" if c.skipped else ""),
                       f"the suite's attacks need more classes than the model has: run a suite "
                       f"made for {c.num_classes} classes ({fit})")


@dataclass
class Evaluation:
    """A robust-accuracy number with the attack that produced it and its sanity checks.

    ``check_passes``: the passes of the evaluated model that the checks ran (their attacks),
    counted apart from the suite's (``result.passes``, what compares with another suite), and
    ``check_seconds`` their wall time; None when not counted."""

    result: SuiteResult
    checks: list[CheckResult]
    check_passes: Passes | None = None
    check_seconds: float | None = None

    @property
    def warnings(self) -> list[CheckResult]:
        return [ch for ch in self.checks if ch.passed is False]

    def __repr__(self) -> str:
        return summary(self.result, self.checks, check_passes=self.check_passes,
                       check_seconds=self.check_seconds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``passes``: the suite's (:meth:`SuiteResult.passes_dict`),
        ``check_passes``: the checks' forward and backward passes and seconds."""
        r, cp = self.result, self.check_passes
        return {"suite": r.suite, "norm": r.norm, "eps": r.eps, "n": len(r.robust),
                "clean_acc": r.clean_acc, "robust_acc": r.robust_acc,
                "per_attack": r.per_attack, "checks": [ch.to_dict() for ch in self.checks],
                "passes": r.passes_dict(),
                "check_passes": None if cp is None else cp.to_dict() | {
                    "seconds": self.check_seconds}}


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                        norm: str = "linf", suite: str = "standard", n_checks: int = 200,
                        control: nn.Module | None = None, surrogate: nn.Module | None = None,
                        batch_size: int = 500, seed: int = 0,
                        device: str | torch.device = "cpu",
                        steps: tuple[Step, ...] | None = None) -> Evaluation:
    """Robust accuracy of ``model`` on x (N, C, H, W), y (N,) under ``suite`` (or the explicit
    attack plan ``steps``), with every check.

    Costly checks use the first ``n_checks`` examples. ``control``: an undefended model of the
    same task (should fall to ~0%); ``surrogate``: a model for a transfer attack. Attacks that
    need more classes than the model has are skipped and the ``enough-classes`` check fails:
    for 2 or 3 classes use ``suite="binary"``.

    Example:
        >>> ev = evaluate_robustness(model, x_test[:1000], y_test[:1000], eps=0.3,
        ...                          control=standard_model)
        >>> ev.result.robust_acc, [w.name for w in ev.warnings]
    """
    dev = torch.device(device)
    was_training = any(m.training for m in model.modules())
    with eval_mode(model), torch.no_grad():
        k = int(model(x[:1].to(dev)).shape[1])
    plan, skipped = runnable(steps if steps is not None else steps_of(suite), k)
    result = run_suite(model, x, y, eps=eps, norm=norm, steps=plan, batch_size=batch_size,
                       seed=seed, device=dev)
    result.suite = suite if steps is None else "custom"
    inputs = CheckInputs(model=model, x=x, y=y, eps=eps, norm=norm, result=result,
                         was_training=was_training, num_classes=k,
                         n_checks=min(n_checks, len(x)), seed=seed, device=dev,
                         control=control, surrogate=surrogate, skipped=skipped)
    t0 = time.perf_counter()
    with count_passes(model) as check_passes:  # apart from the suite's
        checks = [CHECKS.get(name)(inputs) for name in CHECKS.names()]
    ev = Evaluation(result=result, checks=checks, check_passes=check_passes,
                    check_seconds=time.perf_counter() - t0)
    budget = next(ch for ch in checks if ch.name == "within-budget")
    if not budget.passed:  # recorded by the check, then raised: no number from a broken attack
        raise EvaluationBudgetViolation(ev, budget.detail)
    return ev


class EvaluationBudgetViolation(BudgetViolation):
    """An attack of the suite left the threat model; ``evaluation`` holds the whole
    evaluation with its failed within-budget check, for the record."""

    def __init__(self, evaluation: Evaluation, detail: str) -> None:
        super().__init__(f"an attack broke the threat model ({detail}); the evaluation, with "
                         "its failed within-budget check, is attached as .evaluation")
        self.evaluation = evaluation

