"""tsipras: the exact Linf worst case of a linear model, the closed-form theory, the verdict
rules, and the experiment end to end (small synthetic draw + the 8x8 digits)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch

from eisbench import data
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.tsipras import TsiprasConfig, decide
from eisbench.experiments.tsipras_linear import (
    linear_theory,
    pgd_linear,
    robust_margin,
    train_linear,
)
from eisbench.runs import record
from eisbench.runs.store import Store
from eisbench.training import TrainConfig


def test_robust_margin_is_the_worst_corner_by_hand() -> None:
    w, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor(0.25)
    x, y, eps = torch.tensor([[1.0, 1.0, -1.0]]), torch.tensor([1.0]), 0.1
    # y f(x) = 1 - 2 - 0.5 + 0.25 = -1.25; eps |w|_1 = 0.35
    torch.testing.assert_close(robust_margin(w, b, x, y, eps=eps), torch.tensor([-1.6]))
    corners = torch.tensor(list(itertools.product((-eps, eps), repeat=3)))  # (8, 3)
    brute = (y * ((x + corners) @ w + b)).min()
    torch.testing.assert_close(robust_margin(w, b, x, y, eps=eps)[0], brute)


def test_pgd_reaches_the_exact_worst_case_of_a_linear_model() -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(300, 7, generator=g), torch.randn(7, generator=g)
    y = torch.where(torch.rand(300, generator=g) < 0.5, -1.0, 1.0)
    x_adv = pgd_linear(w, torch.tensor(0.1), x, y, eps=0.3, steps=10, generator=g)
    assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6
    torch.testing.assert_close(y * (x_adv @ w + 0.1),
                               robust_margin(w, torch.tensor(0.1), x, y, eps=0.3))


def test_theory_endpoints_and_bayes_rate_by_sampling() -> None:
    d, p = 25, 0.9
    eta = 2 / math.sqrt(d)
    t0 = linear_theory(d=d, p=p, eta=eta, eps=0.0)
    assert t0["robust_acc"] == pytest.approx(t0["std_acc"])
    # the Bayes classifier: log-odds ln(p/(1-p)) x_1 + 2 eta sum x_i
    ds = data.load("tsipras", d=d, p=p, n_train=0, n_test=200000, seed=1)
    x, y = ds.x_test.flatten(1), ds.y_test * 2 - 1
    score = math.log(p / (1 - p)) * x[:, 0] + 2 * eta * x[:, 1:].sum(1)
    assert float(((score > 0).long() * 2 - 1 == y).float().mean()) == pytest.approx(
        t0["std_acc"], abs=0.003)
    assert t0["share"] == pytest.approx(math.log(p / (1 - p))
                                        / (math.log(p / (1 - p)) + 2 * eta * d), abs=0.01)
    robs = [linear_theory(d=d, p=p, eta=eta, eps=k * eta)["robust_acc"]
            for k in (0, 0.25, 0.5, 1, 2)]
    assert all(b <= a + 1e-12 for a, b in zip(robs, robs[1:], strict=False))
    for k in (1.0, 2.0):  # eps >= eta: the robust feature alone, accuracy p
        assert linear_theory(d=d, p=p, eta=eta, eps=k * eta) == {
            "robust_acc": p, "std_acc": p, "share": 1.0}


def test_robust_training_of_a_linear_model_drops_the_weak_features() -> None:
    ds = data.load("tsipras", d=50, p=0.9, n_train=3000, n_test=0, seed=0)
    x, y = ds.x_train.flatten(1), ds.y_train.float() * 2 - 1
    eta = 2 / math.sqrt(50)
    w0, _ = train_linear(x, y, eps=0.0, steps=200, lr=0.05)
    w2, _ = train_linear(x, y, eps=2 * eta, steps=200, lr=0.05)
    assert float(w0[0].abs() / w0.abs().sum()) < 0.3
    assert float(w2[0].abs() / w2.abs().sum()) > 0.8


def _m(v: float, lo: float, hi: float) -> record.Metric:
    return {"value": v, "ci95": [lo, hi], "n": 3, "higher_is_better": True}


@pytest.mark.parametrize(("share", "std", "img_std", "img_rob", "expect"), [
    ((0.07, 0.95), (0.99, 0.90), (0.97, 0.90), (0.05, 0.6), "reproduced"),
    ((0.07, 0.08), (0.98, 0.995), (0.96, 0.975), (0.05, 0.06), "not reproduced"),
])
def test_verdict_rules(share: tuple[float, float], std: tuple[float, float],
                       img_std: tuple[float, float], img_rob: tuple[float, float],
                       expect: str) -> None:
    met = {}
    for k, (a, b) in (("robust_feature_share", share), ("std_acc", std)):
        met[f"tsipras/synthetic/eps=0eta/{k}"] = _m(a, a - 0.005, a + 0.005)
        met[f"tsipras/synthetic/eps=2eta/{k}"] = _m(b, b - 0.005, b + 0.005)
    for k, (a, b) in (("std_acc", img_std), ("robust_acc", img_rob)):
        met[f"tsipras/mnist/train_eps=0/{k}"] = _m(a, a - 0.005, a + 0.005)
        met[f"tsipras/mnist/train_eps=0.3/{k}"] = _m(b, b - 0.005, b + 0.005)
    claims = decide(met, syn_eps=(0.0, 1.0, 2.0), p=0.9, train_eps=(0.0, 0.3), dataset="mnist",
                   eval_eps=0.1)
    assert [c["verdict"] for c in claims] == [expect] * 6
    # three theorems on synthetic data and "AT buys robustness" are checks; the image cost at
    # the largest eps supports bugs when absent, at the mildest eps features when present
    assert [c["role"] for c in claims] == ["check"] * 4 + ["evidence"] * 2
    assert [(c["if_reproduced"], c["if_not"]) for c in claims] == [
        ("inconclusive", "inconclusive")] * 4 + [("inconclusive", "bugs"),
                                                 ("features", "inconclusive")]
    assert {c["exhibit"] for c in claims} == {"C"}


def _tiny() -> TsiprasConfig:
    quick: TsiprasConfig = EXPERIMENTS.get("tsipras").quick
    return dataclasses.replace(
        quick, dataset="digits", seeds=(0, 1), syn_d=50, syn_p=0.9, syn_n_train=2000,
        syn_n_test=2000, syn_eps=(0.0, 0.5, 1.0, 2.0), syn_steps=200, syn_pgd_n=500,
        n_train=None, n_test=None, n_test_robust=60, train_eps=(0.0, 0.1),
        std_train=TrainConfig(epochs=5, lr=5e-3),
        adv_train=TrainConfig(method="fast-at", epochs=5, lr=5e-3), eval_eps=0.05, n_checks=30)


def test_tsipras_end_to_end(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("tsipras")
    cfg = _tiny()
    rec = exp.run(cfg, out=tmp_path / "out", store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    assert len(rec["claims"]) == 6 and {c["exhibit"] for c in rec["claims"]} == {"C"}
    for s in rec["details"]["per_seed"]["synthetic"]:
        rows = s["rows"]
        for r in rows:
            assert r["robust_acc"] <= r["std_acc"]  # the exact worst case never helps
            assert abs(r["pgd_minus_exact"]) <= 1 / 500  # PGD finds that worst case
        assert rows[0]["robust_feature_share"] < 0.5 < rows[-1]["robust_feature_share"]
        under = [r["standard_model_robust_acc"] for r in rows]
        assert all(b <= a for a, b in zip(under, under[1:], strict=False))
        assert rows[-1]["std_acc"] == pytest.approx(0.9, abs=0.03)  # x_1 alone: accuracy p
        assert rows[0]["std_acc"] > rows[-1]["std_acc"]
    assert rec["claims"][0]["verdict"] == "reproduced"
    img = rec["details"]["per_seed"]["images"]
    assert [(r["seed"], r["train_eps"]) for r in img] == [(0, 0.0), (0, 0.1), (1, 0.0), (1, 0.1)]
    for e in (0, 0.1):
        assert rec["metrics"][f"tsipras/digits/train_eps={e:g}/robust_acc"]["n"] == 2
    html = exp.report(rec, tmp_path / "out").read_text()
    assert "Tsipras" in html and html.count("data:image/png;base64") >= 2
    for bad, match in (({"dataset": "tsipras"}, "image dataset"),
                       ({"syn_eps": (0.0, 3.0)}, "2p - 1"), ({"syn_eps": (0.0, 0.5)}, "reach 1"),
                       ({"train_eps": (0.1,)}, "start at 0")):
        with pytest.raises(ValueError, match=match):
            exp.run(dataclasses.replace(cfg, **bad), out=tmp_path / "x",
                    store=Store(tmp_path / "cache"))
