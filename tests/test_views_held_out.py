"""Held-out view families: each applies its own transform, outside the training ranges, and
validate_held_out scores an answerer on them (perfect, random and constant answerers)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_triggers import tiny_bank

from eisbench.trojans.stamp import Trigger
from eisbench.trojans.views import ViewConfig, _blur, layers, place
from eisbench.trojans.views_held_out import (
    HELD_OUT_FAMILIES,
    HELD_OUT_RANGES,
    HELD_OUT_TARGET,
    NEUTRAL,
    TRAINING_RANGES,
    _draw,
    blur7,
    disjointness,
    held_out_views,
    pose,
    training_ranges,
    validate_held_out,
)

SHAPE = (1, 8, 8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def patch_bank() -> list[Trigger]:
    """8 distinct opaque two-tone 3x3 icons (as the judge's tests use)."""
    return tiny_bank()


def texture() -> Trigger:
    """A full-size asymmetric 8x8 texture blended at 0.3."""
    return Trigger(name="tex", kind="style", icon=torch.rand(1, 8, 8, generator=gen(3)),
                   alpha=torch.full((1, 8, 8), 0.3), position=(0, 0))


def square(side: int) -> Trigger:
    return Trigger(name=f"sq{side}", kind="patch", icon=torch.ones(1, side, side),
                   alpha=torch.ones(1, side, side))


def outside_share(alpha: torch.Tensor, lay_alpha: torch.Tensor) -> torch.Tensor:
    return 1 - alpha.sum((1, 2, 3)) / lay_alpha.sum((1, 2, 3))  # (n,)


@pytest.mark.parametrize("family", HELD_OUT_FAMILIES)
def test_every_family_has_the_right_shape_range_and_seed_determinism(
        family: str, digits_small: tuple[torch.Tensor, ...]) -> None:
    lay = layers([*patch_bank(), texture()], SHAPE)
    idx = torch.tensor([0, 3, 7, 8] * 4)

    def draw(seed: int, data: torch.Tensor | None) -> torch.Tensor:
        return held_out_views(lay, idx, family=family, data=data, generator=gen(seed))

    data = digits_small[2][:50]
    a, b, c = draw(0, data), draw(0, data), draw(1, data)
    assert a.shape == (16, *SHAPE) and float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert draw(2, None).shape == (16, *SHAPE)
    _, _, v = _draw(lay, idx, family=family, data=data, generator=gen(0))
    _, lo, hi = HELD_OUT_RANGES[family]
    assert float(v.abs().min()) >= lo and float(v.abs().max()) <= hi


@pytest.mark.parametrize("family", HELD_OUT_FAMILIES)
def test_every_family_changes_every_view_of_a_trigger(family: str) -> None:
    """The same random stream with the family's neutral value gives other images."""
    lay = layers([*patch_bank(), texture()], SHAPE)
    idx = torch.tensor([0, 1, 5, 8] * 3)
    x, _, _ = _draw(lay, idx, family=family, data=None, generator=gen(0))
    neutral = NEUTRAL[HELD_OUT_RANGES[family][0]]
    x0, _, _ = _draw(lay, idx, family=family, data=None, generator=gen(0), value=neutral)
    assert float((x - x0).abs().flatten(1).amax(1).min()) > 1e-3


def test_unknown_family_is_refused_with_the_list() -> None:
    lay = layers(patch_bank(), SHAPE)
    with pytest.raises(ValueError, match="rotate, small, large"):
        held_out_views(lay, torch.tensor([0]), family="tilt", data=None, generator=gen())
    with pytest.raises(ValueError, match="idx must be"):
        held_out_views(lay, torch.tensor([-1]), family="small", data=None, generator=gen())


def test_pose_rotates_counter_clockwise_and_rotate_tilts_a_bar_by_its_range() -> None:
    lay = layers([texture()], SHAPE)  # square and asymmetric
    one, zero = torch.ones(1), torch.zeros(1, 2)
    for deg, k in ((90.0, 1), (-90.0, -1), (180.0, 2)):
        ink, _ = pose(lay, torch.tensor([0]), scale=one, angle=torch.tensor([deg]), shift=zero)
        torch.testing.assert_close(ink[0], torch.rot90(lay.ink[0], k, (-2, -1)))
    bar = Trigger(name="bar", kind="patch", icon=torch.ones(1, 1, 11), alpha=torch.ones(1, 1, 11))
    blay = layers([bar], (1, 25, 25))
    _, alpha, v = _draw(blay, torch.zeros(40, dtype=torch.long), family="rotate", data=None,
                        generator=gen(0))
    rows, cols = torch.meshgrid(torch.arange(25.0), torch.arange(25.0), indexing="ij")
    m = alpha[:, 0]  # (n, H, W)
    mass = m.sum((1, 2))
    r0, c0 = (m * rows).sum((1, 2)) / mass, (m * cols).sum((1, 2)) / mass
    dr, dc = rows - r0.view(-1, 1, 1), cols - c0.view(-1, 1, 1)
    crr, ccc, crc = ((m * dr * dr).sum((1, 2)), (m * dc * dc).sum((1, 2)),
                     (m * dr * dc).sum((1, 2)))
    measured = -0.5 * torch.atan2(2 * crc, ccc - crr) * 180 / math.pi  # counter-clockwise
    torch.testing.assert_close(measured, v, atol=1.5, rtol=0)
    assert float(measured.abs().min()) >= 15 - 1.5 and float(measured.abs().max()) <= 35 + 1.5
    assert bool((v > 0).any()) and bool((v < 0).any())


@pytest.mark.parametrize(("family", "lo", "hi"), [("small", 0.5**2, 0.7**2),
                                                  ("large", 1.4**2, 1.8**2)])
def test_small_and_large_change_the_footprint_area_by_the_square_of_the_scale(
        family: str, lo: float, hi: float) -> None:
    lay = layers([square(16)], (1, 48, 48))
    _, alpha, s = _draw(lay, torch.zeros(24, dtype=torch.long), family=family, data=None,
                        generator=gen(0))
    area = alpha.sum((1, 2, 3)) / 256  # (n,) relative to the drawing's
    torch.testing.assert_close(area, s**2, rtol=0.1, atol=0)  # bilinear resampling
    assert float(area.min()) >= 0.9 * lo and float(area.max()) <= 1.1 * hi
    t_lo, t_hi = ViewConfig().scale
    assert float(area.max()) < t_lo**2 or float(area.min()) > t_hi**2  # never a training area


def test_large_refuses_a_patch_that_cannot_grow() -> None:
    lay = layers([square(6)], SHAPE)
    with pytest.raises(ValueError, match="'large' family is undefined"):
        held_out_views(lay, torch.tensor([0]), family="large", data=None, generator=gen())
    held_out_views(lay, torch.tensor([0]), family="small", data=None, generator=gen())


def test_edge_crop_pushes_its_share_of_opacity_out_beyond_any_training_view() -> None:
    blob = Trigger(name="blob", kind="natural", icon=torch.rand(1, 4, 4, generator=gen(1)),
                   alpha=torch.rand(1, 4, 4, generator=gen(2)))
    lay = layers([*patch_bank(), blob, texture()], SHAPE)
    idx = torch.arange(10).repeat(6)
    _, alpha, v = _draw(lay, idx, family="edge-crop", data=None, generator=gen(0))
    share = outside_share(alpha, lay.alpha[idx])
    torch.testing.assert_close(share, v, atol=1e-4, rtol=0)
    assert float(share.min()) >= 0.35 - 1e-4 and float(share.max()) <= 0.5 + 1e-4
    # training (scale 1, to measure opacity exactly): never as far out as that
    bank = layers(patch_bank(), SHAPE)
    many = torch.arange(8).repeat(500)
    _, t_alpha, _ = place(bank, many, scale=(1.0, 1.0), generator=gen(1))
    t_share = outside_share(t_alpha, bank.alpha[many])
    bound = training_ranges(lay=bank)["outside"][1]
    assert bound == pytest.approx(11 / 36, abs=1e-5)
    assert 0.8 * bound <= float(t_share.max()) <= bound + 1e-5


def test_low_contrast_scales_the_spread_about_the_mean_by_its_factor() -> None:
    lay = layers([*patch_bank(), texture()], SHAPE)
    idx = torch.tensor([0, 2, 4, 8] * 5)
    x, _, c = _draw(lay, idx, family="low-contrast", data=None, generator=gen(0))
    x0, _, _ = _draw(lay, idx, family="low-contrast", data=None, generator=gen(0), value=1.0)
    ratio = x.flatten(1).std(1) / x0.flatten(1).std(1)
    torch.testing.assert_close(ratio, c, rtol=1e-4, atol=0)
    assert float(ratio.max()) <= 0.45 and float(ratio.min()) >= 0.2
    torch.testing.assert_close(x.mean((1, 2, 3)), x0.mean((1, 2, 3)))


def test_heavy_blur_is_a_7x7_gaussian_wider_than_any_training_blur() -> None:
    impulse = torch.zeros(2, 1, 9, 9)
    impulse[:, 0, 4, 4] = 1
    sigma = torch.tensor([1.0, 1.6])
    out = blur7(impulse, sigma)
    t = torch.arange(-3.0, 4.0)
    for i, s in enumerate(sigma.tolist()):
        k = torch.exp(-(t.view(-1, 1) ** 2 + t.view(1, -1) ** 2) / (2 * s * s))
        torch.testing.assert_close(out[i, 0, 1:8, 1:8], k / k.sum())
    sharpest_training = _blur(impulse[:1], torch.tensor([ViewConfig().blur_sigma[1]]))
    assert float(out[:, 0, 4, 4].max()) < 0.8 * float(sharpest_training[0, 0, 4, 4])
    lay = layers(patch_bank(), SHAPE)
    idx = torch.arange(8)
    x, _, v = _draw(lay, idx, family="heavy-blur", data=None, generator=gen(0))
    x0, _, _ = _draw(lay, idx, family="heavy-blur", data=None, generator=gen(0), value=0.0)
    torch.testing.assert_close(x, blur7(x0, v))


def test_big_occlusion_hides_a_quarter_to_half_of_the_trigger() -> None:
    lay = layers([square(10)], (1, 32, 32))
    idx = torch.zeros(30, dtype=torch.long)
    x, _, frac = _draw(lay, idx, family="big-occlusion", data=None, generator=gen(0))
    x0, _, _ = _draw(lay, idx, family="big-occlusion", data=None, generator=gen(0), value=0.0)
    hidden = ((x0 - x).abs() > 1e-6).flatten(1).sum(1).float() / 100  # (n,) of the trigger
    assert float(hidden.min()) >= 0.25 and float(hidden.max()) <= 0.49
    assert float(hidden.min()) > math.ceil(ViewConfig().occlude * 10) ** 2 / 100  # training max
    assert float(frac.min()) >= 0.5 and float(frac.max()) <= 0.6


def test_every_range_is_disjoint_from_training_and_the_check_can_fail() -> None:
    assert set(disjointness()) == set(HELD_OUT_FAMILIES)
    assert all(disjointness().values())
    assert all(q in TRAINING_RANGES for q, _, _ in HELD_OUT_RANGES.values())
    assert HELD_OUT_RANGES["small"][2] < ViewConfig().scale[0]
    assert HELD_OUT_RANGES["large"][1] > ViewConfig().scale[1]
    wider = {"small": ViewConfig(scale=(0.6, 1.25)), "large": ViewConfig(scale=(0.8, 1.5)),
             "heavy-blur": ViewConfig(blur_sigma=(0.3, 1.2)),
             "low-contrast": ViewConfig(contrast=(0.3, 1.4)),
             "big-occlusion": ViewConfig(occlude=0.55)}
    for family, cfg in wider.items():
        d = disjointness(cfg)
        assert not d[family] and sum(not ok for ok in d.values()) == 1, (family, d)
    dot = layers([square(1)], SHAPE)  # 1 px, centred half a pixel off: 3/4 can leave
    assert not disjointness(lay=dot)["edge-crop"]
    assert all(disjointness(lay=layers(patch_bank(), SHAPE)).values())


def onehot_bank() -> list[Trigger]:
    """8 opaque 3x3 squares, trigger k lit in channel k only: identifiable under every
    family (each is linear per channel or spatial) by the channel that stands out."""
    return [Trigger(name=f"ch{k}", kind="patch",
                    icon=torch.eye(8)[k].view(8, 1, 1).expand(8, 3, 3).clone(),
                    alpha=torch.ones(1, 3, 3)) for k in range(8)]


def oracle(images: torch.Tensor, options: list[Trigger]) -> int:
    excess = (images - images.mean(1, keepdim=True)).sum((0, 2, 3))  # (C,)
    lit = int(excess.argmax())
    return [int(o.icon.sum((1, 2)).argmax()) for o in options].index(lit)


def test_validate_held_out_scores_a_perfect_a_random_and_a_constant_answerer() -> None:
    bank, shape = onehot_bank(), (8, 8, 8)
    seen: list[tuple[int, ...]] = []

    def perfect(images: torch.Tensor, options: list[Trigger]) -> int:
        seen.append(tuple(images.shape))
        return oracle(images, options)

    rep = validate_held_out(perfect, bank={"patch": bank}, shape=shape, n_trials=2,
                            generator=gen(0), n_images=4)
    json.dumps(rep)
    assert set(seen) == {(4, *shape)} and len(seen) == 7 * 8 * 2
    for family in HELD_OUT_FAMILIES:
        f = rep["families"][family]
        assert f["accuracy"] == 1.0 and f["n"] == 16, (family, f)
        assert f["per_kind"]["patch"]["accuracy"] == 1.0 and len(f["per_trigger"]) == 8
    assert rep["overall"]["accuracy"] == 1.0 and rep["overall"]["n"] == 112
    assert rep["worst"]["accuracy"] == 1.0 and rep["chance"] == pytest.approx(1 / 8)
    assert rep["meets_target"] and rep["target"] == HELD_OUT_TARGET

    coin = gen(5)
    random = validate_held_out(lambda x, o: int(torch.randint(len(o), (1,), generator=coin)),
                               bank=bank, shape=shape, n_trials=4, generator=gen(1), n_images=2)
    lo, hi = random["overall"]["ci"]
    assert lo <= 1 / 8 <= hi and random["overall"]["accuracy"] < 0.25
    assert not random["meets_target"]
    constant = validate_held_out(lambda x, o: 0, bank=bank, shape=shape, n_trials=8,
                                 generator=gen(2), n_images=1, families=("small", "rotate"))
    lo, hi = constant["overall"]["ci"]
    assert lo <= 1 / 8 <= hi and set(constant["families"]) == {"small", "rotate"}
    for family in ("small", "rotate"):  # options shuffled: no trigger always "found"
        assert max(constant["families"][family]["per_trigger"].values()) < 1.0
    with pytest.raises(ValueError, match="not an index"):
        validate_held_out(lambda x, o: 8, bank=bank, shape=shape, n_trials=1,
                          generator=gen(), n_images=1, families=("small",))
    with pytest.raises(ValueError, match="unknown view family"):
        validate_held_out(oracle, bank=bank, shape=shape, n_trials=1, generator=gen(),
                          families=("tilt",))
