"""Symmetric claims: every rule of the evidence suite can reproduce, refute and stay in between,
and every exhibit (A-H) can land on features, on bugs, on mixed and on inconclusive.

Each experiment's ``decide`` is fed synthetic metrics. The metric names are those the function
reads (recorded on a first call); their values are found by a small search over a grid of
estimates with narrow and wide intervals, so a claim whose refutation is unreachable, or an
exhibit with no route to one of the worlds, fails here by construction. Checks (identities,
sanity checks) never count as evidence, and a failed one makes its exhibit inconclusive.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from functools import cache
from itertools import product
from pathlib import Path
from typing import Any

import pytest

from eisbench.experiments import (
    EXPERIMENTS,
    frequency,
    goh_leakage,
    goh_linear,
    ilyas,
    nakkiran,
    ntk,
    saliency,
    superposition,
    transfer,
    tsipras,
    wallace,
)
from eisbench.experiments.suite import EXHIBIT_OF, exhibit_world, judge_exhibit, table
from eisbench.runs import claims, record
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.store import Store

Decide = Callable[[dict[str, Metric]], list[Claim]]
TS = tsipras.QUICK
DECIDE: dict[str, Decide] = {
    "ilyas": lambda m: ilyas.decide(m, num_classes=10),
    "goh-leakage": lambda m: goh_leakage.decide(m, num_classes=10),
    "goh-linear": lambda m: goh_linear.decide(m, cfg=goh_linear.QUICK),
    "wallace": lambda m: wallace.decide(m, num_classes=10),
    "nakkiran": lambda m: nakkiran.decide(m, num_classes=10),
    "transfer": lambda m: transfer.decide(m),
    "frequency": lambda m: frequency.decide(m, num_classes=10),
    "tsipras": lambda m: tsipras.decide(m, syn_eps=TS.syn_eps, p=TS.syn_p,
                                        train_eps=TS.train_eps, dataset="mnist",
                                        eval_eps=TS.eval_eps),
    "superposition": lambda m: superposition.decide(m, cfg=superposition.QUICK),
    "ntk": lambda m: ntk.decide(m, chance=0.5, n_features=8),
    "saliency": lambda m: saliency.decide(m, num_classes=10),
}
VERDICTS = record.VERDICTS


def _metric(v: float, lo: float, hi: float) -> Metric:
    return {"value": v, "ci95": [lo, hi], "n": 3, "higher_is_better": True}


# every estimate twice: with a point interval (any side of a bar) and a wide one (astride it)
POINTS = (-1.0, -0.5, -0.3, -0.15, -0.05, 0.0, 0.03, 0.07, 0.12, 0.17, 0.22, 0.3, 0.5, 0.7,
          0.85, 0.93, 0.97, 1.0)
LEVELS = [_metric(v, v, v) for v in POINTS] + [_metric(v, v - 0.4, v + 0.4) for v in POINTS]


class _Recorder(dict[str, Metric]):
    """A metrics mapping that answers every name with a middling metric and records it."""

    def __missing__(self, key: str) -> Metric:
        self[key] = _metric(0.5, 0.4, 0.6)
        return self[key]


@cache
def names_read(exp: str) -> tuple[str, ...]:
    """The metric names ``exp``'s decide reads (a second call with other values must agree)."""
    rec = _Recorder()
    DECIDE[exp](rec)
    again = _Recorder({k: LEVELS[0] for k in rec})
    DECIDE[exp](again)
    return tuple(sorted(set(rec) | set(again)))


@cache
def shape(exp: str) -> tuple[tuple[str, str, str], ...]:
    """(role, if_reproduced, if_not) of each claim of ``exp``, in order."""
    return tuple((c.get("role", "evidence"), c.get("if_reproduced", "inconclusive"),
                  c.get("if_not", "inconclusive")) for c in DECIDE[exp](_Recorder()))


def search(exp: str, allowed: Sequence[frozenset[str]], *, starts: int = 6, moves: int = 3000
           ) -> tuple[dict[str, Metric], list[Claim]] | None:
    """Metrics under which claim i of ``exp`` gets a verdict in ``allowed[i]``, or None if none
    was found: a local search over :data:`LEVELS` from seeded random starts, one metric at a
    time, accepting sideways moves (a compound rule may need several metrics to move before
    its verdict does)."""
    names = names_read(exp)
    rng = random.Random(f"{exp}:{[sorted(a) for a in allowed]}")

    def score(m: dict[str, Metric]) -> tuple[int, list[Claim]]:
        judged = DECIDE[exp](m)
        return sum(c["verdict"] in a for c, a in zip(judged, allowed, strict=True)), judged

    for _ in range(starts):
        m = {n: rng.choice(LEVELS) for n in names}
        best, judged = score(m)
        for _ in range(moves):
            if best == len(allowed):
                return m, judged
            n = rng.choice(names)
            old = m[n]
            m[n] = rng.choice(LEVELS)
            s, j = score(m)
            if s >= best:
                best, judged = s, j
            else:
                m[n] = old
        if best == len(allowed):
            return m, judged
    return None


def _verdicts_for(role: str, if_rep: str, if_not: str, worlds: set[str]) -> frozenset[str]:
    """The verdicts of a claim whose world is in ``worlds`` (a check must not fail)."""
    if role == "check":
        return frozenset({"reproduced", "inconclusive"})
    of = {"reproduced": if_rep, "not reproduced": if_not, "inconclusive": "inconclusive"}
    return frozenset(v for v in VERDICTS if of[v] in worlds)


def _one(role: str, if_rep: str, if_not: str, world: str) -> frozenset[str]:
    return frozenset(v for v, w in (("reproduced", if_rep), ("not reproduced", if_not))
                     if role == "evidence" and w == world)


def reach(exhibit: str, target: str) -> list[Claim] | None:
    """The claims of every experiment of ``exhibit`` under metrics found to give the exhibit
    the world ``target`` (features, bugs, mixed, inconclusive), or None."""
    exps = [e for e, x in EXHIBIT_OF.items() if x == exhibit]
    slots = [(e, i) for e in exps for i in range(len(shape(e)))]
    need = {"features": ("features",), "bugs": ("bugs",), "mixed": ("features", "bugs"),
            "inconclusive": ()}[target]
    calm = {"features": {"features", "inconclusive"}, "bugs": {"bugs", "inconclusive"},
            "mixed": {"features", "bugs", "inconclusive"},
            "inconclusive": {"inconclusive"}}[target]
    for picks in product(slots, repeat=len(need)):
        if len(set(picks)) < len(need):
            continue
        out: list[Claim] = []
        for e in exps:
            allowed = [_verdicts_for(*shape(e)[i], calm) for i in range(len(shape(e)))]
            for (pe, pi), w in zip(picks, need, strict=True):
                if pe == e:
                    allowed[pi] = _one(*shape(e)[pi], w)
            if not all(allowed):
                break
            found = search(e, allowed)
            if found is None:
                break
            out.extend(found[1])
        else:
            return out
    return None


EXHIBITS = sorted(set(EXHIBIT_OF.values()))
WORLDS_OF_EXHIBITS = ("features", "bugs", "mixed", "inconclusive")


@pytest.mark.parametrize("exhibit", EXHIBITS)
@pytest.mark.parametrize("target", WORLDS_OF_EXHIBITS)
def test_every_exhibit_can_land_on_every_world(exhibit: str, target: str) -> None:
    judged = reach(exhibit, target)
    assert judged is not None, f"exhibit {exhibit} cannot land on {target}"
    assert {c["exhibit"] for c in judged} == {exhibit}
    verdict = judge_exhibit(judged)
    assert verdict["world"] == target and "reason" not in verdict
    evidence = [c for c in judged if c.get("role", "evidence") == "evidence"]
    assert exhibit_world([claims.world(c) for c in evidence]) == target


@pytest.mark.parametrize("exp", sorted(DECIDE))
@pytest.mark.parametrize("outcome", VERDICTS)
def test_every_rule_can_reproduce_refute_and_stay_in_between(exp: str, outcome: str) -> None:
    """(a) every claim reproduced, (b) every claim refuted, (c) every claim in between."""
    allowed = [frozenset({outcome})] * len(shape(exp))
    found = search(exp, allowed)
    assert found is not None, f"{exp}: no metrics make every claim {outcome!r}"
    metrics, judged = found
    assert [c["verdict"] for c in judged] == [outcome] * len(judged)
    for c in judged:  # each claim states both outcomes' worlds and is a valid record entry
        assert c["if_reproduced"] in record.WORLDS and c["if_not"] in record.WORLDS
        assert c["role"] in record.ROLES and c["exhibit"] == EXHIBIT_OF[exp]
    assert set(metrics) == set(names_read(exp))
    record.validate({**{k: None for k in record.Record.__annotations__},
                     "schema_version": 1, "metrics": {}, "claims": judged})


def test_every_world_of_every_evidence_claim_is_stated_and_refutation_is_informative() -> None:
    """An exhibit-level symmetry: every exhibit has a claim whose outcome supports features
    and one whose outcome supports bugs (a failed claim is not inconclusive everywhere)."""
    for exhibit in EXHIBITS:
        worlds = {w for e, x in EXHIBIT_OF.items() if x == exhibit
                  for role, rep, nope in shape(e) if role == "evidence" for w in (rep, nope)}
        assert {"features", "bugs"} <= worlds, exhibit


CHECKS = {"A": "saliency", "C": "tsipras", "F": "superposition"}


def test_identities_and_sanity_checks_are_marked_as_checks() -> None:
    roles = {e: [r for r, _, _ in shape(e)] for e in DECIDE}
    assert roles["superposition"][0] == "check"  # the rescaling identity
    assert roles["tsipras"].count("check") == 4  # three theorems on synthetic data, AT works
    assert roles["saliency"][0] == "check"  # fast AT made the model robust
    assert {e for e, r in roles.items() if "check" in r} == set(CHECKS.values())
    for e in DECIDE:  # a check supports no world whatever its verdict
        for role, rep, nope in shape(e):
            if role == "check":
                assert rep == nope == "inconclusive"


@pytest.mark.parametrize("exhibit", sorted(CHECKS))
def test_a_failed_check_makes_its_exhibit_inconclusive(exhibit: str) -> None:
    exp = CHECKS[exhibit]
    sh = shape(exp)
    first = next(i for i, (role, _, _) in enumerate(sh) if role == "check")
    allowed = [_verdicts_for(*s, {"features", "inconclusive"}) for s in sh]
    allowed[first] = frozenset({"not reproduced"})
    wanted = next(i for i, s in enumerate(sh) if _one(*s, "features"))
    allowed[wanted] = _one(*sh[wanted], "features")
    found = search(exp, allowed)
    assert found is not None
    judged = found[1]
    assert exhibit_world([claims.world(c) for c in judged]) == "features"  # without the gate
    verdict = judge_exhibit(judged)
    assert verdict["world"] == "inconclusive"
    assert verdict["reason"] == f"check failed: {judged[first]['claim']}"
    assert verdict["counts"]["inconclusive"] == verdict["claims"] == sum(
        r == "evidence" for r, _, _ in sh)
    assert [c["claim"] for c in verdict["checks"]] == [
        c["claim"] for c in judged if c["role"] == "check"]


def _claim(verdict: str, *, role: str = "evidence", rep: str = "features",
           nope: str = "bugs", exhibit: str = "F") -> Claim:
    return claims.make_claim(claim=f"{role} {verdict} {rep}", rule="r", measured="m",
                             verdict=verdict, exhibit=exhibit, if_reproduced=rep, if_not=nope,
                             role=role)


def test_a_check_never_counts_as_evidence() -> None:
    for v in VERDICTS:
        assert claims.world(_claim(v, role="check")) == "inconclusive"
    passed = judge_exhibit([_claim("reproduced", role="check")])
    assert passed == {"world": "inconclusive", "claims": 0,
                      "counts": {"features": 0, "bugs": 0, "inconclusive": 0},
                      "checks": [{"claim": "check reproduced features",
                                  "verdict": "reproduced"}]}
    # an inconclusive check neither counts nor gates
    mixed = judge_exhibit([_claim("inconclusive", role="check"), _claim("reproduced"),
                           _claim("not reproduced")])
    assert mixed["world"] == "mixed" and mixed["claims"] == 2 and "reason" not in mixed
    with pytest.raises(ValueError, match="role"):
        _claim("reproduced", role="sanity")
    bad = {"schema_version": 1, "claims": [{**_claim("reproduced"), "role": "sanity"}]}
    with pytest.raises(ValueError, match="role"):
        record.validate(bad)


def test_the_suite_table_lists_checks_apart() -> None:
    rec: Any = {"claims": [_claim("not reproduced", role="check"), _claim("reproduced"),
                           _claim("reproduced", rep="bugs")]}
    rows, exhibits = table([("superposition", rec)])
    assert [r["role"] for r in rows] == ["check", "evidence", "evidence"]
    f = exhibits["F"]
    assert f["world"] == "inconclusive" and f["claims"] == 2
    assert f["counts"] == {"features": 0, "bugs": 0, "inconclusive": 2}
    assert f["reason"].startswith("check failed: check not reproduced")
    rest: Any = {"claims": rec["claims"][1:]}
    rows, exhibits = table([("superposition", rest)])
    assert exhibits["F"]["world"] == "mixed" and exhibits["F"]["checks"] == []


def test_the_suite_report_shows_checks_apart(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the suite (experiments replaced by ones returning fixed claims): a
    failed check is listed apart, named as the reason, and gates its exhibit."""
    def fake(exhibit: str) -> Callable[..., Result]:
        def measure(cfg: object, *, out: Path, store: Store) -> Result:
            return Result(metrics={}, claims=[
                _claim("not reproduced" if exhibit == "F" else "reproduced", role="check",
                       exhibit=exhibit), _claim("reproduced", exhibit=exhibit)])
        return measure

    def page(rec: Any, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        return out / "report.html"

    for name, exhibit in (("superposition", "F"), ("ntk", "G")):
        monkeypatch.setitem(EXPERIMENTS._items, name, dataclasses.replace(
            EXPERIMENTS.get(name), measure=fake(exhibit), report=page))
    suite = EXPERIMENTS.get("features-vs-bugs")
    cfg = dataclasses.replace(suite.quick, dataset="digits", experiments=("superposition",
                                                                          "ntk"))
    rec = suite.run(cfg, out=tmp_path, store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    ex = rec["details"]["exhibits"]
    assert ex["F"]["world"] == "inconclusive" and ex["F"]["reason"].startswith("check failed")
    assert ex["G"]["world"] == "features" and "reason" not in ex["G"]
    html = suite.report(rec, tmp_path).read_text()
    assert "CHECK FAILED: check failed: check not reproduced features" in html
    assert "inconclusive (check failed)" in html and "0/1 passed" in html
    assert "1/1 passed" in html
    assert html.count("its checks (identities and sanity checks: never") == 2


@pytest.mark.parametrize(("args", "kw", "expect"), [
    ((0.30, 0.25, 0.35), {"bar": 0.2, "margin": 0.05}, "reproduced"),
    ((0.21, 0.17, 0.24), {"bar": 0.2, "margin": 0.05}, "not reproduced"),  # equivalence bound
    ((0.21, 0.17, 0.26), {"bar": 0.2, "margin": 0.05}, "inconclusive"),
    ((0.10, 0.02, 0.18), {"bar": 0.2, "margin": 0.0}, "not reproduced"),  # classic rule
    ((0.10, 0.02, 0.18), {"bar": 0.2, "margin": -0.15}, "inconclusive"),  # a gap: "barely"
    ((0.01, 0.0, 0.04), {"bar": 0.2, "margin": -0.15}, "not reproduced"),
    ((0.04, 0.01, 0.07), {"bar": 0.1, "margin": 0.05, "higher_means_reproduced": False},
     "reproduced"),
    ((0.12, 0.06, 0.18), {"bar": 0.1, "margin": 0.05, "higher_means_reproduced": False},
     "not reproduced"),
    ((0.12, 0.04, 0.18), {"bar": 0.1, "margin": 0.05, "higher_means_reproduced": False},
     "inconclusive"),
])
def test_decide_against(args: tuple[float, float, float], kw: dict[str, Any],
                        expect: str) -> None:
    assert claims.decide_against(*args, **kw) == expect


def test_decide_against_refuses_an_interval_that_misses_its_estimate() -> None:
    with pytest.raises(ValueError, match="bracket"):
        claims.decide_against(0.5, 0.6, 0.7, bar=0.2, margin=0.0)  # lo and value swapped
    with pytest.raises(ValueError, match="bracket"):
        claims.decide_against(float("nan"), 0.0, 1.0, bar=0.2, margin=0.0)


def test_combinators() -> None:
    rep, ref, inc = VERDICTS
    assert claims.conjunction(rep, rep) == rep and claims.conjunction(rep, ref) == ref
    assert claims.conjunction(rep, inc) == inc and claims.conjunction(inc, ref) == ref
    assert claims.unanimous(ref, ref) == ref and claims.unanimous(rep, ref) == inc
    assert claims.unanimous(rep, rep) == rep
    assert claims.needed(ref) == inc and claims.needed(rep) == rep
    assert claims.provided(ref, rep) == ref and claims.provided(ref, inc) == inc
    assert claims.provided(ref, ref) == inc and claims.provided(rep, ref) == rep
    m = {"a": _metric(0.6, 0.5, 0.7), "b": _metric(0.3, 0.25, 0.35)}
    assert claims.gap(m, "a", "b") == pytest.approx((0.3, 0.15, 0.45))
