"""Plausible wrong versions of the attacks that the other attack tests let through: PGD's default
step, its success flags on a targeted run, APGD-T's number and order of targets, the messages of
its class checks, FMN's step in Linf (and its earlier one), its default, the budget it is given
and the end of its step-size schedule, Square's L2 start, and any tensor made inside an attack
that falls back to float32 on float64 inputs."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from mutants_attacks_helpers import _g, _Recorder, apgd_mod, fmn_mod, pgd_mod, square_mod
from torch import nn

from eisbench.attacks.core import ATTACKS
from eisbench.attacks.projection import distance, linf_bounds


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


def test_fmn_linf_step_is_alpha_times_the_l2_normalised_gradient_and_alpha_starts_at_one(
        ) -> None:
    """One Linf step by hand from x: radius r = the linear estimate of the distance to the
    boundary, |margin| / ||grad||_1 (at most the farthest box corner); the step is
    alpha g / ||g||_2 with alpha 1 (the reference implementation's, for every norm), then
    clipped to the r-ball. Under ``eisbench-v1`` it was alpha r sign(g) with alpha 0.5."""
    net = _linear(3)
    y = net(X).argmax(1)  # correctly classified: the first radius is the linear estimate
    xa = X.clone().requires_grad_(True)
    m = fmn_mod.logit_margin(net(xa), y, False)
    (g,) = torch.autograd.grad(m.sum(), xa)
    worst = distance(X, (X <= 0.5).to(X.dtype), norm="linf")
    r = torch.minimum(m.detach().abs() / g.flatten(1).abs().sum(1), worst).view(-1, 1, 1, 1)
    unit = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (B, 1, 4, 4)
    wants = {"guarded": (X - torch.minimum(torch.maximum(1.0 * unit, -r), r)).clamp(0, 1),
             "eisbench-v1": (X - 0.5 * r * g.sign()).clamp(0, 1)}
    assert not torch.allclose(wants["guarded"], wants["eisbench-v1"], atol=1e-3)
    for recipe, want in wants.items():
        alphas = (None, 1.0) if recipe == "guarded" else (None, 0.5)
        for alpha_init in alphas:
            _, _, x_in, m_in = fmn_mod._run(net, X, y, torch.zeros_like(X), norm="linf",
                                            steps=1, targeted=False, alpha_init=alpha_init,
                                            budget=10.0, recipe=recipe)
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


# float64 all the way: a float64 model refuses float32 input, so a tensor made inside an attack
# without the input's dtype either raises there, comes back as float32 or shows in the values
X64 = X.double()


def _few(name: str) -> dict[str, Any]:
    """The cheapest run of attack ``name`` that still takes its restart and early-exit paths."""
    few = {"steps": 3, "n_queries": 30, "restarts": 2, "early_exit": True}
    return {k: v for k, v in few.items() if k in ATTACKS.meta(name)["params"]}


@pytest.mark.parametrize(("name", "norm"), [(n, norm) for n in ATTACKS.names()
                                            for norm in ATTACKS.meta(n)["norms"]])
def test_every_attack_keeps_float64_inputs_in_float64(name: str, norm: str) -> None:
    net = _linear(4).double()
    y = net(X64).argmax(1)
    eps = {"linf": 0.1, "l2": 0.3}[norm]
    x_adv = ATTACKS.get(name)(net, X64, y, eps=eps, norm=norm, generator=_g(1), **_few(name))
    assert x_adv.dtype == torch.float64
    assert float(distance(X64, x_adv, norm=norm).max()) <= eps * (1 + 1e-12)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool((net(x_adv).argmax(1) != y).any())  # the attack got somewhere: not a no-op


def test_square_linf_puts_every_pixel_at_exactly_x_plus_or_minus_eps() -> None:
    """Square's Linf search runs over the vertices of the ball, in the input's precision. 0.03
    is not a float32 number (float32 rounds it down), so a step of float32 eps would leave
    pixels strictly inside the ball."""
    eps = 0.03
    assert torch.tensor(eps).item() < eps
    net = _linear(4).double()
    y = net(X64).argmax(1)
    x_adv = square_mod.square(net, X64, y, eps=eps, norm="linf", n_queries=20, generator=_g(1))
    lo, hi = linf_bounds(X64, eps)  # X lies in [0.2, 0.8]: nothing clipped by the box
    assert bool(((x_adv == lo) | (x_adv == hi)).all())


def test_fmn_norms_and_margins_are_those_of_its_points_in_float64() -> None:
    net = _linear(3).double()
    y = net(X64).argmax(1)
    x_best, norms = fmn_mod.fmn_min_norm(net, X64, y, norm="l2", steps=10)
    found = norms.isfinite()
    assert norms.dtype == torch.float64 and bool(found.any())
    torch.testing.assert_close(norms[found], distance(X64, x_best, norm="l2")[found],
                               rtol=1e-12, atol=0)
    _, _, x_in, m_in = fmn_mod._run(net, X64, y, torch.zeros_like(X64), norm="l2", steps=5,
                                    targeted=False, alpha_init=None, budget=0.05)
    assert m_in.dtype == torch.float64
    torch.testing.assert_close(m_in, fmn_mod.logit_margin(net(x_in), y, False), rtol=1e-12,
                               atol=0)


def test_fmn_l2_steps_follow_the_cosine_schedule_down_to_a_hundredth_of_alpha_init() -> None:
    """Pintor et al. 2021 (and their reference implementation) anneal the L2 step from
    alpha_init to alpha_init / 100: alpha_k = a/100 + (a - a/100) (1 + cos(pi k / N)) / 2.

    Linear 2-class model, margin 0.25 * sum(x) - 1.5 = 0.5 at x = 0.5 and gradient 1/4 in each of
    16 pixels (norm 1): the boundary is 0.5 away, farther than all steps together (about 0.39),
    and the box's faces farther still, so neither the ball nor the box cuts a step, and step k
    moves every pixel by -alpha_k / 4."""
    lin = nn.Linear(16, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.full((16,), 0.25), torch.zeros(16)]))
        lin.bias.copy_(torch.tensor([-1.5, 0.0]))
    net = _Recorder(nn.Sequential(nn.Flatten(), lin))
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    a, n = 0.015, 50
    fmn_mod.fmn_min_norm(net, x, torch.zeros(1, dtype=torch.long), norm="l2", steps=n,
                         alpha_init=a)
    xs = torch.cat(net.seen)  # (n + 1, 1, 4, 4): the iterates, x first
    want = torch.tensor([a / 100 + (a - a / 100) * (1 + math.cos(math.pi * k / n)) / 2
                         for k in range(n)], dtype=torch.float64)  # (n,)
    assert math.isclose(want[0], a) and math.isclose(want[n // 2], (a + a / 100) / 2)
    assert a / 100 < want[-1] < 1.1 * a / 100  # the last step is nearly the final alpha
    torch.testing.assert_close(xs[1:] - xs[:-1], (-want / 4).view(-1, 1, 1, 1).expand(n, 1, 4, 4),
                               rtol=1e-9, atol=0)


def _eta_rectangles(rows: int, cols: int) -> torch.Tensor:
    """``eta_rectangles`` of fra31/auto-attack's square.py (L2): boxes k = 0, 1, ... of half-width
    k around (rows // 2, cols // 2), box k adding 1 / (k + 1)^2, then unit norm."""
    d = torch.zeros(rows, cols, dtype=torch.float64)
    r, c = rows // 2, cols // 2
    for k in range(max(r, c) + 1):
        d[max(r - k, 0):r + k + 1, max(c - k, 0):c + k + 1] += 1.0 / (k + 1) ** 2
    return d / d.norm()


def test_square_window_pattern_is_the_reference_pair_of_bumps() -> None:
    """fra31's ``eta(s)``: the top s // 2 rows a bump, the rest minus a bump, unit norm,
    transposed at random; to float64 precision."""
    for s in range(1, 9):
        pair = torch.cat([_eta_rectangles(s // 2, s), -_eta_rectangles(s - s // 2, s)])
        want = pair / pair.norm()  # (s, s)
        pat = square_mod._window_pattern(s, X64, _g(s))
        assert pat.dtype == torch.float64
        if not torch.allclose(pat, want, rtol=0, atol=1e-6):
            want = want.t()  # drawn transposed
        torch.testing.assert_close(pat, want, rtol=1e-12, atol=1e-15, msg=f"s={s}")


def test_square_l2_start_is_the_grid_of_signed_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Square's L2 start (Andriushchenko et al. 2020; fra31's square.py): tiles of side
    s = h // 5 from (h - 5 s) // 2 on, h // s per axis, each a window pattern times a random sign
    per example and channel, all rescaled to norm eps. The patterns and signs are recorded as
    drawn, so the test pins how they are placed and combined, not the random numbers."""
    pats: list[torch.Tensor] = []
    signs: list[torch.Tensor] = []
    pattern, sign = square_mod._window_pattern, square_mod._signs

    def record_pattern(*args: Any) -> torch.Tensor:
        pats.append(pattern(*args))
        return pats[-1]

    def record_sign(*args: Any) -> torch.Tensor:
        signs.append(sign(*args))
        return signs[-1]

    monkeypatch.setattr(square_mod, "_window_pattern", record_pattern)
    monkeypatch.setattr(square_mod, "_signs", record_sign)
    x = torch.full((3, 2, 17, 17), 0.5, dtype=torch.float64)  # s = 3, tiles from 1 to 16
    eps = 0.5
    x0 = square_mod._init_l2(x, eps, _g(0))
    assert len(pats) == len(signs) == 25
    assert all(p.shape == (3, 3) for p in pats) and all(t.shape == (3, 2, 1, 1) for t in signs)
    assert {-1.0, 1.0} == set(torch.cat([t.flatten() for t in signs]).tolist())
    want = torch.zeros_like(x)  # (3, 2, 17, 17)
    for t, (i, j) in enumerate(itertools.product(range(5), repeat=2)):
        want[:, :, 1 + 3 * i:4 + 3 * i, 1 + 3 * j:4 + 3 * j] += pats[t] * signs[t]
    want = eps * want / want.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(x0 - x, want, rtol=1e-12, atol=1e-15)


def test_check_inputs_without_an_attack_leaves_hypers_unchecked() -> None:
    """Callers with no registered attack (the evaluation suite, FMN's min-norm search) pass
    hyper-parameters no registry entry declares: only the inputs are checked then."""
    from eisbench.attacks.core import check_inputs

    y = torch.zeros(len(X), dtype=torch.long)
    check_inputs(X, y, norm="linf", eps=0.1, steps=-3, anything="goes")
    with pytest.raises(ValueError, match="labels of shape"):
        check_inputs(X, y[:2], norm="linf", eps=0.1, steps=5)


@pytest.mark.parametrize(("name", "key"), [(n, k) for n in ATTACKS.names()
                                           for k, h in ATTACKS.meta(n)["params"].items()
                                           if h.type is float and h.hi is not None])
def test_a_float_hyper_above_its_declared_range_is_refused(name: str, key: str) -> None:
    """Fractions stay fractions (APGD's momentum and rho, Square's p_init): a momentum of 1.5
    would step against the gradient's history, a window of 150% of the image is no window."""
    h = ATTACKS.meta(name)["params"][key]
    net = _linear(4)
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number .*got {h.hi + 0.5}"):
        ATTACKS.get(name)(net, X, net(X).argmax(1), eps=0.1, **{key: h.hi + 0.5})
    ATTACKS.get(name)(net, X, net(X).argmax(1), eps=0.1, **{**_few(name), key: h.hi})  # edge


def test_errors_name_the_values_that_are_wrong() -> None:
    from eisbench.attacks import invert_representation
    from eisbench.attacks.projection import BudgetViolation, assert_within_budget

    net = _linear(4)
    with pytest.raises(ValueError, match=r"^x_start \(6, 1, 4, 4\) and target \(5, 1, 4, 4\) "
                                         r"differ$"):
        invert_representation(net, X, X[:5], steps=1)
    with pytest.raises(ValueError, match=r"^loss must be one of ce, dlr, got 'cw'$"):
        apgd_mod.apgd(net, X, net(X).argmax(1), eps=0.1, loss="cw")
    with pytest.raises(BudgetViolation, match=r"^linf distance 0\.25 exceeds eps=0\.1$"):
        assert_within_budget(X, X + 0.25, norm="linf", eps=0.1)
    with pytest.raises(BudgetViolation, match=r"^l2 distance 1 exceeds eps=0\.5$"):
        assert_within_budget(X, X + 0.25, norm="l2", eps=0.5)  # 16 pixels of 0.25
