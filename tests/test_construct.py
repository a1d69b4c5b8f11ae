from __future__ import annotations

import pytest
import torch
from torch import nn

from eisbench.attacks import pgd, representation_distance
from eisbench.attacks.inversion import invert_representation
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


class TinyNet(nn.Module):
    """(B, 1, 8, 8) -> 64 -> 16 (tanh) -> 10 logits, weights drawn from a seeded generator.

    ``rows`` logs the batch size of every feature pass, so a test can count the work done.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh())
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        self.rows: list[int] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(len(x))
        out: torch.Tensor = self.body(x)  # (B, 16)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))  # (B, 10)
        return out


def tiny_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (n, 1, 8, 8) in [0,1] and labels (n,) in 0..9."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("mode", ["random", "det"])
def test_wrong_label_dataset_is_targeted_l2_pgd_from_x(mode: str) -> None:
    # Non-default hyper-parameters (pgd's own defaults: 40 steps, step 2.5 * eps / steps, random
    # start) so that dropping any of them changes the result.
    model, (x, y) = TinyNet(), tiny_data(6)
    x_adv, t = wrong_label_dataset(model, x, y, num_classes=10, mode=mode, eps=1.5, steps=7,
                                   step_size=0.3, generator=torch.Generator().manual_seed(3))
    want_t = pick_targets(y, num_classes=10, mode=mode,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, want_t)
    want = pgd(model, x, want_t, eps=1.5, steps=7, step_size=0.3, norm="l2", targeted=True,
               random_start=False)
    torch.testing.assert_close(x_adv, want)


def test_wrong_label_defaults_are_the_documented_recipe() -> None:
    # Defaults: targeted L2 PGD, eps 2.0, 100 steps of 0.1 (10x the radius: the budget is used
    # up), from x itself (no random start) towards y + 1 for mode="det".
    model, (x, y) = TinyNet(), tiny_data(6)
    x_adv, t = wrong_label_dataset(model, x, y, num_classes=10, mode="det",
                                   generator=torch.Generator().manual_seed(0))
    want = pgd(model, x, (y + 1) % 10, eps=2.0, steps=100, step_size=0.1, norm="l2",
               targeted=True, random_start=False)
    torch.testing.assert_close(x_adv, want)
    dist = (x_adv - x).flatten(1).norm(dim=1)  # (N,)
    assert float(dist.max()) <= 2.0 + 1e-5
    assert float(dist.max()) > 1.9  # the attack reaches the eps sphere: eps binds


@pytest.mark.parametrize("construct", ["wrong-label", "representation"])
def test_batching_changes_neither_the_result_nor_the_work(construct: str) -> None:
    # Each image goes through exactly one attack / inversion, in chunks of batch_size: the
    # number of feature rows is N times that of a single image, and the result is the same.
    fn = CONSTRUCTIONS.get(construct)
    x, y = tiny_data(5)

    def run(n: int, batch_size: int) -> tuple[torch.Tensor, int, int]:
        model = TinyNet()
        out, _ = fn(model, x[:n], y[:n], num_classes=10, steps=3, batch_size=batch_size,
                    generator=torch.Generator().manual_seed(0))
        return out, sum(model.rows), max(model.rows)

    _, rows_two, _ = run(2, 1)  # the smallest set a representation construction accepts
    whole, rows_whole, widest_whole = run(5, 5)
    chunked, rows_chunked, widest_chunked = run(5, 2)
    assert rows_whole == rows_chunked == 5 * rows_two // 2
    assert (widest_whole, widest_chunked) == (5, 2)
    torch.testing.assert_close(chunked, whole)


def test_representation_dataset_inverts_from_the_derangement() -> None:
    # Non-default steps and step size, so that dropping either changes the result.
    model, (x, y) = TinyNet(), tiny_data(6)
    x_new, y_new = representation_dataset(model, x, y, num_classes=10, steps=7, step_size=0.03,
                                          generator=torch.Generator().manual_seed(5))
    perm = derangement(6, generator=torch.Generator().manual_seed(5))
    want = invert_representation(model, x[perm], x, steps=7, step_size=0.03)
    torch.testing.assert_close(x_new, want)
    assert torch.equal(y_new, y)


def test_representation_defaults_are_the_documented_budget() -> None:
    # eisbench.attacks.inversion: ~100 Adam steps with peak learning rate 0.1 (the CPU budget
    # that stands in for Ilyas et al.'s 1000 normalised-gradient steps).
    model, (x, y) = TinyNet(), tiny_data(4)
    x_new, _ = representation_dataset(model, x, y, num_classes=10,
                                      generator=torch.Generator().manual_seed(0))
    perm = derangement(4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_new, invert_representation(model, x[perm], x, steps=100,
                                                            step_size=0.1))


def test_representation_dataset_needs_two_images() -> None:
    model, (x, y) = TinyNet(), tiny_data(2)
    x_new, _ = representation_dataset(model, x, y, num_classes=10, steps=2,
                                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_new, invert_representation(model, x[[1, 0]], x, steps=2))
    with pytest.raises(ValueError,
                       match=r"^need at least 2 images to start each from a different one$"):
        representation_dataset(model, x[:1], y[:1], num_classes=10,
                               generator=torch.Generator().manual_seed(0))


class _ScaledIdentity(nn.Module):
    """features(x) = 3 x: the gradient of ||g(x) - g(t)||_2 has norm 3, not 1."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[:, :2]


def test_normalized_inversion_moves_step_size_in_l2_straight_to_the_target() -> None:
    start = torch.full((2, 3, 2, 2), 0.5)  # (B, C, H, W)
    direction = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    direction /= direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    target = start + 0.3 * direction  # 0.3 away in L2, inside the box
    assert float(target.min()) >= 0 and float(target.max()) <= 1
    out = invert_representation(_ScaledIdentity(), start, target, steps=3, step_size=0.05,
                                optimizer="normalized")
    # 3 steps of exactly 0.05 along the line to the target (an unnormalised step would be 0.15)
    torch.testing.assert_close(out, start + 0.15 * direction)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        invert_representation(_ScaledIdentity(), start, target, steps=1, optimizer="sgd")
