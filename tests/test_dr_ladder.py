"""The D_R recipe ladder: its ingredients (fake / pre-activation ReLU, noise start), its presets
(each rung the one below plus its stated ingredient) and its pre-registered judge.

Bugs these catch: a fake ReLU that is a plain ReLU (no gradient through switched-off units) or
changes the forward values; a hook left on the model (also after an exception); "pre" that
still matches post-ReLU values; a noise start that mixes in a training image; a rung that
changes more than its ingredient; a default option that enters the cache key; a ladder judge
that compares unpaired seeds or decides on one seed.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import eisbench
from eisbench.api import dry_run
from eisbench.attacks.feature_relu import feature_relu, last_relu
from eisbench.attacks.inversion import invert_representation, representation_distance
from eisbench.construct.representation import noise_start, representation_dataset
from eisbench.experiments import ilyas
from eisbench.experiments.ilyas_ladder import (
    INGREDIENTS,
    RUNGS,
    changed_fields,
    judge_ladder,
    ladder_presets,
    ladder_rows,
)
from eisbench.models import build, features
from eisbench.models.layers import LayerError
from eisbench.runs.store import Store


def _net(*, inplace: bool = False, bias: float = -0.5) -> nn.Sequential:
    """features = relu(x_flat + bias) on 4 pixels (identity weights), logits = a linear head."""
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(4))
        lin.bias.fill_(bias)
    return nn.Sequential(nn.Flatten(), lin, nn.ReLU(inplace=inplace), nn.Linear(4, 2))


def _hooks(m: nn.Module) -> int:
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())


@pytest.mark.parametrize("inplace", [False, True])
def test_fake_relu_passes_gradient_through_switched_off_units(inplace: bool) -> None:
    net = _net(inplace=inplace)
    x = torch.full((2, 1, 2, 2), 0.2)  # pre-activation -0.3: every unit off
    x[1, 0, 0, 0] = 0.9  # image 1's unit 0 on
    plain = features(net, x)

    def grad_of_unit0(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        xi = x.clone().requires_grad_(True)
        with feature_relu(net, mode, xi):
            out = features(net, xi)
            (g,) = torch.autograd.grad(out[:, 0].sum(), xi)
        return out.detach(), g.flatten(1)

    out_true, g_true = grad_of_unit0("true")
    out_fake, g_fake = grad_of_unit0("fake")
    assert torch.equal(out_fake, plain) and torch.equal(out_true, plain)  # forward unchanged
    assert g_true[0].abs().sum() == 0  # off: a true ReLU gives no gradient
    torch.testing.assert_close(g_fake[0], torch.tensor([1.0, 0, 0, 0]))  # fake: the identity
    torch.testing.assert_close(g_fake[1], g_true[1])  # an on unit: the same either way
    assert _hooks(net) == 0 and net[2].inplace is inplace


def test_pre_matches_pre_activations_and_the_hook_goes_even_on_errors() -> None:
    net = _net()
    x = torch.rand(3, 1, 2, 2)
    with feature_relu(net, "pre", x) as name:
        pre = features(net, x)
    assert name == "2"
    torch.testing.assert_close(pre, net[1](net[0](x)))
    assert (pre < 0).any()  # negative values: before the ReLU, not after
    with pytest.raises(RuntimeError, match="boom"), feature_relu(net, "fake", x):
        assert _hooks(net) == 1
        raise RuntimeError("boom")
    assert _hooks(net) == 0
    torch.testing.assert_close(features(net, x), torch.relu(pre))
    with pytest.raises(ValueError, match="relu must be one of"), feature_relu(net, "fak", x):
        pass


def test_the_hooked_relu_is_the_one_before_the_features() -> None:
    x28 = torch.rand(2, 1, 28, 28)
    assert last_relu(build("cnn-small", in_shape=(1, 28, 28), num_classes=10), x28) == "body.6"
    madry = build("cnn-madry", in_shape=(1, 28, 28), num_classes=10)
    assert last_relu(madry, x28) == "body.8" and features(madry, x28).shape == (2, 1024)
    with pytest.raises(LayerError, match="functional"):  # its blocks' ReLUs are torch.relu
        last_relu(build("resnet-small", in_shape=(1, 8, 8), num_classes=10),
                  torch.rand(2, 1, 8, 8))
    shared = nn.ReLU()
    twice = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), shared, nn.Linear(3, 3), shared,
                          nn.Linear(3, 2))
    with pytest.raises(LayerError, match="more than once"):
        last_relu(twice, torch.rand(2, 1, 2, 2))
    with pytest.raises(LayerError, match="no nn.ReLU"):
        last_relu(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.rand(2, 1, 2, 2))


@pytest.mark.parametrize("optimizer", ["adam", "normalized"])
def test_only_a_fake_relu_lets_inversion_switch_on_a_dead_unit(optimizer: str) -> None:
    net = _net()
    start = torch.zeros(2, 1, 2, 2)  # every unit off (pre-activation -0.5)
    target = torch.ones(2, 1, 2, 2)  # every unit on (0.5)
    kw: dict[str, Any] = {"steps": 60, "step_size": 0.05, "optimizer": optimizer}
    stuck = invert_representation(net, start, target, relu="true", **kw)
    moved = invert_representation(net, start, target, relu="fake", **kw)
    assert torch.equal(stuck, start)  # no gradient anywhere
    assert float(representation_distance(net, moved, target).max()) < 0.2
    pre = invert_representation(net, start, target, relu="pre", **kw)
    assert float(representation_distance(net, pre, target).max()) < 0.2
    assert _hooks(net) == 0


def test_noise_start_uses_no_training_image() -> None:
    net = _net()
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6)

    def built(images: torch.Tensor, start: str) -> torch.Tensor:
        return representation_dataset(net, images, y, num_classes=2, steps=0, start=start,
                                       generator=torch.Generator().manual_seed(3))[0]

    noise = built(x, "noise")
    assert torch.equal(noise, built(1 - x, "noise"))  # the same whatever the images
    assert torch.equal(noise, noise_start(x.shape, generator=torch.Generator().manual_seed(3)))
    assert not any(torch.equal(n, xi) for n in noise for xi in x)
    big = noise_start((200, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(big.mean(), torch.tensor(0.5), atol=2e-3, rtol=0)
    torch.testing.assert_close(big.std(), torch.tensor(0.05), atol=2e-3, rtol=0)
    other = built(x, "other-image")  # each row another image of x, never its own
    assert all(any(torch.equal(o, xj) for j, xj in enumerate(x) if j != i)
               for i, o in enumerate(other))
    one = representation_dataset(net, x[:1], y[:1], num_classes=2, steps=0, start="noise",
                                 generator=torch.Generator().manual_seed(3))[0]
    assert one.shape == (1, 1, 2, 2)  # noise needs no second image
    with pytest.raises(ValueError, match="start must be one of"):
        built(x, "zeros")


def test_each_rung_adds_only_its_ingredient_and_resolves() -> None:
    rungs = ladder_presets(ilyas.QUICK)
    assert list(rungs) == list(RUNGS) and rungs["dr-a"] == ilyas.QUICK
    for lower, upper in zip(RUNGS, RUNGS[1:], strict=False):
        assert sorted(changed_fields(rungs[lower], rungs[upper])) == sorted(INGREDIENTS[upper])
    e, f = rungs["dr-e"], rungs["dr-f-paper"]
    assert (e.robust_train.method, e.robust_train.norm, e.robust_train.eps) == ("pgd-at", "l2",
                                                                                 2.0)
    assert (e.eval_attack.norm, e.eval_attack.eps) == ("l2", 1.0)
    assert (f.arch, f.n_construct) == ("cnn-madry", 50_000)
    for name in RUNGS:
        plan = dry_run("ilyas", name)
        assert plan["preset"] == name and plan["config"]["inversion_relu"] == (
            "true" if name == "dr-a" else "fake")
    assert ilyas.inversion_hyper(rungs["dr-a"]) == {"steps": 100, "step_size": 0.1}  # cache kept
    assert ilyas.inversion_hyper(rungs["dr-d"]) == {"steps": 1000, "step_size": 0.1,
                                                    "optimizer": "normalized", "relu": "fake",
                                                    "start": "noise"}


def test_the_preset_from_the_command_line(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    from eisbench.cli import main

    assert main(["run", "ilyas", "--preset", "dr-d", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)["config"]
    assert (cfg["inversion_start"], cfg["inversion_steps"]) == ("noise", 1000)
    with pytest.raises(ValueError, match="inversion_relu must be one of"):
        ilyas.setting(dataclasses.replace(ilyas.QUICK, inversion_relu="fake-relu"),
                      Store(tmp_path))


def _record(seeds: list[int], dr: list[float], d: list[float], src: float,
            dr_std: float = 0.9) -> dict[str, Any]:
    per_seed = {"train_on_D_R": [{"robust_acc": v} for v in dr],
                "train_on_D": [{"robust_acc": v} for v in d]}
    metric = {"value": src, "ci95": [src - 0.01, src + 0.01], "n": len(seeds),
              "higher_is_better": True}
    return {"seeds": seeds, "details": {"per_seed": per_seed, "attack": "pgd"},
            "metrics": {"adv_train_on_D/robust_acc": metric,
                        "train_on_D_R/std_acc": {**metric, "value": dr_std,
                                                 "ci95": [dr_std - 0.01, dr_std + 0.01]},
                        "train_on_D_R/robust_acc": {**metric, "value": sum(dr) / len(dr),
                                                    "ci95": [min(dr), max(dr)]},
                        "train_on_D/robust_acc": {**metric, "value": sum(d) / len(d),
                                                  "ci95": [min(d), max(d)]}}}


def test_the_ladder_judge_can_say_moves_and_does_not_move() -> None:
    a = _record([0, 1, 2], [0.00, 0.01, 0.00], [0.0, 0.0, 0.0], 0.9)
    moved = _record([0, 1, 2], [0.30, 0.32, 0.31], [0.0, 0.01, 0.0], 0.9)
    flat = _record([0, 1, 2], [0.01, 0.01, 0.00], [0.0, 0.0, 0.0], 0.9)
    weak_source = _record([0, 1, 2], [0.01, 0.01, 0.00], [0.0, 0.0, 0.0], 0.2)
    at_chance = _record([0, 1, 2], [0.10, 0.11, 0.10], [0.0, 0.0, 0.0], 0.9, dr_std=0.11)
    got = judge_ladder({"dr-a": a, "dr-b": moved, "dr-c": flat, "dr-d": weak_source,
                        "dr-e": at_chance})
    assert [c["verdict"] for c in got] == ["reproduced", "not reproduced", "inconclusive",
                                           "inconclusive"]  # a chance D_R model does not move
    assert all(c["if_reproduced"] == c["if_not"] == "inconclusive" for c in got)
    one = judge_ladder({"dr-a": _record([0], [0.0], [0.0], 0.9),
                        "dr-b": _record([0], [0.5], [0.0], 0.9)})
    assert one[0]["verdict"] == "inconclusive"  # one seed: no interval
    with pytest.raises(ValueError, match="same seeds"):
        judge_ladder({"dr-a": a, "dr-b": _record([3, 4, 5], [0.3] * 3, [0.0] * 3, 0.9)})
    with pytest.raises(ValueError, match="dr-a"):
        judge_ladder({"dr-b": moved})
    rows = ladder_rows({"dr-a": a, "dr-b": moved})
    assert [r["verdict"] for r in rows] == ["", "reproduced"] and rows[1]["shift over dr-a"]


@pytest.mark.parametrize("module", ["eisbench.attacks.feature_relu",
                                    "eisbench.experiments.ilyas_ladder"])
def test_docstring_examples(module: str) -> None:
    res = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted > 0


def test_the_paper_preset_runs_end_to_end_on_tiny_data(tmp_path: Path) -> None:
    tiny = {"epochs": 1, "batch_size": 50}
    rec = eisbench.run(
        "ilyas", "dr-f-paper", dataset="digits", seeds=1, out=tmp_path / "run",
        store=Store(tmp_path / "cache"), n_train=200, n_construct=40, n_test=60,
        n_test_robust=16, n_checks=16, std_train=tiny, robust_train=tiny, fresh_train=tiny,
        inversion_steps=3, wrong_label_steps=3, eps_curve=(),
        overrides=["eval_attack.steps=3"])
    cfg = rec["config"]
    assert (cfg["arch"], cfg["inversion_relu"], cfg["inversion_start"]) == (
        "cnn-madry", "fake", "noise")
    assert (cfg["robust_train"]["norm"], cfg["eval_attack"]["norm"]) == ("l2", "l2")
    hyper = [s for s in rec["stages"] if s["name"] == "construct"]
    assert len(hyper) == 4
    assert {"train_on_D_R/robust_acc", "adv_train_on_D/robust_acc"} <= set(rec["metrics"])
    assert "48%" in rec["details"]["literature_source"]
