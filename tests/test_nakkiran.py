"""nakkiran: the non-transferable attack against plain targeted PGD on a tiny ensemble, the
exact robustness of the squares' robust classifier, and the experiment end to end on the 8x8
digits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from eisbench import data
from eisbench.attacks.evaluate import AttackConfig
from eisbench.attacks.pgd import pgd
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.nakkiran_attack import non_transferable_pgd
from eisbench.experiments.nakkiran_squares import (
    SquaresConfig,
    mean_threshold_robust,
    squares_sample,
)
from eisbench.runs import record
from eisbench.runs.store import Store
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


def test_nakkiran_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("nakkiran")
    eps = 1.5
    cfg = dataclasses.replace(
        exp.quick, dataset="digits", seeds=(0, 1), n_train=None, n_construct=300, ensemble=2,
        heldout=2, train=TrainConfig(epochs=5, lr=3e-3), fresh_train=TrainConfig(epochs=10,
                                                                                 lr=3e-3),
        eps=eps, steps=20, step_size=2.5 * eps / 20,
        squares=SquaresConfig(side=8, n_train=16, n_test=200,
                              train=TrainConfig(epochs=150, lr=1e-3, schedule="constant"),
                              attack=AttackConfig(name="pgd", norm="linf", eps=0.05, steps=10)))
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
        assert r["squares/robust_classifier_robust_acc"] == 1.0  # margin 0.15 > eps 0.05
        assert r["squares/net_train_loss"] < 0.05 and r["squares/net_std_acc"] > 0.9
    again = exp.run(cfg, out=tmp_path / "out", store=store)  # every stage is cached
    assert all(s["cached"] for s in again["stages"])
    assert again["metrics"] == rec["metrics"]
    html = exp.report(rec, tmp_path / "out").read_text()
    assert "Nakkiran 2019" in html and "Adversarial squares" in html and "<img" in html
