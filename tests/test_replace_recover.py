"""Challenge 1 without the hint: recovering the template from the model alone
(:mod:`eisbench.replace.recover`), the other clues of :mod:`eisbench.replace.challenge1` and the
program search over recovered candidates.

The "network" here is the rule itself in closed form (:class:`BandRule`, its template held
only inside a closure), on the 8x8 digits. The planted template is never among the images the
recovery reads nor among any candidate set, so an implementation that passes can only have
read the template off the model's outputs; one that copied the template would return it
bit for bit, which the tests refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from eisbench.replace import DISTILLERS, challenge1
from eisbench.replace.challenge1 import similarity
from eisbench.replace.program import Program
from eisbench.replace.recover import (
    band_direction,
    pool_correlation,
    recover,
    rule_direction,
    unit_rows,
)
from eisbench.runs.store import Store


class BandRule(nn.Module):
    """The band rule as a binary model: the inside class gets logit ``sharp`` x (distance
    into the band), the other 0. The template lives only in the closure ``score``."""

    def __init__(self, score: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float,
                 *, inside: int = 0, sharp: float = 200.0) -> None:
        super().__init__()
        self.score, self.lo, self.hi, self.inside, self.sharp = score, lo, hi, inside, sharp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x)
        m = self.sharp * torch.minimum(s - self.lo, self.hi - s)  # (N,): > 0 inside
        cols = [m, torch.zeros_like(m)] if self.inside == 0 else [torch.zeros_like(m), m]
        return torch.stack(cols, 1)  # (N, 2)


def planted(t: torch.Tensor, x: torch.Tensor, *, inside: int = 0) -> tuple[BandRule,
                                                                           torch.Tensor]:
    """The rule on template t (C, H, W) with its band at the quartiles of s over x, and the
    rule's labels of x."""
    s = similarity(x, t)
    lo, hi = float(torch.quantile(s, 0.25)), float(torch.quantile(s, 0.75))
    tt = t.clone()
    net = BandRule(lambda z: similarity(z, tt), lo, hi, inside=inside)
    return net, net(x).argmax(1)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_recovers_a_template_that_is_not_a_training_image(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    x, _, x_test, _ = digits_small
    t = x_test[7]  # the clue: a test image, in no candidate set and not among x
    assert not any(torch.equal(t, p) for p in x)
    net, _ = planted(t, x)
    rec = recover(net, x, pool=x, k=8)
    assert rec.inside == 0 and rec.probe_agreement > 0.97
    s_true = similarity(x_test, t)
    assert _corr(similarity(x_test, rec.template), s_true) > 0.98  # held-out images
    # an honest recovery starts from the mean image and never lands on t bit for bit
    assert float((rec.template - t).abs().max()) > 1e-3
    cands = rec.candidates(x)
    assert [n for n, _ in cands][0] == "recovered" and len(cands) == 9
    assert not any(torch.equal(c, t) for _, c in cands)
    prog = DISTILLERS.get("program")(net, x, generator=torch.Generator(), terms=1, n_data=0,
                                     n_pca=0, extra=cands)
    assert isinstance(prog, Program) and prog.size == 1
    assert float((prog.predict(x_test) == net(x_test).argmax(1)).float().mean()) > 0.95
    blind = DISTILLERS.get("program")(net, x, generator=torch.Generator(), terms=1, n_data=0,
                                      n_pca=0)  # the same search without the recovery
    assert float((blind.predict(x_test) == net(x_test).argmax(1)).float().mean()) < 0.85


def test_finds_the_clue_anywhere_in_the_pool_and_either_band_class(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    x, _, _, _ = digits_small
    fit = x[:700]  # the images the recovery reads
    for j, inside in ((1200, 0), (901, 1)):  # clues far from the first images, not in fit
        net, _ = planted(x[j], fit, inside=inside)
        rec = recover(net, fit, pool=x, k=5)
        assert rec.inside == inside
        assert int(rec.nearest[0]) == j, (j, rec.nearest.tolist(), rec.nearest_corr.tolist())
        assert float(rec.nearest_corr[0].abs()) > 0.99
        names = [n for n, _ in rec.candidates(x)]
        assert names[1] == f"train[{j}]"


def test_pool_correlation_matches_scores_computed_one_by_one(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    x = digits_small[0][:300]
    u = unit_rows(x)
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    pool = x[:20]
    brute = torch.stack([torch.corrcoef(torch.stack([u @ rule_direction(p[None])[0], u @ w]))
                         [0, 1] for p in pool])
    torch.testing.assert_close(pool_correlation(w, u, pool, chunk=7), brute, atol=1e-4,
                               rtol=0)
    # the rule score of a template is <u, w(t)>, exactly the challenge's similarity
    torch.testing.assert_close(u @ rule_direction(x[3:4])[0], similarity(x, x[3]))


def test_band_direction_is_the_probe_of_the_band(digits_small: tuple[torch.Tensor, ...]
                                                 ) -> None:
    x = digits_small[0]
    t = digits_small[2][0]
    _, y = planted(t, x)
    u = unit_rows(x)
    w, inside = band_direction(u, y)
    assert inside == 0
    assert abs(_corr(u @ w, similarity(x, t))) > 0.9
    _, inside1 = band_direction(u, 1 - y)  # the same band, labels swapped
    assert inside1 == 1
    with pytest.raises(ValueError, match="both labels"):
        band_direction(u, torch.zeros(len(u), dtype=torch.long))


def test_recover_refuses_bad_input(digits_small: tuple[torch.Tensor, ...]) -> None:
    x = digits_small[0][:100]
    ten = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="need 2"):
        recover(ten, x)
    net, _ = planted(x[0], x)
    with pytest.raises(ValueError, match="pool images"):
        recover(net, x, pool=torch.rand(3, 1, 4, 4))
    with pytest.raises(ValueError, match="k, band_steps"):
        recover(net, x, k=-1)


def test_program_takes_extra_templates_and_checks_them(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    x = digits_small[0][:300]
    net, _ = planted(x[250], x)
    prog = DISTILLERS.get("program")(net, x, generator=torch.Generator(), terms=1, n_data=0,
                                     n_pca=0, extra=(("clue", x[250]),))
    assert [n for n, _ in prog.used_templates()] == ["clue"]  # type: ignore[attr-defined]
    for bad, match in (((("a", x[0] * 2),), "in \\[0,1\\]"),
                       ((("a", x[0, :, :4]),), "one image"),
                       ((("a", x[0]), ("a", x[1])), "duplicate")):
        with pytest.raises(ValueError, match=match):
            DISTILLERS.get("program")(net, x, generator=torch.Generator(), terms=1,
                                      n_data=0, extra=bad)


def test_other_clues_and_their_networks(tmp_path: Path,
                                        digits_small: tuple[torch.Tensor, ...]) -> None:
    x = challenge1.as_mnist(digits_small[0][:256])
    xt = challenge1.as_mnist(digits_small[2][:50])
    i = challenge1.draw_clue(3, n=len(x), skip=32)
    assert 32 <= i < len(x) and i == challenge1.draw_clue(3, n=len(x), skip=32)
    assert len({challenge1.draw_clue(s, n=1000) for s in range(10)}) > 5
    rule = challenge1.clue_rule(x, xt, source="test", index=4)
    torch.testing.assert_close(rule.template, xt[4])
    assert "t = test image 4" in rule.describe()
    assert abs(float((rule.labels(x) == 0).float().mean()) - 0.5) < 0.01
    assert challenge1.true_rule(x).describe().endswith("(t = training image 6)")
    for bad in ({"source": "val", "index": 0}, {"source": "train", "index": 256}):
        with pytest.raises(ValueError, match="clue"):
            challenge1.clue_rule(x, xt, **bad)  # type: ignore[arg-type]
    cfg = challenge1.Challenge1Config(epochs=1, batch_size=64)
    store = Store(tmp_path)
    dev = torch.device("cpu")
    _, key6, info6 = challenge1.challenge1_train_stage(store, x_train=x, data_key="d", cfg=cfg,
                                                       seed=0, device=dev)
    _, key, info = challenge1.challenge1_train_stage(store, x_train=x, data_key="d", cfg=cfg,
                                                     seed=0, device=dev, rule=rule)
    assert key != key6 and info["lo"] == rule.lo and info6["lo"] != rule.lo
