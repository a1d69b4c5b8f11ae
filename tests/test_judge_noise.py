"""The judge on images that show no trigger: the noise families of its validation, the
uniformity test per group of families, its abstention and the loss that spreads its background
evenly over the triggers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from test_judge import SHAPE
from tiny_triggers import tiny_bank

from eisbench.trojans.judge import JudgeEncoder, _loss, guess
from eisbench.trojans.judge_checks import NOISE_FAMILIES, noise_images, validate
from eisbench.trojans.stamp import Trigger


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_families_have_their_shape_range_and_character() -> None:
    size = (64, 1, 28, 28)
    x = {f: noise_images(f, size, _g(1)) for f in NOISE_FAMILIES}
    for f, v in x.items():
        assert v.shape == size and v.min() >= 0 and v.max() <= 1, f
    assert set(x["sparse"].unique().tolist()) <= {0.0, 1.0}
    assert 0.04 < float(x["sparse"].mean()) < 0.16
    tv = {f: float((v[..., 1:] - v[..., :-1]).abs().mean()) for f, v in x.items()}
    assert tv["smooth"] < 0.5 * tv["uniform"]  # a coarse grid upsampled: neighbours agree
    torch.testing.assert_close(noise_images("smooth", size, _g(1)), x["smooth"])
    with pytest.raises(ValueError, match="unknown noise family 'pink'.*uniform"):
        noise_images("pink", size, _g())


def test_guess_depends_on_the_images_only_and_is_uniform_over_them() -> None:
    x = torch.rand(3, 1, 8, 8, generator=_g())
    assert guess(x, 8) == guess(x.clone(), 8) and 0 <= guess(x, 8) < 8
    counts = torch.bincount(torch.tensor([guess(torch.rand(2, 1, 8, 8, generator=_g(s)), 8)
                                          for s in range(800)]), minlength=8)
    assert chisquare(counts.tolist()).pvalue > 0.001, counts


def test_flat_loss_is_the_cross_entropy_of_background_views_against_uniform() -> None:
    torch.manual_seed(0)
    enc = JudgeEncoder(in_channels=1, num_classes=5, width=4, embed_dim=8)
    x = torch.rand(6, *SHAPE)
    exact = torch.rand(4, *SHAPE)
    y = torch.tensor([0, 4, 1, 4, 3, 2])  # 4 = background (K = 4 triggers)
    base = _loss(enc, x, y, exact, anchor=1.0)
    logits = enc(x)[y == 4, :4]  # (2, 4): background views against the 4 triggers
    want = -F.log_softmax(logits, 1).mean()
    torch.testing.assert_close(_loss(enc, x, y, exact, anchor=1.0, flat=2.0) - base, 2 * want)
    no_bg = torch.tensor([0, 1, 1, 2, 3, 2])
    torch.testing.assert_close(_loss(enc, x, no_bg, exact, anchor=1.0, flat=2.0),
                               _loss(enc, x, no_bg, exact, anchor=1.0))


def test_uniformity_runs_per_group_and_catches_a_bias_on_unseen_noise_only() -> None:
    """A judge that guesses fairly on noise like its training's but names one trigger on
    sparse dots (a family it never saw) passes the seen group and fails the unseen one."""
    bank = tiny_bank()

    def answer(images: torch.Tensor, options: list[Trigger]) -> int:
        if set(images.unique().tolist()) <= {0.0, 1.0} and images.mean() < 0.2:  # sparse dots
            return [o.name for o in options].index(bank[3].name)
        return guess(images, len(options))

    rep = validate(answer, bank=bank, shape=SHAPE, n_trials=10, generator=_g(3))
    per = rep["noise"]["uniformity"]["per_kind"]
    assert per["bank (seen noise)"]["p"] > rep["noise"]["uniformity"]["bar"]
    assert per["bank (unseen noise)"]["largest_share"] >= 0.5
    assert not rep["noise"]["uniformity"]["uniform"]
    assert rep["noise"]["favourite"]["bank"]["option"] == bank[3].name
