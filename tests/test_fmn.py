"""Fast Minimum-Norm attack: contract, closed-form minimal distances, strength against PGD."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import eisbench.attacks.fmn  # noqa: F401  (registers "fmn")
from eisbench.attacks import ATTACKS, assert_within_budget, pgd
from eisbench.attacks.fmn import fmn, fmn_min_norm, logit_margin, next_radius
from eisbench.attacks.projection import distance

BUDGETS = {"linf": 0.1, "l2": 0.15}


def _pred(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)  # (B,)


def _weights(model: nn.Module) -> tuple[torch.Tensor, float]:
    lin = model.get_submodule("lin")
    assert isinstance(lin, nn.Linear)
    return lin.weight.detach().view(-1), float(lin.bias.detach())  # (2,), scalar


def _closed_form(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 norm: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Signed margins (N,), minimal distances to the boundary (N,) and ||w||_dual."""
    w, b = _weights(model)
    margin = (2 * y - 1).float() * (x.view(-1, 2) @ w + b)  # (N,)
    dual = float(w.abs().sum()) if norm == "linf" else float(w.norm())
    return margin, margin.clamp_min(0) / dual, dual


def test_logit_margin_by_hand() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    y = torch.tensor([1, 0])
    torch.testing.assert_close(logit_margin(logits, y, False), torch.tensor([1.0, -4.0]))
    torch.testing.assert_close(logit_margin(logits, y, True), torch.tensor([-1.0, 4.0]))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_contract(norm: str, linear_model: nn.Module,
                      mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture
    eps = BUDGETS[norm]
    linear_model.train()
    attack = ATTACKS.get("fmn")
    runs = [attack(linear_model, x, y, eps=eps, norm=norm, steps=30, restarts=2,
                   generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert runs[0].shape == x.shape and runs[0].dtype == x.dtype
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)  # deterministic under a seed
    assert_within_budget(x, runs[0], norm=norm, eps=eps)
    assert float(runs[0].min()) >= 0.0 and float(runs[0].max()) <= 1.0
    assert linear_model.training  # mode restored
    fooled = float((_pred(linear_model, runs[0]) != y).float().mean())
    assert fooled > 0.2


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_min_norm_matches_closed_form_distance(
        norm: str, targeted: bool, linear_model: nn.Module,
        mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture
    margin, d_star, _ = _closed_form(linear_model, x, y, norm)
    labels = 1 - y if targeted else y  # two classes: the target is the other class
    x_best, norms = fmn_min_norm(linear_model, x, labels, norm=norm, steps=100,
                                 targeted=targeted)
    # points whose optimal adversary x - d* * direction stays inside the box
    w, _ = _weights(linear_model)
    direction = w.sign() if norm == "linf" else w / w.norm()  # (2,)
    s = (2 * y - 1).float().view(-1, 1)
    optimum = x.view(-1, 2) - s * direction * d_star.view(-1, 1)  # (N, 2)
    inside = (optimum > 0).all(1) & (optimum < 1).all(1) & (margin > 0)
    assert int(inside.sum()) > 350
    torch.testing.assert_close(norms[inside], d_star[inside], rtol=1e-2, atol=1e-4)
    found = torch.isfinite(norms)
    assert bool(found.all())
    torch.testing.assert_close(norms, distance(x, x_best, norm=norm))
    assert bool((_pred(linear_model, x_best) != y).all())  # every returned point is adversarial


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [0.03, 0.08])
def test_fixed_budget_robust_set_matches_closed_form(
        norm: str, eps: float, linear_model: nn.Module,
        mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture
    margin, _, dual = _closed_form(linear_model, x, y, norm)
    robust_closed_form = margin > eps * dual  # the box is inactive at these budgets
    x_adv = fmn(linear_model, x, y, eps=eps, norm=norm)
    robust_fmn = _pred(linear_model, x_adv) == y
    assert 0.1 < float(robust_closed_form.float().mean()) < 0.99  # both sets non-trivial
    assert int((robust_fmn != robust_closed_form).sum()) <= 2


def test_unbreakable_and_already_wrong_points() -> None:
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[1.0, 0.0]]) + 0 * x.flatten(1)[:, :1]  # (B, 2): always 0

    x = torch.full((2, 1, 2, 2), 0.5)
    y = torch.tensor([0, 1])
    x_best, norms = fmn_min_norm(Constant(), x, y, norm="l2", steps=10)
    assert torch.isinf(norms[0]) and float(norms[1]) == 0.0
    torch.testing.assert_close(x_best, x)
    x_adv = fmn(Constant(), x, y, eps=0.2, norm="l2", steps=10, restarts=2,
                generator=torch.Generator().manual_seed(0))
    assert_within_budget(x, x_adv, norm="l2", eps=0.2)


def test_bad_target_is_explained(linear_model: nn.Module) -> None:
    x = torch.rand(4, 1, 1, 2)
    with pytest.raises(ValueError, match="labels must lie in"):
        fmn(linear_model, x, torch.full((4,), 5), eps=0.1, targeted=True)
    with pytest.raises(ValueError, match="steps"):
        fmn(linear_model, x, torch.zeros(4, dtype=torch.long), eps=0.1, steps=0)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_at_least_as_strong_as_pgd_on_digits(
        norm: str, eps: float, trained_digits_cnn: nn.Module,
        digits_small: tuple[torch.Tensor, ...]) -> None:
    _, _, x, y = digits_small
    x, y = x[:200], y[:200]
    clean = float((_pred(trained_digits_cnn, x) == y).float().mean())
    x_fmn = fmn(trained_digits_cnn, x, y, eps=eps, norm=norm)
    x_pgd = pgd(trained_digits_cnn, x, y, eps=eps, norm=norm,
                generator=torch.Generator().manual_seed(0))
    acc_fmn = float((_pred(trained_digits_cnn, x_fmn) == y).float().mean())
    acc_pgd = float((_pred(trained_digits_cnn, x_pgd) == y).float().mean())
    assert acc_fmn < clean - 0.3
    assert acc_fmn <= acc_pgd + 0.03
    # restarts attack only the points still robust, so they never undo a success
    x_more = fmn(trained_digits_cnn, x, y, eps=eps, norm=norm, restarts=3,
                 generator=torch.Generator().manual_seed(0))
    robust_more = _pred(trained_digits_cnn, x_more) == y
    assert not bool((robust_more & (_pred(trained_digits_cnn, x_fmn) != y)).any())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0)])
def test_targeted_reaches_target_on_digits(
        norm: str, eps: float, trained_digits_cnn: nn.Module,
        digits_small: tuple[torch.Tensor, ...]) -> None:
    _, _, x, y = digits_small
    x, y = x[:200], y[:200]
    target = (y + 1) % 10
    x_adv = fmn(trained_digits_cnn, x, target, eps=eps, norm=norm, targeted=True)
    assert_within_budget(x, x_adv, norm=norm, eps=eps)
    hit = float((_pred(trained_digits_cnn, x_adv) == target).float().mean())
    assert hit > 0.9


class _Seen(nn.Module):
    """logits = [w.x + b, 0] on (B, 1, 2, 2) images; keeps every batch it is called on."""

    def __init__(self, w: tuple[float, ...], b: float) -> None:
        super().__init__()
        self.w, self.b = torch.tensor(w, dtype=torch.float64), b
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        z = x.flatten(1) @ self.w + self.b  # (B,)
        return torch.stack([z, torch.zeros_like(z)], 1)  # (B, 2)


def test_reference_linf_step_by_hand_on_a_linear_model() -> None:
    """Two Linf steps by hand. m = 3 x_1 + x_2 - 1.6 (class 0 vs a zero logit) at x = 0.5
    everywhere: m_0 = 0.4, grad (3, 1, 0, 0), ||g||_1 = 4, ||g||_2 = sqrt(10).
    Step 0: r_0 = 0.4 / 4 = 0.1; alpha_0 = 0.1 (alpha_init); delta = -0.1 g / sqrt(10)
    = (-0.0949, -0.0316, 0, 0), inside the ball. Step 1 of 10: alpha_1 = 0.001 + 0.099 (1 +
    cos(pi / 10)) / 2 = 0.097577; m_1 = 0.083772, r_1 = 0.094868 + m_1 / 4 = 0.115811; the
    step overshoots x_1's radius and is clipped there: x_2 = (0.384189, 0.437521, 0.5, 0.5),
    m_2 = -0.0099 (adversarial). A sign step (this module's earlier Linf rule) gives (0.49, 0.49)
    first; a step scaled by the radius or by the L1 norm misses these numbers."""
    net = _Seen((3.0, 1.0, 0.0, 0.0), -1.6)
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    for recipe in ("guarded", "reference"):
        net.seen.clear()
        x_best, norms = fmn_min_norm(net, x, torch.zeros(1, dtype=torch.long), norm="linf",
                                     steps=10, alpha_init=0.1, recipe=recipe)
        x1 = torch.tensor([0.40513167019494862, 0.46837722339831621, 0.5, 0.5],
                          dtype=torch.float64)
        x2 = torch.tensor([0.38418861169915813, 0.43752057257802910, 0.5, 0.5],
                          dtype=torch.float64)
        torch.testing.assert_close(net.seen[1].flatten(), x1, rtol=0, atol=1e-12)
        torch.testing.assert_close(net.seen[2].flatten(), x2, rtol=0, atol=1e-12)
        assert float(norms[0]) <= 0.11581138830084187 + 1e-12  # x_2 is adversarial: kept
        assert float(net(x_best)[0, 0]) < 0


def test_next_radius_rules_by_hand() -> None:
    """eps 1.0, ||delta|| 0.5, best 0.4, m 0.3, ||g||_dual 2, gamma 0.05, cap 9 (or 0.6)."""
    t = torch.tensor

    def r(adv: bool, seen: bool, recipe: str, worst: float = 9.0, norm_now: float = 0.5,
          margin: float = 0.3) -> float:
        return float(next_radius(t([1.0]), norm_now=t([norm_now]), best_norm=t([0.4]),
                                 margin=t([margin]), grad_dual=t([2.0]), adversarial=t([adv]),
                                 seen=t([seen]), gamma=0.05, worst=t([worst]), recipe=recipe))

    for recipe in ("guarded", "reference"):
        assert r(True, True, recipe) == pytest.approx(0.4)  # min(1.0 * 0.95, best 0.4)
        assert r(True, True, recipe, worst=0.3) == pytest.approx(0.3)  # capped
        assert r(False, True, recipe) == pytest.approx(1.05)  # grows once one was seen
        assert r(False, False, recipe) == pytest.approx(0.65)  # 0.5 + 0.3 / 2
    assert r(True, True, "eisbench-v1") == pytest.approx(0.475)  # min(1.0, 0.5) * 0.95
    # on a tie (m = 0) the reference stays put; the guard grows by gamma
    assert r(False, False, "reference", margin=0.0) == pytest.approx(0.5)
    assert r(False, False, "guarded", margin=0.0) == pytest.approx(0.525)
    with pytest.raises(ValueError, match="recipe must be one of"):
        fmn_min_norm(_Seen((1.0, 0.0, 0.0, 0.0), 0.0), torch.zeros(1, 1, 2, 2).double(),
                     torch.zeros(1, dtype=torch.long), recipe="paper")


def _reference_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str,
                    steps: int) -> list[torch.Tensor]:
    """The reference implementation's loop (untargeted, alpha 1 -> 0.01, gamma 0.05 -> 0.001),
    written out from its description: the points it judges, one per step."""
    p, dual = (math.inf, 1) if norm == "linf" else (2, 2)
    delta = torch.zeros_like(x)
    eps = torch.full((len(x),), math.inf, dtype=x.dtype)
    worst = torch.maximum(x, 1 - x).flatten(1).norm(p=p, dim=1)
    best, found, points = worst.clone(), torch.zeros(len(x), dtype=torch.bool), []
    for i in range(steps):
        c = (1 + math.cos(math.pi * i / steps)) / 2
        alpha, gamma = 0.01 + (1.0 - 0.01) * c, 0.001 + (0.05 - 0.001) * c
        dn = delta.flatten(1).norm(p=p, dim=1)
        xa = (x + delta).requires_grad_(True)
        points.append(xa.detach().clone())
        logits = model(xa)
        other = logits.scatter(1, y[:, None], -math.inf).amax(1)
        loss = -(logits.gather(1, y[:, None])[:, 0] - other)  # ascended
        (grad,) = torch.autograd.grad(loss.sum(), xa)
        adv = logits.argmax(1) != y
        both = adv & (dn < best)
        found |= adv
        best = torch.where(both, dn, best)
        to_b = dn + loss.detach().abs() / grad.flatten(1).norm(p=dual, dim=1).clamp(min=1e-12)
        eps = torch.where(adv, torch.minimum(eps * (1 - gamma), best),
                          torch.where(found, eps * (1 + gamma), to_b))
        eps = torch.minimum(eps, worst)
        delta = delta + alpha * grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1,
                                                                                         1, 1)
        e = eps.view(-1, 1, 1, 1)
        if norm == "linf":
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            delta = delta * (e / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(max=1)
        delta = (x + delta).clamp(0, 1) - x
    return points


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_reference_recipe_judges_the_reference_loops_points(norm: str) -> None:
    """``recipe="reference"`` against the reference's loop written out above, point by point, on
    a small ReLU network (float64) with pixels at the box's faces."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).double()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[:, :, 0] = 0.0
    x[:, :, 1, :2] = 1.0
    y = net(x).argmax(1)
    want = _reference_loop(net, x, y, norm=norm, steps=15)
    rec = _Recorded(net)
    fmn_min_norm(rec, x, y, norm=norm, steps=15, recipe="reference")
    assert len(rec.seen) == 16  # and one more: the last step's point
    for k, (got, ref) in enumerate(zip(rec.seen, want, strict=False)):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10, msg=f"point {k}")
    assert not torch.allclose(want[3], want[4])  # it moves: the comparison is not vacuous


class _Recorded(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []  # type: ignore[var-annotated]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        out: torch.Tensor = self.net(x)
        return out


def test_the_guards_find_what_the_reference_rules_miss(
        linear_model: nn.Module, mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    """On a linear model the first step lands on a tie of the logits (the linear estimate is
    exact) and the reference's radius stays there; the guarded rules find every point."""
    x, y = mixture
    for norm in ("linf", "l2"):
        _, ref = fmn_min_norm(linear_model, x, y, norm=norm, steps=100, recipe="reference")
        _, grd = fmn_min_norm(linear_model, x, y, norm=norm, steps=100)
        assert bool(torch.isfinite(grd).all())
        assert int(torch.isinf(ref).sum()) > 20
