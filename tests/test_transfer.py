"""transfer: the transfer matrix between architectures and their accuracy when trained on
D_det, end to end on the 8x8 digits, plus the noise baseline and the correlation helper."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.transfer_matrix import correlations, same_norm_noise
from eisbench.runs import record
from eisbench.runs.store import Store
from eisbench.training import TrainConfig


def test_same_norm_noise_matches_norms_inside_the_box() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    x[:4] = 0.0  # all-black images: half of every direction is clipped away
    norms = torch.linspace(0.1, 2.0, 16)
    xn = same_norm_noise(x, norms, generator=torch.Generator().manual_seed(1))
    assert float(xn.min()) >= 0 and float(xn.max()) <= 1
    torch.testing.assert_close((xn - x).flatten(1).norm(dim=1), norms, atol=1e-4, rtol=1e-4)
    again = same_norm_noise(x, norms, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(xn, again)  # deterministic under a seed


def test_correlations() -> None:
    r, rho = correlations([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0])
    assert r == pytest.approx(1.0) and rho == pytest.approx(1.0)
    r, rho = correlations([0.1, 0.2, 0.3, 0.4], [1.0, 8.0, 27.0, 64.0])  # monotone, not linear
    assert r < 1.0 - 1e-3 and rho == pytest.approx(1.0)
    r, rho = correlations([0.4, 0.3, 0.2, 0.1], [1.0, 2.0, 3.0, 4.0])
    assert r == pytest.approx(-1.0) and rho == pytest.approx(-1.0)
    assert correlations([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        correlations([0.1, 0.2], [1.0, 2.0])


def test_transfer_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("transfer")
    cfg = dataclasses.replace(
        exp.quick, dataset="digits", seeds=(0, 1, 2), n_construct=300, n_target_train=600,
        std_train=TrainConfig(epochs=6, lr=5e-3), target_train=TrainConfig(epochs=6, lr=5e-3),
        det_train=TrainConfig(epochs=6, lr=5e-3), wrong_label_eps=2.0, wrong_label_steps=20,
        wrong_label_step_size=0.2, n_attack=120, transfer_steps=10, transfer_step_size=0.4)
    store = Store(tmp_path / "cache")
    rec = exp.run(cfg, out=tmp_path / "out", store=store)
    record.validate(dict(rec))
    archs = list(cfg.archs)
    assert [c["exhibit"] for c in rec["claims"]] == ["B", "B"]
    assert rec["claims"][0]["if_reproduced"] == "features"
    # transfer alone is inconclusive; no transfer beyond noise supports bugs
    assert (rec["claims"][1]["if_reproduced"], rec["claims"][1]["if_not"]) == (
        "inconclusive", "bugs")
    for r in rec["details"]["per_seed"]:
        assert r["sources"] == ["source", *archs] and r["targets"] == archs
        for i, row in enumerate(r["transfer"]):
            assert len(row) == len(archs)
            for j, v in enumerate(row):
                white_box = i >= 1 and i - 1 == j  # a target model attacked by itself
                assert (v is None) == white_box
                assert v is None or 0.0 <= v <= 1.0
                assert 0 <= r["n"][i][j] <= cfg.n_attack
                tu = r["transfer_untargeted"][i][j]
                assert v is None or tu >= v  # predicting y+1 implies not predicting y
        assert r["transfer"][0] == [r["transfer_from_source"][a] for a in archs]
        assert -1.0 <= r["pearson"] <= 1.0 and -1.0 <= r["spearman"] <= 1.0
        assert r["source_clean_acc"] > 0.5  # the source model learnt the digits
        assert r["source_attack_success"] > 0.3  # and its targeted attack works
        for a in archs:  # every model of D beats chance on the clean test set
            assert r["clean_acc"][a] > 0.3
    for m in ("transfer/pearson", "transfer/cross_excess_over_noise"):
        assert rec["metrics"][m]["n"] == 3
    # cached models, deterministic attacks and noise: a re-run measures the same numbers
    rec2 = exp.run(cfg, out=tmp_path / "out2", store=store)
    assert rec2["details"]["per_seed"] == rec["details"]["per_seed"]
    assert all(s["cached"] for s in rec2["stages"] if s["name"] == "train")
    html = exp.report(rec, tmp_path / "out").read_text()
    assert "Ilyas et al. 2019" in html and "data:image/png;base64" in html


def test_transfer_rejects_bad_configs(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("transfer")
    base = dataclasses.replace(exp.quick, dataset="digits", seeds=(0,), n_construct=100)
    for bad in (dict(archs=("mlp", "linear")), dict(archs=("mlp", "mlp", "cnn-small")),
                dict(archs=("mlp", "linear", "cnn-smal")), dict(n_target_train=5000),
                dict(n_det=500)):
        with pytest.raises((ValueError, KeyError)):  # KeyError: unknown model name
            exp.run(dataclasses.replace(base, **bad), out=tmp_path / "o",
                    store=Store(tmp_path / "c"))
