"""The trojan benchmark's scores (combination = asking on the pooled images, leave-one-out best
pair, AUROC and its CI) and the whole benchmark end to end on the 8x8 digits: record, report,
cache (adding a tool computes only that tool)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from eisbench.bench import trojan_scores as scores
from eisbench.bench.registry import BENCHMARKS
from eisbench.bench.trojans import TrojanBenchConfig
from eisbench.cli import main
from eisbench.runs.record import validate
from eisbench.runs.store import Store
from eisbench.trojans.judge import JudgeEncoder, ask
from eisbench.trojans.stamp import Trigger


def test_combine_equals_asking_on_the_pooled_images() -> None:
    torch.manual_seed(0)
    enc = JudgeEncoder(in_channels=1, num_classes=3, width=4, embed_dim=8).eval()
    g = torch.Generator().manual_seed(0)
    opts = [Trigger(name=f"t{i}", kind="patch", icon=torch.rand(1, 3, 3, generator=g),
                    alpha=torch.ones(1, 3, 3), position=(i, i)) for i in range(4)]
    a, b = torch.rand(5, 1, 8, 8, generator=g), torch.rand(3, 1, 8, 8, generator=g)
    sa = ask(enc, images=a, options=opts, shape=(1, 8, 8)).similarities
    sb = ask(enc, images=b, options=opts, shape=(1, 8, 8)).similarities
    pooled = ask(enc, images=torch.cat([a, b]), options=opts, shape=(1, 8, 8)).similarities
    got = scores.combine({"a": sa[None], "b": sb[None]}, ["a", "b"], counts={"a": 5, "b": 3})
    assert torch.allclose(got[0], pooled, atol=1e-6)


def test_success_grid_best_pair_and_its_leave_one_out_estimate() -> None:
    # 3 trojans, 2 options, true answer 0 each time; similarities chosen by hand
    sims = {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.3]]),
            "b": torch.tensor([[0.0, 0.4], [0.9, 0.0], [0.0, 1.2]]),
            "c": torch.tensor([[0.0, 0.4], [0.0, 0.2], [1.0, 0.0]])}
    grid = scores.success_grid(sims, answers=[0, 0, 0])
    assert grid == {"a": [True, False, False], "b": [False, True, False],
                    "c": [False, False, True]}
    bp = scores.best_pair(sims, answers=[0, 0, 0])
    # pairs (mean similarities): ab -> [T, F, F], ac -> [T, F, T], bc -> [F, T, F]
    assert bp.pair == ("a", "c") and bp.correct == [True, False, True]
    # leave trojan 0 out: ac and bc tie (1 of 2), ac comes first and passes trojan 0;
    # leave 1 out: ac (2 of 2) fails it; leave 2 out: all tie, ab comes first and fails it
    assert bp.cv_pairs == [("a", "c"), ("a", "c"), ("a", "b")]
    assert bp.cv_correct == [True, False, False]
    r = scores.rate(bp.correct)
    assert r["value"] == pytest.approx(2 / 3) and r["ci95"][0] < 2 / 3 < r["ci95"][1]
    with pytest.raises(ValueError, match="trojans=2"):
        scores.success_grid(sims, answers=[0, 0])


def test_detection_auroc_matches_sklearn_and_brackets() -> None:
    g = torch.Generator().manual_seed(0)
    pos = (torch.randn(10, generator=g) + 1).tolist()
    neg = torch.randn(9, generator=g).tolist()
    det = scores.detection_auroc(pos, neg, generator=torch.Generator().manual_seed(1))
    ref = roc_auc_score([1] * 10 + [0] * 9, pos + neg)
    assert det.auroc == pytest.approx(ref)
    assert det.ci95[0] <= det.auroc <= det.ci95[1] and det.ci95[1] - det.ci95[0] > 0.05
    perfect = scores.detection_auroc([5.0, float("inf")], [0.0, 1.0],
                                     generator=torch.Generator().manual_seed(1))
    assert perfect.auroc == 1.0 and perfect.ci95 == (1.0, 1.0)
    ties = scores.detection_auroc([1.0, 1.0], [1.0, 1.0],
                                  generator=torch.Generator().manual_seed(1))
    assert ties.auroc == 0.5
    with pytest.raises(ValueError, match="at least 2"):
        scores.detection_auroc([1.0], [0.0, 1.0], generator=torch.Generator())


TINY = TrojanBenchConfig(dataset="digits", epochs=12, n_clean=2,
                         tools=("neural-cleanse", "fv-class-fourier"), tool_steps=0.2,
                         n_images=4, n_data=128, judge_steps=300, judge_trials=2, n_attr=8,
                         scan_methods=("neural-cleanse",), scan_steps=30, n_scan=64, seeds=(0,))


def test_bench_end_to_end_on_digits_caches_every_stage(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EISBENCH_QUIET", "1")
    out = tmp_path / "out"
    sets = [f"--set={k}={v}" for k, v in (
        ("n_train", "none"), ("epochs", 12), ("n_clean", 2),
        ("tools", "neural-cleanse,fv-class-fourier"),
        ("tool_steps", 0.2), ("n_images", 4), ("n_data", 128), ("judge_steps", 300),
        ("judge_trials", 2), ("n_attr", 8), ("scan_methods", "neural-cleanse"),
        ("scan_steps", 30), ("n_scan", 64))]
    assert main(["bench", "trojans", "--quick", "--dataset", "digits", "--seeds", "1",
                 *sets, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tool/all/success_rate" in printed and "judge/true_trigger_acc" in printed
    rec = json.loads((out / "record.json").read_text())
    validate(rec)
    assert rec["config"]["tools"] == list(TINY.tools) and rec["config"]["seeds"] == [0]
    m = rec["metrics"]
    for name in ("judge/true_trigger_acc", "judge/noise_acc", "tool/neural-cleanse/success_rate",
                 "tool/fv-class-fourier/success_rate", "tool/all/success_rate",
                 "tool/best_pair/success_rate", "tool/noise/success_rate",
                 "attribution/occlusion/correlation", "attribution/blank/correlation",
                 "detection/auroc", "detection/neural-cleanse/target_found"):
        assert name in m, name
    assert m["tool/all/success_rate"]["n"] == 12 and len(rec["details"]["zoo"]) == 12
    assert m["attribution/blank/correlation"]["value"] == 0.0
    assert m["detection/auroc"]["n"] == 14
    key = json.loads((out / "quiz.key.json").read_text())
    assert len(key) == 12 * 2 and all(0 <= v < 8 for v in key.values())
    assert (out / "quiz.html").read_text().count("<fieldset") == 24
    html = (out / "report.html").read_text()
    assert "Trojan rediscovery benchmark" in html and html.count("<img") >= 12 + 4
    assert {s["name"] for s in rec["stages"]} >= {"implant", "train", "judge", "tool-images",
                                                  "scan"}
    assert not any(s["cached"] for s in rec["stages"])

    # adding a tool computes its images and nothing else
    store = Store(tmp_path / "home" / "cache")
    more = dataclasses.replace(TINY, tools=(*TINY.tools, "snafue"))
    rec2 = BENCHMARKS.get("trojans").run(more, out=tmp_path / "out2", store=store)
    fresh = [s for s in rec2["stages"] if not s["cached"]]
    assert {s["name"] for s in fresh} == {"tool-images"} and len(fresh) == 12
    assert rec2["details"]["grid"]["neural-cleanse"] == rec["details"]["grid"]["neural-cleanse"]


def test_bench_rejects_bad_settings(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(KeyError, match="did you mean"):
        BENCHMARKS.get("trojans").run(dataclasses.replace(TINY, tools=("neural-cleans",)),
                                      out=tmp_path, store=store)
    with pytest.raises(ValueError, match="n_clean"):
        BENCHMARKS.get("trojans").run(dataclasses.replace(TINY, n_clean=1), out=tmp_path,
                                      store=store)
