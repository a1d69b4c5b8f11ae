"""``eisbench scan``, ``replace`` and ``audit`` on models eisbench did not build, from the
command line as a user runs them (``--model package.module:Class --weights``); an audit whose
section fails still writes its report, with the failure, its remedy and the other sections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from foreign_models import LOW_HIGH, ZOO
from safetensors.torch import save_file
from torch import nn

from eisbench.api import audit
from eisbench.bench import audit as audit_mod
from eisbench.bench.audit_sections import Section
from eisbench.cli import main
from eisbench.runs.record import validate

TESTS = Path(__file__).parent
TINY: dict[str, Any] = {
        "eps": (0.1,), "n_robust": 16, "scan_steps": 5, "n_scan": 16, "references": ("mlp",),
        "reference_train": {"epochs": 1}, "n_transfer": 32, "distillers": ("tree",),
        "n_fit": 200, "n_val": 100, "tools": ("snafue", "fv-neuron-fourier"), "n_images": 1}
TINY_SETS = ["eps=0.1", "n_robust=16", "scan_steps=5", "n_scan=16", "references=mlp",
             "reference_train.epochs=1", "n_transfer=32", "distillers=tree", "n_fit=200",
             "n_val=100", "tools=snafue,fv-neuron-fourier", "n_images=1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory,
            foreign_zoo: dict[str, nn.Module]) -> dict[str, Path]:
    """Each zoo model saved as a user would: a state dict."""
    folder = tmp_path_factory.mktemp("foreign")
    out = {}
    for name, model in foreign_zoo.items():
        out[name] = folder / f"{name}.safetensors"
        save_file(model.state_dict(), str(out[name]))
    return out


def _model_args(name: str, weights: dict[str, Path]) -> list[str]:
    entry = ZOO[name]
    return ["--model", f"foreign_models:{entry.cls.__name__}", "--weights", str(weights[name]),
            "--model-kwargs", json.dumps({"side": 8, "num_classes": entry.num_classes}),
            "--scale", str(entry.scale), "--data", "digits"]


@pytest.fixture(autouse=True)
def _importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))  # --model foreign_models:Class


@pytest.mark.parametrize("name", sorted(ZOO))
def test_scan_replace_and_audit_on_foreign_models(name: str, weights: dict[str, Path],
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = _model_args(name, weights)
    k = ZOO[name].num_classes
    assert main(["scan", *args, "--n", "32", "--steps", "5", "--out", str(tmp_path / "s")]) == 0
    scan = json.loads((tmp_path / "s" / "scan.json").read_text())
    assert len(scan["classes"]) == k  # the model's own classes
    assert main(["replace", *args, "--distillers", "tree", "--n-fit", "200", "--n-val", "100",
                 "--n-test", "100", "--out", str(tmp_path / "r")]) == 0
    rep = json.loads((tmp_path / "r" / "replace.json").read_text())
    assert rep["chosen"]["tree"]["agree_test"] > 0.5
    label_map = [] if ZOO[name].label_map is None else [
        "--label-map", ",".join(map(str, LOW_HIGH))]
    capsys.readouterr()
    assert main(["audit", *args, "--quick", *[f"--set={s}" for s in TINY_SETS], *label_map,
                 "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "a" / "record.json").read_text())
    validate(rec)
    d = rec["details"]
    assert {n: s["status"] for n, s in d["sections"].items()} == dict.fromkeys(
        ("clean", "references", "robust", "scan", "transfer", "replace", "tools"), "done")
    assert d["missing"] == [] and d["tools"]["failed"] == {}
    assert rec["metrics"]["clean_acc"]["value"] > 0.7  # scored on its own classes
    assert d["labels"]["source"] == ("dataset" if k == 10 else "label map")
    assert "sections: 7 of 7 complete" in capsys.readouterr().out


def test_a_two_class_model_without_a_map_is_audited_on_its_own_predictions(
        weights: dict[str, Path], tmp_path: Path) -> None:
    model = ZOO["two-class"].cls(side=8, num_classes=2)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(weights["two-class"])))
    rec = audit(model.eval(), data="digits", out=tmp_path / "a", quick=True, **TINY)
    d = rec["details"]
    assert d["labels"]["source"] == "own predictions" and "2 classes" in d["labels"]["note"]
    status = {n: s["status"] for n, s in d["sections"].items()}
    assert status == {"clean": "skipped", "references": "skipped", "robust": "done",
                      "scan": "done", "transfer": "skipped", "replace": "done", "tools": "done"}
    assert "needs references" in d["sections"]["transfer"]["reason"]
    assert "clean_acc" not in rec["metrics"] and len(d["scan"]["classes"]) == 2
    assert any(line.startswith("labels: the model has 2 classes") for line in rec.lines or [])
    html = (tmp_path / "a" / "report.html").read_text()
    assert "Sections" in html and "skipped" in html
    with pytest.raises(ValueError, match="label_map must give each of the dataset's 10 classes "
                                         "one of the model's classes 0..1"):
        audit(model, data="digits", out=tmp_path / "b", quick=True,
              **(TINY | {"label_map": (0, 1, 2, 0, 0, 0, 0, 0, 0, 0)}))


def _break_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_scan(a: Any) -> None:
        raise RuntimeError("The size of tensor a (1568) must match the size of tensor b (7)")

    sections = tuple(Section(s.name, s.title, broken_scan) if s.name == "scan" else s
                     for s in audit_mod.SECTIONS)
    monkeypatch.setattr(audit_mod, "SECTIONS", sections)


def test_an_audit_degrades_when_sections_fail(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """The scan raises and SNAFUE cannot find penultimate features (a model with no linear
    head): both are reported with a remedy, and everything else completes."""
    _break_scan(monkeypatch)
    torch.manual_seed(0)
    no_head = nn.Sequential(nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    rec = audit(no_head, data="digits", out=tmp_path / "a", quick=True,
                **(TINY | {"tools": ("snafue", "neural-cleanse")}))
    d = rec["details"]
    scan, tools = d["sections"]["scan"], d["sections"]["tools"]
    assert scan["status"] == "failed" and "size of tensor a (1568)" in scan["error"]
    assert "--layer NAME" in scan["remedy"] and scan["where"]
    assert tools["status"] == "partial" and set(tools["failed"]) == {"snafue"}
    assert "LayerError" in tools["failed"]["snafue"]
    assert "--layer NAME" in tools["failed"]["snafue"]
    assert d["tools"]["class"] == 0 and "scan did not complete" in d["tools"]["why"]
    assert d["missing"] == ["scan", "tools"] and d["tools"]["names"] == ["neural-cleanse"]
    assert {"clean", "references", "robust", "transfer", "replace"} == {
        n for n, s in d["sections"].items() if s["status"] == "done"}
    validate(json.loads((tmp_path / "a" / "record.json").read_text()))
    html = (tmp_path / "a" / "report.html").read_text()
    assert "FAILED" in html and "partial" in html and "Remedy" in html


def test_cli_audit_exits_1_and_keeps_the_report_when_a_section_fails(
        weights: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    args = [*_model_args("sequential", weights), "--quick", *[f"--set={s}" for s in TINY_SETS]]
    assert main(["audit", *args, "--layer", "features.1", "--set=tools=snafue",
                 "--out", str(tmp_path / "a")]) == 0  # the conv maps named as the features
    _break_scan(monkeypatch)
    capsys.readouterr()
    assert main(["audit", *args, "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "audit incomplete: scan did not complete" in err
    rec = json.loads((tmp_path / "b" / "record.json").read_text())
    assert rec["details"]["missing"] == ["scan"] and (tmp_path / "b" / "report.html").exists()


def test_layer_flag_refuses_an_unknown_layer(weights: dict[str, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    args = _model_args("sequential", weights)
    assert main(["scan", *args, "--layer", "features.9", "--n", "8", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "SequentialBlocks has no layer 'features.9'; did you mean" in err
