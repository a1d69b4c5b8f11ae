"""Attack contracts (over the registry), budgets, determinism and a closed-form optimum."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch
from torch import nn

from eisbench.attacks import (
    ATTACKS,
    AttackConfig,
    BudgetViolation,
    assert_within_budget,
    correct_under_attack,
    pgd,
    project,
)
from eisbench.attacks.core import CALL_ARGS, Hyper, declared_hypers
from eisbench.attacks.evaluate import evaluation_hyper
from eisbench.attacks.projection import NORMS, distance, random_start

BUDGETS = {"linf": 0.1, "l2": 0.15}


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


FAST = {"square": {"n_queries": 300}}  # keep the contract cheap; defaults are tested elsewhere


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_declares_its_signature(name: str) -> None:
    """The declared hyper-parameters are exactly the keyword-only arguments but the caller's,
    with the same defaults and types; the declared norms are known ones, the default first."""
    fn, meta = ATTACKS.get(name), ATTACKS.meta(name)
    kwonly = {k: p for k, p in inspect.signature(fn).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    hints = typing.get_type_hints(fn)
    assert set(meta["params"]) == set(kwonly) - set(CALL_ARGS), name
    for key, h in meta["params"].items():
        assert h.default == kwonly[key].default, f"{name}.{key}: declared {h.default}"
        assert h.type is hints[key] or h.type in typing.get_args(hints[key]), f"{name}.{key}"
        assert not h.choices or h.default in h.choices
    assert {"eps", "norm", "generator"} <= set(kwonly)
    assert meta["norms"] and set(meta["norms"]) <= set(NORMS)
    assert kwonly["norm"].default == meta["norms"][0]
    assert meta["min_classes"] >= 2 and isinstance(meta["white_box"], bool)


def _bad_values(h: Hyper) -> list[object]:
    """Values the declaration ``h`` refuses: the wrong type, NaN/inf, below its range."""
    if h.type is int:
        return [2.5, True, "3", *([int(h.lo) - 1, -7] if h.lo is not None else [])]
    if h.type is float:
        return [float("nan"), float("inf"), "0.5", *([h.lo - 1.0] if h.lo is not None else [])]
    return ["yes"] if h.type is bool else ["no-such-choice"]


@pytest.mark.parametrize(("name", "key", "bad"), [
    (n, k, bad) for n in ATTACKS.names() for k, h in ATTACKS.meta(n)["params"].items()
    for bad in _bad_values(h)])
def test_bad_hyper_parameters_are_refused_naming_them(name: str, key: str, bad: object,
                                                      linear_model: nn.Module) -> None:
    """Every declared hyper-parameter of every attack is checked against its declaration (an
    attack that forgot to pass one to ``check_inputs`` fails here): NaN, infinities, counts
    below 1, bools for ints, strings for numbers, unknown choices."""
    x, y = torch.rand(4, 1, 1, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        ATTACKS.get(name)(linear_model, x, y, eps=0.1, **{key: bad})


@pytest.mark.parametrize("name", ATTACKS.names())
@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -0.1])
def test_a_bad_eps_is_refused(name: str, eps: float, linear_model: nn.Module) -> None:
    x, y = torch.rand(4, 1, 1, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^eps must be a finite number >= 0"):
        ATTACKS.get(name)(linear_model, x, y, eps=eps)


def test_every_numeric_hyper_parameter_declares_its_range() -> None:
    for name in ATTACKS.names():
        for key, h in ATTACKS.meta(name)["params"].items():
            assert h.type not in (int, float) or h.lo is not None, f"{name}.{key}"


def test_declared_hyper_parameters_and_evaluation_defaults() -> None:
    hypers = declared_hypers()
    assert hypers["steps"][1] == {"apgd": 100, "apgd-t": 100, "apgd-t-osd": 100, "fmn": 100,
                                  "pgd": 40}
    assert hypers["loss"][0].choices == ("ce", "dlr")
    assert evaluation_hyper("pgd", {"steps": 5, "restarts": None}) == {
        "steps": 5, "step_size": None, "restarts": 1, "random_start": True, "early_exit": True}
    assert evaluation_hyper("fgsm", {"steps": 5}) == {}
    assert evaluation_hyper("square", {})["n_queries"] == 5000
    assert AttackConfig(name="fgsm").kwargs() == {"norm": "linf", "eps": 0.3}
    assert set(AttackConfig(name="apgd").kwargs()) == {"norm", "eps", "steps", "restarts"}
    assert ATTACKS.names(white_box=False) == ["square"]
    assert ATTACKS.names(min_classes=4) == ["apgd-t", "apgd-t-osd"]


@pytest.mark.parametrize(("name", "norm"), [(n, norm) for n in ATTACKS.names()
                                            for norm in ATTACKS.meta(n)["norms"]])
def test_attack_contract(name: str, norm: str, linear_multi: nn.Module,
                         mixture_multi: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture_multi
    model = linear_multi
    eps = BUDGETS[norm]
    model.train()
    hooks_before = len(model._forward_hooks) + len(model._backward_hooks)
    attack = ATTACKS.get(name)
    hyper = FAST.get(name, {})
    x1 = attack(model, x, y, eps=eps, norm=norm, generator=torch.Generator().manual_seed(3),
                **hyper)
    x2 = attack(model, x, y, eps=eps, norm=norm, generator=torch.Generator().manual_seed(3),
                **hyper)
    assert x1.shape == x.shape and x1.dtype == x.dtype
    torch.testing.assert_close(x1, x2)  # deterministic under a seed
    assert_within_budget(x, x1, norm=norm, eps=eps)
    assert float(x1.min()) >= 0.0 and float(x1.max()) <= 1.0
    assert _acc(model, x1, y) < _acc(model, x, y) - 0.1
    assert model.training  # mode restored
    assert len(model._forward_hooks) + len(model._backward_hooks) == hooks_before


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_closed_form_optimum_on_linear_model(
        norm: str, linear_model: nn.Module, mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture
    eps = 0.05
    params = dict(linear_model.named_parameters())
    w, b = params["lin.weight"].detach().view(-1), float(params["lin.bias"].detach())
    margin = (2 * y - 1).float() * (x.view(-1, 2) @ w + b)  # (N,) signed margin
    dual = float(w.abs().sum()) if norm == "linf" else float(w.norm())
    robust_closed_form = margin > eps * dual  # the box [0,1] is inactive for these points
    x_adv = pgd(linear_model, x, y, eps=eps, steps=20, norm=norm, random_start=False)
    with torch.no_grad():
        robust_pgd = linear_model(x_adv).argmax(1) == y
    assert torch.equal(robust_pgd, robust_closed_form)
    # on the points it breaks, PGD lands on the optimal adversary: x - eps * sign(w) * s
    s = (2 * y - 1).float().view(-1, 1)
    d = w.sign() * eps if norm == "linf" else w / w.norm() * eps
    optimum = (x.view(-1, 2) - s * d).view_as(x)
    torch.testing.assert_close(x_adv[~robust_closed_form], optimum[~robust_closed_form])


def test_targeted_pgd_reaches_target(linear_model: nn.Module,
                                     mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture
    target = 1 - y
    x_adv = pgd(linear_model, x, target, eps=0.5, steps=30, norm="l2", targeted=True)
    with torch.no_grad():
        hit = (linear_model(x_adv).argmax(1) == target).float().mean()
    assert hit > 0.95


def test_early_exit_is_never_weaker_and_restarts_never_hurt(
        trained_digits_cnn: nn.Module,
        digits_small: tuple[torch.Tensor, ...]) -> None:
    _, _, x, y = digits_small
    x, y = x[:200], y[:200]
    res = {}
    for early in (False, True):
        cfg = AttackConfig(eps=0.1, steps=10, restarts=1, early_exit=early)
        res[early] = correct_under_attack(trained_digits_cnn, x, y, cfg, seed=0)
    # an example fooled at any step counts as fooled with early exit
    assert res[True].float().mean() <= res[False].float().mean() + 1e-9
    more = correct_under_attack(trained_digits_cnn, x, y,
                                AttackConfig(eps=0.1, steps=10, restarts=3), seed=0)
    assert not (more & ~res[True]).any()  # restarts only attack still-robust points
    assert more.float().mean() <= res[True].float().mean()


def test_budget_is_asserted() -> None:
    x = torch.full((2, 1, 2, 2), 0.5)
    with pytest.raises(BudgetViolation):
        assert_within_budget(x, x + 0.2, norm="linf", eps=0.1)
    with pytest.raises(BudgetViolation, match="box"):
        assert_within_budget(x, x + 0.6, norm="linf", eps=1.0)
    assert_within_budget(x, project(x, x + 0.2, norm="linf", eps=0.1), norm="linf", eps=0.1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_inside_ball(norm: str) -> None:
    x = torch.rand(64, 1, 5, 5) * 0.5 + 0.25
    xs = random_start(x, norm=norm, eps=0.2, generator=torch.Generator().manual_seed(0))
    assert float(distance(x, xs, norm=norm).max()) <= 0.2 + 1e-6
    assert float(distance(x, xs, norm=norm).min()) > 0


def test_bad_inputs_are_explained(linear_model: nn.Module) -> None:
    x = torch.rand(4, 1, 1, 2)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="divide by 255"):
        pgd(linear_model, x * 255, y, eps=0.1)
    with pytest.raises(ValueError, match="labels of shape"):
        pgd(linear_model, x, y[:2], eps=0.1)
    with pytest.raises(ValueError, match="unknown norm"):
        pgd(linear_model, x, y, eps=0.1, norm="l3")
    with pytest.raises(ValueError):
        pgd(linear_model, x.view(4, 2), y, eps=0.1)
