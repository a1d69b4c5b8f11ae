"""Capability ablation on a hand-built model whose class units are known: every selector but
random finds them, ablating them removes exactly their class; contract tests over the
registry of unit selectors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eisbench.core.stats import mean_ci
from eisbench.edit import metrics as em
from eisbench.edit.ablation import (
    UNIT_SELECTORS,
    ablation_effects,
    per_class_accuracy,
    selector_names,
    top_ablation_units,
)
from eisbench.models.architectures import Classifier
from eisbench.tools.guard import hook_count

K = 4  # classes; units 2c and 2c+1 carry class c


class TwoUnitsPerClass(Classifier):
    """(B, 1, 1, K) -> penultimate ReLU units (B, 2K), unit 2c = 2c+1 = input c; logit c =
    the sum of its two units. Zeroing both units of class c silences its logit."""

    def __init__(self) -> None:
        super().__init__()
        lin = nn.Linear(K, 2 * K)
        head = nn.Linear(2 * K, K)
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.zero_()
            head.weight.zero_()
            head.bias.zero_()
            for c in range(K):
                lin.weight[2 * c, c] = lin.weight[2 * c + 1, c] = 1.0
                head.weight[c, 2 * c] = head.weight[c, 2 * c + 1] = 1.0
        self.body = nn.Sequential(nn.Flatten(), lin, nn.ReLU())
        self.head = head


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = 0.8 * nn.functional.one_hot(y, K).float() + 0.15 * torch.rand(n, K, generator=g)
    return x.view(n, 1, 1, K), y


def test_every_tool_but_random_finds_the_class_units_and_ablation_is_selective() -> None:
    net = TwoUnitsPerClass().eval()
    x, y = _data(200, 0)
    xt, yt = _data(400, 1)
    truth = torch.tensor([[2 * c, 2 * c + 1] for c in range(K)])
    for name in selector_names():
        scores = UNIT_SELECTORS.get(name)(net, "penultimate", x, y, num_classes=K,
                                          generator=torch.Generator().manual_seed(0))
        assert scores.shape == (K, 2 * K) and torch.isfinite(scores).all(), name
        units = top_ablation_units(scores, k=2)
        if name == "random":
            continue
        assert torch.equal(units.sort(1).values, truth), (name, units)
        eff = ablation_effects(net, "penultimate", units, xt, yt)
        assert eff.acc_before == [1.0] * K
        torch.testing.assert_close(torch.tensor(eff.class_drop), torch.ones(K))
        torch.testing.assert_close(torch.tensor(eff.other_drop), torch.zeros(K))
        torch.testing.assert_close(torch.tensor(eff.selectivity), torch.ones(K))
    # units of the wrong class: the class holds and another one falls
    shifted = (truth + 2) % (2 * K)
    eff = ablation_effects(net, "penultimate", shifted, xt, yt)
    assert max(eff.selectivity) < 0
    assert hook_count(net) == 0


@pytest.mark.parametrize("name", selector_names())
def test_selector_contract(name: str, trained_digits_cnn: nn.Module,
                           digits_small: tuple[torch.Tensor, ...]) -> None:
    net = trained_digits_cnn
    x, y = digits_small[0][:300], digits_small[1][:300]
    net.zero_grad(set_to_none=True)
    net.train()
    for layer, units in (("penultimate", 100), ("last-conv", 32)):
        run = [UNIT_SELECTORS.get(name)(net, layer, x, y, num_classes=10,
                                        generator=torch.Generator().manual_seed(1))
               for _ in range(2)]
        assert run[0].shape == (10, units) and torch.isfinite(run[0]).all()
        torch.testing.assert_close(run[0], run[1])  # same seed, same scores
    assert net.training and hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())
    net.eval()  # safe: nn.Module.eval (mode switch); the fixture is shared


def test_helpers_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be"):
        top_ablation_units(torch.rand(3, 5), k=6)
    with pytest.raises(KeyError, match="did you mean"):
        selector_names(["conductanse"])
    acc = per_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3)
    assert acc[:2].tolist() == [0.5, 1.0] and acc[2].isnan()
    with pytest.raises(ValueError, match="no selection image of class 1"):
        UNIT_SELECTORS.get("conductance")(TwoUnitsPerClass(), "penultimate",
                                          *_data(12, 0)[:1], torch.zeros(12, dtype=torch.long),
                                          num_classes=K, generator=torch.Generator())


Effects = list[dict[str, dict[str, list[float]]]]  # per model: part -> effect -> per class


def _effects(per_model: list[list[float]], *, shift: float = 0.0) -> Effects:
    """Ablation results of several models (one dict per model, as the bench stores them) whose
    per-class selectivity is ``per_model[j]`` (+ ``shift``)."""
    out = []
    for sel in per_model:
        e = {"selectivity": [v + shift for v in sel], "class_drop": [v + shift for v in sel],
             "other_drop": [0.0] * len(sel)}
        out.append({"test": e, "ood": e})
    return out


def _model(level: float, j: int) -> list[float]:
    """Ten classes of one model: ``level`` plus a small spread within the model."""
    return [level + 0.01 * ((c * 7 + j) % 5 - 2) for c in range(10)]


def test_ablation_intervals_are_over_models_not_model_class_pairs() -> None:
    """One model's classes all high, another's all low: the pairs of a model are not
    independent, so the interval over models is wider than a t-interval over the pairs."""
    levels = [0.9, 0.1, 0.6, 0.4]
    ab = _effects([_model(v, j) for j, v in enumerate(levels)])
    m = em.ablation_metrics({"penultimate": {"random": ab}}, selectors=["random"])
    sel = m["ablation/random/selectivity"]
    pairs = [v for r in ab for v in r["test"]["selectivity"]]
    _, lo, hi = mean_ci(pairs)
    assert sel["n"] == 4 and sel["value"] == pytest.approx(sum(pairs) / len(pairs))
    assert sel["ci95"][1] - sel["ci95"][0] > 1.5 * (hi - lo)
    assert sel["unit"] == "clean models (95% cluster bootstrap)"
    # a class absent from one model's data (NaN) drops that pair, not the model
    ab[0]["test"]["selectivity"][3] = float("nan")
    again = em.ablation_metrics({"penultimate": {"random": ab}}, selectors=["random"])
    assert again["ablation/random/selectivity"]["n"] == 4


def test_ablation_comparison_with_random_stays_paired_and_clustered() -> None:
    levels = [0.9, 0.1, 0.6, 0.4]
    rnd = _effects([_model(v, j) for j, v in enumerate(levels)])
    # the same models' classes, each 0.2 more selective: a model's shift cancels in the pairs
    tool = _effects([_model(v, j) for j, v in enumerate(levels)], shift=0.2)
    m = em.ablation_metrics({"penultimate": {"tool": tool, "random": rnd}},
                            selectors=["tool", "random"])
    d = m["ablation/tool/vs_random"]
    assert d["value"] == pytest.approx(0.2) and d["n"] == 4
    assert d["ci95"][0] > 0.15 and d["ci95"][1] < 0.25  # unpaired would span the models
    assert em.verdict(d) == "reproduced"
    # differences that differ by model: significant over pairs, not over models
    diffs = [0.6, -0.1, 0.5, 0.0]
    tool2 = _effects([[v + dv for v in _model(lv, j)] for j, (lv, dv)
                      in enumerate(zip(levels, diffs, strict=True))])
    m2 = em.ablation_metrics({"penultimate": {"tool": tool2, "random": rnd}},
                             selectors=["tool", "random"])
    d2 = m2["ablation/tool/vs_random"]
    pair_diffs = [a - b for t, r in zip(tool2, rnd, strict=True)
                  for a, b in zip(t["test"]["selectivity"],
                                  r["test"]["selectivity"], strict=True)]
    assert em.verdict(em.metric(pair_diffs)) == "reproduced"  # pairs as if independent
    assert d2["ci95"][0] <= 0 < d2["value"] and em.verdict(d2) == "inconclusive"


def test_fewer_than_three_models_give_the_whole_range() -> None:
    ab = {"random": _effects([_model(0.2, 0), _model(0.3, 1)]),
          "tool": _effects([_model(0.8, 0), _model(0.9, 1)])}
    m = em.ablation_metrics({"penultimate": ab, "last-conv": ab}, selectors=["tool", "random"])
    for prefix in ("ablation", "ablation-conv"):
        for suffix in ("", "_ood"):
            assert m[f"{prefix}/tool/selectivity{suffix}"]["ci95"] == [-2.0, 2.0]
            assert m[f"{prefix}/tool/class_drop{suffix}"]["ci95"] == [-1.0, 1.0]
            assert m[f"{prefix}/random/other_drop{suffix}"]["ci95"] == [-1.0, 1.0]
            d = m[f"{prefix}/tool/vs_random{suffix}"]
            assert d["ci95"] == [-4.0, 4.0] and d["n"] == 2
            assert d["unit"] == "clean models (fewer than 3: the whole range)"
    claims = em.edit_claims(m, tools=[], selectors=["tool"])
    assert [c["verdict"] for c in claims] == ["inconclusive", "inconclusive"]
    assert all("cluster bootstrap interval over models" in c["rule"] for c in claims)


def test_linear_probe_on_two_classes_scores_each_class_by_its_own_units() -> None:
    """scikit-learn fits one weight row for two classes; copying it to both classes would
    ablate class 1's units for class 0 as well."""
    import torch
    from torch import nn

    from eisbench.edit.ablation import linear_probe

    class Net(nn.Module):  # units 0, 1 fire for class 0 images, units 2, 3 for class 1
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Identity())
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.rand(40, 1, 2, 2, generator=g) * 0.1
    x.view(40, 4)[y == 0, :2] += 1.0
    x.view(40, 4)[y == 1, 2:] += 1.0
    w = linear_probe(Net(), "body.1", x, y, num_classes=2, generator=g)
    assert set(w[0].topk(2).indices.tolist()) == {0, 1}
    assert set(w[1].topk(2).indices.tolist()) == {2, 3}
