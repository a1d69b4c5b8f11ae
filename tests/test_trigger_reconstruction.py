"""Trigger reconstruction and detection: Neural Cleanse and TABOR find the known corner trigger
of the trojaned digits model, the MAD rule on hand-made numbers, a clean model is not flagged,
and ``eisbench scan`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from eisbench.cli import main
from eisbench.models import ModelSpec, save_checkpoint
from eisbench.tools.scan import ScanResult, load_scan, mad_anomaly, save_scan, scan
from eisbench.tools.trigger_reconstruction import mask_bbox, reconstruct_trigger

FOOTPRINT = (5, 5, 7, 7)  # corner_trojan: rows 5-7, cols 5-7 (inclusive)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _scan(model: nn.Module, x: torch.Tensor, method: str, **hyper: Any) -> ScanResult:
    return scan(model, x, method=method, num_classes=10,
                generator=torch.Generator().manual_seed(0), **hyper)


@pytest.fixture(scope="module")
def clean_x(digits_small: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return digits_small[2][:200]


@pytest.fixture(scope="module")
def trojan_scan(trojaned_digits: tuple[nn.Module, Any], clean_x: torch.Tensor) -> ScanResult:
    return _scan(trojaned_digits[0], clean_x, "neural-cleanse")


def test_mad_rule_on_hand_made_numbers() -> None:
    values = [10.0, 11, 9, 10, 12, 2, 10, 11, 9, 30]
    index, flagged = mad_anomaly(values)
    # median 10; |deviations| 0 1 1 0 2 8 0 1 1 20 -> MAD 1
    torch.testing.assert_close(torch.tensor(index[5]), torch.tensor(8 / 1.4826))
    torch.testing.assert_close(torch.tensor(index[4]), torch.tensor(2 / 1.4826))
    assert flagged == [5]  # 30 is as anomalous but on the large side: not a trojan
    assert mad_anomaly([3.0, 3, 3, 1])[1] == [3]  # MAD 0: only the odd one out, at infinity
    assert math.isinf(mad_anomaly([3.0, 3, 3, 1])[0][3])
    assert mad_anomaly([5.0, 5, 5])[1] == []
    assert mad_anomaly([10.0, 11, 9, 10, 12, 2], threshold=10)[1] == []


def test_mask_bbox_above_half_or_top_mass() -> None:
    m = torch.zeros(1, 8, 8)
    m[0, 2:4, 5:8] = 0.9
    m[0, 0, 0] = 0.4  # below 0.5: ignored
    assert mask_bbox(m) == (2, 5, 3, 7)
    soft = torch.zeros(1, 8, 8)
    soft[0, 6, 1], soft[0, 7, 2] = 0.45, 0.4  # nothing above 0.5: its top-1 mass
    assert mask_bbox(soft) == (6, 1, 6, 1)


def test_neural_cleanse_names_the_target_and_finds_the_corner(trojan_scan: ScanResult) -> None:
    res = trojan_scan
    assert res.suspect == 0, res.to_dict()
    assert res.anomaly_index[0] > 2 and 0 in res.flagged
    trig = res.trigger
    assert trig is not None and trig.success >= 0.9
    assert _overlaps(trig.bbox, FOOTPRINT), trig.bbox
    # most of the reconstructed mask's mass sits on the true footprint
    assert trig.mask[0, 5:, 5:].sum() > 0.5 * trig.mask.sum()
    assert trig.l1 < min(r.l1 for r in res.reconstructions[1:])
    assert "class 0" in res.verdict()


def test_tabor_names_the_target_and_finds_the_corner(trojaned_digits: tuple[nn.Module, Any],
                                                      clean_x: torch.Tensor) -> None:
    res = _scan(trojaned_digits[0], clean_x, "tabor", steps=100, batch_size=32)
    assert res.suspect == 0, res.to_dict()
    assert res.trigger is not None and _overlaps(res.trigger.bbox, FOOTPRINT)


def test_clean_model_is_less_anomalous(trained_digits_cnn: nn.Module, clean_x: torch.Tensor,
                                       trojan_scan: ScanResult) -> None:
    res = _scan(trained_digits_cnn, clean_x, "neural-cleanse")
    low = min(range(10), key=lambda k: res.l1[k])
    assert res.suspect is None or res.anomaly_index[low] < trojan_scan.anomaly_index[0]
    assert res.anomaly_index[low] < trojan_scan.anomaly_index[0]


def test_reconstruction_fields_mode_and_determinism(trojaned_digits: tuple[nn.Module, Any],
                                                    clean_x: torch.Tensor) -> None:
    model = trojaned_digits[0]
    was = model.training
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.train()
    try:
        recs = [reconstruct_trigger(model, target=0, data=clean_x, steps=60,
                                    generator=torch.Generator().manual_seed(3))
                for _ in range(2)]
        assert model.training
    finally:
        model.train(was)
    a, b = recs
    torch.testing.assert_close(a.mask, b.mask, rtol=0, atol=0)
    torch.testing.assert_close(a.pattern, b.pattern, rtol=0, atol=0)
    assert a.mask.shape == (1, 8, 8) and a.pattern.shape == (1, 8, 8)
    assert float(a.mask.min()) >= 0 and float(a.mask.max()) <= 1
    assert float(a.pattern.min()) >= 0 and float(a.pattern.max()) <= 1
    torch.testing.assert_close(torch.tensor(a.l1), a.mask.sum())
    assert a.success >= 0.9
    for p, g in zip(model.parameters(), grads, strict=True):  # no gradient left on the model
        assert (p.grad is None) == (g is None)
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    stamped = a.apply(clean_x[:4])
    torch.testing.assert_close(stamped, (1 - a.mask) * clean_x[:4] + a.mask * a.pattern)


def test_save_and_load_scan(trojan_scan: ScanResult, tmp_path: Path) -> None:
    save_scan(trojan_scan, tmp_path)
    back = load_scan(tmp_path)
    assert back.suspect == trojan_scan.suspect and back.flagged == trojan_scan.flagged
    torch.testing.assert_close(torch.tensor(back.anomaly_index),
                               torch.tensor(trojan_scan.anomaly_index))
    torch.testing.assert_close(back.reconstructions[0].mask, trojan_scan.reconstructions[0].mask)


def test_cli_scan_end_to_end(trojaned_digits: tuple[nn.Module, Any], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    stem = tmp_path / "trojaned"
    save_checkpoint(trojaned_digits[0], ModelSpec(arch="cnn-small", in_shape=(1, 8, 8),
                                                  num_classes=10), stem)
    out = tmp_path / "scan"
    assert main(["scan", "--checkpoint", str(stem), "--data", "digits", "--n", "200",
                 "--steps", "100", "--batch-size", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trojan suspected: class 0" in printed
    res = json.loads((out / "scan.json").read_text())
    assert res["suspect"] == 0 and len(res["classes"]) == 10
    assert _overlaps(tuple(res["bbox"]), FOOTPRINT)  # type: ignore[arg-type]
    assert res["settings"]["method"] == "neural-cleanse"
    html = (out / "scan.html").read_text()
    assert html.count("<img") == 2 and "anomaly index" in html


def test_cli_scan_refuses_a_model_with_wrong_outputs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "badnets.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Flat(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1)).flatten()\n"
        "class Wide(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(784, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["scan", "--data", "digits", "--n", "20", "--steps", "2", "--random-init"]
    assert main([*base, "--model", "badnets:Flat"]) == 2
    assert "must return logits (B, K)" in capsys.readouterr().err
    assert main([*base, "--model", "badnets:Wide"]) == 2
    assert "fails on images of shape (8, 1, 8, 8)" in capsys.readouterr().err
    assert main([*base, "--model", "badnets:Flat", "--model-kwargs", '{"width": 3}']) == 2
    assert "--model-kwargs" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "missing.json is missing" in capsys.readouterr().err
