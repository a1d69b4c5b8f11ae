"""nakkiran: the non-transferable attack against plain targeted PGD on a tiny ensemble, the
exact robustness of the squares' robust classifier, the squares network's robust accuracy from
the binary suite with its sanity checks gating the claim, and the experiment end to end on the
8x8 digits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eisbench import data
from eisbench.attacks.evaluate import AttackConfig
from eisbench.attacks.pgd import pgd
from eisbench.evaluation import CHECKS
from eisbench.experiments import EXPERIMENTS, nakkiran, nakkiran_claims
from eisbench.experiments.nakkiran_attack import non_transferable_pgd
from eisbench.experiments.nakkiran_squares import (
    SquaresConfig,
    mean_threshold_robust,
    squares_sample,
    squares_seed,
)
from eisbench.runs import record
from eisbench.runs.stages import Context
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig


class MeanThreshold(nn.Module):
    """Logits (B, 2) = scale * (thr - mean pixel, mean pixel - thr)."""

    def __init__(self, thr: float) -> None:
        super().__init__()
        self.thr = thr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True) - self.thr  # (B, 1)
        return 10.0 * torch.cat([-m, m], dim=1)


def test_without_an_ensemble_it_is_plain_targeted_pgd() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    t = (y + 1) % 3
    ours = non_transferable_pgd(net, [], x, y, t, eps=0.5, steps=7, step_size=0.1)
    ref = pgd(net, x, t, eps=0.5, steps=7, step_size=0.1, norm="l2", targeted=True,
              random_start=False)
    torch.testing.assert_close(ours, ref)
    assert net.training  # its mode is restored


def test_the_loss_is_the_target_loss_plus_the_ensembles_mean_loss() -> None:
    """Nakkiran's decorrelated loss, one L2 step by hand, per example:
    x_1 = x - a g / ||g||, g = grad [CE(f(x), t) + (1/k) sum_i CE(f_i(x), y)]. A sum over the
    ensemble (k times its weight), a minus sign or a missing target term moves x elsewhere."""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(16, 3)) for _ in range(4)]
    f, ens = nets[0], nets[1:]
    x = 0.3 + 0.4 * torch.rand(5, 1, 4, 4)
    y = torch.randint(0, 3, (5,))
    t = (y + 1) % 3

    def step(w_ens: float, w_target: float = 1.0) -> torch.Tensor:
        rows = []
        for i in range(len(x)):  # one example at a time: no batch reduction involved
            xi = x[i:i + 1].clone().requires_grad_(True)
            loss = w_target * F.cross_entropy(f(xi), t[i:i + 1]) + w_ens * sum(
                F.cross_entropy(m(xi), y[i:i + 1]) for m in ens)
            (g,) = torch.autograd.grad(loss, xi)
            rows.append((x[i:i + 1] - 0.2 * g / g.norm()).clamp(0, 1))
        return torch.cat(rows)

    got = non_transferable_pgd(f, ens, x, y, t, eps=5.0, steps=1, step_size=0.2)
    want = step(1 / 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for wrong in (step(1.0), step(-1 / 3), step(1 / 3, w_target=0.0)):
        assert (got - wrong).abs().max() > 1e-3
    torch.testing.assert_close(  # w scales the ensemble's mean
        non_transferable_pgd(f, ens, x, y, t, eps=5.0, steps=1, step_size=0.2,
                             ensemble_weight=3.0), step(1.0), rtol=1e-5, atol=1e-6)


def test_the_full_preset_uses_nakkirans_ten_model_ensemble() -> None:
    assert nakkiran.FULL.ensemble == 10 and nakkiran.FULL.ensemble_weight == 1.0
    assert nakkiran.QUICK.ensemble_weight == 1.0


def test_robust_classifier_robustness_is_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    # noise large enough that some points sit within eps of the threshold
    x, y = squares_sample(400, side=4, low=0.4, high=0.6, noise=0.2, generator=gen)
    for eps in (0.02, 0.05, 0.1):
        exact = mean_threshold_robust(x, y, eps=eps, threshold=0.5)
        model = MeanThreshold(0.5)  # linear: one FGSM step is the worst case
        x_adv = pgd(model, x, y, eps=eps, steps=1, step_size=eps, random_start=False)
        attacked = model(x_adv).argmax(1) == y
        assert torch.equal(exact, attacked)
        assert 0 < int(exact.sum()) < len(y)  # the test distinguishes something


# 16x16 squares: the overfit network falls to the first attack, so the suite stays cheap (on
# 8x8 it is robust, and Square's 5000 queries run on every test image); pixel margin 0.15 > eps
TINY_SQUARES = SquaresConfig(side=16, n_train=16, n_test=200, n_checks=100,
                             train=TrainConfig(epochs=150, lr=1e-3, schedule="constant"),
                             attack=AttackConfig(name="pgd", norm="linf", eps=0.1, steps=10))


def test_both_presets_attack_the_squares_with_the_binary_suite() -> None:
    exp = EXPERIMENTS.get("nakkiran")
    assert SquaresConfig().suite == "binary"
    assert exp.quick.squares.suite == "binary" and exp.full.squares.suite == "binary"


def test_the_squares_claim_is_gated_by_the_checks_of_its_suite(tmp_path: Path) -> None:
    """One real squares network attacked by two suites (the network is trained once, then
    cached): "binary" runs everything on two classes and every check passes, so the claim
    keeps the verdict of its rule; "standard" must skip APGD-T, its "enough-classes" check
    fails, and the claim reading the robust accuracy turns inconclusive, naming the check."""
    store = Store(tmp_path / "cache")
    out: dict[str, tuple[dict[str, bool | None], dict[str, object]]] = {}
    for suite in ("binary", "standard"):
        ctx = Context(store=store, log=StageLog(), device=torch.device("cpu"))
        row, _ = squares_seed(ctx, dataclasses.replace(TINY_SQUARES, suite=suite), 0)
        checks = {c["name"]: c["passed"] for c in row["checks"]}
        assert list(checks) == CHECKS.names()  # every registered check ran on two classes
        # the same draw as two seeds: a zero-width interval, so the rule alone decides
        per_seed = [{f"squares/{k}": v for k, v in row.items()}] * 2
        out[suite] = checks, dict(nakkiran_claims._squares_claim(nakkiran._aggregate(per_seed)))
    checks, claim = out["binary"]
    assert {n for n, p in checks.items() if p is not True} == {"control-falls"}  # no control
    assert checks["control-falls"] is None
    assert claim["verdict"] == "reproduced" and claim["checks"] == checks
    assert "inconclusive" not in str(claim["measured"])
    checks, gated = out["standard"]
    assert {n for n, p in checks.items() if p is False} == {"enough-classes"}
    assert gated["verdict"] == "inconclusive"
    assert str(gated["measured"]).startswith(str(claim["measured"]))
    assert "the sanity check(s) enough-classes failed" in str(gated["measured"])


def test_nakkiran_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("nakkiran")
    eps = 1.5
    cfg = dataclasses.replace(
        exp.quick, dataset="digits", seeds=(0, 1), n_train=None, n_construct=300, ensemble=2,
        heldout=2, train=TrainConfig(epochs=5, lr=3e-3), fresh_train=TrainConfig(epochs=10,
                                                                                 lr=3e-3),
        eps=eps, steps=20, step_size=2.5 * eps / 20, squares=TINY_SQUARES)
    store = Store(tmp_path / "cache")
    rec = exp.run(cfg, out=tmp_path / "out", store=store)
    record.validate(dict(rec))
    assert len(rec["claims"]) == 5 and {c["exhibit"] for c in rec["claims"]} == {"E"}
    assert rec["details"]["n_train"] == len(data.load("digits").x_train)
    for r in rec["details"]["per_seed"]:
        # the non-transferable loss cuts transfer to held-out copies and to its own ensemble
        assert r["non_transferable/transfer_rate"] <= 0.5 * r["pgd/transfer_rate"]
        assert r["non_transferable/ensemble_transfer_rate"] <= 0.5 * r[
            "pgd/ensemble_transfer_rate"]
        assert r["pgd/success_rate"] > 0.5 and r["non_transferable/success_rate"] > 0.3
        assert len(r["pgd/transfer_rate_per_heldout"]) == 2
        for a in ("pgd", "non_transferable"):
            assert r[f"{a}/l2_distance"] <= eps + 1e-4
        assert r["squares/robust_classifier_robust_acc"] == 1.0  # margin 0.15 > eps 0.1
        assert r["squares/net_train_loss"] < 0.05 and r["squares/net_std_acc"] > 0.9
        assert {c["name"] for c in r["squares/checks"] if c["passed"] is False} == set()
    squares = rec["claims"][4]  # attacked by the binary suite: its checks ride on the claim
    assert squares["checks"]["enough-classes"] is True and "control-falls" in squares["checks"]
    assert rec["details"]["squares_attack"].startswith("suite binary (apgd")
    again = exp.run(cfg, out=tmp_path / "out", store=store)  # every stage is cached
    assert all(s["cached"] for s in again["stages"])
    assert again["metrics"] == rec["metrics"]
    html = exp.report(rec, tmp_path / "out").read_text()
    assert "Nakkiran 2019" in html and "Adversarial squares" in html and "<img" in html
