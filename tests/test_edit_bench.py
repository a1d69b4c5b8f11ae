"""``eisbench bench edit`` end to end on the 8x8 digits: record, metrics, claims, report,
and a second run that reuses every cached stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eisbench.bench.edit import EditBenchConfig
from eisbench.bench.registry import BENCHMARKS
from eisbench.cli import main
from eisbench.edit.unlearn import FinetuneConfig
from eisbench.runs.record import validate
from eisbench.runs.store import Store

SETS = (("n_train", "none"), ("n_test", "none"), ("epochs", 8), ("n_clean", 1),
        ("defender_frac", 0.3), ("n_tool_data", 128),
        ("tools", "neural-cleanse,adversarial-patch"), ("tool_steps", 0.1),
        ("n_patches", 2), ("finetune.steps", 15), ("lat_steps", 1), ("n_robust", 32),
        ("robust_steps", 3), ("robust_eps_l2", 0.5), ("n_ablate", 1),
        ("selectors", "activation-difference,random"), ("ablation_k_conv", 4),
        ("suite_trojans", "0"), ("n_suite", 16))


def test_bench_edit_end_to_end_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    sets = [f"--set={k}={v}" for k, v in SETS]
    assert main(["bench", "edit", "--quick", "--dataset", "digits", "--seeds", "1", *sets,
                 "--out", str(out)]) == 0
    assert "edit/true-trigger/der" in capsys.readouterr().out
    rec = json.loads((out / "record.json").read_text())
    validate(rec)
    m, d = rec["metrics"], rec["details"]
    assert d["methods"] == ["neural-cleanse", "adversarial-patch", "true-trigger",
                            "no-trigger", "fine-pruning", "lat", "lat-targeted", "input-at"]
    for meth in d["methods"]:
        for f in ("asr_after", "clean_acc_after", "der"):
            assert m[f"edit/{meth}/{f}"]["n"] == 12
        assert 0 <= m[f"edit/{meth}/der"]["value"] <= 1
    for name in ("lat/robust_acc", "lat/robust_acc_l2", "lat/clean_acc", "lat/robust_gain",
                 "edit/neural-cleanse/der_vs_no_trigger", "ablation/random/selectivity",
                 "ablation/activation-difference/selectivity_ood",
                 "ablation/activation-difference/vs_random",
                 "ablation-conv/activation-difference/selectivity",
                 "compare/lat/asr_gain_vs_input_at", "compare/lat-targeted/clean_vs_input_at",
                 "suite/lat/robust_acc", "suite/input-at/robust_gain"):
        assert name in m, name
    sel = m["ablation/random/selectivity"]  # 1 model x 10 classes: the unit is the model
    assert sel["n"] == 1 and sel["ci95"] == [-2.0, 2.0]  # fewer than 3 models: no interval
    assert sel["unit"] == "clean models (fewer than 3: the whole range)"
    assert m["edit/lat/der"]["unit"] == "trojans' models (95% t-interval)"
    assert all(v.get("unit") for v in m.values())
    assert m["edit/before/asr"]["value"] >= 0.5  # the zoo's digits trojans mostly work
    assert m["suite/lat/robust_acc"]["n"] == 1  # the suite: first seed, trojan 0 only
    assert set(d["suite_checks"]) == {"no-trigger", "lat", "lat-targeted", "input-at"}
    verdicts = {c["claim"]: c["verdict"] for c in rec["claims"]}
    assert any("true trigger removes" in c for c in verdicts)
    html = (out / "report.html").read_text()
    assert "Control benchmark" in html and html.count("<img") >= 6
    assert (out / "tools.safetensors").exists()
    assert {s["name"] for s in rec["stages"]} >= {"implant", "edit-tool", "edit",
                                                  "edit-ablation"}

    # everything is cached: a second run computes no stage
    cfg = EditBenchConfig(**{**{k: v for k, v in rec["config"].items()
                                if k not in ("finetune", "tools", "selectors", "seeds")},
                             "finetune": FinetuneConfig(**rec["config"]["finetune"]),
                             "tools": tuple(rec["config"]["tools"]),
                             "selectors": tuple(rec["config"]["selectors"]), "seeds": (0,)})
    rec2 = BENCHMARKS.get("edit").run(cfg, out=tmp_path / "out2",
                                      store=Store(tmp_path / "home" / "cache"))
    assert not [s for s in rec2["stages"] if not s["cached"]]
    assert rec2["metrics"]["edit/lat/der"] == m["edit/lat/der"]


def test_bench_edit_rejects_bad_settings(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run = BENCHMARKS.get("edit").run
    with pytest.raises(ValueError, match="gives no trigger"):
        run(EditBenchConfig(dataset="digits", tools=("fv-class-fourier",)), out=tmp_path,
            store=store)
    with pytest.raises(KeyError, match="did you mean"):
        run(EditBenchConfig(dataset="digits", tools=("neural-cleans",)), out=tmp_path,
            store=store)
    with pytest.raises(ValueError, match="n_ablate"):
        run(EditBenchConfig(dataset="digits", n_clean=1, n_ablate=2), out=tmp_path,
            store=store)
