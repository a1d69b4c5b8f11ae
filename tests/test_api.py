"""The Python API: ``import eisbench`` is cheap and lazy, every example in the API's docstrings
runs, :func:`eisbench.run` goes end to end on the 8x8 digits and prints its claims with their
CIs, and results print as short summaries (robust accuracy, scan) instead of tensors."""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import eisbench
from eisbench.core.registry import UnknownNameError

DOCTESTED = ["eisbench", "eisbench.api", "eisbench.runs.presets", "eisbench.tools.scan",
             "eisbench.evaluation.suite", "eisbench.models.core", "eisbench.models.layers",
             "eisbench.bench.audit_sections", "eisbench.runs.executor"]


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples_run(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert res.attempted > 0, f"{name} has no examples"
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples of {name} failed"


def test_import_is_lazy_and_lists_the_verbs() -> None:
    code = "import eisbench, sys; print('torch' in sys.modules, 'eisbench.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]  # nothing heavy until a verb is used
    verbs = {"load_data", "load_model", "train", "pgd", "apgd", "fmn", "square", "ATTACKS",
             "evaluate_robustness", "predict", "accuracy", "TOOLS", "tool", "scan", "audit",
             "run", "EXPERIMENTS", "BENCHMARKS"}
    assert verbs <= set(eisbench.__all__) <= set(dir(eisbench))
    for name in eisbench.__all__:
        obj = getattr(eisbench, name)
        if callable(obj) and not isinstance(obj, type) and name != "__version__":
            assert obj.__doc__ and ">>>" in obj.__doc__ or name in _DOCUMENTED_IN_PACKAGE, name
    with pytest.raises(AttributeError, match="no attribute 'pdg'"):
        eisbench.pdg  # noqa: B018


_DOCUMENTED_IN_PACKAGE = {"load_data", "train", "pgd", "apgd", "fmn", "square", "predict",
                          "accuracy", "evaluate_robustness"}
"""Verbs whose runnable example is the package docstring's session (their own docstrings live
in their modules)."""


def test_run_end_to_end_on_digits(tmp_path: Path) -> None:
    rec = eisbench.run("goh-linear", dataset="digits", seeds=2, out=tmp_path / "run",
                       contamination=(0.0, 0.1))
    assert (tmp_path / "run" / "record.json").exists() and rec.report.exists()
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert on_disk["metrics"] == rec["metrics"] and on_disk["seeds"] == [0, 1]
    assert on_disk["config"]["contamination"] == [0.0, 0.1]
    text = str(rec)
    assert text.splitlines()[0].startswith("goh-linear: 3 claims (")
    for c in rec["claims"]:
        assert f"[{c['verdict']:>14}] {c['claim']}" in text and c["measured"] in text
    m = rec["metrics"]["goh_linear/logreg/usefulness"]
    n = m["n"]  # the training images the bootstrap resamples, not the seeds
    assert n > 100 and m["ci95"][0] < m["ci95"][1]
    assert (f"goh_linear/logreg/usefulness: {m['value']:.3f} [{m['ci95'][0]:.3f}, "
            f"{m['ci95'][1]:.3f}] (n={n} training images)") in text
    assert repr(rec) == text and "more metrics in record.json" in text
    assert str(tmp_path / "run" / "report.html") in text


def test_unknown_names_and_fields_raise_with_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'trojans'"):
        eisbench.run("trojan")  # a benchmark's name, misspelt
    with pytest.raises(UnknownNameError, match="did you mean 'goh-linear'"):
        eisbench.run("goh-liner")
    with pytest.raises(ValueError, match="unknown config field 'epss'.*did you mean eps"):
        eisbench.run("goh-linear", epss=0.5)
    with pytest.raises(ValueError, match="unknown config field 'reference_train.epoch'.*"
                                         "did you mean epochs"):
        eisbench.audit(nn.Linear(2, 2), reference_train={"epoch": 1})
    with pytest.raises(ValueError, match="unknown preset 'ful'; did you mean 'full'"):
        eisbench.run("goh-linear", "ful")
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        eisbench.run("goh-linear", seeds=0)
    with pytest.raises(ValueError, match="holds a tuple"):
        eisbench.run("goh-linear", contamination=0.1)


def test_configure_matches_the_command_line() -> None:
    from eisbench.experiments import EXPERIMENTS
    from eisbench.runs.presets import configure

    exp = EXPERIMENTS.get("ilyas")
    cfg = configure(exp, "full", dataset="digits", seeds=2, device="cpu",
                    overrides=["robust_train.epochs=3"], n_construct=50,
                    std_train={"epochs": 2})
    assert cfg.dataset == "digits" and cfg.seeds == (0, 1) and cfg.n_construct == 50
    assert cfg.robust_train.epochs == 3 and cfg.std_train.epochs == 2
    assert cfg.robust_train.lr == exp.full.robust_train.lr  # the rest is the preset's
    assert configure(exp) == exp.quick  # no change: the preset itself


def test_load_model_reads_checkpoints_and_your_own_class(tmp_path: Path) -> None:
    from eisbench.models import ModelSpec, save_checkpoint

    spec = ModelSpec(arch="mlp", in_shape=(1, 8, 8), num_classes=10)
    net = spec.build()
    save_checkpoint(net, spec, tmp_path / "net")
    back = eisbench.load_model(tmp_path / "net.safetensors")
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(back(x), net.eval()(x))
    torch.save(nn.Linear(4, 2).state_dict(), tmp_path / "w.pt")
    own = eisbench.load_model("torch.nn:Linear", weights=tmp_path / "w.pt",
                              kwargs={"in_features": 4, "out_features": 2})
    assert isinstance(own, nn.Linear) and not own.training
    with pytest.raises(ValueError, match="weights= and kwargs= are for your own model class"):
        eisbench.load_model(tmp_path / "net", weights=tmp_path / "w.pt")


def _linear_digits() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_robustness_result_prints_its_ci_and_its_checks() -> None:
    from eisbench.core.stats import wilson_ci
    from eisbench.evaluation.suite import summary

    d = eisbench.load_data("digits")
    x, y = d.x_test[:24], d.y_test[:24]
    net = _linear_digits().train()  # left in training mode: the eval-mode check must fail
    ev = eisbench.evaluate_robustness(net, x, y, eps=0.1, steps=(("fgsm", {}),), n_checks=8)
    k = int(ev.result.robust.sum())
    lo, hi = wilson_ci(k, 24)
    text = summary(ev.result, ev.checks)
    assert text.startswith(f"robust accuracy {k / 24:.3f} (95% CI {lo:.3f}-{hi:.3f}, n=24)")
    n_pass = sum(c.passed is True for c in ev.checks)
    assert f"checks: {n_pass} passed, {len(ev.warnings)} failed" in text
    assert "FAILED eval-mode: " in text and "fgsm broke" in text
    assert repr(ev.result) == summary(ev.result) and "tensor(" not in repr(ev.result)


def test_scan_prints_a_summary_and_seeds_itself() -> None:
    from eisbench.tools.scan import scan

    net = _linear_digits().eval()
    x = eisbench.load_data("digits").x_test[:16]
    res = scan(net, x, steps=3)
    again = scan(net, x, steps=3, generator=torch.Generator().manual_seed(0))
    assert res.anomaly_index == again.anomaly_index  # seed 0 by default
    by_name = scan(net, "digits", n=16, steps=3)
    assert by_name.anomaly_index == res.anomaly_index  # the first n test images
    text = repr(res)
    assert text.startswith(f"neural-cleanse scan of 10 classes: {res.verdict()}")
    assert "anomaly index per class" in text and "tensor(" not in text
    for k, a in enumerate(res.anomaly_index):
        assert f"{k} {a:.2f}" in text


def test_a_degraded_benchmark_says_so_on_its_first_line(tmp_path: Path) -> None:
    from eisbench.api import RunRecord

    def rec(n: float) -> RunRecord:
        m = {"bench/failed_cells": {"value": n, "ci95": [n, n], "n": 40,
                                    "higher_is_better": False, "unit": "tool cells"}}
        return RunRecord({"experiment": "trojans", "metrics": m, "wall_seconds": 3.0},
                         out=tmp_path, report=tmp_path / "report.html")

    assert rec(2.0).summary().splitlines()[0] == (
        "trojans: 1 metrics, 3 s; DEGRADED: 2 failed cell(s), scored as failures (see the "
        "report)")
    assert "DEGRADED" not in rec(0.0).summary()
