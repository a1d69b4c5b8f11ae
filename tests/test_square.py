"""Square attack: budget, determinism, schedule, closed-form optimum, query accounting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import eisbench.attacks.square  # noqa: F401  (registers "square")
from eisbench.attacks import ATTACKS, assert_within_budget
from eisbench.attacks.projection import distance
from eisbench.attacks.square import (
    _propose_l2,
    _propose_linf,
    _window_pattern,
    margin_loss,
    p_schedule,
    square,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Random search is a long chain of tiny forward passes: one thread is the fastest here."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class QueryLog(nn.Module):
    """Wraps a model and keeps a copy of every batch it is asked to classify."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.detach().clone())
        return self.model(x)


def _tiny_cnn() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 7, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y  # (B,)


def test_registered_and_helpers() -> None:
    assert ATTACKS.get("square") is square
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 4.5]])
    torch.testing.assert_close(margin_loss(logits, torch.tensor([1, 0])), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(margin_loss(logits, torch.tensor([0, 2])), torch.tensor([-2., -0.5]))
    # halvings after 10, 50, 200, ..., 8000 of 10000 iterations, rescaled to n_iters
    assert [p_schedule(0.8, i, 10000) for i in (0, 10, 11, 50, 51, 8000, 8001, 9999)] == [
        0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512, 0.8 / 512]
    assert [p_schedule(0.8, i, 1000) for i in (1, 2, 5, 6, 999)] == [0.8, 0.4, 0.4, 0.2, 0.8 / 512]
    pat = _window_pattern(5, torch.zeros(1), torch.Generator().manual_seed(0))  # (5, 5)
    torch.testing.assert_close(pat.norm(), torch.tensor(1.0))
    pat = pat if bool((pat[:2] > 0).all()) else pat.t()  # drawn transposed half of the time
    assert bool((pat[:2] > 0).all()) and bool((pat[2:] < 0).all())


def _changed_pixels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: pixels where any channel of ``a`` and ``b`` differs."""
    return ((a - b).abs() > 1e-6).any(1)


def test_linf_proposal_changes_one_window_of_every_example() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 10, 10, generator=g) * 0.5 + 0.25  # (64, 1, 10, 10)
    eps = 0.1
    x_best = x + eps * (torch.randint(2, (64, 1, 1, 1), generator=g) * 2 - 1)  # flat: +-eps
    x_new = _propose_linf(x, x_best, eps, 0.09, g)  # side round(sqrt(0.09 * 100)) = 3
    torch.testing.assert_close((x_new - x).abs(), torch.full_like(x, eps))
    changed = _changed_pixels(x_new, x_best)  # (64, 10, 10)
    assert bool(changed.flatten(1).any(1).all())  # signs are redrawn until the window changes
    for m in (changed.any(2), changed.any(1)):  # (64, 10): rows, then columns, that changed
        idx = torch.arange(10)
        span = torch.where(m, idx, -1).amax(1) - torch.where(m, idx, 10).amin(1) + 1  # (64,)
        assert int(span.max()) <= 3


def test_l2_proposal_moves_mass_between_two_windows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 10, 10, generator=g) * 0.5 + 0.25  # (64, 3, 10, 10)
    eps = 0.5
    d = torch.randn(x.shape, generator=g)
    x_best = x + d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps * 0.8  # budget left over
    x_new = _propose_l2(x, x_best, eps, 0.09, g)  # two 3x3 windows
    dist = distance(x, x_new, norm="l2")  # (64,)
    torch.testing.assert_close(dist, torch.full_like(dist, eps))
    changed = _changed_pixels(x_new, x_best).flatten(1).sum(1)  # (64,)
    assert int(changed.min()) > 0 and int(changed.max()) <= 2 * 9  # the rest is left as it was


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_budget_determinism_and_mode(norm: str) -> None:
    net = _tiny_cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 6, 7, generator=g) * 0.4 + 0.3  # (12, 3, 6, 7), box inactive
    x[:2] = torch.randint(2, (2, 3, 6, 7), generator=g).float()  # pixels on the box faces
    with torch.no_grad():
        y = net(x).argmax(1)  # (12,)
    y[2:4] = (y[2:4] + 1) % 5  # two examples misclassified from the start
    eps = 0.05 if norm == "linf" else 0.2  # per pixel <= 0.2: the box stays inactive inside

    def run(seed: int) -> torch.Tensor:
        return square(net, x, y, eps=eps, norm=norm, n_queries=60,
                      generator=torch.Generator().manual_seed(seed))

    net.train()
    x1, x2, x3 = run(0), run(0), run(1)
    assert net.training
    assert x1.shape == x.shape and x1.dtype == x.dtype
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    assert not torch.equal(x1, x3)
    assert_within_budget(x, x1, norm=norm, eps=eps)
    assert float(x1.min()) >= 0.0 and float(x1.max()) <= 1.0
    clean = _acc(net, x, y)  # (12,)
    assert not clean[2:4].any()
    torch.testing.assert_close(x1[~clean], x[~clean], rtol=0, atol=0)  # never touched
    attacked = clean.clone()
    attacked[:2] = False
    # interior points sit on the sphere: |delta| = eps per pixel (Linf), ||delta|| = eps (L2)
    delta = (x1 - x)[attacked]
    if norm == "linf":
        torch.testing.assert_close(delta.abs(), torch.full_like(delta, eps))
    else:
        d = distance(x[attacked], x1[attacked], norm="l2")
        torch.testing.assert_close(d, torch.full_like(d, eps))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_matches_closed_form_optimum_on_linear_model(
        norm: str, linear_model: nn.Module, mixture: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mixture
    eps = 0.1
    w = linear_model.lin.weight.detach().view(-1)  # type: ignore[union-attr, operator]
    b = float(linear_model.lin.bias.detach())  # type: ignore[union-attr, operator]
    margin = (2 * y - 1).float() * (x.view(-1, 2) @ w + b)  # (N,) signed margin
    dual = float(w.abs().sum()) if norm == "linf" else float(w.norm())
    robust_closed_form = margin > eps * dual  # the box [0,1] is inactive for these points
    x_adv = square(linear_model, x, y, eps=eps, norm=norm, n_queries=300,
                   generator=torch.Generator().manual_seed(0))
    robust = _acc(linear_model, x_adv, y)
    clean = _acc(linear_model, x, y).float().mean()
    assert robust.float().mean() < clean - 0.1
    assert not (robust_closed_form & ~robust).any()  # never beyond the optimal adversary
    if norm == "linf":  # the optimum is a vertex of the box: random search reaches it
        assert torch.equal(robust, robust_closed_form)
    else:  # windows on a 1x2 image are single pixels: moving the whole budget onto the best
        # pixel (margin shift eps * max|w_i|) is always within reach, the exact optimum not always
        assert not (robust & (margin < eps * float(w.abs().max()))).any()
        assert float(robust.float().mean() - robust_closed_form.float().mean()) <= 0.04


def _disjoint(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Indices of examples of ``x`` whose eps-balls do not meet, so a query names its example."""
    keep: list[int] = []
    for i in range(len(x)):
        if not keep or float(distance(x[keep], x[i:i + 1].expand(len(keep), *x.shape[1:]),
                                      norm=norm).min()) > 2.5 * eps:
            keep.append(i)
    return torch.tensor(keep)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.75)])
def test_breaks_digits_cnn_and_queries_only_unbroken_points(
        norm: str, eps: float, trained_digits_cnn: nn.Module,
        digits_small: tuple[torch.Tensor, ...]) -> None:
    _, _, x_all, y_all = digits_small
    idx = _disjoint(x_all[:160], norm, eps)[:100]
    x, y = x_all[idx], y_all[idx]  # (100, 1, 8, 8), (100,)
    n_queries = 300
    log = QueryLog(trained_digits_cnn)
    x_adv = square(log, x, y, eps=eps, norm=norm, n_queries=n_queries,
                   generator=torch.Generator().manual_seed(0))
    clean, robust = _acc(trained_digits_cnn, x, y), _acc(trained_digits_cnn, x_adv, y)
    assert float(robust.float().mean()) < float(clean.float().mean()) - 0.3
    assert not (robust & ~clean).any()
    torch.testing.assert_close(x_adv[~clean], x[~clean], rtol=0, atol=0)

    assert len(log.batches[0]) == len(x)  # the one clean pass
    queries = torch.cat(log.batches[1:])  # (Q, 1, 8, 8)
    dist = torch.stack([distance(queries, xi.expand_as(queries), norm=norm) for xi in x], 1)
    owner = dist.argmin(1)  # (Q,) the example each query perturbs
    assert float(dist.min(1).values.max()) <= eps * (1 + 1e-4)
    counts = torch.bincount(owner, minlength=len(x))  # (B,)
    assert int(counts[~clean].sum()) == 0  # misclassified from the start: never queried
    assert int(counts[robust].min()) == n_queries  # unbroken: the whole budget
    for i in (clean & ~robust).nonzero()[:, 0]:
        rows = queries[owner == i]  # (q_i, 1, 8, 8), in query order
        fooled = ~_acc(trained_digits_cnn, rows, y[i].expand(len(rows)))
        assert fooled[-1] and not fooled[:-1].any()  # no query after the first success
        torch.testing.assert_close(x_adv[i], rows[-1], rtol=0, atol=0)


def test_restarts_only_add_successes(trained_digits_cnn: nn.Module,
                                     digits_small: tuple[torch.Tensor, ...]) -> None:
    _, _, x, y = digits_small
    x, y = x[:100], y[:100]
    robust = {}
    for r in (1, 3):
        x_adv = square(trained_digits_cnn, x, y, eps=0.08, norm="linf", n_queries=40, restarts=r,
                       generator=torch.Generator().manual_seed(0))
        robust[r] = _acc(trained_digits_cnn, x_adv, y)
    assert not (robust[3] & ~robust[1]).any()
    assert int(robust[3].sum()) < int(robust[1].sum())
