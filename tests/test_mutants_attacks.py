"""Plausible wrong versions of the attacks that the other attack tests let through: PGD's default
step, its success flags on a targeted run, APGD-T's number and order of targets, the messages of
its class checks, and FMN's step size in Linf, its default, and the budget it is given."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from torch import nn

from eisbench.attacks.projection import distance

# the modules (the package re-exports functions of the same names)
apgd_mod = importlib.import_module("eisbench.attacks.apgd")
fmn_mod = importlib.import_module("eisbench.attacks.fmn")
pgd_mod = importlib.import_module("eisbench.attacks.pgd")


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear(k: int, *, seed: int = 0, d: int = 16) -> nn.Module:
    """A linear classifier of (B, 1, 4, 4) images with ``k`` classes."""
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=_g(seed)))
        lin.bias.copy_(torch.randn(k, generator=_g(seed + 1)))
    return nn.Sequential(nn.Flatten(), lin).eval()


X = 0.2 + 0.6 * torch.rand(6, 1, 4, 4, generator=_g(3))  # away from the box's faces


def test_pgd_default_step_is_two_and_a_half_eps_over_steps() -> None:
    net = _linear(3)
    y = net(X).argmax(1)
    got = pgd_mod.pgd(net, X, y, eps=0.1, steps=5, generator=_g(1))
    want = pgd_mod.pgd(net, X, y, eps=0.1, steps=5, step_size=2.5 * 0.1 / 5, generator=_g(1))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    other = pgd_mod.pgd(net, X, y, eps=0.1, steps=5, step_size=0.1, generator=_g(1))
    assert not torch.equal(got, other)  # the step matters here


def test_pgd_run_flags_targeted_success_as_reaching_the_target() -> None:
    net = _linear(3)
    t = (net(X).argmax(1) + 1) % 3  # a target other than the prediction
    x_adv, ok = pgd_mod._run(net, X, t, eps=1.0, step_size=0.2, steps=20, norm="linf",
                             targeted=True, rand_init=False, early_exit=False, generator=None)
    reached = net(x_adv).argmax(1) == t
    assert bool(reached.any()), "the test needs some targets reached"
    assert torch.equal(ok, reached)


def test_apgd_t_tries_every_other_class_in_the_order_of_the_clean_logits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net = _linear(5)
    y = net(X).argmax(1)
    calls: list[torch.Tensor] = []

    def spy(model: nn.Module, x: torch.Tensor, yy: torch.Tensor, t: torch.Tensor,
            **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(t.clone())
        return x.clone(), torch.zeros(len(x), dtype=torch.bool)  # never fooled: every target

    monkeypatch.setattr(apgd_mod, "_run", spy)
    apgd_mod.apgd_t(net, X, y, eps=0.1, steps=2)  # n_targets 9 > K - 1 = 4
    order = net(X).sort(1, descending=True).indices[:, 1:]  # (B, 4): y is first
    assert len(calls) == 4
    for j, t in enumerate(calls):
        assert torch.equal(t, order[:, j]), j
    calls.clear()
    apgd_mod.apgd_t(net, X, y, eps=0.1, steps=2, n_targets=2)
    assert len(calls) == 2


def test_dlr_losses_name_what_needs_more_classes() -> None:
    net = _linear(2)
    y = net(X).argmax(1)
    with pytest.raises(ValueError, match="^the DLR loss needs at least 3 classes, the model has "
                                         "2: use apgd with loss='ce' instead$"):
        apgd_mod.apgd(net, X, y, eps=0.1, loss="dlr")
    with pytest.raises(ValueError, match="^the targeted DLR loss needs at least 4 classes"):
        apgd_mod.apgd_t(_linear(3), X, _linear(3)(X).argmax(1), eps=0.1)


def test_fmn_linf_step_is_alpha_times_the_radius_and_alpha_starts_at_half() -> None:
    """One Linf step by hand from x: radius r = the linear estimate of the distance to the
    boundary, |margin| / ||grad||_1 (at most the farthest box corner); the step is
    alpha r sign(grad) with alpha 0.5 (then clipped to the r-ball: a no-op here)."""
    net = _linear(3)
    y = net(X).argmax(1)  # correctly classified: the first radius is the linear estimate
    xa = X.clone().requires_grad_(True)
    m = fmn_mod.logit_margin(net(xa), y, False)
    (g,) = torch.autograd.grad(m.sum(), xa)
    worst = distance(X, (X <= 0.5).to(X.dtype), norm="linf")
    r = torch.minimum(m.detach().abs() / g.flatten(1).abs().sum(1), worst)  # (B,)
    want = (X - 0.5 * r.view(-1, 1, 1, 1) * g.sign()).clamp(0, 1)
    for alpha_init in (None, 0.5):
        _, _, x_in, m_in = fmn_mod._run(net, X, y, torch.zeros_like(X), norm="linf", steps=1,
                                        targeted=False, alpha_init=alpha_init, budget=10.0)
        assert bool((m_in < m.detach()).all())  # the step lowered every margin: x_in is it
        torch.testing.assert_close(x_in, want, rtol=1e-5, atol=1e-6)


def test_fmn_gives_its_run_the_budget_eps(monkeypatch: pytest.MonkeyPatch) -> None:
    budgets: list[float | None] = []
    run = fmn_mod._run

    def spy(*args: Any, **kw: Any) -> Any:
        budgets.append(kw["budget"])
        return run(*args, **kw)

    monkeypatch.setattr(fmn_mod, "_run", spy)
    net = _linear(3)
    fmn_mod.fmn(net, X, net(X).argmax(1), eps=0.05, steps=3, generator=_g())
    assert budgets and all(b == 0.05 for b in budgets)


def test_declared_hypers_names_a_type_clash(monkeypatch: pytest.MonkeyPatch) -> None:
    from eisbench.attacks.core import ATTACKS, Hyper, declared_hypers

    meta = dict(ATTACKS.meta("pgd"))
    meta["params"] = {"steps": Hyper(1.0, float, "steps as a float", lo=0.0)}
    monkeypatch.setitem(ATTACKS._meta, "zz-clash", meta)  # last by name: "steps" seen as int
    monkeypatch.setitem(ATTACKS._items, "zz-clash", ATTACKS.get("pgd"))
    with pytest.raises(TypeError, match="^attack 'zz-clash' declares 'steps' as float, another "
                                        "attack as int$"):
        declared_hypers()
