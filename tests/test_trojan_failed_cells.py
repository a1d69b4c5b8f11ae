"""A tool that raises on one trojan is a failed cell of ``bench trojans``, not a lost benchmark:
the run completes, the cell is recorded with its error and scored as a miss (a hit on the
clean control), the other tools' scores do not move, and a rerun computes the cell again."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import torch
from torch import nn

from eisbench.api import RunRecord
from eisbench.bench import trojans
from eisbench.bench.registry import BENCHMARKS
from eisbench.report.trojans import write_report
from eisbench.runs.store import Store
from eisbench.tools import TOOLS

FLAKY = "test-flaky-noise"
CFG = trojans.TrojanBenchConfig(dataset="digits", epochs=12, n_clean=2,
                                tools=("neural-cleanse", FLAKY), tool_steps=0.2, n_images=4,
                                n_data=128, judge_steps=100, judge_trials=1, n_attr=4,
                                scan_methods=(), n_scan=64, seeds=(0,))


@dataclasses.dataclass
class Flaky:
    """A tool that shows uniform noise, and raises for the targets in ``fail``."""

    fail: set[int] = dataclasses.field(default_factory=set)

    def __call__(self, model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
                 generator: torch.Generator, device: Any = "cpu", steps: int = 1
                 ) -> torch.Tensor:
        if target in self.fail:
            raise RuntimeError(f"no images for target {target}")
        return torch.rand(n, *data.shape[1:], generator=generator)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Iterator[Flaky]:
    """The flaky tool, registered for this test only (removed afterwards)."""
    tool = Flaky()
    meta = {"family": "feature-synthesis", "patch_side": None, "steps": 1}
    monkeypatch.setitem(TOOLS._items, FLAKY, tool)
    monkeypatch.setitem(TOOLS._meta, FLAKY, MappingProxyType(meta))
    yield tool


def test_a_tool_that_raises_on_one_trojan_is_a_failed_cell_not_a_lost_benchmark(
        tmp_path: Path, flaky: Flaky) -> None:
    store = Store(tmp_path / "cache")
    st = trojans.setting(CFG, store)  # the zoo, cached for both runs
    target = st.trojans[0].target
    hit = [j for j, t in enumerate(st.trojans) if t.target == target]
    names = [st.trojans[j].name for j in hit]
    flaky.fail = {target}

    rec = BENCHMARKS.get("trojans").run(CFG, out=tmp_path / "a", store=store)  # completes
    d, m = rec["details"], rec["metrics"]
    failed = d["failed_cells"]
    assert sorted((c["trojan"], c["phase"]) for c in failed) == sorted(
        (n, p) for n in names for p in ("trojan", "clean control"))
    assert all(c["tool"] == FLAKY and c["error"] == "RuntimeError" and c["seed"] == 0
               and c["message"] == f"no images for target {target}" for c in failed)
    assert {c["model"] for c in failed if c["phase"] == "trojan"} == {
        st.models[j][1] for j in hit}
    n_cells = 2 * len(st.trojans)
    assert d["failures"]["per_tool"] == {"neural-cleanse": {"failed": 0, "cells": n_cells},
                                         FLAKY: {"failed": len(failed), "cells": n_cells}}
    assert m["bench/failed_cells"]["value"] == len(failed) == 2 * len(hit)
    # a miss on the trojan, a hit (the worst case) on the clean control; no question, no quiz
    for j in hit:
        assert d["grid"][FLAKY][j] == [False] and d["control"]["grid"][FLAKY][j] == [True]
        assert d["choices"][FLAKY]["0"][j] == -1
    quiz = (tmp_path / "a" / "quiz.html").read_text()
    assert quiz.count("<fieldset") == 2 * len(st.trojans) - len(hit)
    success = m[f"tool/{FLAKY}/success_rate"]
    assert success["n"] == m["tool/neural-cleanse/success_rate"]["n"] == len(st.trojans)
    assert success["value"] == pytest.approx(
        sum(g[0] for g in d["grid"][FLAKY]) / len(st.trojans))
    said = f"DEGRADED: {len(failed)} failed cells of {2 * n_cells}"
    assert said in rec["claims"][1]["measured"]
    html = write_report(rec, tmp_path / "a").read_text()
    assert "Failed cells" in html and f"no images for target {target}" in html
    assert f"{len(failed)} of {n_cells} cells failed" in html
    summary = RunRecord(rec, out=tmp_path / "a", report=tmp_path / "a" / "report.html")
    assert said in summary.summary(max_metrics=None)

    flaky.fail = set()  # mended: the rerun computes the failed cells, nothing else
    rec2 = BENCHMARKS.get("trojans").run(CFG, out=tmp_path / "b", store=store)
    d2, m2 = rec2["details"], rec2["metrics"]
    fresh = [s for s in rec2["stages"] if not s["cached"]]
    assert {s["name"] for s in fresh} == {"tool-images"}
    assert len(fresh) == len(hit) + 1  # each trojan's model, and the target's clean model
    assert d2["failed_cells"] == [] and m2["bench/failed_cells"]["value"] == 0
    assert "DEGRADED" not in rec2["claims"][1]["measured"]
    # the failed cells were misses; every other cell, and every other tool, is as it was
    assert d["grid"][FLAKY] == [[False] if j in hit else g
                                for j, g in enumerate(d2["grid"][FLAKY])]
    assert d2["grid"]["neural-cleanse"] == d["grid"]["neural-cleanse"]
    assert m2["tool/neural-cleanse/success_rate"] == m["tool/neural-cleanse/success_rate"]
    assert m2["tool/neural-cleanse/lift"] == m["tool/neural-cleanse/lift"]


def test_a_tool_that_fails_every_cell_is_named(tmp_path: Path, flaky: Flaky) -> None:
    """The summary names a tool that failed everywhere; its success is no measurement."""
    from eisbench.bench.trojan_cells import failure_sentence, failure_summary

    cells = [{"tool": FLAKY} for _ in range(4)] + [{"tool": "snafue"}]
    s = failure_summary(cells, tools=[FLAKY, "snafue", "tabor"], cells_per_tool=4)
    assert s["every_cell"] == [FLAKY] and s["n"] == 5 and s["cells"] == 12
    text = failure_sentence(s)
    assert text.startswith(f"DEGRADED: 5 failed cells of 12 ({FLAKY} 4 of 4, snafue 1 of 4)")
    assert f"{FLAKY} failed on EVERY cell" in text
    assert failure_sentence(failure_summary([], tools=[FLAKY], cells_per_tool=4)) == ""
