"""The evidence suite (``eisbench run features-vs-bugs``): one verdict table over experiments,
per-experiment overrides, and a failing experiment that does not lose the others."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from eisbench.data import DataError
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.core import Experiment
from eisbench.experiments.suite import EXHIBIT_EXPERIMENTS, exhibit_world
from eisbench.runs import claims, record
from eisbench.runs.result import Result
from eisbench.runs.store import Store


def test_every_exhibit_experiment_is_registered_and_tags_its_claims() -> None:
    assert set(EXHIBIT_EXPERIMENTS) <= set(EXPERIMENTS.names())
    assert len(EXHIBIT_EXPERIMENTS) == 11


def test_exhibit_world_rule() -> None:
    assert exhibit_world(["features", "inconclusive"]) == "features"
    assert exhibit_world(["bugs"]) == "bugs"
    assert exhibit_world(["bugs", "features"]) == "mixed"
    assert exhibit_world(["inconclusive"]) == "inconclusive"


def test_claims_name_their_exhibit_and_worlds() -> None:
    c = claims.make_claim(claim="c", rule="r", measured="m", verdict="not reproduced",
                          exhibit="E", if_reproduced="bugs", if_not="features")
    assert claims.world(c) == "features"
    assert claims.world({**c, "verdict": "inconclusive"}) == "inconclusive"
    with pytest.raises(ValueError, match="worlds"):
        claims.make_claim(claim="c", rule="r", measured="m", verdict="reproduced",
                          exhibit="E", if_reproduced="feature")
    with pytest.raises(ValueError, match="exhibit"):
        claims.make_claim(claim="c", rule="r", measured="m", verdict="reproduced",
                          exhibit="Z", if_reproduced="features")


def test_suite_table_overrides_and_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    suite = EXPERIMENTS.get("features-vs-bugs")
    ilyas = EXPERIMENTS.get("ilyas")

    def boom(cfg: object, *, out: Path, store: Store) -> Result:
        raise RuntimeError("out of memory (simulated)")

    def no_data(cfg: object, *, out: Path, store: Store) -> Result:
        raise DataError("Fashion-MNIST is not installed (simulated)")

    broken: Experiment = dataclasses.replace(ilyas, measure=boom)
    monkeypatch.setitem(EXPERIMENTS._items, "ilyas", broken)
    monkeypatch.setitem(EXPERIMENTS._items, "wallace",
                        dataclasses.replace(EXPERIMENTS.get("wallace"), measure=no_data))
    cfg = dataclasses.replace(suite.quick, dataset="digits", seeds=(0, 1),
                              experiments=("ilyas", "goh-linear", "wallace"),
                              overrides=("goh-linear:eps=0.5",))
    rec = suite.run(cfg, out=tmp_path / "out", store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    d = rec["details"]
    assert d["failed"] == ["ilyas"] and "out of memory" in d["runs"][0]["error"]
    assert d["skipped"] == ["wallace"] and "not installed" in d["runs"][2]["error"]
    assert (tmp_path / "out" / "goh-linear" / "record.json").exists()
    sub = record.read(tmp_path / "out" / "goh-linear" / "record.json")
    assert sub["config"]["eps"] == 0.5  # the override reached the experiment
    assert len(d["table"]) == len(sub["claims"]) > 0
    assert all(r["exhibit"] == "D" and r["world"] in record.WORLDS for r in d["table"])
    assert set(d["exhibits"]) == {"D"} and d["exhibits"]["D"]["claims"] == len(d["table"])
    assert d["exhibits"]["D"]["incomplete"] == ["ilyas", "wallace"]  # failed and skipped
    assert all(k.startswith("goh_linear/") for k in rec["metrics"])
    html = suite.report(rec, tmp_path / "out").read_text()
    assert "Exhibit D" in html and "FAILED" in html and "goh-linear/report.html" in html
    assert "Skipped for missing data" in html
    assert "INCOMPLETE: ilyas, wallace" in html and "(incomplete)" in html
    with pytest.raises(ValueError, match="experiment:key=value"):
        suite.run(dataclasses.replace(cfg, overrides=("ntk:eps=1",)), out=tmp_path / "x",
                  store=Store(tmp_path / "cache"))
    with pytest.raises(ValueError, match="unknown config field"):
        suite.run(dataclasses.replace(cfg, overrides=("goh-linear:epz=1",)), out=tmp_path / "x",
                  store=Store(tmp_path / "cache"))


def test_an_exhibit_whose_only_experiment_failed_is_listed_incomplete() -> None:
    from eisbench.experiments.suite import EXHIBIT_OF, table

    rows, exhibits = table([], ["ntk"])
    assert rows == [] and exhibits["G"]["incomplete"] == ["ntk"]
    assert exhibits["G"]["world"] == "inconclusive" and exhibits["G"]["claims"] == 0
    assert set(EXHIBIT_OF.values()) == set("ABCDEFGH")  # every exhibit has an experiment


def test_each_experiment_is_filed_under_the_exhibit_its_claims_name() -> None:
    """EXHIBIT_OF decides which exhibit a failed experiment makes incomplete: a wrong entry
    (say transfer filed under C) would mark the wrong exhibit, so it must agree with the
    exhibit every claim of that experiment's module declares."""
    import re

    import eisbench.experiments as pkg
    from eisbench.experiments.suite import EXHIBIT_OF

    root = Path(pkg.__file__).parent
    for name, exhibit in EXHIBIT_OF.items():
        stem = name.replace("-", "_")
        # an experiment's claims may live in its own `<stem>_claims.py` beside it
        src = "".join(p.read_text() for p in (root / f"{stem}.py", root / f"{stem}_claims.py")
                      if p.exists())
        declared = set(re.findall(r'exhibit"?\s*[=:]\s*"([A-H])"', src))
        assert declared == {exhibit}, (name, declared)


def test_the_printed_summary_names_a_failed_check_and_a_lost_experiment() -> None:
    from eisbench.api import RunRecord

    ex = {"title": "The superposition perspective", "world": "inconclusive",
          "counts": {"features": 1}, "reason": "check failed: rescaling is an identity",
          "incomplete": ["ntk"]}
    text = RunRecord({"experiment": "features-vs-bugs", "claims": [], "metrics": {},
                      "details": {"exhibits": {"F": ex}}}, out=Path("o"),
                     report=Path("o/report.html")).summary()
    assert ("exhibit F (The superposition perspective): inconclusive {'features': 1} (check "
            "failed: rescaling is an identity) INCOMPLETE: ntk did not finish") in text
