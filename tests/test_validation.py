"""Validation at the edge: every preset of every experiment and benchmark is legal and every
numeric field has a range rule; bad values (negative counts, NaN budgets, bools for ints, empty
seeds, ...) are refused with the dotted field named, before any work, on every path a config is
built by (Python fields, ``--set``, the evidence suite's overrides, the audit's settings)."""

from __future__ import annotations

import dataclasses
import doctest
import fnmatch
import math
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import eisbench
from eisbench.bench import audit as audit_bench
from eisbench.bench.registry import BENCHMARKS
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments import suite as evidence
from eisbench.runs import overrides, presets, validation
from eisbench.runs.experiment import Experiment
from eisbench.runs.store import Store
from eisbench.runs.validation import RULES, Rule, check_config, number_fields, rule_for

ENTRIES = [(reg, name) for reg in (EXPERIMENTS, BENCHMARKS) for name in reg.names()]
PRESET_CONFIGS = [pytest.param(reg.get(name).preset(p), id=f"{name}-{p}")
                  for reg, name in ENTRIES for p in presets.PRESETS]
PRESET_CONFIGS += [pytest.param(audit_bench.AuditConfig(), id="audit-full"),
                   pytest.param(audit_bench.QUICK, id="audit-quick")]


def _exp(name: str) -> Experiment:
    return EXPERIMENTS.get(name) if name in EXPERIMENTS else BENCHMARKS.get(name)


@pytest.mark.parametrize("cfg", PRESET_CONFIGS)
def test_every_preset_is_legal(cfg: Any) -> None:
    assert check_config(cfg, name="preset") is cfg


@pytest.mark.parametrize("cfg", PRESET_CONFIGS)
def test_every_numeric_field_of_every_preset_has_a_rule(cfg: Any) -> None:
    paths = list(number_fields(cfg))
    assert paths, "a config with no numeric field: number_fields is broken"
    missing = [path for path, name in paths if rule_for(name) is None]
    assert not missing, (f"add a rule (or Rule(free='why')) to eisbench.runs.validation.RULES "
                         f"for {missing}")


def test_every_rule_is_used_by_a_preset_field() -> None:
    """A pattern that no field reaches is dead, or shadowed by an earlier, broader one (a
    ``train_eps`` rule placed after ``*_eps`` would never hold)."""
    names = {name for cfg in PRESET_CONFIGS for _, name in number_fields(cfg.values[0])}
    first = {name: next(p for p, _ in RULES if fnmatch.fnmatchcase(name, p)) for name in names}
    unused = [p for p, _ in RULES if p not in first.values()]
    assert not unused, f"rules no field reaches first: {unused}"
    assert all(r.free for _, r in RULES if r.free)  # an unconstrained field says why


@pytest.mark.parametrize(("name", "fields", "sets", "match"), [
    ("ilyas", {"n_construct": -5}, [], r"n_construct must be an integer >= 1, got -5"),
    ("ilyas", {}, ["n_construct=-5"], r"n_construct must be an integer >= 1, got -5"),
    ("ilyas", {"n_test_robust": 0}, [], r"n_test_robust must be an integer >= 1, got 0"),
    ("ilyas", {}, ["inversion_steps=-1"], r"inversion_steps must be an integer >= 1"),
    ("ilyas", {}, ["seeds="], r"seeds must be a non-empty tuple of distinct integers in "
                              r"\[0, 4294967295\], got \(\)"),
    ("ilyas", {}, ["seeds=0,0"], r"seeds must be .*distinct.*got \(0, 0\)"),
    ("ilyas", {}, ["seeds=-1"], r"seeds\[0\] must be an integer in \[0, 4294967295\], "
                                r"got -1"),
    ("goh-linear", {"eps": math.nan}, [], r"eps must be a finite number >= 0, got nan"),
    ("goh-linear", {}, ["eps=inf"], r"eps must be a finite number >= 0, got inf"),
    ("goh-linear", {"contamination": (0.1, -0.2)}, [], r"contamination\[1\] must be .* >= 0"),
    ("ilyas", {"robust_train": {"epochs": True}}, [],
     r"robust_train\.epochs must be an integer >= 1, got True \(bool\)"),
    ("ilyas", {}, ["robust_train.eps=nan"], r"robust_train\.eps must be a finite number"),
    ("ilyas", {"n_construct": "500"}, [], r"n_construct must be .*got '500' \(str\)"),
    ("ilyas", {"n_construct": 500.0}, [], r"n_construct must be .*got 500\.0 \(float\)"),
    ("ilyas", {"inversion_step_size": "0.1"}, [], r"inversion_step_size must be .*\(str\)"),
    ("ilyas", {"inversion_step_size": 0.0}, [], r"inversion_step_size must be .* > 0, got 0"),
    ("nakkiran", {}, ["squares.attack.steps=0"], r"squares\.attack\.steps must be an integer"),
    ("ntk", {"depth": -1}, [], r"depth must be an integer >= 0, got -1"),
    ("goh-linear", {"classes": (3, 3)}, [], r"classes must be a 2-tuple of distinct"),
    ("goh-linear", {}, ["classes=3"], r"expected 2 comma-separated values"),
    ("frequency", {"lowpass_frac": 1.5}, [], r"lowpass_frac must be a finite number in \[0, 1\]"),
    ("edit", {"finetune": {"steps": "a"}}, [], r"finetune\.steps must be an integer >= 1"),
    ("edit", {"defender_frac": 0.0}, [], r"defender_frac must be .* in \(0, 1\], got 0"),
    ("edit", {"lat_layer": ""}, [], r"lat_layer must be a non-empty string"),
    ("trojans", {"device": ""}, [], r"device must be a non-empty string"),
    ("saliency", {"input_grad_train": {"grad_reg": -1.0}}, [],
     r"input_grad_train\.grad_reg must be a finite number >= 0"),
])
def test_bad_values_are_refused_naming_the_field(name: str, fields: dict[str, Any],
                                                  sets: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        presets.configure(_exp(name), "quick", overrides=sets, **fields)


@pytest.mark.parametrize(("name", "fields"), [
    ("ntk", {"depth": 0}),  # a linear model
    ("ilyas", {"robust_train": {"eps_warmup_epochs": 0, "overfit_guard": 0.0, "alpha": None}}),
    ("ilyas", {"eval_attack": {"eps": 0.0, "step_size": None}, "n_train": None,
               "eps_curve": ()}),
    ("goh-linear", {"contamination": (0.0,), "eps": 1}),  # an int for a float field
    ("trojans", {"tools": (), "epochs": None}),  # (): every registered tool
    ("ntk", {"n_show": ()}),
    ("tsipras", {"syn_eta": None, "train_eps": [0.0, 0.1]}),
])
def test_sentinels_and_corners_stay_legal(name: str, fields: dict[str, Any]) -> None:
    cfg = presets.configure(_exp(name), "quick", **fields)
    assert check_config(cfg) is cfg


@pytest.mark.parametrize(("item", "match"), [
    ("seeds=", r"seeds must be a non-empty tuple"),
    ("n_construct=", r"--set n_construct=: empty value; expected a value of type int "
                     r"\(an integer\)"),
    ("n_construct=abc", r"--set n_construct=abc: expected a value of type int .*, got 'abc'"),
    ("n_construct=1e3", r"expected a value of type int .*got '1e3'"),
    ("n_construct=" + "9" * 5000, r"expected a value of type int"),
    ("robust_train.epochs=2.5", r"expected a value of type int .*got '2\.5'"),
    ("inversion_step_size=", r"empty value; expected a value of type float"),
    ("dataset=", r"empty value; expected a value of type str"),
    ("robust_train=3", r"TrainConfig cannot be set from the command line"),
    ("robust_train.epochs.x=3", r"epochs has no sub-fields"),
    ("n_constuct=5", r"unknown config field 'n_constuct'.*did you mean n_construct"),
    ("n_construct", r"--set expects key=value"),
    ("=5", r"unknown config field ''"),
])
def test_set_values_that_cannot_be_read_are_a_value_error(item: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        overrides.apply(EXPERIMENTS.get("ilyas").quick, [item])


def test_nested_tuples_cannot_be_set_from_text() -> None:
    with pytest.raises(ValueError, match="severities.*cannot be set from the command line"):
        overrides.apply(EXPERIMENTS.get("frequency").quick, ["severities=1,2"])


def test_seeds_are_integers_never_rounded() -> None:
    exp = EXPERIMENTS.get("goh-linear")
    assert presets.configure(exp, seeds=[4, 7]).seeds == (4, 7)
    for bad in ([0, 1.5], [True], True, 1.5, "012", ()):
        with pytest.raises(ValueError, match="seeds"):
            presets.configure(exp, seeds=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        presets.configure(exp, seeds=10**9)  # a count, not 8 GB of seeds


def test_check_config_names_the_experiment_and_refuses_a_non_config() -> None:
    cfg = dataclasses.replace(EXPERIMENTS.get("ilyas").quick, n_test_robust=0)
    with pytest.raises(ValueError, match=r"^ilyas: n_test_robust must be an integer >= 1"):
        check_config(cfg, name="ilyas")
    with pytest.raises(ValueError, match="expected a config dataclass"):
        check_config({"n_test_robust": 0}, name="ilyas")


@dataclasses.dataclass(frozen=True)
class _Toy:
    knob: float = 1.0
    count: int = 2
    ratio: float | None = None


def test_an_unconstrained_field_is_still_typed_and_finite(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(validation, "RULES", (("knob", Rule(free="any real knob")),
                                              ("count", Rule(lo=1)),
                                              ("ratio", Rule(lo=0, hi=1, hi_open=True))))
    check_config(_Toy(knob=-1e9))
    for bad, match in [(_Toy(knob=math.inf), "knob must be a finite number, got inf"),
                       (_Toy(knob=True), "knob must be a finite number, got True"),
                       (_Toy(count=0), "count must be an integer >= 1, got 0"),
                       (_Toy(ratio=1.0), r"ratio must be a finite number in \[0, 1\), got 1")]:
        with pytest.raises(ValueError, match=match):
            check_config(bad)
    check_config(_Toy(ratio=0.0))


def test_a_field_without_a_rule_is_typed_but_fails_the_contract() -> None:
    """``_Toy`` has no rule: the contract test above would name its fields; the check still
    refuses NaN."""
    assert [n for _, n in number_fields(_Toy()) if rule_for(n) is None] == ["knob", "count",
                                                                            "ratio"]
    with pytest.raises(ValueError, match="knob must be a finite number, got nan"):
        check_config(_Toy(knob=math.nan))


def test_run_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the experiment ran with a bad config")

    monkeypatch.setattr(Experiment, "run", reached)
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    for fields in ({"eps": math.nan}, {"overrides": ["seeds="]},
                   {"overrides": ["classes=1,x"]}, {"contamination": [0.1, "a"]}):
        with pytest.raises(ValueError):
            eisbench.run("goh-linear", dataset="digits", out=tmp_path / "run", **fields)
    with pytest.raises(ValueError, match="n_construct"):
        eisbench.run("ilyas", dataset="digits", out=tmp_path / "run", n_construct=-5)
    assert not (tmp_path / "run").exists() and not (tmp_path / "home").exists()


def test_the_evidence_suite_checks_every_sub_config_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evidence, "run_one", lambda *a, **k: pytest.fail("ran"))
    base = dataclasses.replace(evidence.QUICK, dataset="digits",
                               experiments=("goh-linear", "ilyas"))
    assert [e.name for e, _ in evidence.check_config(base)] == ["goh-linear", "ilyas"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"overrides": ("ilyas:n_construct=-5",)}, r"ilyas: n_construct"),
        ({"overrides": ("goh-linear:seeds=",)}, r"goh-linear: seeds"),
        ({"seeds": ()}, r"features-vs-bugs: seeds"),
        ({"seeds": (0, -1)}, r"seeds\[1\] must be an integer in \[0, ")]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            evidence.measure(dataclasses.replace(base, **change), out=tmp_path / "out",
                             store=Store(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"--set overrides=ilyas:n_construct=5,: empty value"):
        presets.configure(EXPERIMENTS.get("features-vs-bugs"),
                          overrides=["overrides=ilyas:n_construct=5,"])
    assert not (tmp_path / "out").exists()


def test_the_audit_checks_its_settings_before_any_work(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_bench, "load", lambda *a, **k: pytest.fail("loaded"))
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n_robust": 0}, "n_robust must be an integer >= 1, got 0"),
        ({"eps": (0.1, math.nan)}, r"eps\[1\] must be a finite number"),
        ({"eps": ()}, "eps must be a non-empty tuple"),
        ({"reference_train": {"lr": -1.0}}, r"reference_train\.lr must be"),
        ({"overrides": ["scan_steps=-3"]}, "scan_steps must be an integer >= 1"),
        ({"overrides": ["seed="]}, "empty value")]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            eisbench.audit(net, data="digits", out=tmp_path / "audit", **bad)
    cfg = dataclasses.replace(audit_bench.QUICK, transfer_eps=math.inf)
    with pytest.raises(ValueError, match="audit: transfer_eps must be a finite number"):
        audit_bench.measure(net, cfg, out=tmp_path / "audit", store=Store(tmp_path / "cache"))
    assert not (tmp_path / "audit").exists() and not (tmp_path / "home").exists()


@pytest.mark.parametrize("module", [validation, overrides, presets])
def test_docstring_examples_run(module: Any) -> None:
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0


def test_configure_checks_the_preset_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only the values a user sets: a preset edited into an illegal state fails too."""
    bad = dataclasses.replace(EXPERIMENTS.get("ilyas").quick, n_test_robust=0)
    monkeypatch.setattr(Experiment, "preset", lambda self, name: bad)
    with pytest.raises(ValueError, match="ilyas: n_test_robust must be an integer >= 1"):
        presets.configure(EXPERIMENTS.get("ilyas"), "quick")
