"""MALT's target ranking (on a linear model whose distances to each boundary are computed by
hand), A3's online discarding in ``apgd-t-osd`` (the probe looks at every example, later
restarts only at the closest ones, with exactly the passes that implies) and the ``adaptive``
suite (never weaker than one of its attacks alone, within budget, counted, on the CLI)."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from eisbench.attacks import ATTACKS, Passes, assert_within_budget, count_passes
from eisbench.attacks.apgd import apgd_t, malt_scores, target_order
from eisbench.attacks.osd import apgd_t_osd, keep_count
from eisbench.attacks.square import margin_loss
from eisbench.evaluation import SUITES, run_suite
from eisbench.evaluation.suite import describe_suite, steps_of

apgd_mod = importlib.import_module("eisbench.attacks.apgd")
osd_mod = importlib.import_module("eisbench.attacks.osd")

# A linear model of (B, 1, 4, 4) images, 4 classes, label 0 at x0: z_0 - z_t = GAPS[t - 1] and
# grad (z_0 - z_t) = -w_t with w_1 = 2 e_0, w_2 = 0.5 (every pixel), w_3 = 8 (e_5 + e_6).
# Distances to the boundary of each class t, by hand (gap / ||w_t||_dual):
#   Linf (dual L1: 2, 8, 16):        0.5/2 = 0.25,  1/8 = 0.125,  2.4/16 = 0.15    -> 2, 3, 1
#   L2   (dual L2: 2, 2, 8 sqrt 2):  0.25,          0.5,          2.4/11.31 = 0.212 -> 3, 1, 2
# and the wrong scores rank otherwise: the gaps alone (the logits) 1, 2, 3; Linf with the L2
# norm 3, 1, 2; Linf with the Linf norm (0.25, 2, 0.15) 3, 1, 2; L2 with the L1 norm 2, 3, 1.
GAPS = (0.5, 1.0, 2.4)
LINF = (0.25, 0.125, 0.15)
L2 = (0.25, 0.5, 2.4 / (8 * math.sqrt(2)))
X0 = 0.3 + 0.4 * torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def _linear() -> nn.Module:
    w = torch.zeros(4, 16, dtype=torch.float64)
    w[1, 0] = 2.0
    w[2] = 0.5
    w[3, 5] = w[3, 6] = 8.0
    lin = nn.Linear(16, 4).double()
    x = X0.double().flatten()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.tensor([10.0, *(10.0 - g - float(w[t + 1] @ x)
                                             for t, g in enumerate(GAPS))]))
    return nn.Sequential(nn.Flatten(), lin).eval()


def _x(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return X0.double().repeat(n, 1, 1, 1), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize(("norm", "want", "order"), [("linf", LINF, [2, 3, 1]),
                                                     ("l2", L2, [3, 1, 2])])
def test_malt_scores_are_the_distances_to_each_boundary_in_the_dual_norm(
        norm: str, want: tuple[float, ...], order: list[int]) -> None:
    net = _linear()
    x, y = _x()
    scores, classes = malt_scores(net, x, y, norm=norm)
    assert classes.tolist() == [[1, 2, 3]] * 2
    torch.testing.assert_close(scores, torch.tensor([want] * 2, dtype=torch.float64))
    assert target_order(net, x, y, norm=norm, selection="malt").tolist() == [order] * 2
    assert target_order(net, x, y, norm=norm, selection="logits").tolist() == [[1, 2, 3]] * 2


def test_malt_costs_one_forward_and_k_minus_one_backward_passes_per_example() -> None:
    net = _linear()
    x, y = _x(3)
    with count_passes(net) as p:
        malt_scores(net, x, y, norm="linf")
    assert p == Passes(forward=3, backward=9)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.14), ("l2", 0.23)])
def test_apgd_t_with_malt_breaks_with_one_target_where_the_logits_first_target_cannot(
        norm: str, eps: float) -> None:
    """At this eps only the nearest boundary is within reach (Linf: class 2 at 0.125, the next
    at 0.15; L2: class 3 at 0.212, the next at 0.25): one MALT target suffices, the highest
    logit's (class 1, at 0.25) never crosses, and neither does a score with the wrong norm."""
    net = _linear()
    x, y = _x()
    g = torch.Generator().manual_seed(0)
    malt = apgd_t(net, x, y, eps=eps, norm=norm, steps=50, n_targets=1,
                  target_selection="malt", generator=g)
    logits = apgd_t(net, x, y, eps=eps, norm=norm, steps=50, n_targets=1, generator=g)
    assert (net(malt).argmax(1) != y).all()
    assert (net(logits).argmax(1) == y).all()
    assert_within_budget(x, malt, norm=norm, eps=eps)


def test_apgd_t_attacks_its_targets_in_malt_order(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _linear()
    x, y = _x()
    calls: list[list[int]] = []

    def spy(model: nn.Module, xx: torch.Tensor, yy: torch.Tensor, t: torch.Tensor,
            **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(t.tolist())
        return xx.clone(), torch.zeros(len(xx), dtype=torch.bool)

    monkeypatch.setattr(apgd_mod, "_run", spy)
    apgd_t(net, x, y, eps=0.1, steps=2, target_selection="malt")
    assert calls == [[2, 2], [3, 3], [1, 1]]


def test_keep_count_is_geometric_from_everything_with_a_floor_of_one() -> None:
    assert [keep_count(10, 0.5, r) for r in range(5)] == [10, 5, 3, 2, 1]
    assert [keep_count(8, 0.5, r) for r in range(3)] == [8, 4, 2]
    assert keep_count(0, 0.5, 0) == 0 and keep_count(3, 1.0, 4) == 3
    assert keep_count(7, 0.01, 3) == 1


def _mlp(seed: int = 0, k: int = 5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, k))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net.eval()


def test_osd_probe_attacks_every_unbroken_example_then_the_closest_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe (restart 0) runs on every clean-correct example; restart r on the keep**r
    fraction of smallest margin, towards the target of rank r; never on a broken one."""
    net = _mlp()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1)
    y[:2] = (y[:2] + 1) % 5  # two clean-misclassified examples: never attacked
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(model: nn.Module, xx: torch.Tensor, yy: torch.Tensor, t: torch.Tensor,
            **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append((xx.clone(), t.clone()))
        return xx.clone(), torch.zeros(len(xx), dtype=torch.bool)  # never fooled

    monkeypatch.setattr(osd_mod._apgd, "_run", spy)
    apgd_t_osd(net, x, y, eps=0.1, steps=2, restarts=3, n_targets=2, keep=0.5,
               target_selection="logits")
    with torch.no_grad():
        margin = margin_loss(net(x), y)  # the spy returns x: these are the best margins
    rows = torch.arange(2, 12)
    order = target_order(net, x[rows], y[rows], norm="linf", selection="logits")
    assert [len(c[0]) for c in calls] == [10, 5, 3]
    torch.testing.assert_close(calls[0][0], x[rows])
    for r, (seen, t) in enumerate(calls):
        want = rows[margin[rows].argsort(stable=True)[:len(seen)]] if r else rows
        torch.testing.assert_close(seen, x[want])  # the closest to the boundary
        pos = [int((rows == i).nonzero()) for i in want]
        assert torch.equal(t, order[pos, r % 2])


def test_osd_backward_passes_are_the_jacobian_and_the_kept_fractions_steps() -> None:
    """On a model the budget cannot break (eps 0), each restart's APGD costs steps + 1
    gradients per example it attacks: K-1 for MALT, then n, ceil(n/2), ceil(n/4) examples."""
    net = _mlp()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1)
    with count_passes(net) as p:
        apgd_t_osd(net, x, y, eps=0.0, steps=4, restarts=3, n_targets=3, keep=0.5)
    assert p.backward == 12 * 4 + (12 + 6 + 3) * 5


def _digits_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    net = _mlp(seed=3, k=6)
    x = torch.rand(40, 1, 4, 4, generator=g)
    return net, x, net(x).argmax(1)


def test_adaptive_suite_is_registered_for_four_classes_with_a_gradient_free_step() -> None:
    plan = steps_of("adaptive")
    assert SUITES.meta("adaptive")["min_classes"] == 4
    assert [s[0] for s in plan] == ["apgd", "apgd-t-osd", "square"]
    assert any(not ATTACKS.meta(name)["white_box"] for name, _ in plan)
    assert "target_selection=malt" in describe_suite("adaptive", "linf", 0.3)


def test_adaptive_suite_is_at_least_as_strong_as_each_of_its_attacks_alone() -> None:
    net, x, y = _digits_net()
    eps = 0.05  # each attack alone leaves 0.375-0.4 robust, the suite 0.35
    res = run_suite(net, x, y, eps=eps, suite="adaptive", seed=0)
    assert_within_budget(x, res.x_adv, norm="linf", eps=eps)
    alone = [run_suite(net, x, y, eps=eps, steps=(step,), seed=0).robust_acc
             for step in steps_of("adaptive")]
    assert 0.0 < res.robust_acc < 1.0, "the test needs some examples broken and some not"
    assert res.robust_acc <= min(alone)
    broken = ~res.robust
    assert (net(res.x_adv).argmax(1)[broken] != y[broken]).all()
    # passes: the clean predictions and each attack's, counted in examples at the model
    assert res.passes is not None and res.clean_passes is not None
    per = [Passes(int(a["forward"]), int(a["backward"])) for a in res.per_attack]
    assert sum(per, res.clean_passes) == res.passes
    assert per[-1].backward == 0 < per[1].backward  # Square reads logits only


def test_cli_attack_runs_the_adaptive_suite(tmp_path: Path) -> None:
    from eisbench.cli import main

    stem = tmp_path / "mlp"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1",
                 "--out", str(stem)]) == 0
    assert main(["attack", "--checkpoint", str(stem), "--dataset", "digits", "--eps", "0.2",
                 "--suite", "adaptive", "--n", "20", "--n-checks", "10",
                 "--out", str(tmp_path / "res")]) == 0
    res = json.loads((tmp_path / "res" / "attack.json").read_text())
    assert res["suite"] == "adaptive"
    assert [a["name"] for a in res["per_attack"]] == ["apgd", "apgd-t-osd", "square"]
    bb = next(c for c in res["checks"] if c["name"] == "black-box-not-stronger")
    assert bb["passed"] is not None
