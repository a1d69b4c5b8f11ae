"""Tests that kill plausible wrong versions of eisbench.edit (see benchmarks/mutation.py): exact
metric formulas and claim texts, layer naming and hooks, the latent adversary against a
reference written out here, stamping, the fine-tuning budget and fine-pruning's stopping rule."""

from __future__ import annotations

import copy
import importlib
import re
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum import attr as ca
from captum.attr._utils.approximation_methods import approximation_parameters
from sklearn.linear_model import LogisticRegression
from test_edit_ablation import TwoUnitsPerClass
from torch import nn

from eisbench.core.stats import mean_ci
from eisbench.edit import ablation as ab
from eisbench.edit import baselines as bl
from eisbench.edit import lat as lt
from eisbench.edit import layers as ly
from eisbench.edit import metrics as em
from eisbench.models import Normalized
from eisbench.models.architectures import Classifier
from eisbench.runs.claims import mean_metric
from eisbench.tools.guard import hook_count
from eisbench.training import Batch, TrainConfig, fit
from eisbench.trojans.stamp import Trigger, Trojan, stamp

ul = importlib.import_module("eisbench.edit.unlearn")  # eisbench.edit.unlearn is also a function
close = torch.testing.assert_close
T = "trojans' models (95% t-interval)"
SQUARE = Trigger(name="sq", kind="patch", icon=torch.ones(1, 2, 2), alpha=torch.ones(1, 2, 2))


class Channels(Classifier):
    """(B, 4, 1, 1) -> 1x1 conv (identity, no ReLU) -> 4 features; logit c = feature c, and a
    fifth class with the constant logit 0.05: zeroing channel c sends class c to class 4."""

    def __init__(self) -> None:
        super().__init__()
        conv, head = nn.Conv2d(4, 4, 1), nn.Linear(4, 5)
        with torch.no_grad():
            conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            conv.bias.zero_()  # type: ignore[union-attr]
            head.weight.copy_(torch.cat([torch.eye(4), torch.zeros(1, 4)]))
            head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.05]))
        self.body, self.head = nn.Sequential(conv, nn.Flatten()), head


def channel_data() -> tuple[torch.Tensor, torch.Tensor]:
    """16 one-hot images, class counts (3, 6, 2, 5), the first of class 0: mean activations
    (3, 6, 2, 5) / 16, so the dormancy order is 2, 0, 3, 1 (0 before 2 without image 0)."""
    y = torch.tensor([0, 1, 1, 3, 2, 1, 3, 0, 1, 3, 2, 1, 3, 0, 1, 3])
    return F.one_hot(y, 4).float().view(16, 4, 1, 1), y


class Tiny(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(48, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)


def tiny(seed: int = 0, n: int = 24) -> tuple[Tiny, torch.Tensor, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Tiny().eval()
    g = torch.Generator().manual_seed(seed)
    return net, torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def same_params(a: nn.Module, b: nn.Module) -> None:
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        close(v, w, rtol=0, atol=0, msg=k)


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


# --- layers --------------------------------------------------------------------------------

def test_layer_names_aliases_and_their_errors() -> None:
    net = Channels()
    assert ly.resolve_layer(net, "penultimate") == "body.1"
    assert ly.resolve_layer(net, "last-conv") == "body.0"
    assert ly.get_layer(net, "last-conv") is net.body[0]  # type: ignore[index]
    wrapped = Normalized(Normalized(net, mean=[0.0] * 4, std=[1.0] * 4), mean=[0.0], std=[1.0])
    assert ly.resolve_layer(wrapped, "penultimate") == "model.model.body.1"

    class Empty(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Sequential(), nn.Linear(2, 2)

    for model, name in ((Empty(), "Empty"), (nn.Linear(2, 2), "Linear")):
        with pytest.raises(ValueError, match=f"^{name} has no Sequential `body`: pass example "
                           "images to find its penultimate layer, or name it explicitly "
                           "\\(one of model.named_modules"):
            ly.resolve_layer(model, "penultimate")
    two = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.ReLU())
    assert ly.resolve_layer(two, "last-conv") == "1"
    with pytest.raises(ValueError, match="^Sequential has no nn.Conv2d: pick another layer$"):
        ly.resolve_layer(nn.Sequential(nn.Linear(2, 2)), "last-conv")
    named = nn.Sequential(OrderedDict((n, nn.Identity())
                                      for n in ("conv1", "conv2", "conv3", "conv4", "fc")))
    tail = "(layers: conv1, conv2, conv3, conv4, fc; aliases: penultimate, last-conv)"
    for name, hint in (("conv", "; did you mean conv4, conv3, conv2?"), ("zzzzzzzz", "")):
        with pytest.raises(ValueError) as err:
            ly.resolve_layer(named, name)
        assert str(err.value) == f"unknown layer {name!r}{hint} {tail}"


def test_unit_mask_ablated_capture_and_add_to_outputs() -> None:
    close(ly.unit_mask(5, [0, 4]), torch.tensor([0.0, 1, 1, 1, 0]))
    close(ly.unit_mask(3, []), torch.ones(3))
    close(ly.unit_mask(4, torch.tensor([[1, 2]])), torch.tensor([1.0, 0, 0, 1]))
    for bad in ([4], [-1], [-1, 2]):
        with pytest.raises(ValueError, match=f"must lie in \\[0, 4\\), got \\{bad}"):
            ly.unit_mask(4, bad)
    net, (x, _) = Channels(), channel_data()
    with torch.no_grad(), ly.capture(net, ["body.0", "body.1"]) as clean:
        net(x)
    for layer, units in (("body.0", torch.tensor([[0, 3]])), ("body.1", [0, 3])):
        with torch.no_grad(), ly.ablated(net, layer, units), \
                ly.capture(net, [layer]) as a:
            net(x)
        keep = torch.tensor([0.0, 1, 1, 0]).view(1, 4, *([1] * (clean[layer].dim() - 2)))
        close(a[layer], clean[layer] * keep, rtol=0, atol=0)
    tnet, tx, _ = tiny()
    d = torch.randn(24, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with ly.capture(tnet, ["body.0"]) as det, ly.capture(tnet, ["body.0"], detach=False) as live:
        tnet(tx)
    assert not det["body.0"].requires_grad and live["body.0"].requires_grad
    with torch.no_grad(), ly.add_to_outputs(tnet, {"body.0": d}), \
            ly.capture(tnet, ["body.0"]) as moved:
        tnet(tx)
    close(moved["body.0"], det["body.0"] + d)
    with pytest.raises(RuntimeError, match="boom"), ly.capture(tnet, ["body.0", "body.3"]):
        raise RuntimeError("boom")
    assert hook_count(tnet) == 0 and hook_count(net) == 0


# --- latent adversarial training -----------------------------------------------------------

def test_projection_norms_and_radii_by_hand() -> None:
    d = torch.tensor([[0.3, 0.4], [0.03, 0.04], [0.0, 0.0]], dtype=torch.float64).view(3, 2, 1, 1)
    out = lt.project_latent(d, 0.3, "l2")
    assert abs(float(out[0].norm()) - 0.3) < 1e-12
    assert torch.equal(out[0].flatten() / out[0].norm(), d[0].flatten() / d[0].norm())
    assert torch.equal(out[1:], d[1:])  # inside the ball: unchanged
    lin = torch.tensor([[-0.5, 0.1, 0.3]], dtype=torch.float64)
    assert torch.equal(lt.project_latent(lin, 0.2, "linf"),
                       torch.tensor([[-0.2, 0.1, 0.2]], dtype=torch.float64))
    t = torch.tensor([[3.0, -4.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    close(lt._per_example(t, "l2"), torch.tensor([5.0, 1.0]))
    close(lt._per_example(t, "linf"), torch.tensor([4.0, 1.0]))
    close(lt._scale(t, "l2"), torch.tensor(3.0))
    close(lt._scale(t, "linf"), torch.tensor(26 / 4).sqrt())
    net, x, _ = tiny()
    rad, acts = lt.radii(net, x, (lt.LatentBound("penultimate", eps=0.7, relative=False),
                                  lt.LatentBound("body.0", eps=0.5, norm="linf")))
    with torch.no_grad():
        a0 = net.body[0](x)  # type: ignore[index]
    assert rad == {"body.4": 0.7, "body.0": pytest.approx(0.5 * float(a0.pow(2).mean().sqrt()))}
    close(acts["body.0"], a0)


def _ref_latent_pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    bounds: list[tuple[str, float, str, bool]], *, steps: int, frac: float,
                    start: bool, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Latent PGD written out: radii from the clean activations, uniform start, normalised
    (L2) or sign (Linf) ascent steps of the summed cross-entropy, per-example projection."""
    mods = dict(net.named_modules())
    acts: dict[str, torch.Tensor] = {}
    d: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o.detach()))
             for n, *_ in bounds]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()

    def proj(v: torch.Tensor, r: float, norm: str) -> torch.Tensor:
        if norm == "linf":
            return v.clamp(-r, r)
        n = v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))
        return torch.where(n > r, v * r / n, v)

    rad = {n: (eps * float(acts[n].flatten(1).norm(dim=1).mean() if nm == "l2"
                           else acts[n].pow(2).mean().sqrt()) if rel else eps)
           for n, eps, nm, rel in bounds}
    for n, _, nm, _ in bounds:
        u = torch.rand(acts[n].shape, generator=gen) * 2 - 1
        d[n] = proj(u * rad[n], rad[n], nm) if start else torch.zeros_like(acts[n])
    for _ in range(steps):
        d = {n: v.clone().requires_grad_(True) for n, v in d.items()}
        hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n, d=d: o + d[n]) for n in d]
        loss = F.cross_entropy(net(x), y, reduction="sum")
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(loss, list(d.values()))
        for (n, _, nm, _), g in zip(bounds, grads, strict=True):
            g = g.sign() if nm == "linf" else g / g.flatten(1).norm(dim=1).view(
                -1, *[1] * (g.dim() - 1))
            d[n] = proj(d[n].detach() + frac * rad[n] * g, rad[n], nm)
    return d


def test_latent_pgd_matches_the_written_out_algorithm() -> None:
    net, x, y = tiny()
    net.train()
    cfg = lt.LatConfig(bounds=(lt.LatentBound("body.0", eps=0.3),
                               lt.LatentBound("penultimate", eps=0.2, norm="linf")),
                       steps=2, step_frac=0.4)
    got, rad = lt.latent_pgd(net, x, y, cfg=cfg, generator=torch.Generator().manual_seed(3))
    net.eval()
    want = _ref_latent_pgd(net, x, y, [("body.0", 0.3, "l2", True), ("body.4", 0.2, "linf", True)],
                           steps=2, frac=0.4, start=True, gen=torch.Generator().manual_seed(3))
    assert list(got) == ["body.0", "body.4"] and not any(v.requires_grad for v in got.values())
    for n in want:
        close(got[n], want[n], rtol=1e-4, atol=1e-6)
    assert set(rad) == {"body.0", "body.4"} and all(p.grad is None for p in net.parameters())
    cfg = lt.LatConfig(bounds=(lt.LatentBound("body.3", eps=0.25, relative=False),),
                       steps=1, step_frac=0.5, random_start=False)
    got, _ = lt.latent_pgd(net, x, y, cfg=cfg, generator=torch.Generator())
    want = _ref_latent_pgd(net, x, y, [("body.3", 0.25, "l2", False)], steps=1, frac=0.5,
                           start=False, gen=torch.Generator())
    close(got["body.3"], want["body.3"], rtol=1e-4, atol=1e-6)


def test_lat_loss_adversary_and_config_lookup() -> None:
    net, x, y = tiny()
    d = 0.5 * torch.randn(24, 6, generator=torch.Generator().manual_seed(1))
    h = net.body[4].register_forward_hook(lambda m, i, o: o + d)  # type: ignore[index]
    adv = F.cross_entropy(net(x), y)
    h.remove()
    clean = F.cross_entropy(net(x), y)
    for w in (0.25, 0.0):
        cfg = lt.LatTrainConfig(lat=lt.LatConfig(bounds=(lt.LatentBound("body.4"),),
                                                 clean_weight=w))
        got = lt.lat_loss(net, Batch(x, hidden={"body.4": d}), y, cfg=cfg)
        close(got, w * clean + (1 - w) * adv)
    lat = lt.LatConfig(bounds=(lt.LatentBound("body.0", eps=0.3),), steps=2)
    b = lt.latent_adversary(net, x, y, cfg=lt.LatTrainConfig(lat=lat),
                            generator=torch.Generator().manual_seed(7))
    want, _ = lt.latent_pgd(net, x, y, cfg=lat, generator=torch.Generator().manual_seed(7))
    assert b.x is x and list(b.hidden) == ["body.0"]
    close(b.hidden["body.0"], want["body.0"], rtol=0, atol=0)
    assert lt._lat_of(TrainConfig()) is lt.DEFAULT_LAT
    assert lt._lat_of(lt.LatTrainConfig(lat=lat)) is lat
    with pytest.raises(TypeError, match="needs a LatConfig as cfg.lat, got int"):
        lt._lat_of(SimpleNamespace(lat=3))  # type: ignore[arg-type]


def test_lat_settings_are_validated_at_their_bounds() -> None:
    ok: list[dict[str, Any]] = [{"eps": 0.0}, {"eps": 0.5}, {"norm": "linf"}]
    for kw in ok:
        lt.LatentBound("body.1", **kw)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"eps": -0.1}, "finite and >= 0, got -0.1"), ({"eps": float("inf")}, "inf"),
        ({"eps": float("nan")}, "nan"), ({"norm": "L2"}, "one of")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            lt.LatentBound("body.1", **kw)
    ok = [{"steps": 1}, {"step_frac": 0.5}, {"clean_weight": 0.0}, {"clean_weight": 0.99}]
    for kw in ok:
        lt.LatConfig(**kw)
    steps = "^steps must be >= 1 and step_frac > 0$"
    bad = [({"steps": 0}, steps), ({"step_frac": 0.0}, steps),
           ({"clean_weight": 1.0}, r"clean_weight must be in \[0, 1\), got 1.0"),
           ({"bounds": ()}, "^LAT needs at least one latent bound$")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            lt.LatConfig(**kw)


def test_lat_finetune_and_lat_train_run_the_loop_with_their_budget() -> None:
    net, x, y = tiny()
    lat = lt.LatConfig(bounds=(lt.LatentBound("body.0", eps=0.3),), steps=1)
    got = lt.lat_finetune(net, x, y, lat=lat, cfg=ul.FinetuneConfig(
        steps=3, batch_size=8, lr=3e-3, weight_decay=1e-2))
    ref = copy.deepcopy(net)
    fit(ref, x, y, cfg=lt.LatTrainConfig(batch_size=8, lr=3e-3, weight_decay=1e-2,
                                         schedule="constant", lat=lat), seed=0, steps=3)
    same_params(got, ref)
    same_params(net, tiny()[0])  # the input model is untouched
    for kw in ({}, dict(epochs=1, batch_size=16, lr=5e-3, seed=2)):
        fresh, ref = tiny()[0], tiny()[0]
        assert lt.lat_train(fresh, x, y, lat=lat, **kw) is fresh  # type: ignore[arg-type]
        full = dict(epochs=5, batch_size=128, lr=1e-3, seed=0) | kw
        seed = full.pop("seed")
        fit(ref, x, y, cfg=lt.LatTrainConfig(schedule="constant", lat=lat, **full), seed=seed)  # type: ignore[arg-type]
        same_params(fresh, ref)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        lt.lat_train(net, x, y, lat=lat, epochs=0)


# --- stamping and the fine-tuning budget ---------------------------------------------------

def test_stampers_stamp_exactly_what_they_are_given() -> None:
    g = torch.Generator().manual_seed(0)
    mask, pat = torch.rand(1, 5, 6, generator=g), torch.rand(2, 5, 6, generator=g) * 2 - 0.5
    x = torch.rand(3, 2, 5, 6, generator=g)
    want = ((1 - mask) * x + mask * pat).clamp(0, 1)
    close(ul.mask_stamper(mask, pat)(x, g), want)
    assert want.min() == 0 and want.max() == 1  # the clamp is exercised
    assert ul.mask_stamper(mask, pat)(x.half(), g).dtype == torch.float16
    for m, p in ((torch.rand(2, 5, 6), pat), (torch.rand(5, 6), pat), (mask, torch.rand(5, 6)),
                 (torch.rand(1, 1, 5, 6), pat), (mask, torch.rand(1, 2, 5, 6))):
        with pytest.raises(ValueError,
                           match=re.escape(f"got {tuple(m.shape)} and {tuple(p.shape)}")):
            ul.mask_stamper(m, p)
    patches = 1.5 * torch.rand(3, 2, 3, 3, generator=g)
    out = ul.patch_stamper(patches)(x, torch.Generator().manual_seed(4))
    g2 = torch.Generator().manual_seed(4)
    pick = torch.randint(0, 3, (3,), generator=g2)
    rows, cols = (torch.randint(0, 3, (3, 1), generator=g2),
                  torch.randint(0, 4, (3, 1), generator=g2))
    want = x.clone()
    for i in range(3):
        r, c = int(rows[i]), int(cols[i])
        want[i, :, r:r + 3, c:c + 3] = patches[pick[i]]
    close(out, want.clamp(0, 1))
    assert ul.patch_stamper(torch.full((1, 2, 4, 4), 0.5))(x, g).shape == x.shape
    for bad in (torch.rand(2, 3, 3), torch.rand(2, 1, 3, 2), torch.rand(0, 1, 3, 3)):
        with pytest.raises(ValueError, match=re.escape(f"with R >= 1, got {tuple(bad.shape)}")):
            ul.patch_stamper(bad)
    close(ul.trigger_stamper(SQUARE)(x, torch.Generator().manual_seed(2)),
          stamp(x, SQUARE, generator=torch.Generator().manual_seed(2))[0])
    img = torch.arange(2 * 7 * 10.0).view(1, 2, 7, 10)
    assert torch.equal(ul.centre_crop(img, 3), img[..., 2:5, 3:6])
    assert torch.equal(ul.centre_crop(img, 1), img[..., 3:4, 4:5])
    assert torch.equal(ul.centre_crop(img, 7), img[..., :, 1:8])
    assert torch.equal(ul.centre_crop(img[0], 3), img[0, :, 2:5, 3:6])  # one image (C, H, W)
    for side in (0, 8):
        with pytest.raises(ValueError, match=f"patch side {side} does not fit images 7x10"):
            ul.centre_crop(img, side)


def test_stamped_batch_stamps_the_first_fraction_under_the_true_labels() -> None:
    x, y = torch.rand(10, 1, 2, 2), torch.arange(10)
    seen: list[torch.Generator] = []

    def ones(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append(gen)
        return torch.ones_like(z)

    g = torch.Generator()
    for frac, k in ((0.3, 3), (0.25, 2), (0.1, 1), (1.0, 10)):
        xs, ys = ul.stamped_batch(x, y, ones, frac=frac, generator=g)
        assert ys is y and torch.equal(xs[:k], torch.ones(k, 1, 2, 2))
        assert torch.equal(xs[k:], x[k:])
    assert seen == [g] * 4

    def boom(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise AssertionError("stamper called")

    assert ul.stamped_batch(x, y, boom, frac=0.04, generator=g)[0] is x
    assert ul.stamped_batch(x, y, None, frac=0.5, generator=g)[0] is x
    b = ul.stamped(nn.Identity(), x, y, cfg=ul.StampTrainConfig(stamper=ones, stamp_frac=0.3),
                generator=g)
    assert torch.equal(b.x, ul.stamped_batch(x, y, ones, frac=0.3, generator=g)[0])
    for cfg in (TrainConfig(), SimpleNamespace(stamper=ones)):
        assert ul.stamped(nn.Identity(), x, y, cfg=cfg, generator=g).x is x  # type: ignore[arg-type]


def test_finetune_config_and_loop_checks() -> None:
    ul.FinetuneConfig(steps=1, batch_size=1, lr=1e-9, stamp_frac=0.0)
    ul.FinetuneConfig(stamp_frac=1.0)
    for bad in (dict(steps=0), dict(batch_size=0), dict(lr=0.0)):
        with pytest.raises(ValueError, match="^steps and batch_size must be >= 1 and lr > 0$"):
            ul.FinetuneConfig(**bad)  # type: ignore[arg-type]
    for frac in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"stamp_frac must be in \\[0, 1\\], got {frac}"):
            ul.FinetuneConfig(stamp_frac=frac)
    net, x, y = tiny()
    calls: list[nn.Module] = []
    net.train()
    assert ul.finetune_loop(net, x, y, cfg=ul.StampTrainConfig(batch_size=8), seed=0, steps=2,
                         after_step=calls.append) is net
    assert net.training and calls == [net, net] and all(p.grad is None for p in net.parameters())
    net.eval()
    ul.finetune_loop(net, x, y, cfg=ul.StampTrainConfig(batch_size=8, epochs=1), seed=0,
                  after_step=calls.append)
    assert not net.training and len(calls) == 5  # one epoch: 24 / 8 steps
    ul.finetune_loop(net, x[:1], y[:1], cfg=ul.StampTrainConfig(), seed=0, steps=1)
    with pytest.raises(ValueError, match="expected fine-tuning images in \\[0,1\\]"):
        ul.finetune_loop(net, x * 3, y, cfg=ul.StampTrainConfig(), seed=0, steps=1)
    for n_x, n_y in ((4, 3), (0, 0)):
        with pytest.raises(ValueError, match=f"as many labels as images \\(>0\\), got {n_x} and "
                                             f"{n_y}"):
            ul.finetune_loop(net, x[:n_x], y[:n_y], cfg=ul.StampTrainConfig(), seed=0, steps=1)


def test_unlearn_and_finetune_are_the_loop_on_a_copy_with_the_budget() -> None:
    net, x, y = tiny()
    s = ul.mask_stamper(torch.full((1, 4, 4), 0.5), torch.ones(1, 4, 4))
    budget = ul.FinetuneConfig(steps=3, batch_size=8, lr=3e-3, weight_decay=1e-2, stamp_frac=0.5)
    for got, stamper in ((ul.unlearn(net, x, y, stamper=s, cfg=budget), s),
                         (bl.finetune(net, x, y, cfg=budget), None)):
        ref = copy.deepcopy(net)
        fit(ref, x, y, cfg=ul.StampTrainConfig(batch_size=8, lr=3e-3, weight_decay=1e-2,
                                            stamper=stamper, stamp_frac=0.5), seed=0, steps=3)
        same_params(got, ref)
        assert got is not net and not got.training
    same_params(net, tiny()[0])


# --- fine-pruning ----------------------------------------------------------------------------

def test_dormancy_order_ranks_channels_by_mean_activation() -> None:
    net, (x, _) = Channels(), channel_data()
    kws: list[dict[str, Any]] = [{}, {"batch": 5}, {"layer": "body.1", "batch": 5},
                                 {"layer": "penultimate"}]
    for kw in kws:
        assert bl.dormancy_order(net, x, **kw).tolist() == [2, 0, 3, 1], kw
    assert bl.dormancy_order(net, x[1:]).tolist() == [0, 2, 3, 1]  # a tie: lower index first
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        seq = nn.Sequential(nn.Flatten(2), nn.Conv1d(4, 3, 1))  # a (B, U, L) layer
    with torch.no_grad():
        mean = seq(x).clamp_min(0).mean(2)  # (B, U)
    want = mean.mean(0).argsort(stable=True).tolist()
    assert bl.dormancy_order(seq, x, layer="1").tolist() == want
    close(ab.unit_activations(seq, "1", x), mean)
    wrong = channel_data()[1]
    wrong[-1] = 4  # in the last, partial batch
    assert bl._accuracy(net, x, wrong, torch.device("cpu"), batch=5) == 15 / 16
    assert bl.dormancy_order(net, 1 - x, batch=5).tolist() == [1, 3, 0, 2]


def test_fine_pruning_stops_at_the_accuracy_drop_and_keeps_channels_zero() -> None:
    net, (x, y) = Channels(), channel_data()
    # accuracy with channels 2 | 2, 0 | 2, 0, 3 pruned: 14/16, 11/16, 6/16
    cases: list[tuple[dict[str, Any], list[int], list[float]]] = [
        ({"max_drop": 0.125}, [2], [0.875, 0.6875]), ({}, [], [0.875]),
        ({"max_drop": 1.0, "max_frac": 0.5}, [2, 0], [0.875, 0.6875]),
        ({"max_drop": 1.0}, [2, 0, 3], [0.875, 0.6875, 0.375]),
        ({"max_drop": 0.0, "max_frac": 1.0}, [], [0.875])]
    for kw, pruned, trace in cases:
        cfg = ul.FinetuneConfig(steps=2, batch_size=8, lr=0.05)
        got, info = bl.fine_prune(net, x, y, cfg=cfg, **kw)
        assert info == bl.PruneInfo(layer="body.0", pruned=pruned, acc_before=1.0,
                                    acc_pruned=[1.0, *trace][len(pruned)], n_channels=4,
                                    trace=trace), kw
        ref = copy.deepcopy(net)

        def zero(m: nn.Module, idx: list[int] = pruned) -> None:
            with torch.no_grad():
                for p in m.get_submodule("body.0").parameters():  # weight and bias
                    p[idx] = 0.0

        zero(ref)
        fit(ref, x, y, cfg=ul.StampTrainConfig(batch_size=8, lr=0.05), seed=0, steps=2,
            after_step=zero)
        same_params(got, ref)
        assert dict(got.named_parameters())["body.0.weight"][pruned].abs().sum() == 0
    same_params(net, Channels())
    for drop, frac in ((-0.1, 0.9), (1.1, 0.9), (0.04, 0.0), (0.04, 1.5)):
        with pytest.raises(ValueError, match=r"max_drop must be in \[0, 1\] and max_frac in"):
            bl.fine_prune(net, x, y, max_drop=drop, max_frac=frac)
    with pytest.raises(ValueError, match="layer 'body.1' is a Flatten"):
        bl.fine_prune(net, x, y, layer="penultimate")


# --- capability ablation ---------------------------------------------------------------------

def _units(x: torch.Tensor) -> torch.Tensor:
    """TwoUnitsPerClass's penultimate units by hand: units 2c and 2c+1 = input c (>= 0)."""
    return x.flatten(1)[:, [0, 0, 1, 1, 2, 2, 3, 3]]


def test_unit_selectors_by_hand() -> None:
    net = TwoUnitsPerClass().eval()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 4
    x = (0.8 * F.one_hot(y, 4).float() + 0.15 * torch.rand(300, 4, generator=g)).view(300, 1, 1, 4)
    want = torch.zeros(4, 8)
    for c in range(4):
        want[c, 2 * c] = want[c, 2 * c + 1] = x[y == c][:64, 0, 0, c].mean()  # first 64
    sel = ab._captum(ca.LayerGradientXActivation, "my-gxa")  # built here, not at import
    assert sel.__name__ == "my_gxa" and "LayerGradientXActivation" in (sel.__doc__ or "")
    alphas = approximation_parameters("gausslegendre")[1](ab.N_STEPS + 1)
    for s, scale in ((sel, 1.0), (ab._captum(ca.LayerIntegratedGradients, "ig"), 1.0),
                     (ab._captum(ca.LayerConductance, "cond"), max(alphas) - min(alphas))):
        got = s(net, "penultimate", x, y, num_classes=4, generator=torch.Generator())
        close(got, want * scale, rtol=1e-4, atol=1e-6)
    a = _units(x)
    want = torch.stack([(a[y == c].mean(0) - a[y != c].mean(0)) / a.std(0) for c in range(4)])
    close(ab.activation_difference(
        net, "penultimate", x, y, num_classes=4, generator=g), want)
    with pytest.raises(ValueError, match="needs images of class 0 and of others"):
        ab.activation_difference(net, "penultimate", x, y * 0, num_classes=2, generator=g)
    three = y < 3
    z = _units(x[three]).double().numpy()
    z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-8)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=torch.Generator().manual_seed(1)))
    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=seed).fit(z, y[three].numpy())
    got = ab.linear_probe(net, "penultimate", x[three], y[three], num_classes=4,
                          generator=torch.Generator().manual_seed(1))
    close(got, torch.cat([torch.as_tensor(clf.coef_).float(), torch.zeros(1, 8)]))
    tnet, tx, ty = tiny(n=12)
    tnet.train()
    with torch.no_grad():
        acts = tnet.body[0](tx).clamp_min(0)  # type: ignore[index]
    close(ab.unit_activations(tnet, "body.0", tx, batch=5), acts.flatten(2).mean(2))
    close(ab.unit_activations(tnet, "body.4", tx, batch=5), tnet.body(tx).detach())
    assert tnet.training
    for layer, n in (("body.0", 3), ("penultimate", 6)):
        got = ab.random_units(tnet, layer, tx, ty, num_classes=5,
                              generator=torch.Generator().manual_seed(2))
        assert torch.equal(got, torch.rand(5, n, generator=torch.Generator().manual_seed(2)))
    close(ab._per_unit(torch.arange(12.0).view(1, 3, 4)), torch.tensor([[6.0, 22.0, 38.0]]))
    close(ab._per_unit(torch.arange(8.0).view(1, 2, 2, 2)), torch.tensor([[6.0, 22.0]]))
    assert torch.equal(ab._per_unit(torch.ones(2, 3)), torch.ones(2, 3))
    assert torch.equal(ab._class_images(x, torch.tensor([2] + [0] * 299), 2), x[:1])
    with pytest.raises(ValueError, match="no selection image of class 5"):
        ab._class_images(x, y, 5)


def test_ablation_effects_and_unit_ranking_by_hand() -> None:
    net = TwoUnitsPerClass().eval()
    true = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0])
    x = (F.one_hot(true, 4) + 0.1 * F.one_hot((true + 1) % 4, 4)).float().view(13, 1, 1, 4)
    y = true.clone()
    y[12] = 1  # a class-0 image labelled 1: ablating class 0 makes it right
    units = torch.tensor([[0, 1], [0, 1], [4, 5], [6, 7]])
    eff = ab.ablation_effects(net, "penultimate", units, x, y)
    nan = float("nan")
    for got, want in ((eff.acc_before, [1.0, 0.8, 1.0, nan]), (eff.class_drop, [1, -0.2, 1, nan]),
                      (eff.other_drop, [-0.1, 0.5, 0.0, 0.0]),
                      (eff.selectivity, [1.1, -0.7, 1.0, nan])):
        close(torch.tensor(got), torch.tensor(want), equal_nan=True)
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [0.3, 0.3, 0.3, 0.9]])
    assert ab.top_ablation_units(scores, k=2).tolist() == [[1, 2], [3, 0]]
    assert ab.top_ablation_units(scores, k=4).tolist() == [[1, 2, 3, 0], [3, 0, 1, 2]]
    assert ab.top_ablation_units(scores, k=1).tolist() == [[1], [3]]
    for k in (0, 5):
        with pytest.raises(ValueError, match=f"k must be in \\[1, 4\\] \\(the layer's units\\), "
                                             f"got {k}"):
            ab.top_ablation_units(scores, k=k)
    names = ab.selector_names()
    assert names[-1] == "random" and names[:-1] == sorted(names[:-1]) and len(names) > 3
    assert ab.selector_names(["random", "conductance"]) == ["random", "conductance"]


def test_selector_names_default_is_sorted_with_random_last() -> None:
    names = ab.selector_names()
    assert names[-1] == "random" and names[:-1] == sorted(names[:-1])
    assert ab.selector_names(["random", "linear-probe"]) == ["random", "linear-probe"]
