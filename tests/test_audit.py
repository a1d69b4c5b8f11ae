"""``eisbench audit``: the model contract is checked first (clear refusals), and the whole audit
runs end to end on a trojaned 8x8-digits CNN, naming the trojan's target class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from eisbench.cli import main
from eisbench.models import ModelSpec, save_checkpoint
from eisbench.models.contract import check_model
from eisbench.runs.record import validate

X = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class Head(nn.Module):
    def __init__(self, out: str = "logits", k: int = 10, flat_in: int = 64) -> None:
        super().__init__()
        self.lin = nn.Linear(flat_in, k)
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.lin(x.flatten(1))
        if self.out == "softmax":
            return z.softmax(1)
        if self.out == "log_softmax":
            return z.log_softmax(1)
        return z


@pytest.mark.parametrize(("model", "match"), [
    (Head("softmax"), "probabilities"),
    (Head(k=2), "2 logits per image; the dataset has 10"),
    (Head(flat_in=784), "fails on images of shape"),
])
def test_check_model_refuses_with_the_reason(model: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_model(model, X, num_classes=10, device=torch.device("cpu"))


class Broken(nn.Module):
    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fault == "keyerror":
            outputs: dict[str, torch.Tensor] = {}
            return outputs["logits"]
        return torch.full((len(x), 10), float(self.fault))


@pytest.mark.parametrize(("fault", "match"), [
    ("nan", "non-finite outputs"), ("inf", "non-finite outputs"),
    ("keyerror", "fails on images of shape .*KeyError"),
])
def test_check_model_refuses_nan_logits_and_a_raising_forward(fault: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_model(Broken(fault), X, num_classes=10, device=torch.device("cpu"))


def test_check_model_accepts_logits_and_log_probabilities() -> None:
    cpu = torch.device("cpu")
    assert check_model(Head(), X, num_classes=10, device=cpu) == (10, "logits")
    assert check_model(Head("log_softmax"), X, num_classes=None,
                       device=cpu) == (10, "log-probabilities")


def test_audit_end_to_end_names_the_trojan(trojaned_digits: tuple[nn.Module, Any],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    stem = tmp_path / "trojaned"
    save_checkpoint(trojaned_digits[0], ModelSpec(arch="cnn-small", in_shape=(1, 8, 8),
                                                  num_classes=10), stem)
    out = tmp_path / "audit"
    sets = ["eps=0.1", "n_robust=60", "scan_steps=100", "n_scan=200", "references=mlp",
            "reference_train.epochs=10", "n_transfer=120", "distillers=sparse-linear,tree",
            "n_fit=600", "n_val=300", "tools=neural-cleanse", "n_images=2"]
    assert main(["audit", "--checkpoint", str(stem), "--data", "digits", "--quick",
                 *[f"--set={s}" for s in sets], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trojan suspected: class 0" in printed and "clean accuracy" in printed
    rec = json.loads((out / "record.json").read_text())
    validate(rec)
    assert rec["experiment"] == "audit" and (out / "images.safetensors").exists()
    m = rec["metrics"]
    assert m["clean_acc"]["value"] > 0.8 and m["clean_acc"]["n"] == 360
    assert 0 <= m["robust_acc/eps=0.1"]["value"] <= m["clean_acc"]["value"] + 0.05
    assert rec["details"]["scan"]["suspect"] == 0 and rec["details"]["tools"]["class"] == 0
    bb = next(c for c in rec["details"]["robust"]["0.1"]["checks"]
              if c["name"] == "black-box-not-stronger")
    assert "transfer from the surrogate" in bb["detail"]  # the audit passes a surrogate
    assert {"transfer/mlp", "transfer/mlp/noise", "replace/tree/agreement"} <= set(m)
    # adversarial examples transfer more than noise of the same norm
    assert m["transfer/mlp"]["value"] > m["transfer/mlp/noise"]["value"]
    html = (out / "report.html").read_text()
    assert "Summary of" in html and html.count("<img") >= 5


def test_audit_refuses_a_model_that_does_not_load(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--model", "no_such_package.nets:Net", "--data", "digits",
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "eisbench: error:" in err and "no_such_package" in err
    assert not (tmp_path / "a" / "record.json").exists()
