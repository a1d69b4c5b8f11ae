"""superposition (exhibit F): the features-per-dimension measure by hand, the scaling sanity
check (exact for powers of two, float rounding otherwise, and failing once biases break
homogeneity), parameter matching, the verdict rules, and the experiment end to end on digits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.superposition import QUICK, decide, robust_curve
from eisbench.experiments.superposition_models import (
    BiasFreeMLP,
    features_per_dimension,
    layer_measures,
    matched_width,
    num_params,
    rescaled,
    scaling_check,
)
from eisbench.runs import claims, record
from eisbench.runs.store import Store
from eisbench.training import TrainConfig


def _net(seed: int = 0, *, bias: bool = False) -> BiasFreeMLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BiasFreeMLP(in_shape=(1, 8, 8), num_classes=10, widths=(32, 24, 16), bias=bias)


def _images(n: int = 300, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))  # (N,1,8,8)


def test_features_per_dimension_by_hand() -> None:
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])  # 3 neurons fed by 2 inputs
    assert features_per_dimension(w) == pytest.approx(30.0 / 3)
    assert features_per_dimension(2 * w) == pytest.approx(4 * 30.0 / 3)  # c^2, not c
    net = _net()
    assert len(layer_measures(net)) == 4  # three hidden layers and the logit layer
    assert all(p.bias is None for p in net.modules() if isinstance(p, torch.nn.Linear))


@pytest.mark.parametrize("c", [0.5, 2.0, 4.0, 8.0])
def test_scaling_by_powers_of_two_is_exact(c: float) -> None:
    net, x = _net(), _images()
    for factors in ([c] * 4, [c, 1 / c, 1, 1]):
        scaled = rescaled(net, factors)
        with torch.no_grad():
            z, zs = net(x), scaled(x)  # (N, K)
        prod = factors[0] * factors[1] * factors[2] * factors[3]
        assert torch.equal(zs, z * prod)  # exact: a power of two only shifts exponents
        assert torch.equal(zs.argmax(1), z.argmax(1))
        ratios = [a / b for a, b in zip(layer_measures(scaled), layer_measures(net),
                                        strict=True)]
        torch.testing.assert_close(torch.tensor(ratios, dtype=torch.float64),
                                   torch.tensor([f * f for f in factors], dtype=torch.float64),
                                   rtol=1e-12, atol=0)


def test_scaling_check_holds_for_any_c_and_fails_with_biases() -> None:
    x = _images()
    rows = scaling_check(_net(), x, scales=(0.5, 2.0, 3.0, 10.0))
    assert [(r["c"], r["mode"]) for r in rows][:2] == [(0.5, "all"), (0.5, "balanced")]
    for r in rows:
        assert r["pred_changed"] == 0 and r["n"] == len(x)
        assert r["max_rel_error"] < 1e-6 and r["logit_rel_error"] < 1e-5
        if r["mode"] == "all":
            torch.testing.assert_close(torch.tensor(r["ratios"]),
                                       torch.full((4,), r["c"] ** 2), rtol=1e-6, atol=0)
    # with biases the network is no longer homogeneous: the logits no longer scale by prod(c)
    biased = _net(bias=True)
    with torch.no_grad():
        for m in biased.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.fill_(0.5)
    assert max(r["logit_rel_error"] for r in scaling_check(biased, x, scales=(4.0,))) > 1e-2


def test_matched_width_and_params() -> None:
    w = matched_width(in_dim=784, num_classes=10, shallow_width=256, depth=4, bias=False)
    assert w == 160
    wide = num_params(784, [256], 10, bias=False)
    assert wide == 784 * 256 + 256 * 10
    assert abs(num_params(784, [w] * 4, 10, bias=False) / wide - 1) < 0.02
    net = BiasFreeMLP(in_shape=(1, 28, 28), num_classes=10, widths=[w] * 4)
    assert sum(p.numel() for p in net.parameters()) == num_params(784, [w] * 4, 10, bias=False)
    with pytest.raises(ValueError, match="within"):
        matched_width(in_dim=4, num_classes=2, shallow_width=3, depth=3, bias=False)


def test_robust_curve() -> None:
    norms = torch.tensor([0.0, 0.1, 0.2, float("inf")])
    assert robust_curve(norms, [0.0, 0.1, 0.15, 1.0]) == [0.75, 0.5, 0.5, 0.25]


def _m(v: float, lo: float, hi: float) -> record.Metric:
    return {"value": v, "ci95": [lo, hi], "n": 3, "higher_is_better": True}


@pytest.mark.parametrize(("clean", "rob", "l2", "changed", "expect"), [
    (_m(0.0, -0.01, 0.01), _m(0.05, 0.01, 0.09), _m(0.1, 0.02, 0.2), 0.0,
     ["reproduced", "reproduced", "reproduced"]),
    # the check fails (a prediction changed); shallow-wide clearly more robust on both
    # measures (CI upper < 0)
    (_m(0.0, -0.01, 0.01), _m(-0.2, -0.3, -0.1), _m(-0.2, -0.3, -0.01), 1.0,
     ["not reproduced", "not reproduced", "not reproduced"]),
    (_m(0.03, 0.02, 0.04), _m(0.05, 0.01, 0.09), _m(0.1, 0.02, 0.2), 0.0,
     ["reproduced", "inconclusive", "inconclusive"]),  # clean accuracies not matched
    (_m(0.0, -0.01, 0.01), _m(-0.01, -0.05, 0.03), _m(0.0, -0.1, 0.1), 0.0,
     ["reproduced", "inconclusive", "inconclusive"]),
    # the two measures disagree: robust accuracy says deep >= shallow, median L2 says not
    (_m(0.0, -0.01, 0.01), _m(0.0, -0.01, 0.01), _m(-0.2, -0.3, -0.1), 0.0,
     ["reproduced", "reproduced", "not reproduced"]),
])
def test_verdict_rules(clean: record.Metric, rob: record.Metric, l2: record.Metric,
                       changed: float, expect: list[str]) -> None:
    metrics = {"superposition/deep_minus_shallow/clean_gap": clean,
               "superposition/deep_minus_shallow/robust_gap": rob,
               "superposition/deep_minus_shallow/l2_rel_gap": l2,
               "superposition/scaling/max_rel_error": _m(1e-7, 5e-8, 2e-7),
               "superposition/scaling/pred_changed": _m(changed, changed, changed)}
    judged = decide(metrics, cfg=QUICK)
    assert [c["verdict"] for c in judged] == expect
    assert [c["role"] for c in judged] == ["check", "evidence", "evidence"]
    world = {"reproduced": "features", "not reproduced": "bugs", "inconclusive": "inconclusive"}
    assert [claims.world(c) for c in judged] == ["inconclusive"] + [world[v] for v in expect[1:]]
    assert all(c["exhibit"] == "F" for c in judged)


def test_superposition_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("superposition")
    cfg = dataclasses.replace(exp.quick, dataset="digits", n_robust=50, n_checks=20,
                              shallow_width=64, train=TrainConfig(epochs=6, lr=5e-3),
                              fmn_steps=15, scales=(0.5, 3.0))
    rec = exp.run(cfg, out=tmp_path / "out", store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    d = rec["details"]
    assert d["n_train"] == 1437  # the preset's 25000 is clipped to what digits has
    assert abs(d["params"]["deep_narrow"] / d["params"]["shallow_wide"] - 1) < 0.02
    assert len(d["widths"]["deep_narrow"]) == cfg.deep_depth
    assert [c["verdict"] for c in rec["claims"]][0] == "reproduced"  # the check holds
    for r in d["per_seed"]:
        assert len(r["scaling"]) == 2 * 2 * len(cfg.scales)  # shapes x modes x scales
        assert all(row["pred_changed"] == 0 for row in r["scaling"])
        for shape in ("shallow_wide", "deep_narrow"):
            e = r[shape]
            assert e["params"] == d["params"][shape]
            assert e["std_acc"] > 0.5  # learned something
            assert all(a >= b for a, b in zip(e["curve_l2"], e["curve_l2"][1:], strict=False))
            assert e["curve_linf"][0] == e["curve_l2"][0]  # at eps=0: the clean-correct share
            assert {c["name"] for c in e["checks"]} >= {"gradients", "eps-curve"}
    html = exp.report(rec, tmp_path / "out").read_text()
    assert "Scaling sanity check" in html and "data:image/png;base64" in html
    assert "Huang et al. 2022" in html
