"""Shared pieces of the tests that kill plausible wrong versions of eisbench.evaluation
(test_mutants_evaluation_*.py).

The models are linear and hand-checkable (tests/conftest.py). On ``LinearBinary`` (logits
[0, w.x + b], |w|_1 = 3) an L-inf attack of radius e breaks exactly the examples whose margin
|w.x + b| is below 3e, so every count is known in closed form. ``_record`` (the tests'
``launched`` fixture) records how each check called the real attacks; ``_probe_attacks``
(the ``probe`` fixture) registers two scripted attacks that log their calls.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import LinearBinary, LinearMulti, gaussian_mixture
from torch import nn

from eisbench.attacks import ATTACKS, fgsm
from eisbench.evaluation import CHECKS, CheckResult, run_suite
from eisbench.evaluation import checks as checks_module
from eisbench.evaluation import suite as suite_module
from eisbench.evaluation.checks import CheckInputs

EPS, SEED, CPU = 0.1, 3, torch.device("cpu")
Log = list[tuple[str, dict[str, Any]]]
ADVICE = {  # "within-budget" and "control-falls" advise only when they fail / run
    "returns-logits": "return logits: a softmax output flattens the cross-entropy gradient",
    "deterministic": "the model is randomised: attack the expectation over its randomness (EoT, "
    "Athalye et al. 2018) before trusting this number",
    "gradients": "zero or broken gradients mean gradient masking (e.g. quantised inputs or "
    "saturated outputs): use BPDA or a gradient-free attack",
    "no-autograd-in-forward": "the forward pass optimises something itself: gradients through "
    "it are not the model's; attack it adaptively (Tramer et al. 2020)",
    "eval-mode": "switch the model to eval mode (model.train(False)): dropout and batch-norm "
    "statistics change the function (eisbench attacks and scores in eval mode)",
    "within-budget": "", "control-falls": "",
    "iterative-beats-single-step": "a single step beating the iterative attacks means the loss "
    "surface is masked or the iterative attacks are misconfigured",
    "eps-curve": "robust accuracy must fall with eps and reach chance when the budget covers "
    "the whole image space; otherwise the attack does not work",
    "more-steps-and-restarts": "the number has not converged: raise steps and restarts until it "
    "stops moving",
    "black-box-not-stronger": "black-box or transfer attacks beating white-box ones is the "
    "signature of gradient masking: the gradients mislead, so robustness may be lower still (the "
    "suite's number includes these breaks); try more queries and an adaptive attack",
    "enough-classes": "the suite's attacks need more classes than the model has: run a suite "
    "made for {} classes ({})",
    "budget-failed": "an attack broke the threat model: its successes were not counted; fix the "
    "attack before trusting any number from it",
    "control-ran": "the attack cannot break an undefended model at this eps: it is too weak or "
    "the budget too small to mean anything"}


def binary(n: int = 64) -> tuple[LinearBinary, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LinearBinary on its mixture, labelled by itself, and each margin |w.x + b| (n=64: 6, 20
    and 61 examples under 0.15, 0.3 and 0.6, none within 0.007 of these)."""
    model, (x, _) = LinearBinary(), gaussian_mixture(n)
    with torch.no_grad():
        z = model.lin(x.flatten(1)).squeeze(1)  # (N,)
    return model, x, (z > 0).long(), z.abs()


def ctx(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = EPS,
        norm: str = "linf", result: dict[str, Any] | None = None, **kw: Any) -> CheckInputs:
    """Check inputs after a suite of no attack (robust = clean), ``result`` fields replaced."""
    res = dataclasses.replace(run_suite(model, x, y, eps=eps, norm=norm, steps=()),
                              **(result or {}))
    with torch.no_grad():
        k = int(model(x[:1]).shape[1])
    return CheckInputs(**{"model": model, "x": x, "y": y, "eps": eps, "norm": norm, "result": res,
                          "was_training": False, "num_classes": k, "n_checks": len(x),
                          "seed": SEED, "device": CPU, **kw})


def run(name: str, c: CheckInputs, **expect: Any) -> CheckResult:
    """Run check ``name``; assert its name, its advice and the ``expect``ed fields."""
    ch = CHECKS.get(name)(c)
    assert ch.name == name and {k: getattr(ch, k) for k in expect} == expect
    advice = {"within-budget": ADVICE["budget-failed"] if ch.passed is False else "",
              "control-falls": "" if ch.passed is None else ADVICE["control-ran"],
              "black-box-not-stronger": "" if ch.passed is None else ADVICE[name]}
    assert name == "enough-classes" or ch.advice == advice.get(name, ADVICE[name])
    return ch


def left(margin: torch.Tensor, missed: int, among: int = 64) -> torch.Tensor:
    """What an optimal L-inf attack at EPS leaves robust, and ``missed`` breakable examples
    among the first ``among``."""
    robust = margin >= 3 * EPS
    robust[(~robust[:among]).nonzero()[:missed]] = True
    return robust


def _record(mp: pytest.MonkeyPatch) -> Log:
    log: Log = []

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def record(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> Any:
            g = kw.get("generator")
            log.append((name, {**{k: v for k, v in kw.items() if k not in ("generator", "device")},
                               "gen": None if g is None else g.initial_seed(), "n": len(x)}))
            return real(model, x, y, **kw)
        return record
    for name in ("apgd", "pgd", "fgsm", "run_suite"):
        mp.setattr(checks_module, name, wrap(name, getattr(checks_module, name)))
    return log


def progress_labels(mp: pytest.MonkeyPatch) -> list[str]:
    """The label of each progress bar run_suite opens, from now on."""
    labels: list[str] = []

    def progress(it: Any, *, desc: str, **kwargs: Any) -> Any:
        labels.append(desc)
        return it
    mp.setattr(suite_module, "progress", progress)
    return labels


def _probe_attacks(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The ``probe`` fixture: registers two attacks that log each call; ``probe`` returns its
    input, ``leaky`` leaves the eps-ball on its first call and runs FGSM after."""
    log: list[dict[str, Any]] = []

    def make(name: str) -> Callable[..., torch.Tensor]:
        def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   norm: str, generator: torch.Generator, **hyper: Any) -> torch.Tensor:
            log.append({"attack": name, "n": len(x), "eps": eps, "norm": norm,
                        "gen": generator.initial_seed(), **hyper})
            if name == "probe":
                return x
            first = [e["attack"] for e in log].count("leaky") == 1
            return (x + 2 * eps).clamp(0, 1) if first else fgsm(model, x, y, eps=eps)
        return attack
    for name in ("probe", "leaky"):
        monkeypatch.setitem(ATTACKS._items, name, make(name))
        monkeypatch.setitem(ATTACKS._meta, name, ATTACKS.meta("fgsm"))
    return log


class Stub(nn.Module):
    """Records each batch size; returns ``net(x)``, or else the rows ``values`` plus ``drift``
    times the number of earlier calls."""

    def __init__(self, net: nn.Module | None = None, values: tuple[float, ...] = (),
                 drift: float = 0.0) -> None:
        super().__init__()
        self.net, self.values, self.drift = net, torch.tensor(values), drift
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if self.net is not None:
            return self.net(x)
        return self.values.expand(len(x), -1) + self.drift * (len(self.sizes) - 1)  # (B, K)


class Gated(LinearBinary):
    """Constant (zero input gradient) where the first pixel is > 0.9; on sqrt(x) when ``root``
    (an infinite gradient at a 0 pixel)."""

    def __init__(self, root: bool) -> None:
        super().__init__()
        self.root = root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = (x.flatten(1)[:, :1] <= 0.9).float()  # (B, 1)
        return super().forward(x.clamp(min=0).sqrt() if self.root else x) * gate


class Purifier(LinearMulti):
    """Takes ``n`` gradient steps on its input first (autograd.grad and backward in turn)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):
            with torch.enable_grad():
                xp = x.detach().requires_grad_(True)
                score = super().forward(xp).max(1).values.sum()
                g = score.backward() or xp.grad if i % 2 else torch.autograd.grad(score, xp)[0]
            x = (x + 0.01 * g.sign()).clamp(0, 1)  # type: ignore[union-attr]
        return super().forward(x)


class Centres(nn.Module):
    """Nearest-centre classifier on (B, 1, 1, 2), K centres on a circle: 2 c_k.x - |c_k|^2."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        a = torch.arange(k) * 2 * math.pi / k
        self.c = 0.5 + 0.3 * torch.stack([a.cos(), a.sin()], 1)  # (K, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x.flatten(1) @ self.c.T - (self.c ** 2).sum(1)
