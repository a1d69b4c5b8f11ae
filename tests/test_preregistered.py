"""Pre-registration: every bar and margin lives in one versioned table, and the code reads it.

The table's digest is pinned next to the rules' version, so a threshold changed without a version
bump fails here; every name the source reads exists and every entry is read; every entry says why
(and where from, if it cites the literature); no numeric bar or margin is left in the experiments'
decide code (an AST scan, so a new literal fails).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from eisbench.runs import claims, preregistered
from eisbench.runs.preregistered import (
    RULES_VERSION,
    THRESHOLDS,
    Threshold,
    bar_margin,
    build,
    choice,
    digest,
    threshold,
)
from eisbench.runs.result import Result, to_record

DIGEST = "3c5bdf225b9e7daad55d7a0e97a0c6f9b059aab16963413a1a69177cb3108661"
"""``digest()`` of the whole table (values, reasons, sources, pilots) under RULES_VERSION."""
VALUE_PINS = {3: "b12a1d1f0a6ae43f2b8a5869caab26b537fb2389c1910ecc42368cc7d2d543d7",
              4: "f209bcf974cded23f8638342a54cb9695ba2dbb15b727f19b9277e639791df10",
              5: "611a314d80b9c769e0cdac8c4003e192524539e6fbbf0cb4f9fdd4c4bc029e89",
              6: "f264da0dbf79c70c85755027c3e1164854ec0b7c9bf53633a207160417b43d29",
              7: "5d69b99730d11fc8b187e3d0bed275a5122347cd434dd711560c99631418b9cd",
              8: "8527d0e4a128e93184bce67fdbb8468828665f6588ad1dff0e8e5299560b68a7",
              9: "4d64191fa58b046ca408f8cba81d61df122d91d9b97297d14d73619c58cc6cba"}
"""Per rules version: the fingerprint of the table's names and values alone (no prose)."""

SRC = Path(preregistered.__file__).resolve().parents[1]  # src/eisbench
EXPERIMENTS = SRC / "experiments"
PENDING: dict[str, str] = {}
"""Entries whose code still holds its own literal, to be switched to the lookup there (each is
checked to be unread until then: remove it from here when its file reads the table)."""
FAMILIES = {"ilyas", "wallace", "goh_leakage", "goh_linear", "transfer", "nakkiran", "frequency",
            "ntk", "tsipras", "superposition", "saliency", "trojans", "edit"}


def values_fingerprint(table: dict[str, Threshold] | None = None) -> str:
    t = THRESHOLDS if table is None else table
    blob = json.dumps({k: v.value for k, v in t.items()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# (a) the digest is pinned next to the version


def test_changed_values_need_a_new_rules_version() -> None:
    fp = values_fingerprint()
    assert RULES_VERSION in VALUE_PINS, (
        f"RULES_VERSION is {RULES_VERSION} but tests/test_preregistered.py pins no values for it: "
        f"add VALUE_PINS[{RULES_VERSION}] = {fp!r} and set DIGEST = {digest()!r}")
    assert VALUE_PINS[RULES_VERSION] == fp, (
        f"a threshold's value (or the set of names) changed but RULES_VERSION is still "
        f"{RULES_VERSION}. A changed rule is a new version: bump RULES_VERSION in "
        f"src/eisbench/runs/preregistered.py, say in its docstring what changed and whether "
        f"results had been seen, then pin VALUE_PINS[{RULES_VERSION + 1}] = {fp!r} and "
        f"DIGEST = {digest()!r} here (keep the old pins: they are the history)")
    assert max(VALUE_PINS) == RULES_VERSION, "RULES_VERSION went below a pinned version"


def test_digest_is_pinned() -> None:
    assert digest() == DIGEST, (
        f"the thresholds table changed (values unchanged, so prose: why, source, pilot or "
        f"disjoint). Records of version {RULES_VERSION} will carry another digest: if that is "
        f"intended set DIGEST = {digest()!r} in tests/test_preregistered.py")


def test_the_version_history_says_what_changed() -> None:
    text = Path(preregistered.__file__).read_text()
    assert re.search(rf"^- {RULES_VERSION} \(", text, re.M), (
        f"RULES_VERSION's docstring has no line '- {RULES_VERSION} (date): what changed'")
    assert claims.RULES_VERSION is RULES_VERSION  # re-exported, not a second copy


def test_digest_moves_with_any_value_and_only_then_the_values_pin() -> None:
    base = dict(THRESHOLDS)
    name = "ilyas.D_NR.std_acc.bar"
    v = threshold(name)
    nudged = {**base, name: Threshold(v + 0.01, base[name].why, base[name].source)}
    reworded = {**base, name: Threshold(v, "reworded", base[name].source)}
    assert digest(build(nudged.items())) != digest()
    assert values_fingerprint(nudged) != values_fingerprint()
    assert digest(build(reworded.items())) != digest()
    assert values_fingerprint(reworded) == values_fingerprint()
    assert digest(build(base.items())) == digest()  # canonical: order and copy do not matter
    assert digest(build(sorted(base.items(), reverse=True))) == digest()


@dataclass(frozen=True)
class _Cfg:
    seeds: tuple[int, ...] = (0,)


def test_every_record_holds_the_rules_version_and_the_table_digest() -> None:
    rec = to_record("x", _Cfg(), Result(metrics={}), seconds=0.0)
    assert rec["versions"]["claim_rules"] == str(RULES_VERSION) == "9"
    assert rec["versions"]["thresholds"] == digest()[:16]


# (b) every name read exists, every entry is read

CALL = re.compile(r"\b(threshold|bar_margin|choice)\(\s*(f?)\"([^\"]*)\"")


def names_read() -> dict[str, set[tuple[str, str]]]:
    """name -> {(function, file)} over src/eisbench (preregistered.py itself left out)."""
    out: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "preregistered.py":
            continue
        for fn, f, name in CALL.findall(path.read_text()):
            where = str(path.relative_to(SRC))
            assert not f, f"{where}: {fn}(f\"{name}\") builds a name: write it out, so it is found"
            names = [f"{name}.bar", f"{name}.margin"] if fn == "bar_margin" else [name]
            for n in names:
                out.setdefault(n, set()).add((fn, where))
    return out


def test_every_name_read_is_in_the_table_and_read_the_right_way() -> None:
    read = names_read()
    assert len(read) > 50
    for name, uses in read.items():
        assert name in THRESHOLDS, f"{sorted(uses)} read {name!r}, which is not in THRESHOLDS"
        is_str = isinstance(THRESHOLDS[name].value, str)
        for fn, where in uses:
            assert (fn == "choice") == is_str, f"{where} reads {name!r} with {fn}()"


def test_every_entry_is_read_somewhere() -> None:
    read = names_read()
    unread = sorted(set(THRESHOLDS) - set(read) - set(PENDING))
    assert not unread, f"entries that no code reads (delete them or read them): {unread}"
    switched = sorted(set(PENDING) & set(read))
    assert not switched, f"now read by the code: remove from PENDING in this test: {switched}"
    assert set(PENDING) <= set(THRESHOLDS)


# (c) every entry says why; literature-derived ones say where from; pilots are named

LITERATURE = re.compile(r"\bpublished\b|et al\.|\b(19|20)\d\d\b")


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_every_entry_says_why_and_where_from(name: str) -> None:
    t = THRESHOLDS[name]
    assert re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_]+)+", name) and name.split(".")[0] in FAMILIES
    assert t.why.strip(), f"{name}: why is empty"
    if LITERATURE.search(t.why):
        assert t.source, f"{name} cites the literature in its why but names no source"
    if t.source:
        assert re.search(r"\b(19|20)\d\d\b", t.source) and re.search(
            r"Table|Fig\.|Sec\.|notebook|table", t.source), f"{name}: source {t.source!r} names " \
            "no year or no table, figure or section"
    if t.pilot:
        assert re.search(r"seed", t.pilot) and t.disjoint is not None, name


def test_entries_awaiting_their_switch_hold_the_values_of_the_code() -> None:
    from eisbench.bench import edit, trojan_scores
    from eisbench.trojans import judge_checks, zoo

    assert threshold("trojans.min_graded") == trojan_scores.MIN_GRADED
    assert threshold("trojans.judge.accuracy_target") == judge_checks.ACCURACY_TARGET
    assert threshold("trojans.judge.uniformity_alpha") == judge_checks.UNIFORMITY_ALPHA
    assert threshold("trojans.zoo.asr_target") == zoo.ASR_TARGET
    assert threshold("trojans.zoo.max_drop") == zoo.MAX_DROP
    cfg = edit.EditBenchConfig()
    assert (cfg.lat_layer, cfg.lat_eps) == (choice("edit.lat.layer"), threshold("edit.lat.eps"))


def test_every_pilot_is_disjoint_from_what_its_choices_score() -> None:
    """Since rules 4 no pilot shares data with what it scores: the saliency rules' pilot seed is
    outside every preset's seeds (and a check fails if a run scores it), and LAT's layer and
    bound come from the pilot zoo, which shares no trigger with the scored zoo."""
    from eisbench.experiments import saliency, suite
    from eisbench.trojans.zoo import PILOT_TABLE, ZOO_TABLE

    piloted = {k: t for k, t in THRESHOLDS.items() if t.pilot}
    assert all(t.disjoint is True for t in piloted.values()), [
        k for k, t in piloted.items() if not t.disjoint]
    sal = [k for k in THRESHOLDS if k.startswith("saliency.")]
    assert len(sal) == 13 and all("seed 0" in THRESHOLDS[k].pilot for k in sal)
    pilot = int(threshold("saliency.pilot.seed"))
    for cfg in (saliency.QUICK, saliency.FULL, suite.QUICK, suite.FULL):
        assert cfg.seeds and pilot not in cfg.seeds, cfg.seeds
    for k in ("edit.lat.layer", "edit.lat.eps"):
        assert "PILOT_TABLE" in THRESHOLDS[k].pilot and "lat_pilot.py" in THRESHOLDS[k].pilot
    assert not {(e.kind, e.index) for e in PILOT_TABLE} & {(e.kind, e.index) for e in ZOO_TABLE}


def test_threshold_validation_and_lookup_errors() -> None:
    with pytest.raises(ValueError, match="why"):
        Threshold(0.1, " ")
    with pytest.raises(ValueError, match="disjoint"):
        Threshold(0.1, "w", pilot="seed 0")
    with pytest.raises(ValueError, match="disjoint"):
        Threshold(0.1, "w", disjoint=True)
    with pytest.raises(ValueError, match="finite"):
        Threshold(float("nan"), "w")
    with pytest.raises(ValueError, match="twice"):
        build([("a.b", Threshold(0.1, "w")), ("a.b", Threshold(0.2, "w"))])
    with pytest.raises(KeyError, match=r"ilyas\.D_NR\.std_acc\.bar"):
        threshold("ilyas.DNR.std_acc.bar")
    with pytest.raises(TypeError, match="choice"):
        threshold("edit.lat.layer")
    with pytest.raises(TypeError, match="threshold"):
        choice("edit.lat.eps")
    assert bar_margin("ilyas.D_R.robust_gain") == {"bar": 0.05, "margin": 0.05}
    with pytest.raises(TypeError):
        THRESHOLDS["x.y"] = Threshold(0.1, "w")  # type: ignore[index]


# (d) no numeric bar or margin left in the experiments' decide code

RULE_NAME = re.compile(r"(^|_)(bar|margin|clearly|barely|tolerance)(_|$)", re.I)


def _numeric(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and isinstance(n.value, (int, float))
               and not isinstance(n.value, bool) for n in ast.walk(node))


def literal_rules(source: str, where: str = "<src>") -> list[str]:
    """Places in ``source`` where a rule's number is a literal: a ``bar=``/``margin=`` keyword
    whose value holds a number, a module or class constant named like a bar, margin or
    tolerance set to a number, or a number other than 1 divided by ``num_classes``."""
    out: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out += [f"{where}:{k.lineno}: {k.arg}={ast.unparse(k.value)}" for k in node.keywords
                    if k.arg in ("bar", "margin") and _numeric(k.value)]
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              and isinstance(node.right, ast.Name) and node.right.id == "num_classes"
              and _numeric(node.left) and ast.unparse(node.left) not in ("1", "1.0")):
            out.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    scopes: list[ast.Module | ast.ClassDef] = [tree]
    scopes += [n for n in tree.body if isinstance(n, ast.ClassDef)]
    for scope in scopes:
        for st in scope.body:
            targets = (st.targets if isinstance(st, ast.Assign) else
                       [st.target] if isinstance(st, ast.AnnAssign) else [])
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            value = getattr(st, "value", None)
            if value is not None and _numeric(value) and any(RULE_NAME.search(n) for n in names):
                out.append(f"{where}:{st.lineno}: {ast.unparse(st)}")
    return out


def test_the_scan_catches_literal_rules() -> None:
    bad = ("X_BAR = 0.1\nBARELY, CLEARLY = 0.05, 0.2\nclass C:\n    acc_tolerance: float = 0.01\n"
           "def decide(m, num_classes):\n    c = 2.0 / num_classes\n"
           "    return f(m, 'k', bar=c - 0.1, margin=0.0)\n")
    assert len(literal_rules(bad)) == 6
    good = ("X_BAR = threshold('a.bar')\nGTOL = 1e-5\nclass C:\n"
            "    acc_tolerance: float = threshold('a.t')\n    n_test: int = 200\n"
            "def decide(m, num_classes):\n    c = 1.0 / num_classes\n"
            "    return f(m, 'k', **bar_margin('a'), bar=c * x, margin=-m)\n")
    assert literal_rules(good) == []


def test_no_literal_bar_or_margin_in_the_experiments() -> None:
    found = [hit for p in sorted(EXPERIMENTS.glob("*.py"))
             for hit in literal_rules(p.read_text(), p.name)]
    assert not found, ("a rule's number written as a literal: add it to THRESHOLDS in "
                       "src/eisbench/runs/preregistered.py (bumping RULES_VERSION if it is new or "
                       "changed) and read it with threshold()/bar_margin():\n" + "\n".join(found))
