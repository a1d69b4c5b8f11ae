"""An edit method that raises on one trojan is a failed cell of ``bench edit``, not a lost
benchmark: the run completes, the cell is recorded with its error and scored as the model left
unedited (DER 0.5), every metric keeps its n, the other rows do not move, and a rerun computes
the cell again."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from eisbench.api import RunRecord
from eisbench.bench import edit as edit_bench
from eisbench.bench.edit_methods import EDIT_METHODS, EditMethod, PatchReconstruction, unlearning
from eisbench.bench.registry import BENCHMARKS
from eisbench.edit.unlearn import FinetuneConfig
from eisbench.report.edit import write_report
from eisbench.runs.store import Store

FLAKY = "test-flaky-patches"
FAIL: set[int] = set()  # the targets the flaky tool raises for
CFG = edit_bench.EditBenchConfig(
    dataset="digits", n_train=None, n_test=None, epochs=8, n_clean=1, defender_frac=0.3,
    n_tool_data=128, tools=(FLAKY,), tool_steps=0.1, n_patches=2,
    finetune=FinetuneConfig(steps=15), lat_steps=1, n_robust=32, robust_steps=3,
    robust_eps_l2=0.5, n_ablate=1, selectors=("random",), ablation_k_conv=4, seeds=(0,),
    suite_trojans=())


@dataclasses.dataclass(frozen=True)
class FlakyPatches(PatchReconstruction):
    """Noise patches, and a RuntimeError for the targets in :data:`FAIL`."""

    def default_steps(self) -> int:
        return 1

    def __call__(self, model: nn.Module, *, target: int, data: torch.Tensor, n: int,
                 steps: int, generator: torch.Generator, device: Any) -> dict[str, torch.Tensor]:
        if target in FAIL:
            raise RuntimeError(f"no patches for target {target}")
        return {"patches": torch.rand(n, data.shape[1], 3, 3, generator=generator)}


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[int]]:
    """The flaky row, registered for this test only (removed afterwards)."""
    recon = FlakyPatches(FLAKY, 0.375)
    entry = EditMethod(role="tool", summary="unlearning with noise patches that may fail",
                       fine_tune=unlearning, stamper=recon.stamper, reconstruction=recon)
    monkeypatch.setitem(EDIT_METHODS._items, FLAKY, entry)
    monkeypatch.setitem(EDIT_METHODS._meta, FLAKY, {})
    FAIL.clear()
    yield FAIL
    FAIL.clear()


def test_an_edit_method_that_raises_on_one_trojan_is_a_failed_cell(tmp_path: Path,
                                                                    flaky: set[int]) -> None:
    store = Store(tmp_path / "cache")
    st = edit_bench.setting(CFG, store)  # the zoo, cached for both runs
    target = st.zoo.trojans[0].target
    hit = [i for i, t in enumerate(st.zoo.trojans) if t.target == target]
    flaky.add(target)

    rec = BENCHMARKS.get("edit").run(CFG, out=tmp_path / "a", store=store)  # completes
    d, m = rec["details"], rec["metrics"]
    failed = d["failed_cells"]
    assert [c["trojan"] for c in failed] == [st.zoo.trojans[i].name for i in hit]
    assert all(c["method"] == FLAKY and c["step"] == "reconstruction" and c["seed"] == 0
               and c["error"] == "RuntimeError"
               and c["message"] == f"no patches for target {target}" for c in failed)
    assert m["bench/failed_cells"]["value"] == len(hit)
    assert m["bench/failed_cells"]["n"] == 12 * len(d["methods"])  # methods x trojans x seeds
    assert d["failures"]["per_method"][FLAKY] == {"failed": len(hit), "cells": 12}
    # scored as the model left unedited, never dropped: every metric keeps n = 12 trojans
    for i in hit:
        cell = d["results"][FLAKY][i][0]
        assert "failed" in cell and cell["der"] == 0.5
        assert (cell["asr"], cell["acc"]) == (d["before"][i]["asr"], d["before"][i]["acc"])
    ders = [seeds[0]["der"] for seeds in d["results"][FLAKY]]
    assert m[f"edit/{FLAKY}/der"]["value"] == pytest.approx(sum(ders) / 12)
    assert m[f"edit/{FLAKY}/der"]["n"] == m[f"edit/{FLAKY}/der_vs_no_trigger"]["n"] == 12
    said = f"DEGRADED: {len(hit)} failed cell"
    claim = next(c for c in rec["claims"] if FLAKY in c["claim"])
    assert said in claim["measured"]
    assert not any(said in c["measured"] for c in rec["claims"] if "LAT" in c["claim"])
    html = write_report(rec, tmp_path / "a").read_text()
    assert "Failed cells" in html and f"no patches for target {target}" in html
    summary = RunRecord(rec, out=tmp_path / "a", report=tmp_path / "a" / "report.html")
    assert said in summary.summary(max_metrics=None)

    flaky.clear()  # mended: the rerun computes the failed cells, nothing else
    rec2 = BENCHMARKS.get("edit").run(CFG, out=tmp_path / "b", store=store)
    fresh = sorted(s["name"] for s in rec2["stages"] if not s["cached"])
    assert fresh == ["edit"] * len(hit) + ["edit-tool"] * len(hit)
    assert rec2["details"]["failed_cells"] == [] and rec2["metrics"]["bench/failed_cells"][
        "value"] == 0
    for row in ("no-trigger", "true-trigger", "fine-pruning", "lat"):
        assert rec2["metrics"][f"edit/{row}/der"] == m[f"edit/{row}/der"]
    for i, seeds in enumerate(rec2["details"]["results"][FLAKY]):
        assert (i in hit) == ("failed" in d["results"][FLAKY][i][0])
        if i not in hit:
            assert seeds == d["results"][FLAKY][i]


def test_summarise_scores_a_failed_cell_as_the_model_before_and_keeps_n() -> None:
    """A failed cell (first, so its fields are not taken for the method's) counts with the
    scores of the model before editing; fine-pruning's share pruned counts it as none."""
    from eisbench.edit import metrics as em

    before = [{"asr": 0.9, "acc": 0.8, "robust_acc": 0.1, "robust_acc_l2": 0.2}] * 3
    ok = {"asr": 0.1, "acc": 0.78, "der": 0.89, "pruned": 4, "of": 16, "acc_pruned": 0.7}
    failed = {**before[0], "der": 0.5, "failed": "edit: RuntimeError: no"}
    plain = {"asr": 0.5, "acc": 0.8, "der": 0.7, "robust_acc": 0.1, "robust_acc_l2": 0.2}
    res: dict[str, Any] = {"fine-pruning": [[failed], [ok], [ok]], "no-trigger": [[plain]] * 3}
    out = em.summarise(res, before, {}, methods=["fine-pruning", "no-trigger"], selectors=[])
    fp = "edit/fine-pruning/"
    assert out[fp + "der"]["value"] == pytest.approx((0.5 + 0.89 + 0.89) / 3)
    assert out[fp + "asr_after"]["value"] == pytest.approx((0.9 + 0.1 + 0.1) / 3)
    assert out[fp + "pruned_frac"]["value"] == pytest.approx((0 + 0.25 + 0.25) / 3)
    assert out[fp + "der"]["n"] == out[fp + "der_vs_no_trigger"]["n"] == 3
    failures = {"n": 1, "cells": 6, "every_cell": [],
                "per_method": {"fine-pruning": {"failed": 1, "cells": 3},
                               "no-trigger": {"failed": 0, "cells": 3}}}
    claims = em.edit_claims(out, tools=[], selectors=[], failures=failures)
    assert claims[0]["measured"].endswith(
        "DEGRADED: 1 failed cell of 6 (fine-pruning 1 of 3), each scored as the model left "
        "unedited (DER 0.5)")
    every = failures | {"every_cell": ["fine-pruning"],
                        "per_method": {"fine-pruning": {"failed": 3, "cells": 3}}}
    assert "fine-pruning failed on EVERY cell" in em.failure_sentence(every)


def test_a_selector_that_raises_on_one_model_is_a_failed_ablation_cell(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Capability ablation: a selector raising on one clean model scores that model as an
    ablation that changed nothing (drops and selectivity 0), the others as measured; n stays
    the number of models."""
    from types import SimpleNamespace

    from eisbench.edit import metrics as em
    from eisbench.runs.stages import Tensors

    def stage(store: Any, *, selector: str, seed: int, **kw: Any) -> dict[str, Any]:
        if selector == "conductance" and seed == 1:
            raise RuntimeError("The size of tensor a (1568) must match")
        e = {"class_drop": [0.5, 0.5], "other_drop": [0.1, 0.1], "selectivity": [0.4, 0.4]}
        return {"units": [[0], [1]], "test": e, "ood": e}

    monkeypatch.setattr(edit_bench, "ablation_stage", stage)
    x = torch.rand(4, 1, 8, 8)
    st = SimpleNamespace(ds=SimpleNamespace(shape=(1, 8, 8)),
                         test=Tensors(x, torch.tensor([0, 1, 0, 1]), "t"),
                         defender=Tensors(x, torch.tensor([0, 1, 0, 1]), "d"),
                         selectors=["random", "conductance"], device=torch.device("cpu"),
                         log=None, zoo=SimpleNamespace(clean=[(None, "a"), (None, "b")]))
    cfg = dataclasses.replace(CFG, n_ablate=2, n_ablation_test=4)
    ab, _ = edit_bench.ablation(st, cfg, None)  # type: ignore[arg-type]
    cells = ab["penultimate"]["conductance"]
    assert "failed" not in cells[0] and cells[1]["failed"].startswith("RuntimeError: The size")
    assert cells[1]["test"]["selectivity"] == [0.0, 0.0] == cells[1]["ood"]["class_drop"]
    m = em.ablation_metrics(ab, selectors=["random", "conductance"])
    assert m["ablation/conductance/selectivity"]["n"] == 2  # models, the failed one included
    assert m["ablation/conductance/selectivity"]["value"] == pytest.approx(0.2)
    assert m["ablation/random/selectivity"]["value"] == pytest.approx(0.4)
