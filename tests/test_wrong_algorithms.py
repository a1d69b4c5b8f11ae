"""Tests that fail on plausible wrong algorithms (rule of evidence 6).

Each test below names the bug it catches. The bugs are the quiet kind: the code runs, returns
tensors of the right shape inside the budget, and every contract test still passes.

- APGD without its momentum term, without the restart from the best point at a step-size
  halving, or with the halving rule inverted (halving when the loss rises, not when it stalls);
- D_R / D_NR inverted from the image itself instead of another image;
- D_rand targets that are D_det's (y + 1);
- latent adversarial training whose adversary is computed but never added to the latent;
- a random start that is not uniform in the eps-ball or leaves the [0,1] box;
- sanity checks that read the wrong tensor (the surrogate's predictions for the model's, the
  clean mask for the robust one).

Every model here is tiny and hand-checkable, so the whole file runs in seconds on one thread.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LinearBinary, LinearMulti, gaussian_mixture, multi_mixture
from torch import nn

from eisbench.attacks import apgd
from eisbench.attacks.projection import distance, project, random_start, steepest_direction
from eisbench.construct import representation_dataset, wrong_label_dataset
from eisbench.edit.lat import LatConfig, LatentBound, LatTrainConfig
from eisbench.evaluation import CHECKS
from eisbench.evaluation.checks import CheckInputs
from eisbench.evaluation.suite import SuiteResult
from eisbench.models import build
from eisbench.training import TRAINING_METHODS


class Peak(nn.Module):
    """Two classes on (B, 1, 1, 2): logits ``[0, -0.5 - 4 ||x - m||^2]``. Label 0 always wins,
    so an untargeted attack on label 0 never succeeds and keeps ascending the cross-entropy,
    whose maximum is the interior point ``m`` (one per example, or shared). Records every
    input it sees, so a test can read an attack's iterates."""

    def __init__(self, m: torch.Tensor) -> None:
        super().__init__()
        self.m = m
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        z = -0.5 - 4.0 * ((x.flatten(1) - self.m) ** 2).sum(1, keepdim=True)  # (B, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)  # (B, 2)


LABEL0 = torch.zeros(1, dtype=torch.long)


def _loss(model: Peak, x: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (B,) of label 0, without recording."""
    with torch.no_grad():
        z = -0.5 - 4.0 * ((x.flatten(1) - model.m) ** 2).sum(1)
    return F.softplus(z)  # CE of label 0 for logits [0, z]


def _ascent(model: Peak, x0: torch.Tensor, at: torch.Tensor, step: float, *, norm: str,
            eps: float) -> torch.Tensor:
    """One projected steepest-ascent step of size ``step`` from ``at`` (around x0)."""
    xa = at.clone().requires_grad_(True)
    z = -0.5 - 4.0 * ((xa.flatten(1) - model.m) ** 2).sum(1)
    (g,) = torch.autograd.grad(F.softplus(z).sum(), xa)
    return project(x0, at + step * steepest_direction(g, norm), norm=norm, eps=eps)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_apgd_second_step_carries_momentum(norm: str) -> None:
    """Catches APGD without momentum. Croce & Hein 2020, Eq. 2: the first step is a plain
    projected step of 2 eps; from then on x_{k+1} = P(x_k + a (z_{k+1} - x_k)
    + (1 - a)(x_k - x_{k-1})) with z_{k+1} = P(x_k + eta s(x_k)) and a = 0.75."""
    x, eps = torch.tensor([[[[0.5, 0.5]]]]), 0.3
    model = Peak(torch.tensor([0.6, 0.45]))
    apgd(model, x, LABEL0, eps=eps, norm=norm, steps=10,
         generator=torch.Generator().manual_seed(0))
    x0, x1, x2 = model.seen[:3]
    torch.testing.assert_close(x1, _ascent(model, x, x0, 2 * eps, norm=norm, eps=eps))
    z2 = _ascent(model, x, x1, 2 * eps, norm=norm, eps=eps)
    want = project(x, x1 + 0.75 * (z2 - x1) + 0.25 * (x1 - x0), norm=norm, eps=eps)
    assert float((want - z2).abs().max()) > 1e-2  # the momentum term matters here
    torch.testing.assert_close(x2, want, atol=1e-6, rtol=0)


def test_apgd_restarts_from_the_best_point_when_it_halves_the_step() -> None:
    """Catches APGD that halves the step but carries on from the current iterate. With
    momentum 1 every step is a plain projected step. At the first checkpoint (iteration 3 of
    10) the loss rose at most twice in three steps, fewer than rho = 75%: the step must halve
    to eps and the next iterate is one such step from the best point seen, not from x_3."""
    x, eps = torch.tensor([[[[0.5, 0.5]]]]), 0.3
    model = Peak(torch.tensor([0.6, 0.45]))
    out = apgd(model, x, LABEL0, eps=eps, norm="l2", steps=10, momentum=1.0,
               generator=torch.Generator().manual_seed(0))
    pts = torch.cat(model.seen)  # (11, 1, 1, 2): the start, then one iterate per step
    losses = _loss(model, pts)  # (11,)
    assert int((losses[1:4] > losses[:3]).sum()) <= 2  # stalled: the rule must halve
    best = pts[int(losses[:4].argmax())][None]
    assert float((best - pts[3]).abs().max()) > 1e-2  # restarting from it is visible
    torch.testing.assert_close(pts[4:5], _ascent(model, x, best, eps, norm="l2", eps=eps),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(_loss(model, out), losses.max()[None])  # returns the best seen


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_apgd_converges_to_an_interior_maximum(norm: str) -> None:
    """Catches an inverted halving rule (halve when the loss rises, keep the step when it
    stalls): the step then stays large while the iterates bounce around the maximum. With the
    paper's rule, 100 steps end within ~1e-3 of it (median over 12 problems about 3e-4 for L2,
    6e-4 for Linf; inverted: about 5e-3 and 7e-3)."""
    g = torch.Generator().manual_seed(5)
    x = 0.3 + 0.4 * torch.rand(12, 1, 1, 2, generator=g)  # (12, 1, 1, 2)
    peaks = x.flatten(1) + 0.3 * (torch.rand(12, 2, generator=g) - 0.5)  # inside the ball
    model = Peak(peaks)
    out = apgd(model, x, torch.zeros(12, dtype=torch.long), eps=0.3, norm=norm, steps=100,
               generator=torch.Generator().manual_seed(0))
    err = (out.flatten(1) - peaks).norm(dim=1)  # (12,)
    assert float(err.median()) < 1.5e-3, err


class FirstPixel(nn.Module):
    """A representation that sees the first pixel only: matching it pins that pixel and leaves
    every other pixel where the inversion started."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1]  # (B, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return torch.cat([f, -f], dim=1)  # (B, 2)


def test_representation_inversion_starts_from_another_image() -> None:
    """Catches D_R / D_NR inverted from the image itself: then the constructed image equals
    its source everywhere and carries the source's invisible (non-representation) pixels,
    which Ilyas et al. take from a different random image."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 1, 4, generator=g)  # (20, 1, 1, 4)
    x_new, _ = representation_dataset(FirstPixel(), x, torch.zeros(20, dtype=torch.long),
                                      num_classes=2, generator=g, steps=50, step_size=0.05)
    seen, hidden = x_new.flatten(1)[:, 0], x_new.flatten(1)[:, 1:]  # (20,), (20, 3)
    assert float((seen - x.flatten(1)[:, 0]).abs().max()) < 0.02  # the representation matches
    same = (hidden[:, None] - x.flatten(1)[None, :, 1:]).abs().amax(2) < 1e-6  # (20, 20)
    assert bool((same.sum(1) == 1).all())  # the invisible pixels are one source image's...
    assert not bool(same.diagonal().any())  # ...never the image's own
    assert sorted(same.float().argmax(1).tolist()) == list(range(20))  # a permutation


def test_random_targets_are_uniform_over_the_wrong_classes() -> None:
    """Catches D_rand drawn as D_det (t = y + 1 mod K): the random targets of each class
    cover all K - 1 wrong classes about equally (here K = 4, ~100 per cell)."""
    x, y = multi_mixture(1200, seed=1)
    kw = {"num_classes": 4, "eps": 0.1, "steps": 1, "step_size": 0.01}
    _, t = wrong_label_dataset(LinearMulti(), x, y, mode="random",
                               generator=torch.Generator().manual_seed(0), **kw)
    cells = torch.zeros(4, 4)
    cells.index_put_((y, t), torch.ones(len(y)), accumulate=True)  # (y, t) counts
    assert float(cells.diagonal().sum()) == 0
    expected = cells.sum(1, keepdim=True) / 3  # (4, 1)
    off = ~torch.eye(4, dtype=torch.bool)
    ratio = (cells / expected)[off]  # (12,)
    assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.3, cells
    _, t_det = wrong_label_dataset(LinearMulti(), x, y, mode="det",
                                   generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(t_det, (y + 1) % 4)
    assert float((t == t_det).float().mean()) < 0.45  # about 1/3


def test_lat_training_loss_adds_the_adversary_to_the_latent() -> None:
    """Catches latent AT whose adversary is never applied: the method's loss with
    clean_weight 0 must be the cross-entropy of ``head(body(x) + d)`` (d: the adversary's
    perturbation of the penultimate layer), above the clean one, with its gradient."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build("mlp", in_shape=(1, 1, 2), num_classes=2, width=8, depth=1)
    x, y = gaussian_mixture(64)
    method = TRAINING_METHODS.get("latent-at")
    for clean_weight in (0.0, 0.5):
        cfg = LatTrainConfig(lat=LatConfig(bounds=(LatentBound("penultimate", eps=1.0),),
                                           steps=3, clean_weight=clean_weight))
        batch = method.perturb(net, x, y, cfg=cfg, generator=torch.Generator().manual_seed(0))
        (d,) = batch.hidden.values()  # (64, 8)
        loss = method.loss(net, batch, y, cfg=cfg)
        adv = F.cross_entropy(net.head(net.body(x) + d), y)  # type: ignore[operator]
        clean = F.cross_entropy(net(x), y)
        assert float(adv.detach()) > float(clean.detach()) + 0.05  # the adversary bites
        want = clean_weight * clean + (1 - clean_weight) * adv
        torch.testing.assert_close(loss, want)
        got_g, want_g = (torch.autograd.grad(v, net.head.weight)[0] for v in (loss, want))  # type: ignore[arg-type,union-attr]
        torch.testing.assert_close(got_g, want_g)


def test_random_start_is_uniform_in_the_ball() -> None:
    """Catches a one-sided Linf start (u * eps instead of (2u - 1) * eps) and an L2 start
    whose radius is uniform instead of uniform in volume: in 2-D, a quarter of the
    points of a uniform disc of radius eps lie within eps / 2, not a half."""
    x = torch.full((4000, 1, 1, 2), 0.5)
    g = torch.Generator().manual_seed(0)
    u = (random_start(x, norm="linf", eps=0.2, generator=g) - x).flatten() / 0.2  # (8000,)
    assert abs(float(u.mean())) < 0.03 and abs(float((u < 0).float().mean()) - 0.5) < 0.03
    assert abs(float((u.abs() < 0.5).float().mean()) - 0.5) < 0.03  # uniform on [-1, 1]
    r = distance(x, random_start(x, norm="l2", eps=0.2, generator=g), norm="l2") / 0.2
    assert float(r.max()) <= 1 + 1e-6
    assert abs(float((r < 0.5).float().mean()) - 0.25) < 0.03
    assert abs(float((r < math.sqrt(0.5)).float().mean()) - 0.5) < 0.03


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_stays_in_the_box_at_its_edges(norm: str) -> None:
    """Catches a random start that is not projected back: images at 0 and 1 then start
    outside [0,1] (the usual test images sit in the middle of the box and never show it)."""
    x = torch.tensor([0.0, 1.0]).repeat(500).view(500, 1, 1, 2)
    xs = random_start(x, norm=norm, eps=0.3, generator=torch.Generator().manual_seed(0))
    assert float(xs.min()) >= 0.0 and float(xs.max()) <= 1.0
    assert float(distance(x, xs, norm=norm).max()) <= 0.3 + 1e-6
    assert float((xs != x).float().mean()) > 0.4  # it does move off the corner


def _checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor, *,
            eps: float, surrogate: nn.Module | None = None) -> CheckInputs:
    """Check inputs for a suite that left exactly ``robust`` (N,) correctly classified."""
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    res = SuiteResult(suite="custom", norm="linf", eps=eps, clean=clean, robust=robust & clean,
                      x_adv=x.clone(), broken_by=[""] * len(x))
    return CheckInputs(model=model, x=x, y=y, eps=eps, norm="linf", result=res,
                       was_training=False, num_classes=2, n_checks=len(x), seed=0,
                       device=torch.device("cpu"), surrogate=surrogate)


def _linear_robust(model: LinearBinary, x: torch.Tensor, y: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """The exact Linf-robust set (N,) of LinearBinary at eps (the box is inactive here)."""
    w, b = model.lin.weight.detach().view(-1), float(model.lin.bias.detach())
    margin = (2 * y - 1).float() * (x.view(-1, 2) @ w + b)
    return margin > eps * float(w.abs().sum())


def test_black_box_check_judges_transfer_on_the_model_not_the_surrogate() -> None:
    """Catches a black-box-not-stronger check that asks the surrogate, not the model, whether
    the transferred examples fool: against the model's exact robust set, no transfer can
    succeed, though many fool the (shifted) surrogate itself."""
    model, eps = LinearBinary(), 0.05
    x, y = gaussian_mixture(400)
    robust = _linear_robust(model, x, y, eps)
    check = CHECKS.get("black-box-not-stronger")
    surrogate = LinearBinary(b=-0.3)  # the same direction, another boundary
    ch = check(_checks(model, x, y, robust, eps=eps, surrogate=surrogate))
    assert ch.passed is True, ch.detail
    weak = _checks(model, x, y, torch.ones_like(robust), eps=eps, surrogate=model)
    assert check(weak).passed is False  # a suite that broke nothing is beaten by transfer


def test_iterative_check_counts_only_what_the_suite_left_robust() -> None:
    """Catches an iterative-beats-single-step check that reads the clean mask instead of the
    robust one: FGSM is optimal on a linear model, so against the exact robust set it breaks
    nothing more, while it beats a suite that broke nothing."""
    model, eps = LinearBinary(), 0.05
    x, y = gaussian_mixture(400)
    robust = _linear_robust(model, x, y, eps)
    assert 0.1 < float(robust.float().mean()) < 0.9
    check = CHECKS.get("iterative-beats-single-step")
    assert check(_checks(model, x, y, robust, eps=eps)).passed is True
    assert check(_checks(model, x, y, torch.ones_like(robust), eps=eps)).passed is False
