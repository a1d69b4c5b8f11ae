"""Plausible wrong versions of what the attacks promise around their loops that the other attack
tests let through: declared integer ranges, default step counts and schedules (representation
inversion, FMN), the evaluation's description and batching, the last example left to Square and
to PGD's early exit, what early exit saves, pass-count arithmetic, random starts' device."""

from __future__ import annotations

import math

import pytest
import torch
from mutants_attacks_helpers import _g, fmn_mod, pgd_mod, square_mod
from torch import nn

from eisbench.attacks import AttackConfig, Passes, count_passes, invert_representation
from eisbench.attacks.core import Hyper, _check_hyper
from eisbench.attacks.evaluate import correct_under_attack
from eisbench.attacks.projection import random_start


class _SumAbove(nn.Module):
    """Two classes on (B, 1, 2, 2): logits ``[0, sum(x) - 2]``. Label 0 holds while the four
    pixels sum to less than 2; each Linf step of size s towards class 1 adds 4 s to the sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).sum(1, keepdim=True) - 2.0  # (B, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)  # (B, 2)


def _grey(*sums: float) -> torch.Tensor:
    """One flat (1, 2, 2) image per pixel sum."""
    return torch.tensor(sums).view(-1, 1, 1, 1).expand(-1, 1, 2, 2) / 4


ZERO = torch.zeros(8, dtype=torch.long)


def test_an_int_hyper_above_its_declared_range_is_refused() -> None:
    """An attack that declares an integer range (e.g. at most as many targets as classes) has
    it enforced at both ends, the ends themselves allowed."""
    h = Hyper(3, int, "targets tried", lo=1, hi=5)
    with pytest.raises(ValueError, match=r"^n_targets must be an integer .*got 6$"):
        _check_hyper("n_targets", 6, h)
    with pytest.raises(ValueError, match=r"^n_targets must be an integer .*got 0$"):
        _check_hyper("n_targets", 0, h)
    _check_hyper("n_targets", 5, h)
    _check_hyper("n_targets", 1, h)


class _Pixels(nn.Module):
    """A representation that is the image itself."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2]


def test_inversion_defaults_to_100_adam_steps_on_a_cosine_from_the_step_size_to_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The learning rate of step k is ``step_size * (1 + cos(pi k / steps)) / 2``: the peak at
    the first step, half of it midway, almost nothing at the last."""
    lrs: list[float] = []
    step = torch.optim.Adam.step

    def recording_step(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        lrs.append(float(self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    start, target = torch.full((1, 1, 2, 2), 0.2), torch.full((1, 1, 2, 2), 0.7)
    invert_representation(_Pixels(), start, target)
    assert len(lrs) == 100
    want = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 100)) for k in range(100)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert (lrs[0], lrs[50]) == pytest.approx((0.1, 0.05))
    lrs.clear()
    invert_representation(_Pixels(), start, target, steps=4, step_size=0.3)
    assert lrs == pytest.approx([0.3, 0.15 * (1 + math.sqrt(0.5)), 0.15,
                                 0.15 * (1 - math.sqrt(0.5))], rel=1e-12)


def test_fmn_min_norm_defaults_to_100_steps_of_one_gradient_each() -> None:
    """100 steps: 101 points judged (the start and each step's) and 100 gradients per example,
    whatever it finds on the way (without a budget nothing stops early)."""
    net, x = _SumAbove(), _grey(1.9, 1.0, 0.4)
    with count_passes(net) as p:
        fmn_mod.fmn_min_norm(net, x, ZERO[:3])
    assert (p.forward, p.backward) == (101 * 3, 100 * 3)
    with count_passes(net) as p:
        fmn_mod.fmn_min_norm(net, x, ZERO[:3], steps=7)
    assert (p.forward, p.backward) == (8 * 3, 7 * 3)


def test_an_attack_config_describes_its_default_step_as_two_and_a_half_eps_over_steps() -> None:
    assert AttackConfig(name="pgd", eps=0.3, steps=50).describe() == \
        "PGD-50 linf eps=0.3 step=0.015 restarts=1"
    assert AttackConfig(name="pgd", eps=0.5, steps=10, step_size=0.2, norm="l2",
                        restarts=3).describe() == "PGD-10 l2 eps=0.5 step=0.2 restarts=3"


def test_correct_under_attack_judges_every_example_in_order_batch_by_batch() -> None:
    """Five examples in batches of two: the first (sum 1.8, one FGSM step of 0.1 adds 0.4) is
    fooled, the others (sum 1.0) are not; one result per example, the first one included."""
    net, x = _SumAbove(), _grey(1.8, 1.0, 1.0, 1.0, 1.0)
    got = correct_under_attack(net, x, ZERO[:5], AttackConfig(name="fgsm", eps=0.1),
                               batch_size=2)
    assert got.tolist() == [False, True, True, True, True]
    got = correct_under_attack(net, x.flip(0), ZERO[:5], AttackConfig(name="fgsm", eps=0.1),
                               batch_size=2)
    assert got.tolist() == [True, True, True, True, False]


class _AwayFromGrey(nn.Module):
    """Two classes: logits ``[0, sum |x - 0.5| - 0.1]``: mid-grey is class 0, and any point of
    the Linf ball of 0.1 with every pixel at +-eps (Square's points) is class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - 0.5).abs().flatten(1).sum(1, keepdim=True) - 0.1  # (B, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)  # (B, 2)


def test_square_attacks_a_single_correctly_classified_example() -> None:
    net, x = _AwayFromGrey(), torch.full((1, 1, 2, 2), 0.5)
    assert int(net(x).argmax(1)) == 0
    x_adv = square_mod.square(net, x, ZERO[:1], eps=0.1, norm="linf", n_queries=5,
                              generator=_g(0))
    assert int(net(x_adv).argmax(1)) == 1


def test_pgd_early_exit_keeps_attacking_the_last_example_left() -> None:
    """Steps of 0.05 (sum +0.2 each): the first example is fooled after one step and dropped;
    the second needs four, and still gets them once it is the only one left."""
    net, x = _SumAbove(), _grey(1.9, 1.3)
    x_adv = pgd_mod.pgd(net, x, ZERO[:2], eps=0.3, step_size=0.05, steps=10, early_exit=True,
                        random_start=False)
    assert net(x_adv).argmax(1).tolist() == [1, 1]
    torch.testing.assert_close(x_adv.flatten(1).sum(1), torch.tensor([2.1, 2.1]))


def test_pgd_early_exit_stops_attacking_the_fooled() -> None:
    """Eight examples all fooled by the first step: with early exit a gradient at the start and
    one at the fooled point (which is judged there), not ten steps and a judging forward."""
    net, x = _SumAbove(), _grey(*[1.9] * 8)
    with count_passes(net) as p:
        early = pgd_mod.pgd(net, x, ZERO, eps=0.3, step_size=0.05, steps=10, early_exit=True,
                            random_start=False)
    assert (p.forward, p.backward) == (2 * 8, 2 * 8)
    torch.testing.assert_close(early.flatten(1).sum(1), torch.full((8,), 2.1))  # first fooled
    with count_passes(net) as p:
        pgd_mod.pgd(net, x, ZERO, eps=0.3, step_size=0.05, steps=10, early_exit=False,
                    random_start=False)
    assert (p.forward, p.backward) == (11 * 8, 10 * 8)


def test_passes_add_and_subtract_each_count() -> None:
    """Totals of several counters (a suite's attacks) and the part of a count after a mark."""
    a, b = Passes(forward=30, backward=20), Passes(forward=7, backward=5)
    assert a + b == Passes(37, 25)
    assert a - b == Passes(23, 15)
    assert (a + b) - b == a


def test_a_model_with_a_scalar_output_counts_one_example_each_way() -> None:
    """A module that returns a 0-dim tensor (a loss, an energy) has no batch dimension: one
    forward and one backward example per call, not more."""

    class Energy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x ** 2).sum()

    net, x = Energy(), torch.rand(5, 3, requires_grad=True)
    with count_passes(net) as p:
        net(x).backward()
        with torch.no_grad():
            net(x)
    assert (p.forward, p.backward) == (2, 1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_made_on_the_inputs_device(norm: str) -> None:
    """The L2 start scales random directions by random radii: radii left on the CPU would not
    combine with images on a GPU. The meta device stands in for one."""
    x = torch.empty(2, 3, 4, 4, device="meta")
    assert random_start(x, norm=norm, eps=0.3, generator=_g(0)).device == x.device


def test_correct_under_attack_on_no_examples_is_an_empty_bool_vector() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    out = correct_under_attack(net, torch.rand(0, 1, 2, 2), torch.zeros(0, dtype=torch.long),
                               AttackConfig(name="pgd", eps=0.1, steps=2))
    assert out.dtype == torch.bool and out.shape == (0,)
