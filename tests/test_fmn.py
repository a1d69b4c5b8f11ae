"""Fast Minimum-Norm attack: contract, closed-form minimal distances, strength against PGD."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eisbench.attacks.fmn  # noqa: F401  (registers "fmn")
from eisbench.attacks import ATTACKS, assert_within_budget, pgd
from eisbench.attacks.fmn import fmn, fmn_min_norm, logit_margin
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
