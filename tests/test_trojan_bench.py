"""The trojan benchmark's scores (combination = asking on the pooled images, leave-one-out best
pair, AUROC and its CI) and the whole benchmark end to end on the 8x8 digits: record, report,
cache (adding a tool computes only that tool)."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sklearn.metrics import roc_auc_score

from eisbench.bench import trojan_control as control
from eisbench.bench import trojan_scores as scores
from eisbench.bench.registry import BENCHMARKS
from eisbench.bench.trojans import TrojanBenchConfig
from eisbench.cli import main
from eisbench.core.stats import wilson_ci
from eisbench.runs.record import Claim, validate
from eisbench.runs.store import Store
from eisbench.trojans.judge import JudgeEncoder, ask
from eisbench.trojans.stamp import Trigger
from eisbench.trojans.zoo import TrojanMetrics, meets_target


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


def test_a_failed_cell_is_a_miss_on_a_trojan_a_hit_on_the_control_and_adds_no_images() -> None:
    nan = float("nan")
    sims = {"a": torch.tensor([[0.9, 0.1], [nan, nan], [nan, nan]]),
            "b": torch.tensor([[0.0, 1.0], [0.2, 0.6], [nan, nan]])}
    # trojan 1's true option is the first (where an argmax of a blank row would land)
    assert scores.success_grid(sims, answers=[0, 0, 0])["a"] == [True, False, False]
    assert scores.success_grid(sims, answers=[0, 0, 0], missing=True)["a"] == [True, True, True]
    both = scores.combine(sims, ["a", "b"])
    assert torch.allclose(both[0], torch.tensor([0.45, 0.55]))
    assert torch.allclose(both[1], sims["b"][1])  # b's images alone, not halved by a's none
    assert torch.isnan(both[2]).all()
    assert scores.success_grid({"all": both}, answers=[1, 1, 0])["all"] == [True, True, False]
    partly = torch.tensor([[0.1, nan]])
    with pytest.raises(ValueError, match="whole row of NaN"):
        scores.success_grid({"a": partly}, answers=[0])


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


def test_success_interval_is_over_trojans_clustered_by_model() -> None:
    # a tool's success per trojan, each a fraction over 3 seeds: the value shown is their mean
    rates = [1 / 3, 2 / 3, 1.0, 0.0, 1 / 3, 2 / 3]
    m = scores.mean_metric(rates, [f"m{i}" for i in range(6)])
    assert m["value"] == pytest.approx(0.5) and m["n"] == 6
    assert 0.0 < m["ci95"][0] < 0.5 < m["ci95"][1] < 1.0
    # two trojans per model: three units, not six; the interval is wider
    shared = scores.mean_metric(rates, ["a", "b", "c", "a", "b", "c"])
    assert shared["n"] == 3 and shared["value"] == m["value"]
    assert shared["ci95"][1] - shared["ci95"][0] > m["ci95"][1] - m["ci95"][0]
    # no spread between trojans, none in the interval (Wilson at round(v * t) would give one)
    flat = scores.mean_metric([1 / 3] * 12, list(range(12)))
    assert flat["ci95"] == pytest.approx([1 / 3, 1 / 3])
    # too few units: the whole range
    assert scores.mean_metric([0.2, 0.4], ["a", "b"], lower=-1.0)["ci95"] == [-1.0, 1.0]
    # exactly k of n independent successes (one seed, a trojan per model): Wilson's interval
    # for k of n, not a percentile bootstrap (1 of 12 would give [0, 0.25])
    one = scores.mean_metric([1.0] + [0.0] * 11, list(range(12)))
    assert one["ci95"] == pytest.approx(list(wilson_ci(1, 12))) and one["n"] == 12


def _judge_details() -> dict[str, Any]:
    un = {"alpha": 0.05, "bar": 0.0167, "min_p": 0.5, "uniform": True,
          "per_kind": {"patch": {"largest_share": 0.2}}}
    return {"true_trigger": {"meets_target": True, "accuracy": 0.97, "ci": [0.95, 0.99],
                             "n": 100},
            "noise": {"uniformity": un, "accuracy": 0.12, "n": 100}}


def _claims(n_graded: int) -> list[Claim]:
    metric = functools.partial(scores.ci_metric, unit="graded trojans' models (test)")
    metrics = {"tool/a/success_rate": metric(0.2, 0.1, 0.3, n_graded),
               "tool/b/success_rate": metric(0.3, 0.2, 0.4, n_graded),
               "tool/all/success_rate": metric(0.8, 0.7, 0.9, n_graded),
               "detection/nc/auroc": metric(0.9, 0.8, 1.0, n_graded + 8)}
    details = {"judge": _judge_details(), "detection": {"nc": {}, "tabor": {"skipped": "x"}},
               "graded": {"n": n_graded, "of": 12}}
    return scores.decide(metrics, details, ["a", "b"])


def test_claims_need_enough_trojans_that_meet_the_implant_targets() -> None:
    ok = _claims(5)
    assert [c["verdict"] for c in ok] == ["reproduced", "reproduced", "reproduced",
                                          "inconclusive"]
    assert "graded on 5 of 12 implanted trojans (7 missed" in ok[1]["measured"]
    few = _claims(scores.MIN_GRADED - 1)
    assert few[0]["verdict"] == "reproduced"  # the judge does not rest on the zoo
    assert [c["verdict"] for c in few[1:]] == ["inconclusive"] * 3
    assert all("fewer than 3, so inconclusive" in c["measured"] for c in few[1:])


def test_a_judge_that_fails_held_out_views_grades_nothing() -> None:
    """The judge is trusted only if it also names triggers from views unlike its training; the
    claim that combining tools helps rests on its answers, so it is inconclusive then."""
    metric = functools.partial(scores.ci_metric, unit="graded trojans' models (test)")
    metrics = {"tool/a/success_rate": metric(0.2, 0.1, 0.3, 5),
               "tool/b/success_rate": metric(0.3, 0.2, 0.4, 5),
               "tool/all/success_rate": metric(0.8, 0.7, 0.9, 5)}
    held = {"overall": {"accuracy": 0.5, "ci": [0.45, 0.55], "n": 400}, "target": 0.8,
            "worst": {"family": "heavy-blur", "accuracy": 0.2}, "meets_target": False}
    for ok in (True, False):
        judge = _judge_details() | {"held_out": held | {"meets_target": ok}}
        details = {"judge": judge, "detection": {}, "graded": {"n": 5, "of": 12}}
        judged, combined = scores.decide(metrics, details, ["a", "b"])
        assert judged["verdict"] == ("reproduced" if ok else "not reproduced")
        assert "held-out view families 0.500" in judged["measured"] and "heavy-blur" in \
            judged["measured"]
        assert combined["verdict"] == ("reproduced" if ok else "inconclusive")
        assert ok or "the judge failed its validation" in combined["measured"]


def _zoo_metric(name: str, target: int, asr: float, drop: float) -> TrojanMetrics:
    return TrojanMetrics(name=name, kind="patch", universal=True, target=target, source=None,
                         clean_acc=0.9, clean_ref_acc=0.9 + drop, drop=drop, asr=asr, n_asr=100,
                         nonsource_flip=None, meets_target=meets_target(asr, drop))


def test_graded_trojans_and_why_the_others_are_excluded() -> None:
    zm = [_zoo_metric("a", 1, 0.95, 0.0), _zoo_metric("b", 2, 0.5, 0.0),
          _zoo_metric("c", 3, 0.99, 0.03), _zoo_metric("d", 4, 0.9, 0.01)]
    assert control.graded_indices(zm) == [0, 3]
    ex = control.excluded(zm)
    assert [x["name"] for x in ex] == ["b", "c"]
    assert ex[0]["why"] == "ASR 0.500" and "drop 3.00 points" in ex[1]["why"]
    g = control.graded_details(zm, [0, 3])
    assert (g["n"], g["of"], g["trojans"]) == (2, 4, ["a", "d"])


def test_clean_control_models_clusters_and_lift() -> None:
    # one clean model per distinct target, round robin; a repeated target shares its model
    assert control.control_models([4, 5, 4, 1, 7], n_clean=3) == [0, 1, 0, 2, 0]
    assert control.linked_clusters([("t0", "c0"), ("t1", "c1"), ("t2", "c0"), ("t3", "c2")]) \
        == [0, 1, 0, 2]
    assert control.linked_clusters([("t0", "c0"), ("t1", "c1"), ("t1", "c0")]) == [0, 0, 0]
    # 4 trojans, 2 seeds: success on the trojans and on the clean control
    trojan = {"a": [[True, True], [True, False], [False, False], [True, True]]}
    clean = {"a": [[False, False], [True, False], [False, True], [False, False]]}
    m = control.control_metrics(trojan, clean, trojan_keys=["t0", "t1", "t2", "t3"],
                                clean_keys=["c0", "c1", "c2", "c3"])
    assert m["tool/a/clean_success_rate"]["value"] == pytest.approx(0.25)
    # per trojan 1 - 0, 0.5 - 0.5, 0 - 0.5, 1 - 0 (trojan minus clean, not the reverse)
    assert m["tool/a/lift"]["value"] == pytest.approx(0.375)
    assert m["tool/a/lift"]["n"] == 4 and m["tool/a/lift"]["ci95"][0] < 0.375
    shared = control.control_metrics(trojan, clean, trojan_keys=["t0", "t1", "t2", "t3"],
                                     clean_keys=["c0", "c1", "c0", "c1"])
    assert shared["tool/a/clean_success_rate"]["n"] == 2
    assert shared["tool/a/lift"]["n"] == 2


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
    d = rec["details"]
    # only the trojans that meet the implant targets grade anything; this zoo has both kinds
    met = [z["name"] for z in d["zoo"] if z["meets_target"]]
    k = len(met)
    assert 3 <= k < 12 and len(d["zoo"]) == 12
    assert d["graded"]["n"] == k and d["graded"]["of"] == 12 and d["trojans"] == met
    assert {x["name"] for x in d["graded"]["excluded"]} == {z["name"] for z in d["zoo"]} - set(met)
    assert all(len(g) == k for g in d["grid"].values())
    assert all(len(g) == k for g in d["control"]["grid"].values())
    assert m["tool/all/success_rate"]["n"] == k  # one model per trojan: n = trojans graded
    assert m["tool/all/success_rate"]["unit"].startswith(scores.GRADED + " (")
    assert m["detection/auroc"]["unit"].startswith("graded trojaned + clean models")
    assert all(v.get("unit") for v in m.values())
    assert f"graded on {k} of 12 implanted trojans" in printed
    assert all(f"graded on {k} of 12" in c["measured"] for c in rec["claims"][1:])
    assert m["attribution/blank/correlation"]["value"] == 0.0
    assert m["detection/auroc"]["n"] == k + 2
    assert [x["trojan"] for x in d["detection"]["neural-cleanse"]["trojaned"]] == met
    # both judges validated, also on held-out view families; the second judge's answers, the
    # agreement and the combination rule chosen on the other trojans
    assert d["judge"]["held_out"]["families"] and d["judge"]["second"]["held_out"]["overall"]
    for name in ("judge/held_out_acc", "judge/ncc/true_trigger_acc", "judge/ncc/held_out_acc",
                 "judge/kappa", "tool/combined-held-out/success_rate",
                 *(f"tool/{t}/success_rate_ncc" for t in TINY.tools)):
        assert name in m, name
    kappa = m["judge/kappa"]
    assert -1 <= kappa["ci95"][0] <= kappa["value"] <= kappa["ci95"][1] <= 1
    assert kappa["n"] == k * len(TINY.tools)  # tools x graded trojans x one seed
    comb = d["combination"]
    assert len(comb["chosen"]) == k and set(comb["chosen"]) <= set(comb["rules"])
    assert m["tool/combined-held-out/success_rate"]["value"] == pytest.approx(
        comb["held_out_success"])
    assert set(d["second_judge"]["success"]) == set(TINY.tools)
    assert "Views the judge never saw" in (out / "report.html").read_text()
    # the clean-model control: same questions about clean models' images; lift = difference
    for r in (*TINY.tools, "all"):
        s, c, lift = (m[f"tool/{r}/{x}"] for x in ("success_rate", "clean_success_rate", "lift"))
        assert lift["value"] == pytest.approx(s["value"] - c["value"])
        assert lift["ci95"][0] <= lift["value"] <= lift["ci95"][1]
    targets = [z["target"] for z in d["zoo"] if z["meets_target"]]
    assert len(d["control"]["clean_models"]) == k
    assert set(d["units"]) >= {"tool/*/success_rate", "tool/*/lift", "attribution/*/correlation"}
    key = json.loads((out / "quiz.key.json").read_text())
    assert len(key) == k * 2 and all(0 <= v < 8 for v in key.values())
    assert (out / "quiz.html").read_text().count("<fieldset") == 2 * k
    html = (out / "report.html").read_text().replace("<wbr>", "")  # the visible text
    assert "Trojan rediscovery benchmark" in html and html.count("<img") >= k + 4
    assert html.count("MISSED: excluded") == 12 - k and "clean-model success" in html
    stages = rec["stages"]
    assert {s["name"] for s in stages} >= {"implant", "train", "judge", "tool-images", "scan"}
    assert not any(s["cached"] for s in stages)
    # tool images: per tool, one per graded trojan and one per distinct target on clean models
    n_images = k + len(set(targets))
    assert sum(s["name"] == "tool-images" for s in stages) == 2 * n_images
    assert sum(s["name"] == "scan" for s in stages) == k + 2  # no scan of an excluded trojan

    # adding a tool computes its images and nothing else
    store = Store(tmp_path / "home" / "cache")
    more = dataclasses.replace(TINY, tools=(*TINY.tools, "snafue"))
    rec2 = BENCHMARKS.get("trojans").run(more, out=tmp_path / "out2", store=store)
    fresh = [s for s in rec2["stages"] if not s["cached"]]
    assert {s["name"] for s in fresh} == {"tool-images"} and len(fresh) == n_images
    assert rec2["details"]["grid"]["neural-cleanse"] == rec["details"]["grid"]["neural-cleanse"]


def test_bench_rejects_bad_settings(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(KeyError, match="did you mean"):
        BENCHMARKS.get("trojans").run(dataclasses.replace(TINY, tools=("neural-cleans",)),
                                      out=tmp_path, store=store)
    with pytest.raises(ValueError, match="n_clean"):
        BENCHMARKS.get("trojans").run(dataclasses.replace(TINY, n_clean=1), out=tmp_path,
                                      store=store)


def test_second_opinion_compares_the_judges_choices_per_question() -> None:
    """Kappa is over the options the two judges choose (not over right/wrong), per tool success
    under the second judge is its own, and only tools whose rank moves are listed."""
    from eisbench.bench.trojan_judges import second_opinion

    g = torch.Generator().manual_seed(0)
    first = {t: {0: torch.rand(6, 8, generator=g)} for t in ("a", "b")}
    answers = [int(first["a"][0][t].argmax()) for t in range(6)]  # tool a always right
    same, _ = second_opinion(first, first, rows=["a", "b"], seeds=[0], answers=answers,
                             keys=[f"m{t}" for t in range(6)])
    assert same["judge/kappa"]["value"] == pytest.approx(1.0)
    assert same["judge/kappa"]["n"] == 12
    # a second judge that picks the next option every time: never agrees, a wrong everywhere
    shifted = {t: {0: first[t][0].roll(1, dims=1)} for t in ("a", "b")}
    m, d = second_opinion(first, shifted, rows=["a", "b"], seeds=[0], answers=answers,
                          keys=[f"m{t}" for t in range(6)])
    assert d["agreement"]["agreement"] == 0.0 and m["judge/kappa"]["value"] < 0
    assert m["tool/a/success_rate_ncc"]["value"] == 0.0
    assert d["success"]["a"] == {"first": 1.0, "second": 0.0}
    lo, hi = m["judge/kappa"]["ci95"]
    assert lo <= m["judge/kappa"]["value"] <= hi
    # both judges wrong about b, but choosing different wrong options: agreement on choices is
    # lost there although agreement on correctness is not (kappa over right/wrong would miss it)
    b_other = {"a": first["a"], "b": {0: first["b"][0].roll(1, dims=1)}}
    _, d2 = second_opinion(first, b_other, rows=["a", "b"], seeds=[0], answers=answers,
                           keys=[f"m{t}" for t in range(6)])
    assert d2["agreement"]["agreement"] == 0.5
    assert d2["agreement_on_correct"]["agreement"] > 0.5


def test_second_opinion_counts_a_failed_cell_as_a_miss_and_asks_it_of_neither_judge() -> None:
    from eisbench.bench.trojan_judges import NO_CHOICE, choices, second_opinion

    g = torch.Generator().manual_seed(0)
    first = {t: {0: torch.rand(6, 8, generator=g)} for t in ("a", "b")}
    answers = [int(first["a"][0][t].argmax()) for t in range(6)]  # tool a always right
    failed = {t: {0: v[0].clone()} for t, v in first.items()}
    failed["a"][0][2] = float("nan")  # tool a made no images for trojan 2
    assert choices(failed["a"][0])[2] == NO_CHOICE
    m, d = second_opinion(failed, failed, rows=["a", "b"], seeds=[0], answers=answers,
                          keys=[f"m{t}" for t in range(6)])
    assert m["judge/kappa"]["n"] == 11  # 2 tools x 6 trojans, less the failed cell
    assert m["judge/kappa"]["value"] == pytest.approx(1.0)
    assert m["tool/a/success_rate_ncc"]["value"] == pytest.approx(5 / 6)  # a miss, not dropped
    assert m["tool/a/success_rate_ncc"]["n"] == 6
    assert d["success"]["a"] == {"first": pytest.approx(5 / 6), "second": pytest.approx(5 / 6)}


def test_quick_benches_train_the_zoo_preset_that_meets_the_implant_targets() -> None:
    """Cheaper zoos missed the targets (MNIST 20k x 4: 8 of 12 implanted; Fashion-MNIST 6 of
    12), so the quick presets keep the dataset's zoo recipe and save on clean models only."""
    from eisbench.bench.edit import QUICK as EDIT_QUICK
    from eisbench.bench.trojans import QUICK as TROJAN_QUICK
    from eisbench.trojans.zoo import PRESETS, zoo_config

    for quick in (TROJAN_QUICK, EDIT_QUICK):
        for dataset in ("mnist", "fashion-mnist"):
            cfg = zoo_config(dataset, epochs=quick.epochs, n_train=quick.n_train)
            assert (cfg.train, cfg.n_train) == (PRESETS[dataset].train, None), (quick, dataset)
        assert 2 <= quick.n_clean < PRESETS["mnist"].n_clean


def test_a_failed_scan_counts_against_the_detection_method() -> None:
    """A scan that raised on one trojaned and one clean model: the trojaned one is missed (its
    score below every other), the clean one a false alarm (above every other), n unchanged."""
    from types import SimpleNamespace

    from eisbench.bench.trojan_probes import detect, try_scan

    def ok(index: float, suspect: int | None) -> Any:
        return SimpleNamespace(anomaly_index=(index, 0.0), l1=(1.0, 2.0), suspect=suspect,
                               trigger=None, tabor_suspect=None, curves=[None, None])

    def boom() -> Any:
        raise RuntimeError("size of tensor a (1568) must match")

    trojans = [SimpleNamespace(name="patch0", target=0), SimpleNamespace(name="patch1", target=3)]
    failed = try_scan("model-key", "neural-cleanse", boom)
    assert failed == "RuntimeError: size of tensor a (1568) must match"
    m, d = detect(trojans, [ok(5.0, 0), failed], [ok(0.5, None), "ValueError: x"],  # type: ignore[arg-type]
                  "neural-cleanse")
    assert m["detection/neural-cleanse/auroc"]["value"] == 0.25  # 1 of 4 pairs ranked right
    assert m["detection/neural-cleanse/auroc"]["n"] == 4
    assert m["detection/neural-cleanse/target_found"]["value"] == 0.5
    assert m["detection/neural-cleanse/false_alarm"]["value"] == 0.5
    assert [f["model"] for f in d["failed_scans"]] == ["patch1", "clean 1"]
    assert d["trojaned"][1]["failed"].startswith("RuntimeError") and d["clean"][1]["score"] == 6.0
