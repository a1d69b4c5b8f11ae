"""The within-epoch catastrophic-overfitting guard (eisbench.training.guard) and the fast-AT
defaults it protects."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import eisbench.training.guard as co_guard
from eisbench.models import build
from eisbench.training import TRAINING_METHODS, TrainConfig, train
from eisbench.training.methods import Batch, fast_at


def _fresh() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build("mlp", in_shape=(1, 8, 8), num_classes=10, width=32, depth=1)


def _spy(monkeypatch: pytest.MonkeyPatch, probes: list[tuple[float, float]]) -> list[Any]:
    """Probe every 3 steps with the given (FGSM, PGD) accuracies (the last one repeats); record
    per step the eps fast-at trained at and the weights it saw."""
    seen: list[Any] = []
    it = iter(probes)
    last = {"p": probes[-1]}

    def perturb(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig,
                generator: torch.Generator) -> Batch:
        seen.append((cfg.eps, [p.detach().clone() for p in model.parameters()]))
        return fast_at(model, x, y, cfg=cfg, generator=generator)

    def probe(*a: object, **k: object) -> tuple[float, float]:
        seen.append(("probe", k["eps"]))
        last["p"] = next(it, last["p"])
        return last["p"]

    monkeypatch.setattr(co_guard, "PROBE_EVERY", 3)
    monkeypatch.setattr(co_guard, "probe", probe)
    spied = dataclasses.replace(TRAINING_METHODS.get("fast-at"), perturb=perturb)
    monkeypatch.setitem(TRAINING_METHODS._items, "fast-at", spied)
    return seen


def test_backoff_factor_halves_eps_per_collapse_and_ramps_back_over_an_epoch() -> None:
    assert co_guard.backoff_factor({}, 50, 10) == 1.0
    one = {"backoffs": 1, "backoff_step": 20}
    assert [co_guard.backoff_factor(one, s, 10) for s in (20, 25, 30, 99)] == [0.5, 0.75, 1.0, 1.0]
    two = {"backoffs": 2, "backoff_step": 20}
    assert co_guard.backoff_factor(two, 20, 10) == 0.25


def test_a_collapse_restores_the_last_healthy_weights_and_backs_off(
        digits_small: tuple[torch.Tensor, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes after steps 3 (healthy), 6 (collapsed: FGSM 0.9, PGD 0.0), 9, 12 (healthy):
    step 7 starts from the weights step 4 started from, at half eps, ramping back up."""
    x, y, _, _ = digits_small
    seen = _spy(monkeypatch, [(0.5, 0.45), (0.9, 0.0), (0.6, 0.5)])
    cfg = TrainConfig(method="fast-at", epochs=1, lr=1e-2, eps=0.2, schedule="constant")
    with pytest.warns(UserWarning, match="catastrophic overfitting"):
        train(_fresh(), x[:1280], y[:1280], cfg=cfg, seed=0)  # 10 steps
    probed = [e for tag, e in seen if tag == "probe"]
    steps = [s for s in seen if s[0] != "probe"]
    eps = [e for e, _ in steps]
    assert eps[:6] == pytest.approx([0.2] * 6)
    assert eps[6:] == pytest.approx([0.2 * (0.5 + 0.5 * k / 10) for k in range(4)])
    assert probed == pytest.approx([0.2, 0.2, eps[8]])  # at the eps of the step just taken
    seen = steps
    for a, b in zip(seen[3][1], seen[6][1], strict=True):  # restored: step 7 sees step 4's input
        torch.testing.assert_close(a, b)
    with pytest.raises(AssertionError):  # ... which steps 4-6 had changed
        torch.testing.assert_close(seen[5][1][0], seen[6][1][0])


def test_the_guard_stops_after_repeated_collapses(digits_small: tuple[torch.Tensor, ...],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Any) -> None:
    import json

    x, y, _, _ = digits_small
    seen = _spy(monkeypatch, [(0.9, 0.0)])
    cfg = TrainConfig(method="fast-at", epochs=3, lr=1e-2, eps=0.2, schedule="constant")
    with pytest.warns(UserWarning, match="stopped after"):
        net = train(_fresh(), x, y, cfg=cfg, seed=0, resume_dir=tmp_path)
    assert len([s for s in seen if s[0] != "probe"]) == 3 * (co_guard.MAX_BACKOFFS + 1)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["stopped"]
    assert history[-1]["backoffs_at"] == [3 * (k + 1) for k in range(co_guard.MAX_BACKOFFS + 1)]
    initial = list(_fresh().parameters())
    for a, b in zip(net.parameters(), initial, strict=True):  # never healthy: the start
        torch.testing.assert_close(a.detach(), b.detach())


def test_no_guard_no_probe(digits_small: tuple[torch.Tensor, ...],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, _, _ = digits_small
    seen = _spy(monkeypatch, [(0.9, 0.0)])
    cfg = TrainConfig(method="fast-at", epochs=1, lr=1e-2, eps=0.2, overfit_guard=0.0)
    train(_fresh(), x[:1280], y[:1280], cfg=cfg, seed=0)
    assert [e for e, _ in seen] == pytest.approx([0.2] * 10)  # no probe among them


def test_probe_measures_fgsm_and_pgd_accuracy(digits_small: tuple[torch.Tensor, ...]) -> None:
    """On a trained model PGD-5 is at least as strong as FGSM; at eps 0 both are clean
    accuracy; repeated calls agree (fixed starts)."""
    x, y, _, _ = digits_small
    net = train(_fresh(), x, y, cfg=TrainConfig(epochs=4, lr=1e-2), seed=0)
    with torch.no_grad():
        clean = float((net(x[:co_guard.PROBE_N]).argmax(1) == y[:co_guard.PROBE_N]).float().mean())
    assert co_guard.probe(net, x, y, eps=0.0, norm="linf", device="cpu") == (clean, clean)
    f, p = co_guard.probe(net, x, y, eps=0.2, norm="linf", device="cpu")
    assert p <= f < clean
    assert co_guard.probe(net, x, y, eps=0.2, norm="linf", device="cpu") == (f, p)


def test_the_guard_defaults_are_pinned() -> None:
    """The defaults the README's fast-AT figures were measured with (benchmarks/fast_at.py):
    changing one is a change of the published recipe."""
    cfg = TrainConfig(method="fast-at")
    assert (cfg.overfit_guard, cfg.eps_warmup_epochs, cfg.alpha, cfg.lr, cfg.schedule) == (
        0.2, 0, None, 1e-3, "onecycle")
    assert (co_guard.PROBE_N, co_guard.PROBE_EVERY, co_guard.BACKOFF_FROM,
            co_guard.MAX_BACKOFFS) == (256, 100, 0.5, 3)


def test_guarded_models_cached_before_the_guard_are_not_served(tmp_path: Path) -> None:
    """The train stage of a guarded method is version 2 (the within-epoch guard); a standard
    model's stays 1, so its cache survives."""
    import json

    from eisbench.models import ModelSpec
    from eisbench.runs.stages import Context, Tensors, train_stage
    from eisbench.runs.store import StageLog, Store

    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    ctx = Context(store=Store(tmp_path), log=StageLog(), device=torch.device("cpu"))
    spec = ModelSpec(arch="mlp", in_shape=(1, 8, 8), num_classes=10)
    for method, version in (("fast-at", 2), ("standard", 1)):
        _, ref = train_stage(ctx, spec=spec, data=Tensors(x, y, "tiny"), seed=0, desc=method,
                             cfg=TrainConfig(method=method, epochs=1, batch_size=8, eps=0.1))
        done = json.loads((ctx.store.folder("train", ref) / "done.json").read_text())
        assert done["stage_version"] == version, method
