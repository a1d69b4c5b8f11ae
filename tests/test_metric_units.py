"""Every metric says what its ``n`` counts and what its interval is over (``unit``), set where
the metric is built: a static scan of the source for metric dict literals without one, and the
constructors' units."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import eisbench
from eisbench.edit import metrics as em
from eisbench.runs import record
from eisbench.runs.claims import (
    SEEDS,
    ci_metric,
    mean_metric,
    metric_over_seeds,
    n_label,
    rate,
)

SRC = Path(eisbench.__file__).parent


def metrics_without_unit(source: str) -> list[int]:
    """Line numbers of metric dicts in ``source`` (a dict literal with the key
    "higher_is_better", or ``dict(higher_is_better=...)``) that set no "unit"."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "dict":
            keys = {k.arg for k in node.keywords}
        else:
            continue
        if "higher_is_better" in keys and "unit" not in keys:
            bad.append(node.lineno)
    return bad


def test_the_scan_finds_a_metric_without_a_unit() -> None:
    src = ('a = {"value": 1.0, "ci95": [1.0, 1.0], "n": 1, "higher_is_better": True}\n'
           'b = dict(value=1.0, higher_is_better=True)\n'
           'c = {"value": 1.0, "n": 1, "higher_is_better": True, "unit": "seeds"}\n'
           'd = {"higher": True}\n')
    assert metrics_without_unit(src) == [1, 2]


def test_every_metric_literal_in_the_source_sets_its_unit() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50  # the package, not an empty folder
    bad = [f"{p.relative_to(SRC)}:{line}" for p in files
           for line in metrics_without_unit(p.read_text())]
    assert not bad, f"metric dicts without a unit: {bad}"


def test_metric_over_seeds_says_seeds_unless_told() -> None:
    assert metric_over_seeds([0.5, 0.7])["unit"] == SEEDS == "seeds (95% t-interval)"
    assert metric_over_seeds([0.5])["unit"] == "seeds (one seed: no interval)"
    assert metric_over_seeds([0.5, 0.7], unit="models (95% t-interval)")["unit"] == (
        "models (95% t-interval)")


def test_mean_metric_names_its_clusters_and_its_interval() -> None:
    boot = mean_metric([0.2, 0.4, 0.6, 0.3], ["a", "b", "c", "d"], unit="models")
    assert boot["unit"] == "models (95% percentile bootstrap)" and boot["n"] == 4
    nested = mean_metric([0.2, 0.4, 0.6, 0.3, 0.5, 0.1], ["a", "a", "b", "b", "c", "c"],
                         unit="models")
    assert nested["unit"] == "models (95% cluster bootstrap)" and nested["n"] == 3
    count = mean_metric([1.0, 0.0, 0.0, 1.0], ["a", "b", "c", "d"], unit="models")
    assert count["unit"] == "models (Wilson)"
    few = mean_metric([0.2, 0.4], ["a", "b"], unit="models", lower=-1.0)
    assert few["unit"] == "models (fewer than 3: the whole range)" and few["ci95"] == [-1, 1]
    assert mean_metric([0.5] * 3, [0, 1, 2])["unit"].startswith("clusters (")


def test_rates_and_given_intervals_carry_their_unit() -> None:
    r = rate([True, False, True], unit="clean models")
    assert r["unit"] == "clean models (Wilson)" and r["n"] == 3
    c = ci_metric(0.5, 0.4, 0.6, 10, unit="test images (Wilson)")
    assert c["unit"] == "test images (Wilson)"
    with pytest.raises(TypeError):
        ci_metric(0.5, 0.4, 0.6, 10)  # type: ignore[call-arg]  # no default: the caller knows


def test_the_edit_metrics_carry_their_unit() -> None:
    assert em.metric([0.5, 0.7, 0.6])["unit"] == em.TROJANS
    assert em.paired([0.5, 0.7], [0.4, 0.5], unit="x (y)")["unit"] == "x (y)"
    e = {"selectivity": [0.5, 0.7], "class_drop": [0.6, 0.8], "other_drop": [0.1, 0.1]}
    m = em.ablation_metrics({"penultimate": {"random": [{"test": e, "ood": e}] * 3}},
                            selectors=["random"])
    assert all(v["unit"].startswith(f"{em.MODELS} (") for v in m.values())


def _record(metric: dict[str, Any]) -> dict[str, Any]:
    return {"schema_version": 1, "experiment": "e", "created": record.now(), "config": {},
            "seeds": [0], "git": {"sha": None, "dirty": None}, "versions": {},
            "device": "cpu", "data": {}, "stages": [], "wall_seconds": 1.0,
            "metrics": {"m": metric}, "claims": [], "details": {}}


def test_validate_checks_the_unit_when_present() -> None:
    base = {"value": 0.5, "ci95": [0.4, 0.6], "n": 3, "higher_is_better": True}
    record.validate(_record(base))  # older records have none
    record.validate(_record(base | {"unit": "seeds (95% t-interval)"}))
    for bad in ("", "  ", 3, None):
        with pytest.raises(ValueError, match="unit"):
            record.validate(_record(base | {"unit": bad}))
    with pytest.raises(ValueError, match="has fields"):
        record.validate(_record(base | {"units": "seeds"}))


def test_n_label_shows_the_unit_beside_n() -> None:
    m = mean_metric([0.2, 0.4, 0.6], ["a", "b", "c"], unit="graded trojans' models")
    assert n_label(m) == "n=3 graded trojans' models, 95% percentile bootstrap"
    assert n_label(m, how=False) == "n=3 graded trojans' models"
    assert n_label({"n": 7}) == "n=7"
    assert n_label(metric_over_seeds([0.5])) == "n=1 seeds, one seed: no interval"
