"""frequency: FFT band filters, corruptions, Fourier heat maps, and the experiment end to end on
the 8x8 digits (tiny models) with its record and report."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from eisbench.data.frequency import (
    CORRUPTIONS,
    band_split,
    corrupt,
    fourier_basis,
    grid_frequencies,
    high_pass_image,
    low_frequency_fraction,
    low_pass_image,
    low_pass_raw,
    smooth_pattern,
)
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.frequency_maps import fourier_heat_map
from eisbench.runs import record
from eisbench.runs.store import Store
from eisbench.training import TrainConfig


def _images(n: int = 8, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def test_band_split_partitions_the_image_and_filters_keep_shape_and_range() -> None:
    x = _images()
    low, high = band_split(x, radius_frac=0.4)
    torch.testing.assert_close(low + high, x)
    torch.testing.assert_close(high.mean(dim=(-2, -1)), torch.zeros(8, 1), atol=1e-6, rtol=0)
    for out in (low_pass_image(x, radius_frac=0.4), high_pass_image(x, radius_frac=0.4)):
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    raw = low_pass_raw(x, radius_frac=0.4)  # a positive blur: in range before any clamping,
    assert float(raw.min()) > -1e-3 and float(raw.max()) < 1 + 1e-3  # mean kept, detail lost
    torch.testing.assert_close(raw.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)))
    assert float(raw.std()) < float(x.std())
    # a pure high-frequency cosine disappears under the low-pass and survives the high-pass
    u = fourier_basis(16, 16, 6, 5)[None, None]  # |k| = 7.8 > 0.4 * 8
    lo_u, hi_u = band_split(u, radius_frac=0.4)
    assert float(lo_u.abs().max()) < 1e-6
    torch.testing.assert_close(hi_u, u)


def test_fourier_basis_has_unit_norm_and_one_frequency() -> None:
    u = fourier_basis(12, 12, 2, -3)
    assert math.isclose(float(u.norm()), 1.0, rel_tol=1e-5)
    spec = torch.fft.fft2(u.double()).abs()
    assert set(map(tuple, (spec > 1e-6).nonzero().tolist())) == {(2, 9), (10, 3)}
    assert grid_frequencies(28, 2) == list(range(-14, 14, 2))


def test_corruptions_are_deterministic_graded_and_in_range() -> None:
    x = _images()
    for name, levels in (("gaussian_noise", (0.1, 0.3)), ("gaussian_blur", (0.5, 2.0)),
                         ("contrast", (0.7, 0.2)), ("fog", (0.3, 1.5))):
        outs = [corrupt(x, name, s, seed=1) for s in levels]
        torch.testing.assert_close(corrupt(x, name, levels[0], seed=1), outs[0])
        assert all(o.shape == x.shape and 0 <= float(o.min()) <= float(o.max()) <= 1
                   for o in outs)
        dist = [float((o - x).norm()) for o in outs]
        assert 0 < dist[0] < dist[1], name  # stronger severity, further from the clean image
    assert not torch.equal(corrupt(x, "gaussian_noise", 0.2, seed=1),
                           corrupt(x, "gaussian_noise", 0.2, seed=2))
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "snow", 1.0, seed=0)
    assert set(CORRUPTIONS) == {"gaussian_noise", "gaussian_blur", "contrast", "fog"}


def test_fog_is_low_frequency_and_noise_is_not() -> None:
    pattern = smooth_pattern(64, 28, 28, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert low_frequency_fraction(pattern, radius_frac=0.25) > 0.8  # ~5% of the plane
    assert low_frequency_fraction(noise, radius_frac=0.25) < 0.3  # white: ~area share 0.2


class _Blind(nn.Module):
    """Predicts class 0 iff the image's mean is below 0.5 (sees only the DC component)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))  # (B,)
        return torch.stack([0.5 - m, m - 0.5], dim=1)  # (B, 2)


def test_fourier_heat_map_sees_only_the_frequencies_a_model_uses() -> None:
    x = torch.full((20, 1, 8, 8), 0.45)
    y = torch.zeros(20, dtype=torch.long)
    hm = fourier_heat_map({"blind": _Blind()}, x, y, norm=2.0, stride=1, seed=0,
                          device=torch.device("cpu"))
    err = torch.tensor(hm["error"]["blind"])  # (8, 8), DC at index (4, 4)
    assert err.shape == (8, 8)
    assert 0.2 < float(err[4, 4]) < 0.8  # a DC shift of +-0.25 flips about half the images
    err[4, 4] = 0
    assert float(err.max()) == 0.0  # no other frequency moves the mean


def test_frequency_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("frequency")
    tiny = TrainConfig(epochs=3, lr=5e-3)
    cfg = dataclasses.replace(
        exp.quick, dataset="digits", seeds=(0, 1, 2), n_construct=100, std_train=tiny,
        robust_train=TrainConfig(method="fast-at", epochs=3, lr=5e-3, eps=0.1, alpha=0.125),
        filter_train=TrainConfig(epochs=10, lr=5e-3), n_filter_train=1000, n_filter_test=None,
        n_corrupt=200, n_fourier=60, fourier_stride=1, fourier_seeds=1,
        severities=(("gaussian_noise", (0.1, 0.4)), ("gaussian_blur", (0.5, 1.0)),
                    ("contrast", (0.5, 0.2)), ("fog", (0.5, 1.5))))
    store = Store(tmp_path / "cache")
    rec = exp.run(cfg, out=tmp_path / "out", store=store)
    record.validate(dict(rec))
    assert [c["exhibit"] for c in rec["claims"]] == ["H"] * 5
    assert [(c["if_reproduced"], c["if_not"]) for c in rec["claims"]] == [
        ("features", "bugs"), ("features", "inconclusive")] + [("inconclusive",) * 2] * 3
    runs = rec["details"]["per_seed"]
    assert [r["seed"] for r in runs] == [0, 1, 2]
    for r in runs:  # a model trained on clean digits beats chance on them
        assert r["filtered"]["clean"]["clean"] > 0.5
        assert set(r["corruption"]["robust"]) == {"clean", *CORRUPTIONS}
        assert all(len(v) == 2 for k, v in r["corruption"]["standard"].items() if k != "clean")
    gain = rec["metrics"]["frequency/at_gain/fog"]["value"]
    fog = {m: rec["metrics"][f"frequency/corruption/{m}/fog/mean_acc"]["value"]
           for m in ("standard", "robust")}
    assert math.isclose(gain, fog["robust"] - fog["standard"], abs_tol=1e-9)
    maps = rec["details"]["fourier"]["maps"]
    assert list(maps) == ["0"]
    err = torch.tensor(maps["0"]["error"]["standard"])  # (8, 8), symmetric under k -> -k
    assert err.shape == (8, 8) and 0 <= float(err.min()) <= float(err.max()) <= 1
    torch.testing.assert_close(err[1:, 1:], err[1:, 1:].flip(0, 1))
    spectra = rec["details"]["corruption_low_frequency_fraction"]
    assert spectra["fog"] > spectra["gaussian_noise"]
    again = exp.run(cfg, out=tmp_path / "again", store=store)  # cached models, same draws
    assert again["details"]["per_seed"] == runs
    assert all(s["cached"] for s in again["stages"])
    html = exp.report(rec, tmp_path / "out").read_text()
    assert "Fourier" in html and "Gilmer" in html and html.count("<img") >= 3
