"""The CIFAR-10 path end to end, on tiny generated ``cifar-10-batches-py`` files (the real set
cannot be downloaded here): the ``cifar10`` presets of the Ilyas experiment and of the trojan
bench, their sizes cut down, from loading the pickles to the written report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from test_data import idx_bytes, write_cifar

import eisbench
from eisbench.api import configure
from eisbench.runs.store import Store


def test_cifar10_presets_carry_the_papers_settings() -> None:
    cfg = configure("ilyas", "cifar10", data_root="/nowhere")  # nothing is loaded
    assert (cfg.dataset, cfg.arch, cfg.n_construct) == ("cifar10", "preact-resnet18", 50000)
    rob = cfg.robust_train
    assert (rob.method, rob.norm, rob.eps, rob.attack_steps, rob.alpha) == (
        "pgd-at", "l2", 0.5, 7, 0.1)
    assert (cfg.inversion_steps, cfg.inversion_step_size, cfg.inversion_optimizer) == (
        1000, 0.1, "normalized")
    assert (cfg.wrong_label_eps, cfg.wrong_label_steps, cfg.wrong_label_step_size) == (
        0.5, 100, 0.1)
    assert (cfg.eval_attack.norm, cfg.eval_attack.eps) == ("l2", 0.25)
    assert all(t.epochs == 150 and t.weight_decay == 5e-4 and t.batch_size == 128
               for t in (cfg.std_train, rob, cfg.fresh_train))
    tro = configure("trojans", "cifar10", data_root="/nowhere")
    assert (tro.dataset, tro.arch) == ("cifar10", "preact-resnet18")
    with pytest.raises(ValueError, match="unknown preset 'cifar1'; did you mean 'cifar10'"):
        configure("ilyas", "cifar1")
    with pytest.raises(ValueError, match="presets of goh-linear: quick, full"):
        configure("goh-linear", "cifar10")


def write_fashion(root: Path) -> None:
    """A tiny Fashion-MNIST folder (the natural triggers' objects): a bright blob per image,
    every class 0..9 in the test set."""
    rng = np.random.default_rng(0)
    x = np.zeros((30, 28, 28), dtype=np.uint8)
    for i in range(30):
        r, c = rng.integers(4, 14, 2)
        x[i, r:r + 10, c:c + 10] = rng.integers(120, 256, (10, 10))
    y = (np.arange(30) % 10).astype(np.uint8)
    root.mkdir(parents=True)
    for stem, arr in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                      ("t10k-images-idx3-ubyte", x), ("t10k-labels-idx1-ubyte", y)):
        (root / stem).write_bytes(idx_bytes(arr))


def test_cifar10_path_end_to_end(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py", n=40)  # 200 training, 40 test images
    write_fashion(tmp_path / "fashion")
    store = Store(tmp_path / "cache")
    small = {"epochs": 1, "batch_size": 50}
    t0 = time.perf_counter()
    rec = eisbench.run(
        "ilyas", "cifar10", data_root=str(tmp_path), seeds=1, out=tmp_path / "ilyas",
        store=store, arch_width=8, n_construct=40, n_test_robust=16, n_checks=16,
        std_train=small, robust_train=small, fresh_train=small, inversion_steps=3,
        wrong_label_steps=3, eval_suite="fast", eps_curve=(0.5,),
        overrides=["eval_attack.steps=3"])
    ilyas_s = time.perf_counter() - t0
    saved = json.loads((tmp_path / "ilyas" / "record.json").read_text())
    cfg = saved["config"]
    assert (cfg["dataset"], cfg["arch"], cfg["arch_width"]) == ("cifar10", "preact-resnet18", 8)
    rob = cfg["robust_train"]
    assert (rob["method"], rob["norm"], rob["eps"], rob["attack_steps"], rob["alpha"]) == (
        "pgd-at", "l2", 0.5, 7, 0.1)
    assert (cfg["inversion_optimizer"], cfg["inversion_step_size"]) == ("normalized", 0.1)
    assert (cfg["wrong_label_eps"], cfg["wrong_label_step_size"]) == (0.5, 0.1)
    assert cfg["eval_attack"]["norm"] == "l2" and cfg["eval_attack"]["eps"] == 0.25
    assert list(saved["data"]) == ["cifar10"]
    assert {"train_on_D_R/std_acc", "train_on_D_det/std_acc",
            "adv_train_on_D/robust_acc"} <= set(saved["metrics"])
    built = [s for s in saved["stages"] if s["name"] == "construct"]
    assert len(built) == 4  # D_R, D_NR, D_rand, D_det
    assert rec.report.is_file() and "ilyas" in rec.report.read_text().lower()

    t0 = time.perf_counter()
    bench = eisbench.run(
        "trojans", "cifar10", data_root=str(tmp_path), seeds=1, out=tmp_path / "trojans",
        store=store, natural_root=str(tmp_path / "fashion"), arch_width=8, epochs=1,
        n_clean=2, tools=("neural-cleanse",), tool_steps=0.05, n_images=2, n_data=16,
        judge_steps=20, judge_trials=1, n_attr=4, scan_methods=("neural-cleanse",),
        scan_steps=3, n_scan=16)
    trojan_s = time.perf_counter() - t0
    saved = json.loads((tmp_path / "trojans" / "record.json").read_text())
    assert saved["config"]["dataset"] == "cifar10" and saved["config"]["arch"] == "preact-resnet18"
    implants = [s for s in saved["stages"] if s["name"] == "implant"]
    assert len(implants) == 12
    zoo = saved["details"]["zoo"]
    assert len(zoo) == 12 and {z["kind"] for z in zoo} == {"patch", "style", "natural"}
    assert bench.report.is_file()
    if saved["details"]["graded"]["n"] == 0:  # 1 epoch on 200 images implants nothing
        assert "bench/failed_cells" not in saved["metrics"]  # no cells: no rate (n would be 0)
    print(f"ilyas {ilyas_s:.1f} s, trojans {trojan_s:.1f} s")
