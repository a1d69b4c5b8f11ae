"""Plausible wrong versions of the attacks' steps that the other attack tests let through:
APGD's step-halving count, APGD-T's loss and APGD's number of runs; PGD's restarts, its
early-exit output and FGSM's single step; FMN's label check, its box clamp and its restarts
(start and what they keep); Square's proposal windows; the normalised representation
inversion's box."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from mutants_attacks_helpers import _g, _Recorder, apgd_mod, fmn_mod, pgd_mod, square_mod
from torch import nn

from eisbench.attacks import count_passes, invert_representation
from eisbench.attacks.projection import distance, project, random_start, steepest_direction


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """The linear classifier ``weight @ x.flatten() + bias`` of images with weight.shape[1]
    pixels, in the dtype of ``weight``."""
    lin = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return nn.Sequential(nn.Flatten(), lin).eval()


def _out_of_reach(n_pixels: int) -> nn.Module:
    """Two classes, class 0 ahead by 5 at mid-grey and a slope of 0.1 in every pixel, so ahead
    by 5 -+ 0.05 n_pixels anywhere in the box: no image fools it, but every attack still sees a
    gradient (a lead so large that the softmax rounds to one would leave the cross-entropy
    flat)."""
    return _linear(torch.stack([torch.full((n_pixels,), 0.1), torch.zeros(n_pixels)]),
                   torch.tensor([5.0 - 0.05 * n_pixels, 0.0]))


X = 0.2 + 0.6 * torch.rand(6, 1, 4, 4, generator=_g(3))  # away from the box's faces
ZERO = torch.zeros(6, dtype=torch.long)


# --- APGD ---------------------------------------------------------------------------------------

X0 = torch.tensor([[[[0.5, 0.5]]]], dtype=torch.float64)


class _Bowl(nn.Module):
    """Two classes on (B, 1, 1, 2): logits ``[0, z]``, z = -5 + 10 ||x - X0||^2 + d_1 / 2 < 0
    in the ball, so label 0 always wins and APGD ascends the cross-entropy softplus(z): outward,
    and slowly round the circle of radius eps towards its point of largest d_1, so that the loss
    rises at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    @staticmethod
    def z(x: torch.Tensor) -> torch.Tensor:
        d = x.flatten(1) - X0.flatten(1)  # (B, 2)
        return -5.0 + 10.0 * (d ** 2).sum(1) + 0.5 * d[:, 0]  # (B,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        z = self.z(x)[:, None]
        return torch.cat([torch.zeros_like(z), z], dim=1)  # (B, 2)


def test_apgd_keeps_its_step_at_a_checkpoint_where_the_loss_rose_at_every_step() -> None:
    """Croce & Hein 2020, Alg. 1: at checkpoint w_1 = 3 (of 10 steps) the step is halved only
    if the loss rose in at most rho = 75% of the 3 steps since w_0, or if the best loss did not
    improve. Here it rose at all 3 and improved: the step stays 2 eps and step 4 goes on from
    x_3 (momentum 1: a plain projected step), where halving would step eps from the best point
    (also x_3 here)."""
    eps = 0.3
    net = _Bowl()
    apgd_mod.apgd(net, X0, torch.zeros(1, dtype=torch.long), eps=eps, norm="l2", steps=10,
                  momentum=1.0, generator=_g(2))
    pts = torch.cat(net.seen)  # (11, 1, 1, 2): the start, then one iterate per step
    loss = F.softplus(_Bowl.z(pts))  # (11,)
    assert bool((loss[1:4] > loss[:3]).all())  # 3 rises of 3
    x3 = pts[3:4].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.softplus(_Bowl.z(x3)).sum(), x3)
    step = steepest_direction(g, "l2")
    want = project(X0, pts[3:4] + 2 * eps * step, norm="l2", eps=eps)
    halved = project(X0, pts[3:4] + eps * step, norm="l2", eps=eps)
    assert float((want - halved).abs().max()) > 1e-4  # the two rules part here
    torch.testing.assert_close(pts[4:5], want, rtol=0, atol=1e-12)


def test_apgd_t_runs_towards_each_target_even_where_untargeted_dlr_stalls() -> None:
    """Four classes on 8x8 images. Class 0 sits at logit 3, class 1 at 2 out of reach (no
    weights), classes 2 and 3 at 0 and 0.5, each driven by its own 16 pixels. APGD-T's targets
    in order are 1, 3, 2: the run towards 1 fails, the run towards 3 must end in class 3 (its 16
    pixels at +eps lift it to 5.3). Untargeted DLR cannot: with class 1 the runner-up, its
    ratio only improves by lowering the third logit, so it never fools the model."""
    w = torch.zeros(4, 64)
    w[2, 16:32], w[3, 32:48] = 1.0, 1.0
    net = _linear(w, torch.tensor([3.0, 2.0, 0.0, 0.5]) - w.sum(1) * 0.5)  # logits at x = 0.5
    x = torch.full((1, 1, 8, 8), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    out = apgd_mod.apgd_t(net, x, y, eps=0.3, steps=10, n_targets=2, generator=_g(0))
    assert net(out).argmax(1).tolist() == [3]
    out = apgd_mod.apgd_t(net, x, y, eps=0.3, steps=10, n_targets=1, generator=_g(0))
    assert net(out).argmax(1).tolist() == [0]  # only the unreachable target tried
    out = apgd_mod.apgd(net, x, y, eps=0.3, steps=10, loss="dlr", generator=_g(0))
    assert net(out).argmax(1).tolist() == [0]


def test_dlr_is_positive_on_a_misclassified_example_whose_top_three_logits_tie() -> None:
    """Higher DLR = closer to misclassification, and a misclassified example is past it (> 0):
    also where the three largest logits tie (integer logits of a quantised model), where the
    denominator z_(1) - z_(3) is 0 and only its guard 1e-12 is left."""
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0], [3.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 0.0]])
    loss = apgd_mod.dlr_loss(logits, torch.zeros(3, dtype=torch.long))
    assert float(loss[0]) > 1e6  # wrong by a margin of 1 over a spread of 0
    assert float(loss[1]) == -1.0 and float(loss[2]) == 0.0  # right by 2 / 2; a tie for first


@pytest.mark.parametrize("restarts", [1, 2])
def test_apgd_runs_as_many_times_as_asked(restarts: int) -> None:
    """A model nothing fools: every run is a start and ``steps`` iterates, one forward and
    backward pass of each example each, and ``restarts`` runs in all."""
    net, steps = _out_of_reach(16), 3
    with count_passes(net) as passes:
        apgd_mod.apgd(net, X, ZERO, eps=0.1, steps=steps, restarts=restarts, generator=_g())
    assert (passes.forward, passes.backward) == (restarts * (steps + 1) * 6,) * 2


# --- PGD and FGSM -------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_early_exit_returns_the_last_iterate_of_an_example_never_fooled(norm: str) -> None:
    """Early exit only freezes fooled examples: one never fooled ends where the fixed-steps run
    ends, at its last iterate, not at its random start."""
    net, eps = _out_of_reach(16), 0.1
    fixed = pgd_mod.pgd(net, X, ZERO, eps=eps, steps=4, norm=norm, generator=_g(1))
    early = pgd_mod.pgd(net, X, ZERO, eps=eps, steps=4, norm=norm, early_exit=True,
                        generator=_g(1))
    start = random_start(X, norm=norm, eps=eps, generator=_g(1))
    assert float(distance(start, fixed, norm="linf").min()) > 1e-2  # every example moved
    torch.testing.assert_close(early, fixed, rtol=0, atol=0)


def test_pgd_restarts_after_the_first_start_at_random_even_without_random_start() -> None:
    """``random_start=False`` is about the first run: each further run starts from its own
    random point of the eps-ball (restarting from x would repeat the first run exactly)."""
    rec, steps, eps = _Recorder(_out_of_reach(16)), 2, 0.1
    pgd_mod.pgd(rec, X, ZERO, eps=eps, steps=steps, restarts=3, random_start=False,
                generator=_g(0))
    assert len(rec.seen) == 3 * (steps + 1)  # each run: steps iterates, then its success check
    starts = rec.seen[:: steps + 1]  # (3,) first input of each run
    assert torch.equal(starts[0], X)
    for s in starts[1:]:
        d = distance(X, s, norm="linf")  # (6,)
        assert bool((d > 0.5 * eps).all()) and float(d.max()) <= eps + 1e-6
    assert not torch.equal(starts[1], starts[2])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_is_one_step_of_eps_from_x(norm: str) -> None:
    """FGSM by hand: x + eps * s(grad of the cross-entropy), s the sign (Linf) or the unit
    vector (L2), in the box; one forward-backward pass for the step and one forward pass to
    judge it. The model is an interior peak, so a second step of eps would turn back."""
    m = torch.full((16,), 0.5)

    class Peak(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = -1.0 - 4.0 * ((x.flatten(1) - m) ** 2).sum(1, keepdim=True)  # (B, 1)
            return torch.cat([torch.zeros_like(z), z], dim=1)

    net, eps = Peak(), 0.3
    x = (0.45 + 0.1 * torch.rand(6, 1, 4, 4, generator=_g(4)))  # within eps of the peak
    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(xa), ZERO, reduction="sum"), xa)
    want = project(x, x + eps * steepest_direction(g, norm), norm=norm, eps=eps)
    with count_passes(net) as passes:
        got = pgd_mod.fgsm(net, x, ZERO, eps=eps, norm=norm)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (passes.forward, passes.backward) == (2 * 6, 6)


# --- FMN ----------------------------------------------------------------------------------------

def test_fmn_refuses_a_label_equal_to_the_number_of_classes() -> None:
    net = _linear(torch.randn(3, 16, generator=_g()), torch.zeros(3))
    y = torch.tensor([0, 1, 2, 3, 0, 1])  # 3: one past the last class
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 3\) and the model must have "
                                         r"at least 2 classes; got labels in \[0, 3\]$"):
        fmn_mod.fmn_min_norm(net, X, y, steps=2)
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 3\)"):
        fmn_mod.fmn(net, X, y, eps=0.1, steps=2)


def test_fmn_steps_from_the_iterate_in_the_box_not_from_beyond_it() -> None:
    """After the ball, x + delta is clamped to [0,1] and the next step starts from there
    (module docstring). Two classes, margin 2 - sum(x - x_clean) in 16 pixels, 4 of them at
    0.95: the first L2 step (to the linear estimate of the boundary, 0.5 away) pushes those 4
    past 1. The second step, by hand from the clamped iterate: radius max(||d|| + m / ||g||,
    ||d|| (1 + gamma_1)), g without the components blocked at the face, step alpha_1 g / ||g||
    downhill, onto the ball, into the box."""
    dt = torch.float64
    x = torch.full((1, 1, 4, 4), 0.5, dtype=dt)
    x[0, 0, 0] = 0.95
    w = torch.stack([-torch.ones(16, dtype=dt), torch.zeros(16, dtype=dt)])
    rec = _Recorder(_linear(w, torch.tensor([2.0 + float(x.sum()), 0.0], dtype=dt)))
    steps = 10
    fmn_mod._run(rec, x, torch.zeros(1, dtype=torch.long), torch.zeros_like(x), norm="l2",
                 steps=steps, targeted=False, alpha_init=None, budget=None)
    p1, p2 = rec.seen[1], rec.seen[2]
    assert torch.equal(p1[0, 0, 0], torch.ones(4, dtype=dt))  # clamped at the face
    d1 = (p1 - x).flatten()  # (16,)
    m1 = 2.0 - float(d1.sum())
    assert m1 > 0  # not adversarial yet: the radius is the linear estimate
    g = -torch.ones(16, dtype=dt)
    g[:4] = 0.0  # at 1 and pushed up: blocked
    gamma = fmn_mod._cosine(fmn_mod.GAMMA_INIT, fmn_mod.GAMMA_FINAL, 1, steps)
    alpha = fmn_mod._cosine(1.0, 0.01, 1, steps)
    r = max(float(d1.norm()) + m1 / float(g.norm()), float(d1.norm()) * (1 + gamma))
    d = d1 - alpha * g / g.norm()
    d = d * min(1.0, r / float(d.norm()))
    want = (x + d.view(x.shape)).clamp(0.0, 1.0)
    torch.testing.assert_close(p2, want, rtol=0, atol=1e-12)
    assert float(p2.max()) <= 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_restarts_start_at_random_within_half_eps_in_the_attacks_norm(norm: str) -> None:
    """Restart r >= 1 starts at a uniform point of the ``norm``-ball of radius eps / 2. In
    Linf over 16 pixels such a point lies about eps / 2 away in Linf and farther than eps / 2
    in L2 (an L2-ball point never does); in L2 it lies within eps / 2, not at x."""
    rec, steps, eps = _Recorder(_out_of_reach(16)), 2, 0.2
    fmn_mod.fmn(rec, X, ZERO, eps=eps, norm=norm, steps=steps, restarts=3, generator=_g(0))
    per_run = steps + 1 + 2  # steps + 1 iterates, then the two candidates judged
    assert len(rec.seen) == 3 * per_run
    starts = rec.seen[::per_run]
    assert torch.equal(starts[0], X)
    for s in starts[1:]:
        d = distance(X, s, norm=norm)  # (6,)
        assert bool((d > 0).all()) and float(d.max()) <= eps / 2 + 1e-6
        if norm == "linf":
            assert bool((d > 0.35 * eps).all())
            assert bool((distance(X, s, norm="l2") > eps / 2).all())
    assert not torch.equal(starts[1], starts[2])


def test_fmn_keeps_each_examples_best_candidate_across_restarts() -> None:
    """A restart replaces an example's output only if it fools the model or lowers the logit
    margin: more restarts never return a point of higher margin than fewer did. Two FMN steps
    leave each run short of the lowest margin in the ball, so the random restarts help some
    examples and not others."""
    g = _g(7)
    net = _linear(torch.randn(3, 16, generator=g), torch.tensor([6.0, 0.0, 0.0]))
    x = 0.2 + 0.6 * torch.rand(16, 1, 4, 4, generator=g)
    y = torch.zeros(16, dtype=torch.long)
    outs = [fmn_mod.fmn(net, x, y, eps=0.05, steps=2, restarts=r, generator=_g(1))
            for r in (1, 2, 3)]
    with torch.no_grad():
        margins = [fmn_mod.logit_margin(net(o), y, False) for o in outs]  # (16,) each
    assert bool((margins[0] > 0).all())  # nothing fooled: every example is restarted
    for fewer, more in itertools.pairwise(margins):
        assert bool((more <= fewer + 1e-6).all()), more - fewer
    kept = (outs[2] == outs[0]).flatten(1).all(1)  # (16,)
    assert bool(kept.any()) and not bool(kept.all())  # restarts helped some, not all


# --- Square -------------------------------------------------------------------------------------

def _box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the bounding box of a (H, W) mask."""
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return (int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1),
            int(cols[-1] - cols[0] + 1))


@pytest.mark.parametrize(("p", "side"), [(0.1, 5), (0.02, 2), (0.001, 1), (0.9, 12)])
def test_square_linf_window_is_a_square_of_the_fraction_p_inside_the_image(
        p: float, side: int) -> None:
    """On 12 x 20 images the Linf window has side round(sqrt(p * 240)), at least 1 and at
    most 12, and lies wholly inside the image, at any position: over many draws, every row
    and column offset from 0 to H - s and W - s."""
    x = torch.full((1, 2, 12, 20), 0.5)
    assert side == min(max(round(math.sqrt(p * 12 * 20)), 1), 12)
    tops, lefts = set(), set()
    g = _g(0)
    for _ in range(300):
        new = square_mod._propose_linf(x, x, 0.1, p, g)
        changed = (new != x).any(1)[0]  # (12, 20): from x every window pixel changes
        top, left, h, w = _box(changed)
        assert (h, w) == (side, side) and int(changed.sum()) == side * side
        tops.add(top)
        lefts.add(left)
    assert tops == set(range(12 - side + 1)) and lefts == set(range(20 - side + 1))


def test_square_l2_windows_lie_inside_the_image() -> None:
    """The L2 proposal empties a second window of side s (odd, >= 3) into the first: the pixels
    zeroed are that window less the first, each window wholly inside the 12 x 20 image, at any
    position. The start is a flat perturbation, so the rest of the image is rescaled but stays
    flat and the first window is where the new pattern is."""
    x = torch.full((1, 1, 12, 20), 0.5, dtype=torch.float64)
    x_best = x + 0.01  # flat: norm 0.155 of eps 0.3
    s = 5  # round(sqrt(0.1 * 240)) = 5, odd
    at = [(r, q) for r in range(12 - s + 1) for q in range(20 - s + 1)]
    windows = torch.zeros(len(at), 12, 20, dtype=torch.bool)  # every window inside the image
    for i, (r, q) in enumerate(at):
        windows[i, r:r + s, q:q + s] = True
    g = _g(0)
    seconds: set[tuple[int, int]] = set()
    for _ in range(300):
        delta = (square_mod._propose_l2(x, x_best, 0.3, 0.1, g) - x)[0, 0]  # (12, 20)
        assert float(delta.abs().max()) < 0.5  # nothing clamped at the box
        zero = delta == 0
        flat = (delta - delta[~zero].median()).abs() < 1e-12  # outside the windows
        first = ~zero & ~flat
        assert bool((windows == first).flatten(1).all(1).any())  # an s x s window inside
        fits = ((windows & ~first) == zero).flatten(1).all(1)  # (len(at),)
        assert bool(fits.any()), "the zeroed pixels are no inside window less the first"
        if int(fits.sum()) == 1:
            seconds.add(at[int(fits.nonzero()[0, 0])])
    assert {r for r, _ in seconds} == set(range(12 - s + 1))  # every offset drawn, edges too
    assert {q for _, q in seconds} == set(range(20 - s + 1))


def test_square_l2_patterns_are_made_on_the_inputs_device() -> None:
    """Square's L2 start and proposal combine random patterns with the images: made on the
    CPU, they would not combine with images on a GPU. The meta device stands in for one."""
    x = torch.empty(2, 3, 12, 20, device="meta")
    g = _g(0)
    assert square_mod._window_pattern(5, x, g).device == x.device
    assert square_mod._init_l2(x, 0.3, g).device == x.device
    assert square_mod._propose_l2(x, x, 0.3, 0.1, g).device == x.device


# --- representation inversion -------------------------------------------------------------------

class _Pixels(nn.Module):
    """A representation that is the image itself."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2]


def test_normalized_inversion_clips_each_step_to_the_box() -> None:
    """Ilyas et al.'s normalised descent: x <- clip(x - step g / ||g||, 0, 1), even for a step
    far longer than the way to the target."""
    start = torch.full((2, 1, 4, 4), 0.2)
    target = torch.full((2, 1, 4, 4), 0.9)
    target[:, :, :2] = 0.1  # half the pixels down, half up
    got = invert_representation(_Pixels(), start, target, steps=1, step_size=10.0,
                                optimizer="normalized")
    want = torch.where(target > start, 1.0, 0.0)  # the step overshoots both faces
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got = invert_representation(_Pixels(), start, target, steps=3, step_size=10.0,
                                optimizer="normalized")
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
