"""The NCC template matcher (the second judge) and the judge-agreement measures."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_triggers import tiny_bank

from eisbench.data.core import DataError
from eisbench.trojans.bank import trigger_bank
from eisbench.trojans.matcher import (
    agreement,
    agreement_on_correct,
    competition_ranks,
    ncc_answer,
    ncc_ask,
    ncc_similarities,
    noise_baseline,
    rank_changes,
    rank_correlation,
)
from eisbench.trojans.stamp import TRIGGER_KINDS, Trigger
from eisbench.trojans.views import ViewConfig, layers, render

SHAPE = (1, 8, 8)
MNIST = (1, 28, 28)
# shifted (sub-pixel too), contrast-changed, noisy views on black, noise and grey canvases
PLAIN = ViewConfig(p_exact=0.0, scale=(1.0, 1.0), p_second=0.0, canvas_weights=(1, 0, 1, 1, 1),
                   p_difference=0.0, p_blur=0.0, p_occlude=0.0)


@pytest.fixture(scope="module", params=TRIGGER_KINDS)
def mnist_bank(request: pytest.FixtureRequest) -> list[Trigger]:
    try:
        return trigger_bank(request.param, dataset="mnist", shape=MNIST)
    except DataError as e:  # natural objects are Fashion-MNIST images, which may be absent
        pytest.skip(f"the {request.param} bank needs a dataset that is not here: {e}")


def reference_ncc(x: torch.Tensor, t: Trigger) -> float:
    """Brute force, scale 1, whole pixels: max over positions (circular for full size) and
    over the two templates (the trigger as drawn, alpha x icon, and the icon) of the
    alpha-weighted zero-mean NCC of x (C, H, W), all channels jointly."""
    c, h_img, w_img = x.shape
    w = t.alpha.double().expand(c, -1, -1)
    icon = t.icon.double().expand(c, -1, -1)
    h, wd = icon.shape[1:]
    full = h == h_img and wd == w_img
    rows, cols = (h_img, w_img) if full else (h_img - h + 1, w_img - wd + 1)
    best = -1.0
    for r in range(rows):
        for q in range(cols):
            win = torch.roll(x.double(), (-r, -q), (1, 2))[:, :h, :wd]
            dx = win - (w * win).sum() / w.sum()
            for tmpl in (w * icon, icon):
                dt = tmpl - (w * tmpl).sum() / w.sum()
                den = float(((w * dt * dt).sum() * (w * dx * dx).sum()).sqrt())
                best = max(best, float((w * dt * dx).sum()) / den if den > 1e-9 else 0.0)
    return best


def test_matches_a_brute_force_weighted_ncc_on_colour_images(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Weights (soft alpha), mean removal, joint channels, valid positions only for small
    templates (a patch wrapped round the border is not found) and circular shifts for
    textures: each is checked against the definition, pixel by pixel."""
    import eisbench.trojans.matcher as matcher

    monkeypatch.setattr(matcher, "OFFSETS", ((0.0, 0.0),))  # the reference has whole pixels
    g = torch.Generator().manual_seed(0)
    shape = (3, 9, 11)
    trigs = [Trigger(name=f"t{i}", kind="natural", icon=torch.rand(3, 4, 5, generator=g),
                     alpha=torch.rand(1, 4, 5, generator=g) * (torch.rand(1, 4, 5, generator=g)
                                                               > 0.3)) for i in range(3)]
    trigs.append(Trigger(name="tex", kind="style", icon=torch.rand(3, 9, 11, generator=g),
                         alpha=torch.rand(1, 9, 11, generator=g), position=(0, 0)))
    x = torch.rand(3, *shape, generator=g)
    canvas = torch.zeros(1, *shape)
    canvas[0, :, :4, :5] = trigs[0].icon
    x = torch.cat([x, torch.roll(canvas, (-2, -2), (2, 3))])  # wrapped round two borders
    got = ncc_similarities(x, trigs, shape=shape, scales=(1.0,))
    want = torch.tensor([[reference_ncc(xi, t) for t in trigs] for xi in x])
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=0)
    assert got[3, 0] < 0.9  # the wrapped copy does not count as the trigger


def test_the_exact_trigger_image_is_answered_right_for_every_option() -> None:
    bank = tiny_bank()
    for k, t in enumerate(bank):
        ans = ncc_ask(images=t.image(SHAPE)[None], options=bank, shape=SHAPE)
        assert ans.choice == k, (k, ans.similarities)
    imgs = torch.stack([bank[5].image(SHAPE)] * 3)
    a = ncc_ask(images=imgs, options=bank, shape=SHAPE)
    rev = ncc_ask(images=imgs, options=bank[::-1], shape=SHAPE)
    torch.testing.assert_close(rev.similarities, a.similarities.flip(0))
    assert rev.choice == 2
    answer = ncc_answer(shape=SHAPE)  # the form the judge checks take
    assert answer(imgs, bank) == 5 and answer(imgs, bank[::-1]) == 2


def test_the_exact_image_of_every_mnist_trigger_is_answered_right(
        mnist_bank: list[Trigger]) -> None:
    exact = torch.stack([t.image(MNIST) for t in mnist_bank])  # (8, 1, 28, 28)
    sim = ncc_similarities(exact, mnist_bank, shape=MNIST)
    assert torch.equal(sim.argmax(1), torch.arange(8)), sim
    torch.testing.assert_close(sim.diag(), torch.ones(8), atol=2e-3, rtol=0)
    for k in range(8):
        assert ncc_ask(images=exact[k:k + 1], options=mnist_bank, shape=MNIST).choice == k


def half_pixel(img: torch.Tensor) -> torch.Tensor:
    """img (C, H, W) moved half a pixel down and right, bilinearly (as a warped stamp)."""
    return 0.25 * (img + img.roll(1, -2) + img.roll(1, -1) + img.roll((1, 1), (-2, -1)))


def test_a_stamp_moved_by_half_a_pixel_is_still_found() -> None:
    """A 1-px pattern moved by half a pixel is a blur of itself: without the half-pixel
    templates the tiny icons and the MNIST patches are mistaken for one another."""
    patches = trigger_bank("patch", dataset="mnist", shape=MNIST)
    for shape, bank in ((SHAPE, tiny_bank()), (MNIST, patches)):
        x = torch.stack([half_pixel(t.image(shape)) for t in bank])
        sim = ncc_similarities(x, bank, shape=shape)
        assert torch.equal(sim.argmax(1), torch.arange(8)), sim
        assert sim.diag().min() > 0.99


def test_views_of_the_tiny_bank_are_answered_right() -> None:
    """Shifted (by fractions of a pixel too), contrast-changed, noisy views on black, noise
    and grey canvases, 10 per question, options shuffled: >= 0.9 of 64 questions."""
    bank = tiny_bank()
    lay = layers(bank, SHAPE)
    g = torch.Generator().manual_seed(0)
    right = 0
    for t in range(8):
        for _ in range(8):
            imgs = render(lay, torch.full((10,), t), data=None, generator=g, cfg=PLAIN)
            perm = torch.randperm(8, generator=g)
            ans = ncc_ask(images=imgs, options=[bank[i] for i in perm], shape=SHAPE)
            right += int(perm[ans.choice]) == t
    assert right / 64 >= 0.9, right


def noise_choices(bank: list[Trigger], shape: tuple[int, int, int], *, questions: int,
                  null: int | None = None) -> torch.Tensor:
    """How often each trigger is chosen on noise questions of 10 images (uniform and
    Gaussian in turn, seeds apart from the baseline's), options shuffled: (8,). ``null``:
    passed on to :func:`ncc_ask` (None: its default)."""
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(len(bank), dtype=torch.long)
    for q in range(questions):
        if q % 2 == 0:
            imgs = torch.rand(10, *shape, generator=g)
        else:
            imgs = (0.5 + 0.25 * torch.randn(10, *shape, generator=g)).clamp(0, 1)
        perm = torch.randperm(len(bank), generator=g)
        opts = [bank[i] for i in perm]
        ans = (ncc_ask(images=imgs, options=opts, shape=shape) if null is None
               else ncc_ask(images=imgs, options=opts, shape=shape, null=null))
        counts[perm[ans.choice]] += 1
    return counts


@pytest.mark.parametrize("which", ["tiny", "style"])
def test_noise_gets_no_favourite_and_the_raw_mean_does(which: str) -> None:
    """No trigger takes a share of noise questions far above 1/8: a fair judge's largest
    share of 160 exceeds 0.3 with probability < 1e-6 (Bin(160, 1/8): mean 20, sd 4.2), a
    constant one's is 1. The bound is loose because the baseline removes the bias of the mean
    NCC, not every difference between the templates' spread (measured largest shares 0.16 to
    0.24). On the textures the plain mean NCC fails it: one texture takes most questions."""
    bank, shape = (tiny_bank(), SHAPE) if which == "tiny" else (
        trigger_bank("style", dataset="mnist", shape=MNIST), MNIST)
    counts = noise_choices(bank, shape, questions=160)  # the default: less the baseline
    assert counts.sum() == 160
    assert counts.max() / 160 <= 0.3, counts
    assert (counts > 0).sum() >= 6, counts
    if which == "style":
        raw = noise_choices(bank, shape, questions=40, null=0)
        assert raw.max() / 40 >= 0.6, raw


def test_ncc_ignores_brightness_and_contrast() -> None:
    bank = tiny_bank()
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(3))
    x[:3] = torch.stack([bank[k].image(SHAPE) for k in (0, 4, 7)])
    base = ncc_similarities(x, bank, shape=SHAPE)
    for a, b in ((0.5, 0.2), (0.25, 0.0), (0.9, 0.05)):
        torch.testing.assert_close(ncc_similarities(a * x + b, bank, shape=SHAPE), base,
                                   atol=1e-4, rtol=0)
    inverted = ncc_similarities(1 - x[:3], bank, shape=SHAPE)  # a < 0: no match (not |ncc|)
    own = torch.tensor([0, 4, 7])
    assert (inverted[torch.arange(3), own] < 0.9).all()
    assert (base[torch.arange(3), own] > 0.999).all()
    assert base.min() >= -1 and base.max() <= 1 + 1e-6


def test_flat_images_give_finite_zero_similarities(mnist_bank: list[Trigger]) -> None:
    for shape, bank in ((SHAPE, tiny_bank()), (MNIST, mnist_bank)):
        flat = torch.stack([torch.zeros(shape), torch.full(shape, 0.5), torch.ones(shape)])
        sim = ncc_similarities(flat, bank, shape=shape)
        assert torch.isfinite(sim).all() and torch.equal(sim, torch.zeros_like(sim))
        ans = ncc_ask(images=flat, options=bank, shape=shape)
        assert torch.isfinite(ans.similarities).all()


def test_noise_baseline_is_cached_by_content_and_differs_by_template() -> None:
    bank = tiny_bank()
    a = noise_baseline(bank, shape=SHAPE, n=64)
    torch.testing.assert_close(noise_baseline(bank[::-1], shape=SHAPE, n=64), a.flip(0))
    assert a.shape == (8,) and float(a.max() - a.min()) > 0.01  # not one constant
    twin = Trigger(name="other-name", kind="patch", icon=bank[0].icon.clone(),
                   alpha=torch.ones(1, 3, 3))
    assert float(noise_baseline([twin], shape=SHAPE, n=64)[0]) == float(a[0])
    with pytest.raises(ValueError, match="n >= 1"):
        noise_baseline(bank, shape=SHAPE, n=0)


def test_bad_input_is_refused_like_the_learned_judge() -> None:
    bank = tiny_bank()
    x = torch.rand(2, *SHAPE)
    with pytest.raises(ValueError, match=r"images must be \(n, 1, 8, 8\) with n >= 1"):
        ncc_ask(images=x[0], options=bank, shape=SHAPE)
    with pytest.raises(ValueError, match="images must be"):
        ncc_ask(images=torch.rand(0, *SHAPE), options=bank, shape=SHAPE)
    with pytest.raises(ValueError, match="at least one option"):
        ncc_ask(images=x, options=[], shape=SHAPE)
    big = Trigger(name="big", kind="patch", icon=torch.rand(1, 9, 9), alpha=torch.ones(1, 9, 9))
    with pytest.raises(ValueError, match="larger than images"):
        ncc_similarities(x, [big], shape=SHAPE)
    with pytest.raises(ValueError, match="scales"):
        ncc_similarities(x, bank, shape=SHAPE, scales=(0.0,))


def test_kappa_is_one_on_identical_zero_on_independent_and_negative_on_opposed() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(8, (2000,), generator=g).tolist()
    b = torch.randint(8, (2000,), generator=g).tolist()
    same = agreement(a, a)
    assert same == {"kappa": 1.0, "agreement": 1.0, "n": 2000}
    indep = agreement(a, b)
    assert abs(indep["kappa"]) < 0.05 and abs(indep["agreement"] - 1 / 8) < 0.03
    opposed = agreement(a, [(v + 1) % 8 for v in a])
    assert opposed["kappa"] < 0 and opposed["agreement"] == 0.0
    assert agreement([0, 1, 0, 1], [1, 0, 1, 0])["kappa"] == pytest.approx(-1.0)
    assert agreement([3, 3, 3], [3, 3, 3])["kappa"] == 1.0  # both constant and equal
    assert agreement([3, 3, 3], [2, 2, 2])["kappa"] == 0.0
    assert agreement([3, 3, 3], [3, 3, 2])["kappa"] == 0.0
    assert all(not math.isnan(agreement(u, v)["kappa"]) for u, v in
               (([1], [1]), ([1], [2]), ([0, 0], [0, 1])))
    with pytest.raises(ValueError, match="equal, non-empty"):
        agreement([1, 2], [1])
    with pytest.raises(ValueError, match="equal, non-empty"):
        agreement([], [])


def test_agreement_on_correct_counts_the_two_by_two_table() -> None:
    a = [True] * 6 + [False] * 4
    b = [True] * 4 + [False] * 2 + [True] * 1 + [False] * 3
    out = agreement_on_correct(a, b)
    assert (out["both"], out["only_a"], out["only_b"], out["neither"]) == (4, 2, 1, 3)
    assert out["accuracy_a"] == 0.6 and out["accuracy_b"] == 0.5 and out["n"] == 10
    p_o, p_e = 0.7, 0.6 * 0.5 + 0.4 * 0.5
    assert out["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert agreement_on_correct([True] * 5, [True] * 5)["kappa"] == 1.0


def test_rank_changes_finds_exactly_the_swapped_tools() -> None:
    a = {"saliency": 0.9, "lrp": 0.7, "ig": 0.5, "occlusion": 0.3, "random": 0.1}
    b = {"saliency": 0.9, "lrp": 0.4, "ig": 0.6, "occlusion": 0.3, "random": 0.1}
    moved = rank_changes(a, b)
    assert [m["tool"] for m in moved] == ["lrp", "ig"]
    assert moved[0] == {"tool": "lrp", "rank_a": 2, "rank_b": 3, "success_a": 0.7,
                        "success_b": 0.4}
    assert rank_changes(a, a) == []
    assert rank_changes(a, {k: v / 2 for k, v in a.items()}) == []  # same order, other values
    tied = {**a, "ig": 0.7}  # ties share the better rank: ig moves from 3 to 2, the rest stay
    assert [(m["tool"], m["rank_a"], m["rank_b"]) for m in rank_changes(a, tied)] == [
        ("ig", 3, 2)]
    assert competition_ranks({"x": 1.0, "y": 1.0, "z": 0.0}) == {"x": 1, "y": 1, "z": 3}
    with pytest.raises(ValueError, match="same tools"):
        rank_changes(a, {"saliency": 0.9})


def test_rank_correlation_is_spearman_and_none_when_undefined() -> None:
    a = {"p": 0.9, "q": 0.7, "r": 0.5, "s": 0.3}
    assert rank_correlation(a, a)["spearman"] == pytest.approx(1.0)
    rev = {k: 1 - v for k, v in a.items()}
    assert rank_correlation(a, rev)["spearman"] == pytest.approx(-1.0)
    flat = rank_correlation(a, {k: 0.5 for k in a})
    assert flat["spearman"] is None and "undefined" in flat["reason"]
