"""Tests that kill plausible wrong versions of eisbench.edit's metrics and claims (see
benchmarks/mutation.py): the DER, the paired metrics and verdicts, the trojan evaluation, the
benchmark summary and the ablation bootstraps exactly, and the claim texts word for word.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mutants_edit_helpers import SQUARE
from torch import nn

from eisbench.core.stats import mean_ci
from eisbench.edit import metrics as em
from eisbench.runs.claims import mean_metric
from eisbench.trojans.stamp import Trojan, stamp

T = "trojans' models (95% t-interval)"


def m_(v: float, lo: float, hi: float, n: int = 5) -> dict[str, Any]:
    return {"value": v, "ci95": [lo, hi], "n": n, "higher_is_better": True, "unit": T}


def test_der_metric_paired_verdict_fmt_exactly() -> None:
    der = em.der
    assert der(asr_before=0.9, asr_after=0.3, acc_before=0.8, acc_after=0.7) == pytest.approx(0.75)
    assert der(asr_before=0.2, asr_after=0.6, acc_before=0.5, acc_after=0.9) == 0.5
    assert der(asr_before=1.0, asr_after=0.0, acc_before=1.0, acc_after=0.0) == 0.5
    assert der(asr_before=0.0, asr_after=0.0, acc_before=1.0, acc_after=0.25) == 0.125
    names = ("asr_before", "asr_after", "acc_before", "acc_after")
    for bad in names:
        for v in (-0.1, 1.5):
            with pytest.raises(ValueError, match=rf"{bad} must be a fraction in \[0, 1\], got {v}"):
                der(**(dict.fromkeys(names, 0.5) | {bad: v}))
    v, lo, hi = mean_ci([0.2, 0.4, 0.9])
    assert em.metric([0.2, 0.4, 0.9]) == m_(v, lo, hi, n=3)
    assert em.metric([0.5], higher=False, unit="u") == {
        "value": 0.5, "ci95": [0.5, 0.5], "n": 1, "higher_is_better": False, "unit": "u"}
    assert em.paired([0.9, 0.5, 0.7], [0.1, 0.4, 0.2], higher=False, unit="u") == em.metric(
        [0.9 - 0.1, 0.5 - 0.4, 0.7 - 0.2], higher=False, unit="u")
    assert em.paired([0.9, 0.5], [0.1, 0.4])["higher_is_better"] is True
    for a, b in (([1.0], [1.0, 2.0]), ([], [])):
        with pytest.raises(ValueError, match=f"equal, non-zero lengths, got {len(a)}, {len(b)}"):
            em.paired(a, b)
    for val, lo, hi, margin, want in (
            (0.5, 0.2, 0.8, 0.0, "reproduced"), (0.5, 0.2, 0.8, 0.3, "inconclusive"),
            (0.5, 0.0, 0.8, 0.0, "inconclusive"), (0.0, -0.2, 0.3, 0.0, "not reproduced"),
            (0.1, -0.2, 0.4, 0.0, "inconclusive"), (-0.1, -0.3, 0.2, 0.0, "not reproduced"),
            (0.5, -0.1, 0.0, 0.0, "inconclusive"), (0.5, -0.2, -0.1, 0.0, "not reproduced")):
        assert em.verdict(m_(val, lo, hi), margin=margin) == want, (val, lo, hi, margin)  # type: ignore[arg-type]
    assert em.verdict(m_(0.5, 0.2, 0.8)) == "reproduced"  # type: ignore[arg-type]
    assert em.fmt(m_(0.25, -0.125, 0.5, n=4)) == (  # type: ignore[arg-type]
        "+0.250 [-0.125, +0.500] (n=4 trojans' models, 95% t-interval)")
    assert em.mean_over([[1.0, 2.0], [3.0]]) == [1.5, 3.0]


def test_trojan_eval_stamps_the_source_images_and_scores_them() -> None:
    trojan = Trojan(name="t", trigger=SQUARE, target=1, source=2)
    x, y = torch.zeros(6, 1, 5, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    ev = em.TrojanEval.build(trojan, x, y)
    for seed, got in ((0, ev.stamped), (5, em.TrojanEval.build(trojan, x, y, seed=5).stamped)):
        assert torch.equal(got, stamp(x[y == 2], SQUARE,
                                      generator=torch.Generator().manual_seed(seed))[0])
    assert ev.x is x and ev.y is y and ev.target == 1

    class AnyInk(nn.Module):  # class 1 if any pixel is lit, else 0
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            lit = (z.flatten(1).amax(1) > 0).float()
            return torch.stack([1 - lit, lit, torch.zeros_like(lit)], 1)

    assert ev.scores(AnyInk()) == {"asr": 1.0, "acc": pytest.approx(1 / 3)}
    assert em.TrojanEval(x=x, y=y, stamped=x[:3], target=1).scores(AnyInk(), device="cpu") == {
        "asr": 0.0, "acc": pytest.approx(1 / 3)}


FIELDS = ("asr", "acc", "der", "pruned", "of", "robust_acc", "robust_acc_l2")


def _row(i: int, t: int, s: int) -> dict[str, Any]:
    return {f: round(0.05 * (k + 1) + 0.1 * i + 0.02 * t + 0.01 * s, 4)
            for k, f in enumerate(FIELDS)} | {"layer": "body.2"}


@pytest.mark.parametrize(("methods", "n_tr", "n_seeds"), [
    (["tool", "no-trigger", "fine-pruning", "lat"], 2, 2), (["tool", "no-trigger"], 3, 2),
    (["lat"], 1, 1)])
def test_summarise_gives_exactly_the_benchmark_metrics(methods: list[str], n_tr: int,
                                                       n_seeds: int) -> None:
    before = [{"asr": 0.9, "acc": 0.8, "robust_acc": 0.1, "robust_acc_l2": 0.2},
              {"asr": 0.7, "acc": 0.6, "robust_acc": 0.3, "robust_acc_l2": 0.25}]
    seeds, trojans = range(n_seeds), range(n_tr)
    eff = {"selectivity": [0.5, 0.7], "class_drop": [0.6, 0.8], "other_drop": [0.1, 0.1]}
    abl = {"penultimate": {"random": [{"test": eff, "ood": eff}]}}
    res = {m: [[_row(i, t, s) for s in seeds] for t in trojans] for i, m in enumerate(methods)}
    out = em.summarise(res, before, abl, methods=methods, selectors=["random"])
    per = {m: {f: [sum(_row(i, t, s)[f] for s in seeds) / n_seeds for t in trojans]
               for f in FIELDS} for i, m in enumerate(methods)}
    metric, paired = em.metric, em.paired
    want = {"edit/before/asr": metric([0.9, 0.7], higher=False),
            "edit/before/clean_acc": metric([0.8, 0.6])}
    for m in methods:
        want[f"edit/{m}/asr_after"] = metric(per[m]["asr"], higher=False)
        want[f"edit/{m}/clean_acc_after"] = metric(per[m]["acc"])
        want[f"edit/{m}/der"] = metric(per[m]["der"])
        if m != "no-trigger" and "no-trigger" in per:
            want[f"edit/{m}/der_vs_no_trigger"] = paired(per[m]["der"], per["no-trigger"]["der"])
    if "fine-pruning" in per:
        fp = per["fine-pruning"]
        want["edit/fine-pruning/pruned_frac"] = metric(
            [p / o for p, o in zip(fp["pruned"], fp["of"], strict=True)])
    if "lat" in per and "no-trigger" in per:
        la, ft = per["lat"], per["no-trigger"]
        for f in ("robust_acc", "robust_acc_l2"):
            want[f"lat/{f}"], want[f"lat/baseline/{f}"] = metric(la[f]), metric(ft[f])
            want[f"lat/before/{f}"] = metric([b[f] for b in before])
        want["lat/clean_acc"], want["lat/baseline/clean_acc"] = metric(la["acc"]), metric(ft["acc"])
        want["lat/robust_gain"] = paired(la["robust_acc"], ft["robust_acc"])
        want["lat/robust_gain_l2"] = paired(la["robust_acc_l2"], ft["robust_acc_l2"])
        want["lat/clean_gain"] = paired(la["acc"], ft["acc"])
    assert out == want | em.ablation_metrics(abl, selectors=["random"])
    assert "ablation/random/selectivity" in out


def _ab(levels: list[float], seed: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [{p: {f: (lv + 0.3 * torch.rand(4, generator=g)).tolist()
                 for f in ("selectivity", "class_drop", "other_drop")} for p in ("test", "ood")}
            for lv in levels]


def test_ablation_metrics_are_cluster_bootstraps_of_each_field_and_part() -> None:
    abl = {"penultimate": {"tool": _ab([0.5, 0.1, 0.3], 0), "random": _ab([0.2, 0.0, 0.1], 1)},
           "last-conv": {"tool": _ab([0.4, 0.6], 2), "random": _ab([0.1, 0.2], 3)}}
    abl["penultimate"]["tool"][0]["test"]["selectivity"][2] = float("nan")  # dropped
    got = em.ablation_metrics(abl, selectors=["random", "tool"])
    ranges = {"selectivity": (-2.0, 2.0), "class_drop": (-1.0, 1.0), "other_drop": (-1.0, 1.0)}
    want = {}
    for layer, prefix in (("penultimate", "ablation"), ("last-conv", "ablation-conv")):
        for s in ("random", "tool"):
            for part, suf in (("test", ""), ("ood", "_ood")):
                units = {f: {(j, c): v for j, r in enumerate(abl[layer][s])
                             for c, v in enumerate(r[part][f]) if v == v} for f in ranges}
                for f, (lo, hi) in ranges.items():
                    want[f"{prefix}/{s}/{f}{suf}"] = mean_metric(
                        list(units[f].values()), [j for j, _ in units[f]], lower=lo, upper=hi,
                        higher=f != "other_drop", unit="clean models")
                if s == "tool":
                    rnd = abl[layer]["random"]
                    d = {k: v - rnd[k[0]][part]["selectivity"][k[1]]
                         for k, v in units["selectivity"].items()}
                    want[f"{prefix}/tool/vs_random{suf}"] = mean_metric(
                        list(d.values()), [j for j, _ in d], lower=-4.0, upper=4.0,
                        unit="clean models")
    assert got == want and got["ablation-conv/tool/vs_random"]["ci95"] == [-4.0, 4.0]
    assert em.ablation_metrics({"last-conv": abl["last-conv"]}, selectors=["tool"]).keys() == {
        k for k in want if k.startswith("ablation-conv/tool/")}
    assert em.clustered_paired({(0, 0): 0.5, (0, 1): 0.25}, {(0, 0): 0.125, (1, 0): 9.0},
                               span=1.0)["value"] == 0.375
    with pytest.raises(ValueError, match=r"no \(model, class\) unit in both ablations"):
        em.clustered_paired({(0, 0): 0.5}, {(1, 0): 0.5}, span=1.0)


BEATS = ("'reproduced' if the 95% t-interval over trojans of the paired difference (per "
         "trojan, mean over seeds) lies above 0; 'not reproduced' if the mean difference "
         "is <= 0 or its CI lies below 0; else 'inconclusive'")
SEL_RULE = ("selectivity difference to random units, paired per (model, class): 'reproduced' "
            "if the 95% cluster bootstrap interval over models (the (model, class) differences "
            "of a model resampled together; fewer than 3 models: the whole range, so never "
            "reproduced) of the mean difference lies above 0; 'not reproduced' if the mean "
            "difference is <= 0 or its interval lies below 0; else 'inconclusive'")
ROBUST = "attacks (never trained on) than plain fine-tuning with the same budget"


def test_edit_claims_state_their_rules_word_for_word() -> None:
    mt = {k: m_(*v) for k, v in {
        "edit/nc/der": (0.8, 0.7, 0.9), "edit/nc/der_vs_no_trigger": (0.2, 0.1, 0.3),
        "edit/true-trigger/der": (0.9, 0.8, 1.0),
        "edit/true-trigger/der_vs_no_trigger": (0.3, -0.1, 0.7),
        "edit/fine-pruning/der": (0.4, 0.3, 0.5),
        "edit/fine-pruning/der_vs_no_trigger": (-0.1, -0.3, 0.1),
        "edit/lat/der": (0.6, 0.5, 0.7), "edit/lat/der_vs_no_trigger": (0.05, 0.01, 0.09),
        "edit/true-trigger/asr_after": (0.05, 0.0, 0.1), "lat/robust_gain": (0.1, -0.1, 0.3),
        "lat/robust_gain_l2": (-0.2, -0.3, -0.1), "lat/clean_gain": (-0.005, -0.01, 0.0),
        "ablation/s1/selectivity": (0.7, 0.6, 0.8), "ablation/s1/vs_random": (0.3, 0.2, 0.4),
        "ablation/s1/selectivity_ood": (0.5, 0.4, 0.6),
        "ablation/s1/vs_random_ood": (0.1, -0.1, 0.3),
        "ablation/s2/selectivity_ood": (0.2, 0.1, 0.3),
        "ablation/s2/vs_random_ood": (-0.2, -0.3, -0.1)}.items()}
    n5 = "(n=5 trojans' models, 95% t-interval)"

    def der(what: str, d: str, diff: str, v: str) -> dict[str, str]:
        return {"claim": f"{what} removes trojans better than plain fine-tuning (DER)",
                "rule": "DER difference to plain fine-tuning: " + BEATS,
                "measured": f"DER {d}; difference {diff} {n5}", "verdict": v}

    def sel(s: str, where: str, val: str, diff: str, v: str) -> dict[str, str]:
        return {"claim": f"Ablating the penultimate units {s} picks for a class removes that "
                         f"class selectively on {where} (better than random units)",
                "rule": SEL_RULE, "measured": f"selectivity {val}; difference {diff} {n5}",
                "verdict": v}

    def lat(what: str, diff: str, v: str) -> dict[str, str]:
        return {"claim": f"LAT makes the model more robust to input-space {what} {ROBUST}",
                "rule": "robust-accuracy difference: " + BEATS,
                "measured": f"difference {diff} {n5}", "verdict": v}

    ood = "out-of-distribution digits"
    assert em.edit_claims(mt, tools=["absent", "nc"], selectors=["absent", "s1", "s2"]) == [  # type: ignore[arg-type]
        der("Tool-guided unlearning with nc's reconstruction", "0.800", "+0.200 [+0.100, +0.300]",
            "reproduced"),
        der("Unlearning with the true trigger (oracle)", "0.900", "+0.300 [-0.100, +0.700]",
            "inconclusive"),
        der("Fine-pruning", "0.400", "-0.100 [-0.300, +0.100]", "not reproduced"),
        der("Latent adversarial training", "0.600", "+0.050 [+0.010, +0.090]", "reproduced"),
        {"claim": "Sanity: unlearning with the true trigger removes the trojans",
         "rule": "mean ASR after <= 0.10 with CI upper bound <= 0.10 (reproduced); mean > 0.10 "
                 "(not reproduced); else inconclusive",
         "measured": "ASR after 0.050 [0.000, 0.100]", "verdict": "reproduced"},
        lat("PGD Linf", "+0.100 [-0.100, +0.300]", "inconclusive"),
        lat("PGD L2", "-0.200 [-0.300, -0.100]", "not reproduced"),
        {"claim": "LAT costs at most 1 point of clean accuracy against plain fine-tuning",
         "rule": "clean-accuracy difference (LAT - fine-tuning): CI lower bound >= -0.01 "
                 "(reproduced); mean < -0.01 (not reproduced); else inconclusive",
         "measured": f"difference -0.005 [-0.010, +0.000] {n5}", "verdict": "reproduced"},
        sel("s1", "the test set", "0.700", "+0.300 [+0.200, +0.400]", "reproduced"),
        sel("s1", ood, "0.500", "+0.100 [-0.100, +0.300]", "inconclusive"),
        sel("s2", ood, "0.200", "-0.200 [-0.300, -0.100]", "not reproduced")]


@pytest.mark.parametrize(("asr", "clean", "want"), [
    ((0.05, 0.10), (-0.02, -0.01), ["reproduced", "reproduced"]),
    ((0.10, 0.20), (-0.01, -0.05), ["inconclusive", "inconclusive"]),
    ((0.05, 0.20), (0.0, -0.05), ["inconclusive", "inconclusive"]),
    ((0.30, 0.50), (-0.5, -0.6), ["not reproduced", "not reproduced"]),
    ((0.12, 0.20), (-0.005, -0.5), ["not reproduced", "inconclusive"])])
def test_sanity_and_clean_cost_verdicts_at_their_thresholds(
        asr: tuple[float, float], clean: tuple[float, float], want: list[str]) -> None:
    mt = {"edit/true-trigger/asr_after": m_(asr[0], 0.0, asr[1]),
          "lat/robust_gain": m_(0.1, 0.0, 0.2), "lat/robust_gain_l2": m_(0.1, 0.0, 0.2),
          "lat/clean_gain": m_(clean[0], clean[1], 0.1)}
    got = em.edit_claims(mt, tools=[], selectors=[])  # type: ignore[arg-type]
    assert [got[0]["verdict"], got[-1]["verdict"]] == want
