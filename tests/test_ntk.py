"""ntk: eigen-features of the empirical NTK checked against the kernel formula, the attack
against the closed-form worst case of a linear model, the memory budget, and the experiment
end to end on the 8x8 digits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from eisbench import data
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.ntk import QUICK, choose_n, decide, memory_bytes
from eisbench.experiments.ntk_features import (
    EigenFeatures,
    attack_features,
    eigen_tangents,
    jacobian,
    scalar_mlp,
)
from eisbench.runs import record
from eisbench.runs.record import Metric
from eisbench.runs.result import Result
from eisbench.runs.store import Store


def _digits(n: int, n_test: int) -> tuple[torch.Tensor, ...]:
    d = data.load("digits")
    keep = (d.y_train == 3) | (d.y_train == 7)
    keep_t = (d.y_test == 3) | (d.y_test == 7)
    y = torch.where(d.y_train[keep] == 7, 1.0, -1.0)
    y_t = torch.where(d.y_test[keep_t] == 7, 1.0, -1.0)
    return d.x_train[keep][:n], y[:n], d.x_test[keep_t][:n_test], y_t[:n_test]


def test_features_are_the_kernel_formula_and_sum_to_the_kernel_predictor() -> None:
    x, y, xt, _ = _digits(40, 12)
    net = scalar_mlp(64, width=8, depth=1, generator=torch.Generator().manual_seed(0))
    j = jacobian(net, x, chunk=16)  # (40, P)
    assert j.shape == (40, sum(p.numel() for p in net.parameters()))
    m = 6
    lam, align, w = eigen_tangents(j, y, m=m, rcond=1e-12)
    feats = EigenFeatures(net, w)
    got = feats.on(xt, chunk=5).double()  # (m + 2, 12)
    # f_i(x) = K(x, X) v_i v_i^T y / lambda_i with K(x, X) = J(x) J^T, all in float64
    jd, jtd = j.double(), jacobian(net, xt).double()
    lam64, v = torch.linalg.eigh(jd @ jd.T)
    lam64, v = lam64.flip(0), v.flip(1)
    kx = jtd @ jd.T  # (12, 40)
    want = (kx @ v[:, :m]) * (v[:, :m].T @ y.double()) / lam64[:m]  # (12, m)
    torch.testing.assert_close(got[:m], want.T, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(lam, lam64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[m], want.sum(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[m + 1], kx @ torch.linalg.solve(jd @ jd.T, y.double()),
                               rtol=1e-2, atol=1e-2)
    assert abs(float(align.sum()) - 1.0) < 1e-6  # the eigenvectors span all of y
    on_train = EigenFeatures(net, w[:, m + 1:]).on(x)[0]  # the kernel predictor interpolates
    assert torch.equal(torch.sign(on_train), y)


def test_attack_reaches_the_closed_form_worst_case_of_a_linear_model() -> None:
    x, y, xt, yt = _digits(30, 25)
    net = scalar_mlp(64, width=0, depth=0, generator=torch.Generator().manual_seed(1))
    _, _, w = eigen_tangents(jacobian(net, x), y, m=5, rcond=1e-12)
    feats = EigenFeatures(net, w)  # f_i(x) = g_i . x + c_i
    eps = 0.05
    ok = attack_features(feats, xt, yt, n_features=feats.n, eps=eps, steps=8,
                         step_size=2.5 * eps / 8, norm="linf",
                         generator=torch.Generator().manual_seed(0))
    for i in range(feats.n):
        gi = torch.autograd.functional.jacobian(
            lambda z, i=i: feats(z.unsqueeze(0).expand(feats.n, *z.shape))[i].sum(), xt[:1])
        lo, hi = (xt - eps).clamp(0, 1), (xt + eps).clamp(0, 1)
        worst = torch.where(yt.view(-1, 1, 1, 1) * gi > 0, lo, hi)  # minimises y f_i
        want = yt * feats(worst.unsqueeze(0).expand(feats.n, *worst.shape))[i].detach() > 0
        assert torch.equal(ok[i], want), i
    assert bool((ok.float().mean(1) < 1).any())  # the attack bites


def test_a_smaller_memory_budget_gives_a_smaller_subset() -> None:
    p, d = 54465, 784
    n8, est8, bound8 = choose_n(20000, cfg=dataclasses.replace(QUICK, n_max=None), p=p, d=d)
    assert est8 <= 8 * 2**30 and bound8 == "memory" and n8 < 20000
    assert memory_bytes(n8 + 1, p=p, d=d, hidden=128, m=32, chunk=128) > 8 * 2**30
    small = dataclasses.replace(QUICK, n_max=None, memory_gib=0.5)
    n_s, est_s, bound_s = choose_n(20000, cfg=small, p=p, d=d)
    assert n_s < n8 and bound_s == "memory" and est_s <= 0.5 * 2**30
    assert choose_n(20000, cfg=QUICK, p=p, d=d)[2] == "n_max"
    assert choose_n(300, cfg=QUICK, p=p, d=d)[:1] == (300,)
    with pytest.raises(ValueError, match="memory_gib"):
        choose_n(20000, cfg=dataclasses.replace(QUICK, memory_gib=0.07), p=p, d=d)


def test_ntk_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("ntk")
    cfg = dataclasses.replace(exp.quick, dataset="digits", classes=(3, 7), width=16,
                              n_features=8, n_test_robust=40, steps=5, eps=0.1,
                              n_show=(0, 1, 7), memory_gib=0.1)
    rec = exp.run(cfg, out=tmp_path / "out", store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    assert [c["exhibit"] for c in rec["claims"]] == ["G", "G"]
    runs = rec["details"]["per_seed"]
    assert len(runs) == 3 and len({tuple(r["eigenvalues"][:3]) for r in runs}) == 3
    for r in runs:
        assert r["n"] == 284 and r["n_bound"] == "available"
        assert r["memory_estimate_gib"] <= cfg.memory_gib
        assert len(r["clean_acc"]) == len(r["robust_acc"]) == 8
        assert all(a <= c + 1e-9 for a, c in zip(r["robust_acc"], r["clean_acc_attacked_set"],
                                                 strict=True))
        lam = r["eigenvalues"]
        assert all(a >= b for a, b in zip(lam, lam[1:], strict=False)) and lam[-1] > 0
        assert r["kernel"][0] > 0.9  # the kernel machine separates 3 from 7
    again = exp.run(cfg, out=tmp_path / "out2", store=Store(tmp_path / "cache"))
    assert all(s["cached"] for s in again["stages"]) and again["metrics"] == rec["metrics"]
    res = exp.measure(cfg, out=tmp_path / "out3", store=Store(tmp_path / "cache"))
    assert isinstance(res, Result) and res.metrics == rec["metrics"]
    assert res.claims == rec["claims"] and res.data == rec["data"]
    assert not (tmp_path / "out3" / "record.json").exists()  # the envelope is run's job
    html = exp.report(rec, tmp_path / "out").read_text()
    assert "Tsilivis" in html and html.count("data:image/png;base64") == 3


def test_decide_follows_its_rules() -> None:
    def m(v: float, lo: float, hi: float) -> Metric:
        return {"value": v, "ci95": [lo, hi], "n": 3, "higher_is_better": True}

    base = {"ntk/spearman_index_survival": m(-0.6, -0.8, -0.4),
            "ntk/spearman_index_robust": m(-0.6, -0.8, -0.4),
            "ntk/spearman_index_clean": m(0.0, -0.1, 0.1),
            "ntk/high_index/clean_acc": m(0.6, 0.56, 0.64),
            "ntk/high_index/robust_acc": m(0.02, 0.0, 0.05)}
    assert [c["verdict"] for c in decide(base, chance=0.55, n_features=8)] == [
        "reproduced", "reproduced"]
    flipped = base | {"ntk/spearman_index_survival": m(0.5, 0.2, 0.8),
                      "ntk/high_index/clean_acc": m(0.5, 0.48, 0.52)}
    assert [c["verdict"] for c in decide(flipped, chance=0.55, n_features=8)] == [
        "not reproduced", "not reproduced"]
    unsure = base | {"ntk/spearman_index_survival": m(-0.2, -0.6, 0.2),
                     "ntk/high_index/robust_acc": m(0.08, 0.02, 0.14)}
    assert [c["verdict"] for c in decide(unsure, chance=0.55, n_features=8)] == [
        "inconclusive", "inconclusive"]
    # robust accuracy falls with the index only because clean accuracy does (usefulness): the
    # survival ratio stays flat, and the claim is not reproduced
    useful_only = base | {"ntk/spearman_index_survival": m(0.0, -0.1, 0.1),
                          "ntk/spearman_index_clean": m(-0.6, -0.8, -0.4)}
    first = decide(useful_only, chance=0.55, n_features=8)[0]
    assert first["verdict"] == "not reproduced" and "survival" in first["rule"]
    assert "spearman_index_survival" in first["measured"]
