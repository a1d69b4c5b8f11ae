from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import eisbench.edit  # noqa: F401  (registers latent-at and finetune)
from eisbench.edit.lat import LatConfig, LatentBound, LatTrainConfig, lat_loss, latent_adversary
from eisbench.edit.lat_targeted import TargetedLatConfig, TargetedLatTrainConfig
from eisbench.edit.unlearn import StampTrainConfig, stamped
from eisbench.models import build
from eisbench.training import TRAINING_METHODS, TrainConfig, TrainingMethod, fit, train
from eisbench.training.methods import Batch

# every registered method: (what it perturbs, whether the overfitting guard applies)
DECLARED = {"standard": ("nothing", False), "pgd-at": ("inputs", True),
            "fast-at": ("inputs", True), "trades": ("inputs", True),
            "input-grad": ("nothing", False),
            "latent-at": ("hidden", False), "finetune": ("inputs", False),
            "latent-at-targeted": ("hidden", False), "input-at": ("inputs", True)}
MLP_LAT = LatConfig(bounds=(LatentBound("body.1", eps=0.2),), steps=3)


def _corner(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A stamper: a white 2x2 square in the top-left corner of x (B, C, H, W)."""
    out = x.clone()
    out[..., :2, :2] = 1.0
    return out


def _cfg(method: str, **kw: Any) -> TrainConfig:
    """A config of ``method`` for the 8x8 MLP (latent-at bounds its hidden layer body.1;
    finetune stamps half of each batch)."""
    if method == "latent-at":
        return LatTrainConfig(lat=MLP_LAT, **kw)
    if method == "latent-at-targeted":
        return TargetedLatTrainConfig(tlat=TargetedLatConfig(lat=MLP_LAT), target=0, **kw)
    if method == "finetune":
        return StampTrainConfig(stamper=_corner, stamp_frac=0.5, **kw)
    return TrainConfig(method=method, **kw)


def _fresh() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build("mlp", in_shape=(1, 8, 8), num_classes=10, width=32, depth=1)


def _acc(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def test_every_method_is_registered_with_its_metadata() -> None:
    assert set(TRAINING_METHODS.names()) == set(DECLARED)
    for name, (perturbs, guarded) in DECLARED.items():
        method = TRAINING_METHODS.get(name)
        assert isinstance(method, TrainingMethod)
        assert callable(method.perturb) and callable(method.loss)
        assert dict(TRAINING_METHODS.meta(name)) == {"perturbs": perturbs, "guarded": guarded}
    assert TRAINING_METHODS.names(guarded=True) == ["fast-at", "input-at", "pgd-at", "trades"]
    lat, ft = TRAINING_METHODS.get("latent-at"), TRAINING_METHODS.get("finetune")
    assert lat.perturb is latent_adversary and lat.loss is lat_loss and ft.perturb is stamped


@pytest.mark.parametrize("method", TRAINING_METHODS.names())
def test_every_method_learns(method: str, digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y, xt, yt = digits_small
    cfg = _cfg(method, epochs=4, lr=1e-2, eps=0.05, attack_steps=3)
    assert cfg.method == method
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
    import torch.nn.functional as F

    x, y, _, _ = digits_small
    cfg = TrainConfig(method="standard", epochs=3, lr=1e-2)
    reference = train(_fresh(), x, y, cfg=cfg, seed=2)
    calls = {"n": 0}
    real = F.cross_entropy

    def flaky(*a: object, **k: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 30:  # dies in the middle of epoch 3 (12 batches per epoch)
            raise KeyboardInterrupt
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(F, "cross_entropy", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(_fresh(), x, y, cfg=cfg, seed=2, resume_dir=tmp_path)
    monkeypatch.setattr(F, "cross_entropy", real)
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


@pytest.mark.parametrize("method", sorted(DECLARED))
def test_the_guard_applies_exactly_to_the_methods_that_declare_it(
        method: str, digits_small: tuple[torch.Tensor, ...],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard probes after every epoch of a guarded method, never otherwise; the loop reads
    the declaration (flipping it flips the guard), and overfit_guard=0 turns it off."""
    import eisbench.training.loop as loop

    x, y = digits_small[0][:256], digits_small[1][:256]
    calls = {"n": 0}

    def probe(*a: object, **k: object) -> float:
        calls["n"] += 1
        return 0.5

    monkeypatch.setattr(loop, "_guard_accuracy", probe)
    cfg = _cfg(method, epochs=2, lr=1e-2, eps=0.05, attack_steps=2)
    guarded = TRAINING_METHODS.meta(method)["guarded"]
    train(_fresh(), x, y, cfg=cfg, seed=0)
    assert calls["n"] == (2 if guarded else 0)
    calls["n"] = 0
    train(_fresh(), x, y, cfg=dataclasses.replace(cfg, overfit_guard=0.0), seed=0)
    assert calls["n"] == 0
    flipped = {**TRAINING_METHODS.meta(method), "guarded": not guarded}
    monkeypatch.setitem(TRAINING_METHODS._meta, method, flipped)
    train(_fresh(), x, y, cfg=cfg, seed=0)
    assert calls["n"] == (0 if guarded else 2)


def test_latent_at_perturbs_the_hidden_layer_during_training(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    """In every step of latent-at, one training forward sees body.1's output moved by the
    adversary (inside its ball, near its edge) and the clean forward sees it unmoved."""
    x, y = digits_small[0][:200], digits_small[1][:200]
    net = _fresh()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (raw output, what body.2 receives)
    raw: list[torch.Tensor] = []

    def on_output(m: torch.nn.Module, args: object, out: torch.Tensor) -> None:
        if m.training:
            raw.append(out.detach().clone())

    def on_input(m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if m.training:
            seen.append((raw.pop(), args[0].detach().clone()))

    layers = dict(net.named_modules())
    handles = [layers["body.1"].register_forward_hook(on_output),  # before the adversary's hook
               layers["body.2"].register_forward_pre_hook(on_input)]
    try:
        cfg = LatTrainConfig(lat=MLP_LAT, epochs=1, batch_size=50, lr=1e-2)
        train(net, x, y, cfg=cfg, seed=0)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == 2 * 4  # 4 steps, each an adversarial and a clean forward
    for adv, clean in zip(seen[0::2], seen[1::2], strict=True):
        torch.testing.assert_close(clean[1], clean[0], rtol=0, atol=0)
        delta = (adv[1] - adv[0]).flatten(1).norm(dim=1)  # (B,)
        radius = MLP_LAT.bounds[0].eps * float(adv[0].flatten(1).norm(dim=1).mean())
        assert float(delta.max()) <= radius * (1 + 1e-4)
        assert float(delta.mean()) > 0.5 * radius


def test_step_budget_follows_the_epoch_order_of_the_seed(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    """fit with a step budget: batches in the order of one randperm per epoch drawn from the
    seed's generator, a partial last epoch, after_step once per step, history per epoch."""
    x, y = digits_small[0][:50], digits_small[1][:50]
    net = _fresh()
    batches: list[torch.Tensor] = []
    steps = {"n": 0}

    def count(m: torch.nn.Module) -> None:
        steps["n"] += 1

    handle = net.register_forward_pre_hook(lambda m, a: batches.append(a[0].clone()))
    try:
        history = fit(net, x, y, cfg=TrainConfig(batch_size=20, schedule="constant"), seed=3,
                      steps=7, after_step=count)
    finally:
        handle.remove()
    gen = torch.Generator().manual_seed(3)
    perms = [torch.randperm(50, generator=gen) for _ in range(3)]
    expected = [x[p[i:i + 20]] for p in perms for i in (0, 20, 40)][:7]
    assert steps["n"] == 7 and len(batches) == 7
    for got, want in zip(batches, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_a_loss_without_latent_support_refuses_hidden_perturbations() -> None:
    from eisbench.training.methods import cross_entropy

    batch = Batch(torch.rand(2, 1, 8, 8), hidden={"body.1": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match="hidden"):
        cross_entropy(_fresh(), batch, torch.zeros(2, dtype=torch.long), cfg=TrainConfig())


@pytest.mark.parametrize(("field", "value"), [
    ("epochs", 0), ("epochs", -2), ("epochs", True), ("epochs", 2.0), ("batch_size", 0),
    ("batch_size", -1), ("lr", 0.0), ("lr", -1e-3), ("lr", float("nan")), ("lr", float("inf")),
    ("eps", -0.1), ("eps", float("nan")), ("alpha", 0.0), ("alpha", float("inf")),
    ("attack_steps", 0), ("eps_warmup_epochs", -1), ("overfit_guard", 1.5),
    ("overfit_guard", -0.1), ("norm", "l3"), ("schedule", "cosine"), ("weight_decay", -1.0)])
def test_config_refuses_a_bad_value_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be .*got {value!r}"):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_every_config_constructs_with_its_defaults() -> None:
    from eisbench.training import InputGradConfig

    for cls in (TrainConfig, InputGradConfig, LatTrainConfig, StampTrainConfig):
        assert cls().epochs == 5
    assert dataclasses.replace(TrainConfig(), overfit_guard=0.0, alpha=0.1, lr=1).lr == 1


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
NUMBERS = st.one_of(st.integers(-5, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.none())


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.fixed_dictionaries({}, optional={
    f: NUMBERS for f in ("epochs", "batch_size", "lr", "weight_decay", "eps", "alpha",
                         "attack_steps", "eps_warmup_epochs", "overfit_guard")}))
def test_config_either_holds_its_ranges_or_refuses(kw: dict[str, Any]) -> None:
    """Any numbers give a config within the documented ranges or a ValueError (never a
    TypeError or an arithmetic error)."""
    try:
        cfg = TrainConfig(**kw)
    except ValueError:
        return
    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: object) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(float(v))  # type: ignore[arg-type]

    assert is_int(cfg.epochs) and cfg.epochs >= 1 and is_int(cfg.batch_size) and cfg.batch_size >= 1
    assert is_int(cfg.attack_steps) and cfg.attack_steps >= 1
    assert is_int(cfg.eps_warmup_epochs) and cfg.eps_warmup_epochs >= 0
    assert is_num(cfg.lr) and cfg.lr > 0 and is_num(cfg.eps) and cfg.eps >= 0
    assert is_num(cfg.weight_decay) and cfg.weight_decay >= 0
    assert cfg.alpha is None or (is_num(cfg.alpha) and cfg.alpha > 0)
    assert is_num(cfg.overfit_guard) and 0 <= cfg.overfit_guard <= 1
