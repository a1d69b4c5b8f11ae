"""Capability ablation on a hand-built model whose class units are known: every selector but
random finds them, ablating them removes exactly their class; contract tests over the
registry of unit selectors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eisbench.edit.ablation import (
    UNIT_SELECTORS,
    ablation_effects,
    per_class_accuracy,
    selector_names,
    top_ablation_units,
)
from eisbench.models.architectures import Classifier
from eisbench.tools.guard import hook_count

K = 4  # classes; units 2c and 2c+1 carry class c


class TwoUnitsPerClass(Classifier):
    """(B, 1, 1, K) -> penultimate ReLU units (B, 2K), unit 2c = 2c+1 = input c; logit c =
    the sum of its two units. Zeroing both units of class c silences its logit."""

    def __init__(self) -> None:
        super().__init__()
        lin = nn.Linear(K, 2 * K)
        head = nn.Linear(2 * K, K)
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.zero_()
            head.weight.zero_()
            head.bias.zero_()
            for c in range(K):
                lin.weight[2 * c, c] = lin.weight[2 * c + 1, c] = 1.0
                head.weight[c, 2 * c] = head.weight[c, 2 * c + 1] = 1.0
        self.body = nn.Sequential(nn.Flatten(), lin, nn.ReLU())
        self.head = head


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = 0.8 * nn.functional.one_hot(y, K).float() + 0.15 * torch.rand(n, K, generator=g)
    return x.view(n, 1, 1, K), y


def test_every_tool_but_random_finds_the_class_units_and_ablation_is_selective() -> None:
    net = TwoUnitsPerClass().eval()
    x, y = _data(200, 0)
    xt, yt = _data(400, 1)
    truth = torch.tensor([[2 * c, 2 * c + 1] for c in range(K)])
    for name in selector_names():
        scores = UNIT_SELECTORS.get(name)(net, "penultimate", x, y, num_classes=K,
                                          generator=torch.Generator().manual_seed(0))
        assert scores.shape == (K, 2 * K) and torch.isfinite(scores).all(), name
        units = top_ablation_units(scores, k=2)
        if name == "random":
            continue
        assert torch.equal(units.sort(1).values, truth), (name, units)
        eff = ablation_effects(net, "penultimate", units, xt, yt)
        assert eff.acc_before == [1.0] * K
        torch.testing.assert_close(torch.tensor(eff.class_drop), torch.ones(K))
        torch.testing.assert_close(torch.tensor(eff.other_drop), torch.zeros(K))
        torch.testing.assert_close(torch.tensor(eff.selectivity), torch.ones(K))
    # units of the wrong class: the class holds and another one falls
    shifted = (truth + 2) % (2 * K)
    eff = ablation_effects(net, "penultimate", shifted, xt, yt)
    assert max(eff.selectivity) < 0
    assert hook_count(net) == 0


@pytest.mark.parametrize("name", selector_names())
def test_selector_contract(name: str, trained_digits_cnn: nn.Module,
                           digits_small: tuple[torch.Tensor, ...]) -> None:
    net = trained_digits_cnn
    x, y = digits_small[0][:300], digits_small[1][:300]
    net.zero_grad(set_to_none=True)
    net.train()
    for layer, units in (("penultimate", 100), ("last-conv", 32)):
        run = [UNIT_SELECTORS.get(name)(net, layer, x, y, num_classes=10,
                                        generator=torch.Generator().manual_seed(1))
               for _ in range(2)]
        assert run[0].shape == (10, units) and torch.isfinite(run[0]).all()
        torch.testing.assert_close(run[0], run[1])  # same seed, same scores
    assert net.training and hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())
    net.eval()  # safe: nn.Module.eval (mode switch); the fixture is shared


def test_helpers_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be"):
        top_ablation_units(torch.rand(3, 5), k=6)
    with pytest.raises(KeyError, match="did you mean"):
        selector_names(["conductanse"])
    acc = per_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3)
    assert acc[:2].tolist() == [0.5, 1.0] and acc[2].isnan()
    with pytest.raises(ValueError, match="no selection image of class 1"):
        UNIT_SELECTORS.get("conductance")(TwoUnitsPerClass(), "penultimate",
                                          *_data(12, 0)[:1], torch.zeros(12, dtype=torch.long),
                                          num_classes=K, generator=torch.Generator())
