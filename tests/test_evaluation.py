"""Robustness evaluation: suites and sanity checks, each proven on a model built to trip it.

The models are real: a small CNN adversarially trained on the 8x8 digits (the clean robust
model, which must trip no check), a standard one (the undefended control), and broken versions
of the robust model: quantised input (masked gradients), softmax output, random noise, left in
training mode, a forward pass that runs autograd itself. Two-class tasks use the linear model
on a 2-D mixture, whose exact Linf robustness is known: the binary suite must find it exactly.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import LinearBinary, train_digits_cnn
from torch import nn

from eisbench.attacks import ATTACKS
from eisbench.evaluation import CHECKS, SUITES, evaluate_robustness, run_suite
from eisbench.evaluation.checks import CheckInputs
from eisbench.evaluation.suite import (
    Step,
    register_suite,
    runnable,
    step_min_classes,
    suites_for,
)

EPS = 0.2  # Linf, on 8x8 digits
N = 120  # test images per evaluation


@pytest.fixture(scope="session")
def robust_digits(digits_small: tuple[torch.Tensor, ...]) -> nn.Module:
    return train_digits_cnn(digits_small, method="fast-at", epochs=20, lr=5e-3, eps=EPS,
                            eps_warmup_epochs=5).eval()


@pytest.fixture(scope="session")
def test_set(digits_small: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return digits_small[2][:N], digits_small[3][:N]


class Quantised(nn.Module):
    """Rounds the input to 4 grey levels first: zero input gradient almost everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 3) / 3)


class Softmax(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(1)


class Noisy(nn.Module):
    """Adds fresh Gaussian noise to every input: a randomised defence."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


class WithDropout(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.drop = net, nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.drop(x))


class Purifier(nn.Module):
    """Takes one gradient step on its input towards its own most confident class first."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xp = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.net(xp).max(1).values.sum(), xp)
        return self.net((x + 0.01 * g.sign()).clamp(0, 1))


class FirstClasses(nn.Module):
    """Keeps only the first k logits (a k-class model)."""

    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, :self.k]


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: object) -> dict:
    ev = evaluate_robustness(model, x, y, eps=EPS, suite="fast", n_checks=N, **kw)  # type: ignore[arg-type]
    return {ch.name: ch for ch in ev.checks}


Data = tuple[torch.Tensor, torch.Tensor]


def _check_inputs(model: nn.Module, data: Data, *, steps: tuple[Step, ...],
                  **kw: object) -> CheckInputs:
    x, y = data
    res = run_suite(model, x, y, eps=EPS, steps=steps)
    fields = {"model": model, "x": x, "y": y, "eps": EPS, "norm": "linf", "result": res,
              "was_training": False, "num_classes": 10, "n_checks": len(x), "seed": 0,
              "device": torch.device("cpu")}
    return CheckInputs(**{**fields, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def clean_checks(robust_digits: nn.Module, trained_digits_cnn: nn.Module,
                 test_set: tuple[torch.Tensor, torch.Tensor]) -> dict:
    x, y = test_set
    return _evaluate(robust_digits, x, y, control=trained_digits_cnn.eval(),
                     surrogate=trained_digits_cnn)


def test_registries_hold_the_documented_entries() -> None:
    assert set(CHECKS.names()) == {
        "returns-logits", "deterministic", "gradients", "no-autograd-in-forward", "eval-mode",
        "within-budget", "iterative-beats-single-step", "eps-curve", "more-steps-and-restarts",
        "black-box-not-stronger", "control-falls", "enough-classes"}
    assert [name for name, _ in SUITES.get("standard")] == ["apgd", "apgd-t", "fmn", "square"]
    for suite in SUITES.names():
        for name, _ in SUITES.get(suite):
            ATTACKS.get(name)  # every step names a registered attack


def test_every_check_honours_the_contract(clean_checks: dict) -> None:
    assert list(clean_checks) == CHECKS.names()  # every registered check ran, once
    for name, ch in clean_checks.items():
        assert ch.name == name and ch.detail and ch.passed in (True, False, None)
        assert ch.to_dict()["name"] == name


def test_clean_robust_model_trips_no_check(clean_checks: dict) -> None:
    failed = {n: ch.detail for n, ch in clean_checks.items() if ch.passed is not True}
    assert not failed


def test_returns_logits(robust_digits: nn.Module, test_set: Data) -> None:
    ch = CHECKS.get("returns-logits")(_check_inputs(Softmax(robust_digits), test_set, steps=()))
    assert ch.passed is False and "probabilities" in ch.detail


def test_deterministic(robust_digits: nn.Module, test_set: Data) -> None:
    assert CHECKS.get("deterministic")(_check_inputs(Noisy(robust_digits), test_set,
                                                steps=())).passed is False


def test_gradients_and_eps_curve_catch_quantised_input(robust_digits: nn.Module,
                                                       test_set: Data) -> None:
    checks = _evaluate(Quantised(robust_digits), *test_set)
    assert checks["gradients"].passed is False
    assert checks["eps-curve"].passed is False  # never reaches chance: gradients are masked


def test_black_box_catches_quantised_input_by_transfer(robust_digits: nn.Module,
                                                       trained_digits_cnn: nn.Module,
                                                       test_set: Data) -> None:
    ctx = _check_inputs(Quantised(robust_digits), test_set, steps=(("apgd", {"steps": 20}),),
                   surrogate=robust_digits)
    ch = CHECKS.get("black-box-not-stronger")(ctx)
    assert ch.passed is False and "transfer" in ch.detail


def test_black_box_check_does_not_pass_when_it_cannot_run(robust_digits: nn.Module,
                                                          test_set: Data) -> None:
    """White-box attacks only and no surrogate: nothing could beat them, so the check says it
    could not run instead of passing; the fast suite's Square lets it run."""
    ctx = _check_inputs(Quantised(robust_digits), test_set, steps=(("apgd", {"steps": 5}),))
    ch = CHECKS.get("black-box-not-stronger")(ctx)
    assert ch.passed is None and "cannot run" in ch.detail
    assert any(not ATTACKS.meta(n)["white_box"] for n, _ in SUITES.get("fast"))


def test_no_autograd_in_forward(robust_digits: nn.Module, test_set: Data) -> None:
    ch = CHECKS.get("no-autograd-in-forward")(_check_inputs(Purifier(robust_digits), test_set,
                                                       steps=()))
    assert ch.passed is False


def test_eval_mode(robust_digits: nn.Module, test_set: Data) -> None:
    model = WithDropout(robust_digits).train()
    checks = _evaluate(model, *test_set)
    assert checks["eval-mode"].passed is False
    assert model.training  # the caller's mode is restored afterwards
    assert checks["deterministic"].passed is True  # attacks and checks run in eval mode


def test_within_budget_catches_an_attack_that_leaves_the_ball(robust_digits: nn.Module,
                                                              test_set: Data) -> None:
    ctx = _check_inputs(robust_digits, test_set, steps=())
    x_adv = ctx.result.x_adv.clone()
    x_adv[0] = (x_adv[0] + 2 * EPS).clamp(0, 1)
    ctx = dataclasses.replace(ctx, result=dataclasses.replace(ctx.result, x_adv=x_adv))
    assert CHECKS.get("within-budget")(ctx).passed is False


def test_iterative_and_convergence_checks_catch_a_misconfigured_attack(
        trained_digits_cnn: nn.Module, test_set: Data) -> None:
    weak = (("pgd", {"steps": 2, "step_size": 1e-3}),)  # far too small a step to leave x
    ctx = _check_inputs(trained_digits_cnn.eval(), test_set, steps=weak)
    assert CHECKS.get("iterative-beats-single-step")(ctx).passed is False
    assert CHECKS.get("more-steps-and-restarts")(ctx).passed is False


def test_control_falls(robust_digits: nn.Module, trained_digits_cnn: nn.Module,
                       test_set: Data) -> None:
    check = CHECKS.get("control-falls")
    assert check(_check_inputs(robust_digits, test_set, steps=(),
                          control=robust_digits)).passed is False
    assert check(_check_inputs(robust_digits, test_set, steps=(),
                          control=trained_digits_cnn.eval())).passed is True
    assert check(_check_inputs(robust_digits, test_set, steps=())).passed is None


def test_enough_classes(robust_digits: nn.Module, test_set: Data) -> None:
    x, y = test_set
    keep = y < 3
    checks = _evaluate(FirstClasses(robust_digits, 3), x[keep], y[keep])
    assert checks["enough-classes"].passed is False


def test_suite_worst_case_is_never_weaker_than_any_of_its_attacks(
        trained_digits_cnn: nn.Module, test_set: Data) -> None:
    x, y = test_set
    eps = 0.05  # the standard model is partly robust here
    steps: tuple[Step, ...] = (("fgsm", {}), ("pgd", {"steps": 10, "random_start": False}))
    res = run_suite(trained_digits_cnn, x, y, eps=eps, steps=steps)
    for name, hyper in steps:  # deterministic attacks: per-example comparison is exact
        alone = ATTACKS.get(name)(trained_digits_cnn, x, y, eps=eps, **hyper)
        with torch.no_grad():
            survives = trained_digits_cnn(alone).argmax(1) == y
        assert not (res.robust & ~survives).any()
    assert sum(a["n_broken"] for a in res.per_attack) == int((res.clean & ~res.robust).sum())
    assert 0 < res.robust_acc < res.clean_acc


def test_an_attack_that_leaves_the_ball_is_recorded_by_the_check_then_raised(
        robust_digits: nn.Module, test_set: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken attack inside a suite: its successes are not counted, the within-budget check
    records which attack and which examples, and the evaluation is raised with the check
    attached (the check could never fail while the suite asserted first)."""
    from eisbench.attacks.projection import project
    from eisbench.evaluation import EvaluationBudgetViolation

    def leaky(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
              norm: str = "linf", generator: torch.Generator | None = None) -> torch.Tensor:
        return (project(x, x + eps, norm=norm, eps=eps) + eps).clamp(0, 1)  # 2 eps away

    monkeypatch.setitem(ATTACKS._items, "leaky", leaky)
    monkeypatch.setitem(ATTACKS._meta, "leaky", {**ATTACKS.meta("fgsm")})
    x, y = test_set
    with pytest.raises(EvaluationBudgetViolation, match="broke the threat model") as info:
        evaluate_robustness(robust_digits, x[:40], y[:40], eps=EPS, n_checks=20,
                            steps=(("leaky", {}), ("fgsm", {})))
    ev = info.value.evaluation
    check = next(c for c in ev.checks if c.name == "within-budget")
    assert check.passed is False and "leaky: examples" in check.detail
    leaky_row, fgsm_row = ev.result.per_attack
    assert leaky_row["n_broken"] == 0 and leaky_row["budget_violations"]
    assert fgsm_row["n_in"] == int(ev.result.clean.sum())  # nothing was taken as broken
    assert "budget_violations" not in fgsm_row


def test_suites_state_the_classes_their_attacks_need() -> None:
    assert {n: SUITES.meta(n)["min_classes"] for n in ("standard", "fast", "binary")} == {
        "standard": 4, "fast": 4, "binary": 2}
    for suite in SUITES.names():
        assert SUITES.meta(suite)["min_classes"] == max(map(step_min_classes, SUITES.get(suite)))
    assert step_min_classes(("apgd", {"loss": "dlr"})) == 3  # reads the third-largest logit
    assert step_min_classes(("apgd", {"loss": "ce"})) == 2
    with pytest.raises(ValueError, match="need 4 classes"):
        register_suite("mislabelled", (("apgd", {}), ("apgd-t", {})), min_classes=2)
    assert "mislabelled" not in SUITES
    assert "binary" in suites_for(2) and not {"standard", "fast"} & set(suites_for(3))
    assert {"standard", "fast", "binary"} <= set(suites_for(4))


def test_the_binary_suite_is_strong_without_targets() -> None:
    """Untargeted only; APGD-CE with restarts in place of APGD-T's targets; a gradient-free
    attack, so that black-box-not-stronger can run."""
    plan = SUITES.get("binary")
    assert [name for name, _ in plan] == ["apgd", "fmn", "square"]
    apgd_ce = dict(plan)["apgd"]
    assert apgd_ce["loss"] == "ce" and apgd_ce["steps"] >= 100 and apgd_ce["restarts"] > 1
    assert dict(plan)["square"]["n_queries"] >= 5000
    assert runnable(plan, 2) == (plan, ())


def test_runnable_skips_by_the_step_not_by_the_attack_name() -> None:
    plan: tuple[Step, ...] = (("apgd", {"loss": "dlr"}), ("apgd", {"loss": "ce"}), ("apgd-t", {}))
    assert runnable(plan, 2) == ((plan[1],), ("apgd (needs >= 3 classes)",
                                              "apgd-t (needs >= 4 classes)"))
    assert runnable(plan, 3) == (plan[:2], ("apgd-t (needs >= 4 classes)",))
    assert runnable(plan, 4) == (plan, ())


LINEAR_EPS = 0.1  # inputs in [0.2, 0.8]: the [0,1] box never binds
BREAKS_ALL = 0.5  # moves every point of the mixture past the linear boundary


@pytest.fixture(scope="module")
def two_classes() -> tuple[LinearBinary, torch.Tensor, torch.Tensor]:
    from conftest import gaussian_mixture

    x, y = gaussian_mixture(100)
    return LinearBinary().eval(), x, y


def test_binary_suite_on_two_classes_runs_everything_and_finds_the_exact_robustness(
        two_classes: tuple[LinearBinary, torch.Tensor, torch.Tensor]) -> None:
    """On z = w.x + b the worst Linf perturbation lowers the margin |z| by eps ||w||_1: the
    suite must break exactly the correct points with |z| < eps ||w||_1, run every attack, and
    trip no check (none may assume 4 or 10 classes)."""
    model, x, y = two_classes
    ev = evaluate_robustness(model, x, y, eps=LINEAR_EPS, suite="binary", n_checks=len(x))
    assert [a["name"] for a in ev.result.per_attack] == ["apgd", "fmn", "square"]
    assert all(a["n_in"] > 0 for a in ev.result.per_attack)  # each attack had points to try
    with torch.no_grad():
        z = model.lin(x.flatten(1))[:, 0]  # (N,)
        margin = z.abs() - LINEAR_EPS * float(model.lin.weight.abs().sum())
    exact = ev.result.clean & (margin > 0)
    clear = margin.abs() > 1e-4  # away from ties
    assert torch.equal(ev.result.robust[clear], exact[clear])
    assert 0 < int(exact.sum()) < int(ev.result.clean.sum())  # the eps splits the points
    checks = {ch.name: ch for ch in ev.checks}
    assert checks["enough-classes"].passed is True and "skipped" not in checks[
        "enough-classes"].detail
    assert {n for n, ch in checks.items() if ch.passed is not True} == {"control-falls"}
    assert checks["control-falls"].passed is None  # no control given


def test_standard_on_two_classes_skips_apgd_t_and_fails_enough_classes(
        two_classes: tuple[LinearBinary, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = two_classes
    ev = evaluate_robustness(model, x, y, eps=BREAKS_ALL, suite="standard", n_checks=40)
    assert ev.result.suite == "standard" and ev.result.robust_acc == 0.0
    assert [a["name"] for a in ev.result.per_attack] == ["apgd", "fmn", "square"]
    check = next(ch for ch in ev.checks if ch.name == "enough-classes")
    assert check.passed is False and "apgd-t (needs >= 4 classes)" in check.detail
    assert "binary" in check.advice
    assert [w.name for w in ev.warnings] == ["enough-classes"]


def test_a_dlr_step_is_skipped_on_two_classes_not_crashed_into(
        two_classes: tuple[LinearBinary, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = two_classes
    steps: tuple[Step, ...] = (("apgd", {"loss": "dlr", "steps": 5}), ("fgsm", {}))
    ev = evaluate_robustness(model, x, y, eps=LINEAR_EPS, steps=steps, n_checks=20)
    assert [a["name"] for a in ev.result.per_attack] == ["fgsm"]
    check = next(ch for ch in ev.checks if ch.name == "enough-classes")
    assert check.passed is False and "apgd (needs >= 3 classes)" in check.detail


def test_control_falls_runs_on_two_classes(
        two_classes: tuple[LinearBinary, torch.Tensor, torch.Tensor]) -> None:
    """The control is attacked with the fast suite less what two classes cannot run (APGD-T
    would raise on a 2-class control); it passes where the linear control falls and fails
    where the budget leaves most of it standing."""
    model, x, y = two_classes
    check = CHECKS.get("control-falls")
    for eps, passed in ((BREAKS_ALL, True), (0.02, False)):
        ctx = _check_inputs(model, (x, y), steps=(), control=model, num_classes=2, eps=eps)
        ch = check(ctx)
        assert ch.passed is passed, ch.detail
