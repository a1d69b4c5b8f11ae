from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from eisbench.models import build
from eisbench.training import METHODS, TrainConfig, train


def _fresh() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build("mlp", in_shape=(1, 8, 8), num_classes=10, width=32, depth=1)


def _acc(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_learns(method: str, digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y, xt, yt = digits_small
    cfg = TrainConfig(method=method, epochs=4, lr=1e-2, eps=0.05, attack_steps=3)
    net = train(_fresh(), x, y, cfg=cfg, seed=0)
    assert _acc(net, xt, yt) > 0.7
    assert not net.training


def test_adversarial_training_buys_robustness(digits_small: tuple[torch.Tensor, ...]) -> None:
    from eisbench.attacks import AttackConfig, correct_under_attack

    x, y, xt, yt = digits_small
    attack = AttackConfig(eps=0.1, steps=10)
    robust = {}
    for method in ("standard", "fast-at"):
        net = train(_fresh(), x, y, cfg=TrainConfig(method=method, epochs=8, lr=1e-2, eps=0.1),
                    seed=0)
        robust[method] = float(correct_under_attack(net, xt, yt, attack).float().mean())
    assert robust["fast-at"] > robust["standard"] + 0.1


def test_training_is_deterministic_and_resumes(digits_small: tuple[torch.Tensor, ...],
                                              tmp_path: Path) -> None:
    x, y, _, _ = digits_small
    cfg = TrainConfig(method="fast-at", epochs=3, lr=1e-2, eps=0.05)
    full = train(_fresh(), x, y, cfg=cfg, seed=1)
    # an "interrupted" run: 2 epochs checkpointed into the resume folder ...
    train(_fresh(), x, y, cfg=TrainConfig(method="fast-at", epochs=2, lr=1e-2, eps=0.05),
          seed=1, resume_dir=tmp_path)
    # ... but the schedule differs with epochs, so resume with the real config from scratch state
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["epoch"] == 2
    (tmp_path / "train_state.pt").unlink()
    partial_dir = tmp_path / "p"
    partial_dir.mkdir()
    first = train(_fresh(), x, y, cfg=cfg, seed=1, resume_dir=partial_dir)
    resumed = train(_fresh(), x, y, cfg=cfg, seed=1, resume_dir=partial_dir)  # nothing left to do
    for a, b, c in zip(full.state_dict().values(), first.state_dict().values(),
                       resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_resume_after_interruption_gives_same_weights(digits_small: tuple[torch.Tensor, ...],
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import eisbench.training.loop as loop

    x, y, _, _ = digits_small
    cfg = TrainConfig(method="standard", epochs=3, lr=1e-2)
    reference = train(_fresh(), x, y, cfg=cfg, seed=2)
    calls = {"n": 0}
    real = loop.F.cross_entropy

    def flaky(*a: object, **k: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 30:  # dies in the middle of epoch 3 (12 batches per epoch)
            raise KeyboardInterrupt
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(loop.F, "cross_entropy", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(_fresh(), x, y, cfg=cfg, seed=2, resume_dir=tmp_path)
    monkeypatch.setattr(loop.F, "cross_entropy", real)
    resumed = train(_fresh(), x, y, cfg=cfg, seed=2, resume_dir=tmp_path)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_bad_training_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        train(_fresh(), torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.long),
              cfg=TrainConfig(epochs=1), seed=0)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        train(_fresh(), torch.rand(4, 1, 8, 8) * 255, torch.zeros(4, dtype=torch.long),
              cfg=TrainConfig(epochs=1), seed=0)


def test_overfitting_guard_keeps_the_best_epoch(digits_small: tuple[torch.Tensor, ...],
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A collapse of the probe accuracy in epoch 3 restores epoch 2's weights and stops."""
    import json

    import eisbench.training.loop as loop

    x, y, _, _ = digits_small
    cfg = TrainConfig(method="fast-at", epochs=4, lr=1e-2, eps=0.05, schedule="constant")
    two = train(_fresh(), x, y, cfg=dataclasses.replace(cfg, epochs=2), seed=0)
    probe = iter([0.5, 0.6, 0.1, 0.9])
    monkeypatch.setattr(loop, "_guard_accuracy", lambda *a, **k: next(probe))
    with pytest.warns(UserWarning, match="catastrophic overfitting"):
        net = train(_fresh(), x, y, cfg=cfg, seed=0, resume_dir=tmp_path)
    for a, b in zip(two.state_dict().values(), net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["stopped"] and history[-1]["guard_pgd10_acc"] == 0.1


def test_guard_probe_sees_robustness(digits_small: tuple[torch.Tensor, ...]) -> None:
    from eisbench.training.loop import _guard_accuracy

    x, y, _, _ = digits_small
    cfg = TrainConfig(method="fast-at", epochs=6, lr=1e-2, eps=0.1)
    std = train(_fresh(), x, y, cfg=TrainConfig(epochs=6, lr=1e-2), seed=0)
    rob = train(_fresh(), x, y, cfg=cfg, seed=0)
    a_std, a_rob = (_guard_accuracy(m, x, y, cfg=cfg, device="cpu") for m in (std, rob))
    assert 0.0 <= a_std < a_rob <= 1.0
