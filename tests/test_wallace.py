"""wallace: learning from foreign images labelled by a model, and from a weak model's errors,
end to end on the 8x8 digits (foreign images: transposed digits, written as 28x28 IDX files)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from test_data import idx_bytes

from eisbench import data
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.wallace import resize_like
from eisbench.runs import record
from eisbench.runs.store import Store
from eisbench.training import TrainConfig


def test_resize_like_matches_shape_and_range() -> None:
    x = torch.rand(4, 3, 28, 28)
    out = resize_like(x, (1, 8, 8))
    assert out.shape == (4, 1, 8, 8) and 0 <= float(out.min()) <= float(out.max()) <= 1
    assert torch.allclose(resize_like(out, (1, 8, 8)), out)  # same shape: unchanged


def _foreign_idx(root: Path) -> None:
    d = data.load("digits")
    arrays = {}
    for split, x, y in (("train", d.x_train, d.y_train), ("t10k", d.x_test, d.y_test)):
        big = F.interpolate(x.transpose(2, 3), size=(28, 28), mode="bilinear")  # (N, 1, 28, 28)
        arrays[f"{split}-images-idx3-ubyte"] = (big[:, 0] * 255).round().byte().numpy()
        arrays[f"{split}-labels-idx1-ubyte"] = y.numpy().astype(np.uint8)
    root.mkdir(parents=True)
    for stem, arr in arrays.items():
        (root / stem).write_bytes(idx_bytes(arr))


def test_wallace_end_to_end_on_digits(tmp_path: Path) -> None:
    _foreign_idx(tmp_path / "foreign")
    exp = EXPERIMENTS.get("wallace")
    cfg = dataclasses.replace(
        exp.quick, dataset="digits", seeds=(0, 1), foreign="fashion-mnist",
        foreign_root=str(tmp_path / "foreign"), n_weak=100, n_construct=100,
        std_train=TrainConfig(epochs=5, lr=5e-3), fresh_train=TrainConfig(epochs=5, lr=5e-3),
        weak_train=TrainConfig(epochs=1, lr=1e-3))
    rec = exp.run(cfg, out=tmp_path / "out", store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    assert len(rec["claims"]) == 2
    for r in rec["details"]["per_seed"]:
        assert 0 < r["n_errors"] < 1437  # the weak model errs, but not everywhere
        assert r["weak_model"] < r["source_model"]
        assert sum(r["foreign_label_counts"]) == 1437
    assert "Wallace 2019" in exp.report(rec, tmp_path / "out").read_text()
