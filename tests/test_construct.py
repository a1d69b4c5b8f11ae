from __future__ import annotations

import pytest
import torch
from torch import nn

from eisbench.attacks import representation_distance
from eisbench.construct import CONSTRUCTIONS, representation_dataset, wrong_label_dataset
from eisbench.construct.representation import derangement
from eisbench.construct.wrong_label import pick_targets


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_has_no_fixed_point(n: int) -> None:
    for seed in range(20):
        p = derangement(n, generator=torch.Generator().manual_seed(seed))
        assert sorted(p.tolist()) == list(range(n))
        assert not (p == torch.arange(n)).any()


def test_targets() -> None:
    y = torch.arange(10).repeat(50)
    g = torch.Generator().manual_seed(0)
    t = pick_targets(y, num_classes=10, mode="random", generator=g)
    assert not (t == y).any() and set(t.tolist()) == set(range(10))
    torch.testing.assert_close(pick_targets(y, num_classes=10, mode="det", generator=g),
                               (y + 1) % 10)
    with pytest.raises(ValueError, match="unknown target mode"):
        pick_targets(y, num_classes=10, mode="nope", generator=g)


def test_representation_inversion_matches_features(trained_digits_cnn: nn.Module,
                                                   digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y = digits_small[0][:64], digits_small[1][:64]
    g = torch.Generator().manual_seed(0)
    x_new, y_new = representation_dataset(trained_digits_cnn, x, y, num_classes=10, generator=g,
                                          steps=60, step_size=0.05)
    start = x[derangement(len(x), generator=torch.Generator().manual_seed(0))]
    before = representation_distance(trained_digits_cnn, start, x).mean()
    after = representation_distance(trained_digits_cnn, x_new, x).mean()
    assert after < 0.5 * before
    assert torch.equal(y_new, y)
    assert float(x_new.min()) >= 0 and float(x_new.max()) <= 1


@pytest.mark.parametrize("mode", ["random", "det"])
def test_wrong_label_dataset_is_within_budget_and_hits_targets(
        mode: str, trained_digits_cnn: nn.Module, digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y = digits_small[0][:64], digits_small[1][:64]
    x_adv, t = wrong_label_dataset(trained_digits_cnn, x, y, num_classes=10, mode=mode,
                                   eps=2.0, steps=30, step_size=0.2,
                                   generator=torch.Generator().manual_seed(0))
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 2.0 + 1e-5
    assert not (t == y).any()
    with torch.no_grad():
        hit = (trained_digits_cnn(x_adv).argmax(1) == t).float().mean()
    assert hit > 0.8


@pytest.mark.parametrize("name", CONSTRUCTIONS.names())
def test_construction_contract(name: str, trained_digits_cnn: nn.Module,
                               digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y = digits_small[0][:16], digits_small[1][:16]
    fn = CONSTRUCTIONS.get(name)
    outs = [fn(trained_digits_cnn, x, y, num_classes=10, generator=torch.Generator().manual_seed(1),
               steps=3) for _ in range(2)]
    (x1, y1), (x2, y2) = outs
    assert x1.shape == x.shape and y1.shape == y.shape and y1.dtype == torch.long
    torch.testing.assert_close(x1, x2)
    assert torch.equal(y1, y2)
