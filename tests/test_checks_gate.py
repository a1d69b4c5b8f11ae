"""Checks gate verdicts: a robust accuracy carries the sanity checks of the evaluations behind it,
and a claim whose rule reads it turns inconclusive, naming the check, when one of them failed.

Each experiment's ``decide`` is fed synthetic metrics under which every claim is reproduced
(found by the search of ``test_claims_symmetry``); then one check fails on one robust metric:
exactly the claims that read that metric must turn inconclusive, the others keep their verdicts.
The experiments' aggregation is fed synthetic per-seed evaluations: the checks they attach are
those of the suite evaluations, merged over seeds and models.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import pytest
from test_claims_symmetry import DECIDE, _metric, names_read, search, shape

from eisbench.experiments import ilyas, nakkiran, nakkiran_claims, saliency, superposition, tsipras
from eisbench.runs import claims, record
from eisbench.runs.record import Claim, Metric

# (experiment, robust metric) -> indices of the claims of its decide whose rule reads it
GATED: dict[tuple[str, str], set[int]] = {
    ("ilyas", "train_on_D_NR/robust_acc"): {0},  # D_NR
    ("ilyas", "train_on_D_R/robust_acc"): {1},  # D_R (robust gain and D_R's robust acc)
    ("ilyas", "train_on_D/robust_acc"): {1},
    ("saliency", "saliency/fast-at/robust_acc"): {0},  # the check: fast AT made it robust
    ("saliency", "saliency/standard/robust_acc"): {0, 1},
    ("saliency", "saliency/fast-at-vs-standard/robust-diff"): {0},
    ("saliency", "saliency/input-grad/robust_acc"): {1},  # input-grad buys robustness
    ("saliency", "saliency/input-grad-vs-standard/robust-diff"): {1},
    ("superposition", "superposition/deep_minus_shallow/robust_gap"): {1},
    ("tsipras", "tsipras/mnist/train_eps=0/robust_acc"): {3, 4},  # check 4; cost at max eps
    ("tsipras", "tsipras/mnist/train_eps=0.3/robust_acc"): {3, 4},
    ("nakkiran", "nakkiran/squares/net_robust_acc"): {4},  # adversarial squares
}
EXACT = {"nakkiran/squares/robust_classifier_robust_acc"}  # computed in closed form: no attack
FAIL = {"eps-curve": True, "gradients": False, "control-falls": None}


@cache
def reproducing(exp: str) -> tuple[dict[str, Metric], tuple[str, ...]]:
    """Metrics under which every claim of ``exp`` is reproduced, and those verdicts."""
    found = search(exp, [frozenset({"reproduced"})] * len(shape(exp)))
    assert found is not None, exp
    metrics, judged = found
    return metrics, tuple(c["verdict"] for c in judged)


def _checked(v: float, lo: float, hi: float, checks: dict[str, bool | None]) -> Metric:
    m = _metric(v, lo, hi)
    m["checks"] = checks
    return m


def _judge(exp: str, metrics: dict[str, Metric]) -> list[Claim]:
    return DECIDE[exp](copy.deepcopy(metrics))


def test_every_robust_metric_a_decide_reads_is_gated() -> None:
    """A robust accuracy read by a rule without being listed here would escape the gate."""
    for exp in {e for e, _ in GATED}:
        robust = {n for n in names_read(exp) if any(
            k in n.rsplit("/", 1)[-1] for k in ("robust_acc", "robust-diff", "robust_gap"))}
        assert robust - EXACT == {n for e, n in GATED if e == exp}, exp


@pytest.mark.parametrize(("exp", "name"), sorted(GATED))
def test_a_failed_check_makes_the_claims_reading_the_metric_inconclusive(exp: str,
                                                                          name: str) -> None:
    metrics, verdicts = reproducing(exp)
    assert set(verdicts) == {"reproduced"}
    before = _judge(exp, metrics)
    metrics = copy.deepcopy(metrics)
    metrics[name]["checks"] = dict(FAIL)
    after = _judge(exp, metrics)
    gated = GATED[(exp, name)]
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        if i in gated:
            assert a["verdict"] == "inconclusive", (exp, i, a["claim"])
            assert a["measured"] == (f"{b['measured']}; inconclusive: the sanity check(s) "
                                     "gradients failed on the evaluation behind these numbers")
            assert a["checks"] == FAIL  # listed, the one that could not run included
        else:
            assert a == b, (exp, i, a["claim"])  # untouched, checks and all
    record.validate(_rec({name: {**_metric(0.5, 0.5, 0.5), "checks": FAIL}}, after))


@pytest.mark.parametrize("exp", sorted({e for e, _ in GATED}))
def test_passed_or_unrun_checks_change_no_verdict(exp: str) -> None:
    metrics, verdicts = reproducing(exp)
    metrics = copy.deepcopy(metrics)
    for e, name in GATED:
        if e == exp:
            metrics[name]["checks"] = {"gradients": True, "control-falls": None}
    after = _judge(exp, metrics)
    assert tuple(c["verdict"] for c in after) == verdicts
    carrying = {i for (e, _), idx in GATED.items() if e == exp for i in idx}
    for i, c in enumerate(after):
        if i in carrying:  # listed on the claims that read them, and nothing else
            assert c["checks"] == {"gradients": True, "control-falls": None}, (exp, i)
            assert "inconclusive:" not in c["measured"]
        else:
            assert c.get("checks", {}) == {}, (exp, i)


def test_a_refuted_claim_is_gated_too_and_an_inconclusive_one_keeps_the_note() -> None:
    m = {"train_on_D_NR/std_acc": _metric(0.05, 0.04, 0.06),  # refuted: D_NR does not learn
         "train_on_D_NR/robust_acc": _checked(0.0, 0.0, 0.0, {"gradients": True}),
         "train_on_D_R/robust_acc": _metric(0.5, 0.1, 0.9),
         "train_on_D/robust_acc": _checked(0.0, 0.0, 0.0, {"eval-mode": False}),
         "train_on_D_rand/std_acc": _metric(0.5, 0.5, 0.5),
         "train_on_D_det/std_acc": _metric(0.5, 0.5, 0.5)}
    out = ilyas.decide(m, num_classes=10)
    assert out[0]["verdict"] == "not reproduced" and out[0]["checks"] == {"gradients": True}
    m["train_on_D_NR/robust_acc"]["checks"] = {"gradients": False}
    assert ilyas.decide(m, num_classes=10)[0]["verdict"] == "inconclusive"
    assert out[1]["verdict"] == "inconclusive"  # by its rule (a wide interval) and gated
    assert out[1]["measured"].endswith("the sanity check(s) eval-mode failed on the evaluation "
                                       "behind these numbers")


def test_make_claim_gates_on_false_only_and_names_every_failed_check() -> None:
    kw: dict[str, Any] = {"claim": "c", "rule": "r", "measured": "m", "exhibit": "D",
                          "if_reproduced": "features", "if_not": "bugs"}
    plain = claims.make_claim(verdict="reproduced", **kw)
    assert "checks" not in plain and plain["verdict"] == "reproduced"
    none = claims.make_claim(verdict="reproduced", checks={"control-falls": None}, **kw)
    assert none["verdict"] == "reproduced" and none["measured"] == "m"
    assert none["checks"] == {"control-falls": None}
    two = claims.make_claim(verdict="not reproduced", checks={
        "gradients": False, "eval-mode": True, "eps-curve": False}, **kw)
    assert two["verdict"] == "inconclusive"
    assert two["measured"] == ("m; inconclusive: the sanity check(s) gradients, eps-curve "
                               "failed on the evaluation behind these numbers")
    assert claims.world(two) == "inconclusive"
    with pytest.raises(ValueError, match="verdict"):  # a typo still fails before the gate
        claims.make_claim(verdict="reproducd", checks={"gradients": False}, **kw)


def test_merge_checks() -> None:
    def ev(**passed: bool | None) -> list[dict[str, Any]]:
        return [{"name": k, "passed": v, "detail": "", "advice": ""} for k, v in passed.items()]

    merged = claims.merge_checks([ev(a=True, b=None, c=True, d=None),
                                  ev(a=True, b=None, c=False, d=True)])
    assert merged == {"a": True, "b": None, "c": False, "d": True}
    assert list(merged) == ["a", "b", "c", "d"]
    assert claims.merge_checks([ev(a=False), ev(a=True), ev(a=None)]) == {"a": False}
    assert claims.merge_checks([ev(a=None), ev(b=True)]) == {"a": None, "b": True}
    assert claims.merge_checks([]) == {} and claims.merge_checks([[]]) == {}
    assert claims.merge_checks(iter([ev(a=True)])) == {"a": True}  # any iterable, once
    with pytest.raises(ValueError, match="passed"):
        claims.merge_checks([[{"name": "a", "passed": "yes"}]])


def test_checks_of() -> None:
    m = {"a": _checked(0.5, 0.5, 0.5, {"g": True, "c": None}),
         "b": _checked(0.5, 0.5, 0.5, {"g": False, "c": None, "e": True}),
         "n": _metric(0.5, 0.5, 0.5)}
    assert claims.checks_of(m, "a") == {"g": True, "c": None}
    assert claims.checks_of(m, "a", "b") == {"g": False, "c": None, "e": True}
    assert claims.checks_of(m, "b", "a") == {"g": False, "c": None, "e": True}
    assert claims.checks_of(m, "n") == {} and claims.checks_of(m) == {}
    with pytest.raises(KeyError):
        claims.checks_of(m, "missing")


def _ev(**passed: bool | None) -> list[dict[str, Any]]:
    return [{"name": k, "passed": v, "detail": "", "advice": ""} for k, v in passed.items()]


def test_ilyas_aggregate_attaches_suite_checks_only() -> None:
    runs = [{"std_acc": 0.9, "robust_acc": 0.1, "robust_acc_eps=0.1": 0.3,
             "checks": _ev(gradients=True, **{"control-falls": None})},
            {"std_acc": 0.9, "robust_acc": 0.2, "robust_acc_eps=0.1": 0.4,
             "checks": _ev(gradients=False, **{"control-falls": None})}]
    ok = [{**r, "checks": _ev(gradients=True)} for r in runs]
    m = ilyas._aggregate({"train_on_D": runs, "train_on_D_R": ok}, {})
    assert m["train_on_D/robust_acc"]["checks"] == {"gradients": False, "control-falls": None}
    assert m["train_on_D_R/robust_acc"]["checks"] == {"gradients": True}
    for k in ("train_on_D/std_acc", "train_on_D/robust_acc_eps=0.1"):
        assert "checks" not in m[k]
    bare = ilyas._aggregate({"x": [{k: v for k, v in r.items() if k != "checks"}
                                   for r in runs]}, {})
    assert "checks" not in bare["x/robust_acc"]


def test_saliency_attaches_checks_to_robust_accuracies_and_their_differences() -> None:
    def row(fast: bool, grad: bool) -> dict[str, Any]:
        return {"models": {"standard": {"checks": _ev(gradients=True)},
                           "fast-at": {"checks": _ev(gradients=fast)},
                           "input-grad": {"checks": _ev(gradients=grad,
                                                        **{"control-falls": None})}}}
    names = [f"saliency/{n}/robust_acc" for n in saliency.SALIENCY_MODELS] + [
        f"saliency/{n}-vs-standard/robust-diff" for n in ("fast-at", "input-grad")]
    m = saliency.attach_checks({n: _metric(0.5, 0.5, 0.5) for n in names},
                               [row(True, True), row(False, True)])
    assert m["saliency/standard/robust_acc"]["checks"] == {"gradients": True}
    assert m["saliency/fast-at/robust_acc"]["checks"] == {"gradients": False}
    assert m["saliency/fast-at-vs-standard/robust-diff"]["checks"] == {"gradients": False}
    assert m["saliency/input-grad-vs-standard/robust-diff"]["checks"] == {
        "gradients": True, "control-falls": None}


def test_superposition_gap_carries_both_networks_checks() -> None:
    def net(passed: bool) -> dict[str, Any]:
        return {"std_acc": 0.9, "robust_acc": 0.5, "median_l2": 1.0, "median_linf": 0.1,
                "fpd": [1.0, 2.0, 3.0], "checks": _ev(gradients=passed)}
    scaling = [{"max_rel_error": 0.0, "logit_rel_error": 0.0, "pred_changed": 0}]
    per_seed = [{"shallow_wide": net(True), "deep_narrow": net(s != 1), "scaling": scaling}
                for s in range(3)]
    m = superposition._metrics(per_seed)
    assert m["superposition/shallow_wide/robust_acc"]["checks"] == {"gradients": True}
    assert m["superposition/deep_narrow/robust_acc"]["checks"] == {"gradients": False}
    assert m["superposition/deep_minus_shallow/robust_gap"]["checks"] == {"gradients": False}
    assert "checks" not in m["superposition/deep_minus_shallow/l2_rel_gap"]  # FMN: no suite
    out = superposition.decide(m, cfg=superposition.QUICK)
    assert out[1]["verdict"] == "inconclusive" and "gradients failed" in out[1]["measured"]
    assert out[2]["checks"] == {} and "inconclusive:" not in out[2]["measured"]


def test_tsipras_aggregate_merges_checks_per_training_eps() -> None:
    syn = [{"rows": [{"eps_over_eta": 0.0, "std_acc": 0.9, "robust_acc": 0.9,
                      "robust_feature_share": 0.1, "standard_model_robust_acc": 0.9}]}]
    img = [{"seed": s, "train_eps": e, "std_acc": 0.9, "robust_acc": 0.5,
            "checks": _ev(gradients=not (s == 2 and e == 0.3))}
           for s in range(3) for e in (0.0, 0.3)]
    m = tsipras.aggregate(syn, img, dataset="mnist")
    assert m["tsipras/mnist/train_eps=0/robust_acc"]["checks"] == {"gradients": True}
    assert m["tsipras/mnist/train_eps=0.3/robust_acc"]["checks"] == {"gradients": False}
    assert "checks" not in m["tsipras/mnist/train_eps=0/std_acc"]
    assert "checks" not in m["tsipras/synthetic/eps=0eta/robust_acc"]  # exact: no attack


def test_nakkiran_squares_checks_only_with_a_suite() -> None:
    row = {"pgd/transfer_rate": 0.5, "squares/net_robust_acc": 0.1,
           "squares/robust_classifier_robust_acc": 1.0}
    plain = nakkiran._aggregate([row, row])
    assert "checks" not in plain["nakkiran/squares/net_robust_acc"]
    setup = {f"nakkiran/squares/{k}": _metric(1.0, 1.0, 1.0)
             for k in ("net_std_acc", "robust_classifier_robust_acc")}
    assert nakkiran_claims._squares_claim({**setup, **plain})["checks"] == {}
    suite = [{**row, "squares/checks": _ev(**{"enough-classes": False})},
             {**row, "squares/checks": _ev(**{"enough-classes": True})}]
    m = nakkiran._aggregate(suite)
    assert m["nakkiran/squares/net_robust_acc"]["checks"] == {"enough-classes": False}
    assert "checks" not in m["nakkiran/squares/robust_classifier_robust_acc"]


def _rec(metrics: dict[str, Any], claims_: list[Any]) -> dict[str, Any]:
    return {**{k: None for k in record.Record.__annotations__}, "schema_version": 1,
            "metrics": metrics, "claims": claims_}


def test_record_validate_accepts_and_rejects_checks() -> None:
    c = claims.make_claim(claim="c", rule="r", measured="m", verdict="reproduced",
                          exhibit="D", if_reproduced="features",
                          checks={"gradients": True, "control-falls": None})
    good = _checked(0.5, 0.4, 0.6, {"gradients": False, "control-falls": None})
    record.validate(_rec({"a/robust_acc": good, "b": _metric(0.5, 0.4, 0.6)}, [c]))
    for bad in ({"gradients": "yes"}, ["gradients"], {"gradients": 1}, {3: True}):
        with pytest.raises(ValueError, match="checks"):
            record.validate(_rec({"a/robust_acc": {**good, "checks": bad}}, []))
        with pytest.raises(ValueError, match="checks"):
            record.validate(_rec({}, [{**c, "checks": bad}]))
    with pytest.raises(ValueError, match="fields"):  # other extra fields are still refused
        record.validate(_rec({"a": {**good, "check": {}}}, []))
    with pytest.raises(ValueError, match="fields"):
        record.validate(_rec({"a": {k: v for k, v in good.items() if k != "n"}}, []))


def test_a_check_claim_gated_by_its_evaluation_checks_gates_its_exhibit() -> None:
    """A check claim (role "check") whose evaluation checks failed is inconclusive, not
    "not reproduced"; it must still gate the exhibit's evidence."""
    from eisbench.experiments.suite import judge_exhibit
    from eisbench.runs.claims import make_claim

    evidence = make_claim(claim="e", rule="r", measured="m", verdict="reproduced", exhibit="A",
                          if_reproduced="features", if_not="bugs")
    ok = make_claim(claim="c", rule="r", measured="m", verdict="reproduced", exhibit="A",
                    if_reproduced="features", role="check", checks={"grad-masking": True})
    bad = make_claim(claim="c", rule="r", measured="m", verdict="reproduced", exhibit="A",
                     if_reproduced="features", role="check", checks={"grad-masking": False})
    assert bad["verdict"] == "inconclusive"
    assert judge_exhibit([evidence, ok])["world"] == "features"
    gated = judge_exhibit([evidence, bad])
    assert gated["world"] == "inconclusive" and "check failed: c" in gated["reason"]
