"""saliency (exhibit A): the input-grad training method, the alignment scores, and the
experiment end to end on the 8x8 digits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LinearMulti, multi_mixture

from eisbench.attacks.evaluate import AttackConfig
from eisbench.core.config import stable_hash, to_plain
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.saliency import check_config
from eisbench.experiments.saliency_scores import alignment, attributions, other_class_starts
from eisbench.models import build
from eisbench.runs import record
from eisbench.runs.record import Metric
from eisbench.runs.store import Store
from eisbench.training import TrainConfig, train
from eisbench.training.loop import InputGradConfig
from eisbench.training.methods import input_grad_loss


def test_input_grad_loss_matches_closed_form() -> None:
    """For logits Wx + b, d CE / dx = W^T (softmax - onehot): the loss is known exactly."""
    net = LinearMulti()
    x, y = multi_mixture(16)
    w = net.lin.weight.detach()  # (K, 2)
    p = torch.softmax(net(x), 1)  # (B, K)
    g = (p - F.one_hot(y, 4).float()) @ w  # (B, 2)
    expected = F.cross_entropy(net(x), y) + 2.5 * g.pow(2).sum(1).mean()
    got = input_grad_loss(net, x, y, cfg=InputGradConfig(grad_reg=2.5))
    torch.testing.assert_close(got, expected.detach())
    torch.testing.assert_close(input_grad_loss(net, x, y, cfg=InputGradConfig(grad_reg=0.0)),
                               F.cross_entropy(net(x), y).detach())
    got.backward()  # double backprop reaches the weights
    assert net.lin.weight.grad is not None and float(net.lin.weight.grad.abs().sum()) > 0


def test_input_grad_keeps_existing_cache_keys() -> None:
    assert "grad_reg" not in to_plain(TrainConfig())  # no TrainConfig hash has changed
    plain = TrainConfig(method="input-grad")
    assert stable_hash(InputGradConfig(grad_reg=1.0)) != stable_hash(plain)
    assert stable_hash(InputGradConfig(grad_reg=1.0)) != stable_hash(InputGradConfig(grad_reg=2.0))


def test_input_grad_training_flattens_input_gradients(
        digits_small: tuple[torch.Tensor, ...], tmp_path: Path) -> None:
    x, y, xt, yt = digits_small
    norms = {}
    for name, cfg in (("standard", TrainConfig(epochs=4, lr=1e-2)),
                      ("input-grad", InputGradConfig(epochs=4, lr=1e-2, grad_reg=3.0))):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build("mlp", in_shape=(1, 8, 8), num_classes=10, width=32, depth=1)
        (tmp_path / name).mkdir()
        train(net, x, y, cfg=cfg, seed=0, resume_dir=tmp_path / name)
        history = json.loads((tmp_path / name / "history.json").read_text())
        assert len(history) == 4 and "guard_pgd10_acc" not in history[-1]  # no attack: no guard
        xg = xt.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(xg), yt, reduction="sum"), xg)
        norms[name] = float(g.flatten(1).norm(dim=1).mean())
    assert norms["input-grad"] < 0.5 * norms["standard"]


def test_alignment_scores_by_hand() -> None:
    x = torch.zeros(2, 1, 4, 4)
    x[:, 0, 1:3, 1:3] = 1.0  # 4 stroke pixels of 16
    x[1, 0, 0, 0] = 0.25
    share, corr = alignment(x.clone(), x, threshold=0.5)  # attribution = the image itself
    np.testing.assert_allclose(share, [1.0, 4.0 / 4.25])
    np.testing.assert_allclose(corr, [1.0, 1.0])
    share, corr = alignment(torch.ones(2, 1, 4, 4), x, threshold=0.5)  # uniform map
    np.testing.assert_allclose(share, [0.25, 0.25])
    np.testing.assert_allclose(corr, [0.0, 0.0])
    share, _ = alignment(1.0 - x, x, threshold=0.5)  # mass only off the strokes
    np.testing.assert_allclose(share, [0.0, 0.0])


def test_ig_black_is_zero_on_black_pixels(trained_digits_cnn: torch.nn.Module,
                                          digits_small: tuple[torch.Tensor, ...]) -> None:
    _, _, xt, yt = digits_small
    maps = attributions(trained_digits_cnn, xt[:8], yt[:8], ig_steps=8, smooth_samples=2,
                        smooth_sigma=0.1, generator=torch.Generator().manual_seed(0))
    assert set(maps) == {"gradient", "smoothgrad", "ig-black", "ig-grey"}
    assert all(m.shape == xt[:8].shape and float(m.min()) >= 0 for m in maps.values())
    assert float(maps["ig-black"][xt[:8] == 0].abs().max()) == 0.0
    assert float(maps["ig-grey"][xt[:8] == 0].abs().sum()) > 0  # grey: background counts


def test_other_class_starts_differ_from_targets() -> None:
    y = torch.arange(10).repeat(5)
    x = y.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2) / 10
    targets = torch.tensor([0, 3, 3, 9])
    xs, ys = other_class_starts(x, y, targets, generator=torch.Generator().manual_seed(0))
    assert bool((ys != targets).all()) and xs.shape == (4, 1, 2, 2)
    torch.testing.assert_close(xs[:, 0, 0, 0], ys.float() / 10)
    with pytest.raises(ValueError, match="other than"):
        other_class_starts(x[:5] * 0, torch.zeros(5, dtype=torch.long), torch.tensor([0]),
                           generator=torch.Generator())


def test_config_rejects_a_judge_of_the_inverted_architecture() -> None:
    exp = EXPERIMENTS.get("saliency")
    with pytest.raises(ValueError, match="independent"):
        check_config(dataclasses.replace(exp.quick, judge_arch=exp.quick.arch))
    with pytest.raises(ValueError, match="inversion_starts"):
        check_config(dataclasses.replace(exp.quick, inversion_starts=("nowhere",)))
    with pytest.raises(KeyError, match="attack suite"):
        check_config(dataclasses.replace(exp.quick, robust_suite="fats"))
    check_config(exp.full)


def test_saliency_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("saliency")
    cfg = dataclasses.replace(
        exp.quick, dataset="digits", seeds=(1, 2), n_construct=100,
        std_train=TrainConfig(epochs=6, lr=5e-3),
        robust_train=TrainConfig(method="fast-at", epochs=8, lr=1e-2, eps=0.1),
        input_grad_train=InputGradConfig(epochs=6, lr=5e-3, grad_reg=1.0),
        n_input_grad_train=1000, eval_attack=AttackConfig(norm="linf", eps=0.1, steps=10),
        n_test_robust=40, n_checks=10, n_robust_input_grad=40, n_checks_input_grad=10,
        judge_train=TrainConfig(epochs=8, lr=5e-3), n_judge_train=1000, n_saliency=32,
        ig_steps=8, smoothgrad_samples=4, n_inversion=16, inversion_steps=30,
        inversion_starts=("other", "noise"), n_shown=4)
    rec = exp.run(cfg, out=tmp_path / "out", store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    assert [c["exhibit"] for c in rec["claims"]] == ["A"] * 6
    assert [c["role"] for c in rec["claims"]] == ["check"] * 2 + ["evidence"] * 4
    assert rec["claims"][0]["verdict"] == "reproduced"  # seeds 1, 2: not the pilot's
    assert [(c["if_reproduced"], c["if_not"]) for c in rec["claims"][2:]] == [
        ("inconclusive", "inconclusive"), ("inconclusive", "inconclusive"),
        ("features", "inconclusive"), ("inconclusive", "bugs")]
    mt = rec["metrics"]
    assert mt["saliency/fast-at/robust_acc"]["value"] > mt["saliency/standard/robust_acc"]["value"]
    assert mt["saliency/judge/std_acc"]["value"] > 0.8  # the judge knows the task
    for r in rec["details"]["per_seed"]:
        assert set(r["models"]) == {"standard", "fast-at", "input-grad"}
        for m in r["models"].values():
            for a in m["attribution"].values():
                assert 0.0 <= a["stroke_share"] <= 1.0 and -1.0 <= a["rank_corr"] <= 1.0
            assert m["attribution"]["ig-black"]["stroke_share"] > r["stroke_fraction"]
            for start in ("other", "noise"):
                inv = m["inversion"][start]  # inversion moves towards the target's features
                assert inv["feature_distance"] < 0.5 * inv["start_feature_distance"]
            assert m["n_robust"] == 40
    report = exp.report(rec, tmp_path / "out").read_text()
    assert "exhibit A" in report and "Engstrom" in report and report.count("<img") >= 5


def test_saliency_claims_on_the_pilots_seed_make_the_exhibit_inconclusive() -> None:
    """The rules were written after a pilot on seed 0: judged on it, they are not
    pre-registered, so the pilot check fails and the exhibit's evidence counts for nothing."""
    from eisbench.experiments.saliency_claims import decide, pilot_check
    from eisbench.experiments.suite import judge_exhibit
    from eisbench.runs.claims import metric_over_seeds

    class Strong(dict[str, Metric]):  # every metric: a clear effect over 3 seeds
        def __missing__(self, key: str) -> Metric:
            self[key] = metric_over_seeds([0.5, 0.6, 0.55], lower=-1.0)
            return self[key]

    strong = Strong()
    clean = judge_exhibit([pilot_check((1, 2, 3)), *decide(strong, num_classes=10)])
    assert clean["world"] == "features" and "reason" not in clean
    for seeds in ((0, 1, 2), (0,), (3, 0)):
        claims = [pilot_check(seeds), *decide(strong, num_classes=10)]
        assert claims[0]["role"] == "check" and claims[0]["verdict"] == "not reproduced"
        out = judge_exhibit(claims)
        assert out["world"] == "inconclusive" and "pilot" in out["reason"]
