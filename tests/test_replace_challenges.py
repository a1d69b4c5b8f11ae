"""The EIS VII challenges (the rule, the architecture, the pairs task), the replace benchmark
end to end on the 8x8 digits (record, report, cache), and ``eisbench replace`` on a foreign
state dict of the challenge's architecture."""

from __future__ import annotations

import dataclasses
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from eisbench.bench.registry import BENCHMARKS
from eisbench.bench.replace import QUICK
from eisbench.cli import main
from eisbench.data.ood import digits_like
from eisbench.models import load_foreign
from eisbench.replace import DISTILLERS
from eisbench.replace import challenge1 as c1
from eisbench.replace import challenge2 as c2
from eisbench.runs.record import validate
from eisbench.runs.store import Store


def test_similarity_and_band_rule_by_hand() -> None:
    t = torch.zeros(1, 2, 2)
    t[0, 0, 0] = 1.0  # template: one lit pixel
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 1.0], [1.0, 1.0]]],
                      [[[1.0, 1.0], [0.0, 0.0]]]])
    # cos(x, t) - cos(x, 1-t): |t| = 1, |1-t| = sqrt(3)
    expected = torch.tensor([1.0, -3 / (3 ** 0.5 * 3 ** 0.5),
                             1 / 2 ** 0.5 - 1 / (2 ** 0.5 * 3 ** 0.5)])
    torch.testing.assert_close(c1.similarity(x, t), expected)
    rule = c1.Rule(template=t, lo=0.0, hi=0.5)
    assert rule.labels(x).tolist() == [1, 1, 0]
    assert "cos(x, t) - cos(x, 1-t)" in rule.describe()


def test_true_rule_is_balanced_and_fixed(digits_small: tuple[torch.Tensor, ...]) -> None:
    x = c1.as_mnist(digits_small[0])
    assert x.shape[1:] == (1, 28, 28) and float(x.min()) >= 0 and float(x.max()) <= 1
    rule = c1.true_rule(x)
    torch.testing.assert_close(rule.template, x[c1.TEMPLATE_INDEX])
    assert abs(float((rule.labels(x) == 0).float().mean()) - 0.5) < 0.01
    assert c1.true_rule(x).lo == rule.lo  # deterministic
    with pytest.raises(ValueError, match="more than 6"):
        c1.true_rule(x[:5])


def test_challenge_architecture_loads_a_foreign_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = c1.MnistCNN().eval()
    assert sorted({k.split(".")[0] for k in net.state_dict()}) == ["conv1", "conv2", "fc1",
                                                                     "fc2"]
    x = torch.rand(3, 1, 28, 28)
    assert net(x).shape == (3, 2)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    again = load_foreign("eisbench.replace.challenge1:MnistCNN", tmp_path / "net.pt")
    torch.testing.assert_close(again(x), net(x))


def test_challenge_network_training_is_seeded_dropout_included(
        tmp_path: Path, digits_small: tuple[torch.Tensor, ...]) -> None:
    x = c1.as_mnist(digits_small[0][:256])
    cfg = c1.Challenge1Config(epochs=1, batch_size=64)
    nets = []
    for k in range(2):
        torch.rand(k + 1)  # a different global RNG state each time
        net, _, info = c1.challenge1_train_stage(Store(tmp_path / str(k)), x_train=x,
                                                 data_key="d", cfg=cfg, seed=3,
                                                 device=torch.device("cpu"))
        nets.append(net)
    assert not nets[0].training and info["label0_fraction"] == 0.5
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_pairs_task_is_fixed_and_split_in_halves() -> None:
    pairs = c2.all_pairs()
    assert pairs.shape == (113 * 113, 2) and pairs[114].tolist() == [1, 1]
    y = c2.label_fn(pairs[:, 0], pairs[:, 1])
    assert 0.43 < float(y.float().mean()) < 0.49
    # g(0, 0) = sin(0) + cos(0) - 0.15 > 0; g(0, 56) = sin(2pi*1.1*56/112) + cos(...) - 0.15
    assert int(c2.label_fn(torch.tensor([0]), torch.tensor([0]))) == 1
    tr, te = c2.split()
    assert len(tr) + len(te) == 113 * 113 and len(set(tr.tolist()) & set(te.tolist())) == 0
    torch.testing.assert_close(c2.split()[0], tr)  # the same split every time
    img = c2.as_images(pairs[:50])
    assert img.shape == (50, 1, 1, 2) and float(img.max()) <= 1
    torch.manual_seed(0)
    net = c2.PairTransformer(d_model=16, n_heads=2, d_mlp=32).eval()
    torch.testing.assert_close(c2.PairsAsImages(net)(img), net(pairs[:50]))
    with pytest.raises(ValueError, match="integer pairs"):
        net(torch.rand(4, 2))


def test_pair_transformer_learns_from_half_the_pairs() -> None:
    cfg = c2.Challenge2Config(steps=300, d_model=32, n_heads=2, d_mlp=64)
    net = c2.train_pairs(cfg, seed=0, device=torch.device("cpu"))
    tr, te = c2.split()
    device = torch.device("cpu")
    assert c2.accuracy(net, tr, device=device) > 0.8
    assert c2.accuracy(net, te, device=device) > 0.75


SETS = {"n_fit": 500, "n_val": 250, "n_test": 200, "program_terms": "1,2",
        "model_program_terms": "2,4", "model_epochs": 2,
        "c1_epochs": 2, "c2_steps": 150, "n_templates": 16}


def test_bench_end_to_end_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    sets = [f"--set={k}={v}" for k, v in SETS.items()]
    assert main(["bench", "replace", "--quick", "--dataset", "digits", "--seeds", "1", *sets,
                 "--out", str(out)]) == 0
    assert "replace/challenge1/agreement" in capsys.readouterr().out
    rec = json.loads((out / "record.json").read_text())
    validate(rec)
    m = rec["metrics"]
    for name in ("replace/challenge1/agreement", "replace/challenge1/network_acc",
                 "replace/challenge1/ablation_agreement", "replace/challenge2/fidelity",
                 "replace/challenge2/network_acc", "replace/model/tree/agreement_test",
                 "replace/model/program/agreement_ood", "replace/model/sparse-linear/size",
                 "replace/challenge2/templates/agreement_test"):
        assert name in m, name
    assert m["replace/challenge1/agreement"]["n"] == 200  # one seed: Wilson over images
    d = rec["details"]
    assert d["challenge1"]["candidates_include_true_template"] is True
    assert len(d["challenge1"]["rules"]) == 1 and "\n" not in d["challenge1"]["rules"][0]
    assert len(d["model"]["points"]) == 2 + sum(len(DISTILLERS.get(n).grid)
                                                for n in DISTILLERS.names() if n != "program")
    verdicts = {c["claim"][:40]: c["verdict"] for c in rec["claims"]}
    assert len(verdicts) >= 5
    html = (out / "report.html").read_text()
    assert "Replace: distillation benchmark" in html and html.count("<img") >= 5
    assert {s["name"] for s in rec["stages"]} >= {"train", "challenge1-train",
                                                  "challenge2-train"}
    # a second run (two distillers) reuses every trained network
    cfg = dataclasses.replace(QUICK, dataset="digits", seeds=(0,), n_fit=500, n_val=250,
                              n_test=200, program_terms=(1, 2), model_program_terms=(2, 4),
                              model_epochs=2, c1_epochs=2,
                              c2_steps=150, n_templates=16, distillers=("program", "tree"))
    rec2 = BENCHMARKS.get("replace").run(cfg, out=tmp_path / "out2",
                                         store=Store(tmp_path / "home" / "cache"))
    assert all(s["cached"] for s in rec2["stages"])
    assert rec2["metrics"]["replace/challenge1/agreement"] == m["replace/challenge1/agreement"]


def _idx(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.tobytes()


def test_cli_replace_on_a_foreign_state_dict(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    x, y = digits_like((1, 28, 28))  # an MNIST-shaped folder of IDX files
    px = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    lab = y.to(torch.uint8).numpy()
    root = tmp_path / "idx"
    root.mkdir()
    for stem, arr in {"train-images-idx3-ubyte": px[:1200], "train-labels-idx1-ubyte": lab[:1200],
                      "t10k-images-idx3-ubyte": px[1200:], "t10k-labels-idx1-ubyte": lab[1200:]
                      }.items():
        (root / (stem + ".gz")).write_bytes(gzip.compress(_idx(np.ascontiguousarray(arr))))
    torch.manual_seed(0)
    torch.save(c1.MnistCNN().state_dict(), tmp_path / "net.pt")
    out = tmp_path / "rep"
    args = ["replace", "--model", "eisbench.replace.challenge1:MnistCNN", "--weights",
            str(tmp_path / "net.pt"), "--dataset", "mnist", "--data-root", str(root),
            "--distillers", "program,tree", "--n-fit", "400", "--n-val", "200", "--out",
            str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "program" in printed and "tree" in printed
    res = json.loads((out / "replace.json").read_text())
    assert set(res["chosen"]) == {"program", "tree"} and res["n_test"] == 597
    assert "<img" in (out / "report.html").read_text()
    assert main([*args[:-2], "--distillers", "progam"]) == 2
    assert "did you mean 'program'" in capsys.readouterr().err
