"""APGD and APGD-T: closed-form optimum, the DLR loss, step-size checkpoints, strength vs PGD."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eisbench.attacks import apgd, apgd_t, dlr_loss, pgd
from eisbench.attacks.apgd import checkpoints, dlr_targeted_loss


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_checkpoints_follow_the_paper() -> None:
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020, Sec. 3.2)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]


def test_dlr_by_hand_and_invariances() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -2.0]])
    y = torch.tensor([0, 0])
    # row 0: -(3 - 1) / (3 - 0); row 1 (y not on top): -(0 - 2) / (2 - 0)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-2 / 3, 1.0]))
    torch.testing.assert_close(dlr_loss(5 * z + 7, y), dlr_loss(z, y))
    t = torch.tensor([2, 1])
    # row 0: -(3 - 0) / (3 - (0 - 1) / 2); row 1: -(0 - 2) / (2 - (0 - 2) / 2)
    torch.testing.assert_close(dlr_targeted_loss(z, y, t), torch.tensor([-3 / 3.5, 2 / 3]))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_matches_closed_form_optimum_on_linear_model(
        norm: str, linear_model: nn.Module, mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture
    eps = 0.05
    params = dict(linear_model.named_parameters())
    w, b = params["lin.weight"].detach().view(-1), float(params["lin.bias"].detach())
    margin = (2 * y - 1).float() * (x.view(-1, 2) @ w + b)  # (N,)
    dual = float(w.abs().sum()) if norm == "linf" else float(w.norm())
    robust_closed_form = margin > eps * dual
    x_adv = apgd(linear_model, x, y, eps=eps, norm=norm, steps=20,
                 generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        robust = linear_model(x_adv).argmax(1) == y
    assert torch.equal(robust, robust_closed_form)


def test_apgd_at_least_as_strong_as_pgd_on_a_cnn(trained_digits_cnn: nn.Module,
                                                 digits_small: tuple[torch.Tensor, ...]) -> None:
    _, _, xt, yt = digits_small
    x, y, net = xt[:200], yt[:200], trained_digits_cnn
    g = torch.Generator().manual_seed(0)
    a_pgd = _acc(net, pgd(net, x, y, eps=0.1, steps=20, generator=g), y)
    a_ce = _acc(net, apgd(net, x, y, eps=0.1, steps=20, generator=g), y)
    a_dlr = _acc(net, apgd(net, x, y, eps=0.1, steps=20, loss="dlr", generator=g), y)
    a_t = _acc(net, apgd_t(net, x, y, eps=0.1, steps=20, n_targets=3, generator=g), y)
    clean = _acc(net, x, y)
    assert max(a_ce, a_dlr, a_t) < clean - 0.3
    assert a_ce <= a_pgd + 0.02 and a_t <= a_pgd + 0.02


def test_targeted_dlr_needs_four_classes(linear_model: nn.Module,
                                         mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture
    with pytest.raises(ValueError, match="at least 4 classes"):
        apgd_t(linear_model, x, y, eps=0.1)
    with pytest.raises(ValueError, match="at least 3 classes"):
        apgd(linear_model, x, y, eps=0.1, loss="dlr")
    with pytest.raises(ValueError, match="loss must be one of ce, dlr"):
        apgd(linear_model, x, y, eps=0.1, loss="hinge")


def test_restarts_only_add_successes(trained_digits_cnn: nn.Module,
                                     digits_small: tuple[torch.Tensor, ...]) -> None:
    _, _, xt, yt = digits_small
    x, y, net = xt[:200], yt[:200], trained_digits_cnn
    one = apgd(net, x, y, eps=0.05, steps=10, generator=torch.Generator().manual_seed(1))
    three = apgd(net, x, y, eps=0.05, steps=10, restarts=3,
                 generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        broken_one = net(one).argmax(1) != y
        broken_three = net(three).argmax(1) != y
    assert bool((broken_three | ~broken_one).all())  # what one run broke stays broken
    assert int(broken_three.sum()) >= int(broken_one.sum())
