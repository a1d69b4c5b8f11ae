"""End-to-end ilyas (Ilyas et al. 2019) on a tiny subset of real data (8x8 digits), in seconds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from eisbench.attacks import AttackConfig
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.ilyas import decide
from eisbench.runs import record
from eisbench.runs.store import Store
from eisbench.training import TrainConfig

METRICS = [f"{m}/{k}" for m in ("train_on_D", "adv_train_on_D", "train_on_D_R", "train_on_D_NR",
                                 "train_on_D_rand", "train_on_D_det")
           for k in ("std_acc", "robust_acc")]


def _tiny() -> object:
    exp = EXPERIMENTS.get("ilyas")
    return dataclasses.replace(
        exp.quick, dataset="digits", seeds=(0, 1), n_construct=120, n_test_robust=60,
        std_train=TrainConfig(epochs=3, lr=5e-3),
        robust_train=TrainConfig(method="fast-at", epochs=3, lr=5e-3, eps=0.1),
        fresh_train=TrainConfig(epochs=3, lr=5e-3), inversion_steps=5, wrong_label_steps=5,
        eval_attack=AttackConfig(eps=0.05, steps=3), n_checks=30)


def test_ilyas_end_to_end_and_resume(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("ilyas")
    cfg = _tiny()
    store = Store(tmp_path / "cache")
    rec = exp.run(cfg, out=tmp_path / "a", store=store)
    record.validate(dict(rec))
    assert set(METRICS) <= set(rec["metrics"])
    for name in METRICS:
        assert rec["metrics"][name]["n"] == 2
    assert {c["verdict"] for c in rec["claims"]} <= set(record.VERDICTS)
    assert len(rec["claims"]) == 4
    assert rec["details"]["attack"].startswith("suite fast (apgd ")
    assert rec["details"]["curve_attack"].startswith("PGD-3 linf eps=0.05")
    for runs in rec["details"]["per_seed"].values():  # every robust number carries its checks
        for m in runs:
            assert {c["name"] for c in m["checks"]} >= {"gradients", "control-falls"}
    report = exp.report(rec, tmp_path / "a")
    html = report.read_text()
    assert "Verdicts" in html and "data:image/png;base64" in html and "D_det" in html
    assert "Sanity checks of the robust accuracies" in html
    # an interrupted run: drop one finished evaluation; the rerun recomputes only that stage
    evals = sorted((tmp_path / "cache" / "evaluate").iterdir())
    import shutil

    shutil.rmtree(evals[0])
    again = exp.run(cfg, out=tmp_path / "b", store=store)
    assert again["metrics"] == rec["metrics"]
    assert sum(not s["cached"] for s in again["stages"]) == 1
    on_disk = json.loads((tmp_path / "b" / "record.json").read_text())
    assert on_disk["metrics"] == rec["metrics"]


def _m(v: float, lo: float, hi: float) -> record.Metric:
    return {"value": v, "ci95": [lo, hi], "n": 3, "higher_is_better": True}


@pytest.mark.parametrize(("dnr_std", "dr_rob", "drand", "expect"), [
    (_m(0.95, 0.94, 0.96), _m(0.4, 0.3, 0.5), _m(0.6, 0.5, 0.7), ["reproduced"] * 4),
    # refuted: D_NR does not generalise (CI upper < 2/K); D_R gains < 0.10; D_rand and D_det
    # stay below 2/K + 0.05
    (_m(0.12, 0.1, 0.15), _m(0.01, 0.0, 0.02), _m(0.2, 0.17, 0.23), ["not reproduced"] * 4),
    # in between: D_NR generalises, though not to 0.80; D_R gain and D_rand astride the bars
    (_m(0.5, 0.4, 0.6), _m(0.12, 0.05, 0.2), _m(0.22, 0.17, 0.27), ["inconclusive"] * 4),
])
def test_verdict_rules(dnr_std: record.Metric, dr_rob: record.Metric, drand: record.Metric,
                       expect: list[str]) -> None:
    metrics = {"train_on_D_NR/std_acc": dnr_std, "train_on_D_NR/robust_acc": _m(0, 0, 0.01),
               "train_on_D/robust_acc": _m(0.0, 0.0, 0.01), "train_on_D_R/robust_acc": dr_rob,
               "train_on_D_rand/std_acc": drand, "train_on_D_det/std_acc": drand}
    claims = decide(metrics, num_classes=10)
    assert [c["verdict"] for c in claims] == expect
    assert [(c["if_reproduced"], c["if_not"]) for c in claims] == [("features", "bugs")] * 4


def test_goh_leakage_reuses_the_ilyas_cache(tmp_path: Path) -> None:
    import numpy as np

    from eisbench.experiments.goh_leakage import GohLeakageConfig, probe_predictions
    from eisbench.experiments.ilyas import derived_config

    fvb, goh = EXPERIMENTS.get("ilyas"), EXPERIMENTS.get("goh-leakage")
    tiny = _tiny()
    store = Store(tmp_path / "cache")
    fvb.run(tiny, out=tmp_path / "fvb", store=store)
    probe = TrainConfig(method="fast-at", norm="l2", eps=3.0, epochs=3, lr=5e-3)
    cfg = derived_config(GohLeakageConfig, tiny, probe_train=probe)  # type: ignore[arg-type]
    rec = goh.run(cfg, out=tmp_path / "goh", store=store)
    record.validate(dict(rec))
    # the same models and datasets, nothing retrained but the L2-robust probe model, a stage of
    # its own (one per seed) that a second run reuses
    fresh = [s for s in rec["stages"] if not s["cached"]]
    assert len(fresh) == 2 and all(s["name"] == "train" for s in fresh)
    again = goh.run(cfg, out=tmp_path / "goh2", store=store)
    assert all(s["cached"] for s in again["stages"])
    m = rec["metrics"]
    for row in rec["details"]["per_seed"]:  # accuracies against y and y+1 are disjoint events
        for pre in ("", "linf_probe/"):
            assert row[pre + "D_det"] + row[pre + "D_det_shifted"] <= 1.0 + 1e-9
    assert m["goh_leakage/D/probe_acc"]["value"] > 0.5  # the robust features know the digits
    assert "goh_leakage/linf_probe/D_rand/probe_acc" in m  # the earlier probe, beside it
    with pytest.raises(ValueError, match="probe_train must train a model robust to the L2 "):
        derived_config(GohLeakageConfig, tiny, probe_train=TrainConfig(  # type: ignore[arg-type]
            method="fast-at", norm="linf", eps=3.0))
    with pytest.raises(ValueError, match=r"probe_train\.eps=2"):
        derived_config(GohLeakageConfig, tiny, wrong_label_eps=2.0,  # type: ignore[arg-type]
                       probe_train=probe)
    assert {c["verdict"] for c in rec["claims"]} <= set(record.VERDICTS)
    assert "Goh 2019" in goh.report(rec, tmp_path / "goh").read_text()
    # the probe itself: separable features are learnt, shuffled labels are not
    g = np.random.default_rng(0)
    x = g.normal(size=(400, 5))
    y = (x[:, 0] > 0).astype(int)
    for labels, lo, hi in ((y[:300], 0.9, 1.0), (g.permutation(y[:300]), 0.0, 0.75)):
        pred = probe_predictions(x[:300], labels, x[300:], c=1.0, max_iter=500, seed=0)
        assert lo <= float((pred == y[300:]).mean()) <= hi
