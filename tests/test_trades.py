"""TRADES (Zhang et al. 2019) as a training method: its loss against a hand computation, its
inner attack against the reference algorithm (github.com/yaodongyu/TRADES, trades.py:26-41)
written out here, and each test paired with the plausible wrong variant it rejects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eisbench.cli import main
from eisbench.core.config import stable_hash, to_plain
from eisbench.models import build
from eisbench.training import TRAINING_METHODS, TradesConfig, TrainConfig, train
from eisbench.training.methods import Batch, trades_loss, trades_perturb, trades_step


def _net(seed: int = 0) -> nn.Module:
    """A tiny non-linear classifier on (B, 1, 2, 2): 4 -> 6 -> 3, its weights scaled up so that
    its softmax is far from uniform (where KL is nearly symmetric)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hidden, out = nn.Linear(4, 6), nn.Linear(6, 3)
    with torch.no_grad():
        hidden.weight.mul_(6.0)
        out.weight.mul_(6.0)
    return nn.Sequential(nn.Flatten(), hidden, nn.Tanh(), out)


def _batch(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return 0.2 + 0.6 * torch.rand(n, 1, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)


def _hand_loss(net: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
               beta: float, *, swapped: bool = False) -> torch.Tensor:
    """CE(f(x), y) + beta / B * sum_i sum_k p_ik (log p_ik - log q_ik), p = softmax f(x),
    q = softmax f(x'); ``swapped``: KL(q || p), the wrong direction."""
    lp, lq = torch.log_softmax(net(x), 1), torch.log_softmax(net(x_adv), 1)  # (B, K)
    ce = -lp.gather(1, y[:, None]).mean()
    if swapped:
        lp, lq = lq, lp
    kl = (lp.exp() * (lp - lq)).sum()
    return ce + beta * kl / len(y)


def test_trades_loss_is_ce_plus_beta_kl_of_the_reference() -> None:
    net, (x, y) = _net(), _batch()
    x_adv = (x + 0.25 * torch.sign(torch.randn(x.shape, generator=torch.Generator()
                                               .manual_seed(2)))).clamp(0, 1)
    batch = Batch(x_adv, clean=x)
    for beta in (2.5, 0.0):
        got = trades_loss(net, batch, y, cfg=TradesConfig(trades_beta=beta))
        torch.testing.assert_close(got, _hand_loss(net, x, x_adv, y, beta))
    torch.testing.assert_close(trades_loss(net, batch, y, cfg=TradesConfig(trades_beta=0.0)),
                               F.cross_entropy(net(x), y))  # beta 0: clean CE only
    # a plain TrainConfig (eisbench train --method trades) gets the reference's beta 1.0
    torch.testing.assert_close(trades_loss(net, batch, y, cfg=TrainConfig(method="trades")),
                               _hand_loss(net, x, x_adv, y, 1.0))
    # the example tells the directions, the reductions and the betas apart
    with torch.no_grad():
        right = float(_hand_loss(net, x, x_adv, y, 2.5))
        assert abs(right - float(_hand_loss(net, x, x_adv, y, 2.5, swapped=True))) > 0.05
        kl_mean = (right - float(F.cross_entropy(net(x), y))) / 2.5  # sum_i KL_i / B
        assert kl_mean > 0.1  # so beta 1 vs 2.5 and sum / B vs a mean over B*K differ


def test_trades_loss_gradient_flows_through_both_logits() -> None:
    """The reference's KL target softmax(f(x)) is not detached: the weights' gradient is the
    hand loss's, not the one with a detached target."""
    net, (x, y) = _net(), _batch()
    x_adv = (x + 0.2).clamp(0, 1)
    cfg = TradesConfig(trades_beta=3.0)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return [g.detach() for g in torch.autograd.grad(loss, list(net.parameters()))]

    got = grads(trades_loss(net, Batch(x_adv, clean=x), y, cfg=cfg))
    for a, b in zip(got, grads(_hand_loss(net, x, x_adv, y, 3.0)), strict=True):
        torch.testing.assert_close(a, b)
    lq, p = torch.log_softmax(net(x_adv), 1), torch.softmax(net(x), 1).detach()
    detached = F.cross_entropy(net(x), y) + 3.0 * F.kl_div(lq, p, reduction="sum") / len(y)
    assert any(not torch.allclose(a, b) for a, b in zip(got, grads(detached), strict=True))


def test_trades_loss_refuses_a_batch_without_clean_images() -> None:
    net, (x, y) = _net(), _batch()
    with pytest.raises(ValueError, match="trades_perturb"):
        trades_loss(net, Batch(x), y, cfg=TradesConfig())


def _reference_attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                      step: float, steps: int, seed: int, objective: str = "kl",
                      noise: float = 0.001) -> torch.Tensor:
    """trades.py:31-41 (Linf), on CPU, the start noise drawn from a generator seeded ``seed``;
    ``objective="ce"`` and ``noise=0`` are the wrong variants."""
    kl = nn.KLDivLoss(reduction="sum")
    net.eval()
    start = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    x_adv = x.detach() + noise * start
    for _ in range(steps):
        x_adv.requires_grad_()
        out = net(x_adv)
        loss = (kl(F.log_softmax(out, dim=1), F.softmax(net(x), dim=1)) if objective == "kl"
                else F.cross_entropy(out, y, reduction="sum"))
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    net.train()
    return x_adv


def test_trades_attack_is_the_reference_kl_attack_from_a_noisy_start() -> None:
    net, (x, y) = _net(), _batch(8)
    cfg = TradesConfig(eps=0.3, alpha=0.04, attack_steps=4)
    got = trades_perturb(net, x, y, cfg=cfg, generator=torch.Generator().manual_seed(3)).x
    ref = _reference_attack(net, x, y, eps=0.3, step=0.04, steps=4, seed=3)
    torch.testing.assert_close(got, ref)
    # the wrong variants land elsewhere: maximising CE, starting from x itself, ignoring the noise
    # scale of the config
    for wrong in (_reference_attack(net, x, y, eps=0.3, step=0.04, steps=4, seed=3,
                                    objective="ce"),
                  _reference_attack(net, x, y, eps=0.3, step=0.04, steps=4, seed=3, noise=0.0)):
        assert float((wrong - ref).abs().amax()) > 0.03
    noisier = trades_perturb(net, x, y, cfg=TradesConfig(eps=0.3, alpha=0.04, attack_steps=4,
                                                         trades_noise=0.05),
                             generator=torch.Generator().manual_seed(3)).x
    torch.testing.assert_close(noisier, _reference_attack(net, x, y, eps=0.3, step=0.04,
                                                          steps=4, seed=3, noise=0.05))


def test_trades_attack_raises_the_kl_it_maximises() -> None:
    net, (x, y) = _net(), _batch(32)
    batch = trades_perturb(net, x, y, cfg=TradesConfig(eps=0.3, attack_steps=10),
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = torch.log_softmax(net(x), 1)

        def kl(xa: torch.Tensor) -> float:
            return float(F.kl_div(torch.log_softmax(net(xa), 1), p, reduction="sum",
                                  log_target=True))

        noisy = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        assert kl(batch.x) > 100 * max(kl(noisy), 1e-8)
    assert batch.clean is x


def test_trades_attack_runs_in_eval_mode_and_restores_train_mode() -> None:
    net, (x, y) = _net(), _batch()
    layer = next(iter(net.children()))
    modes: list[bool] = []
    layer.register_forward_hook(lambda m, a, o: modes.append(m.training))
    net.train()
    trades_perturb(net, x, y, cfg=TradesConfig(attack_steps=3),
                   generator=torch.Generator().manual_seed(0))
    assert modes and not any(modes)
    assert net.training and layer.training


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.0)])
def test_trades_perturbation_respects_eps_and_reaches_it(norm: str, eps: float) -> None:
    net, (x, y) = _net(), _batch(16)
    cfg = TradesConfig(eps=eps, norm=norm, attack_steps=20)
    x_adv = trades_perturb(net, x, y, cfg=cfg, generator=torch.Generator().manual_seed(0)).x
    d = (x_adv - x).flatten(1)  # (B, D)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)  # (B,)
    assert float(dist.max()) <= eps * (1 + 1e-5)
    assert float(dist.max()) >= 0.9 * eps  # it moves: a no-op attack would pass the bound
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_trades_defaults_are_the_reference_mnist_script() -> None:
    cfg = TradesConfig()
    assert (cfg.method, cfg.eps, cfg.attack_steps, cfg.batch_size) == ("trades", 0.3, 40, 128)
    assert (cfg.trades_beta, cfg.trades_noise) == (1.0, 0.001)
    assert trades_step(cfg) == pytest.approx(0.01)  # train_trades_mnist.py:32
    assert trades_step(TradesConfig(norm="l2", eps=2.0, attack_steps=40)) == pytest.approx(0.1)
    assert trades_step(TradesConfig(alpha=0.02)) == 0.02
    assert TRAINING_METHODS.meta("trades") == {"perturbs": "inputs", "guarded": True}


def test_trades_config_keeps_existing_cache_keys_and_refuses_bad_values() -> None:
    assert "trades_beta" not in to_plain(TrainConfig())  # no TrainConfig hash has changed
    assert stable_hash(TradesConfig()) != stable_hash(TrainConfig(method="trades"))
    assert stable_hash(TradesConfig(trades_beta=1.0)) != stable_hash(TradesConfig(trades_beta=6.0))
    for bad in ({"trades_beta": -1.0}, {"trades_beta": float("nan")}, {"trades_noise": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TradesConfig(**bad)  # type: ignore[arg-type]


def test_trades_beta_buys_robustness(digits_small: tuple[torch.Tensor, ...]) -> None:
    """Same method, same attack, beta 0 (clean CE) against beta 6: only the KL term can make the
    second robust, so a loss that ignored beta fails here."""
    from eisbench.attacks import AttackConfig, correct_under_attack

    x, y, xt, yt = digits_small
    robust = {}
    for beta in (0.0, 6.0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build("mlp", in_shape=(1, 8, 8), num_classes=10, width=32, depth=1)
        cfg = TradesConfig(epochs=6, lr=1e-2, eps=0.1, attack_steps=5, trades_beta=beta)
        net = train(net, x, y, cfg=cfg, seed=0)
        robust[beta] = float(correct_under_attack(net, xt, yt, AttackConfig(eps=0.1, steps=10))
                             .float().mean())
    assert robust[6.0] > robust[0.0] + 0.1, robust


def test_cli_trains_with_trades(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--method", "trades",
                 "--epochs", "1", "--attack-steps", "2", "--eps", "0.1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
