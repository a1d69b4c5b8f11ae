"""The distillers: the contract of every registered one (parametrised over the registry), each
family on a model whose answer is known (a one-pixel threshold, a two-pixel linear rule, two
prototypes, a network trained on a template rule), the interval search against brute force,
and the Pareto front / size choice by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from eisbench.replace import DISTILLERS, model_predictions
from eisbench.replace.challenge1 import similarity
from eisbench.replace.fidelity import Point, agreement, choose, pareto_front, sweep
from eisbench.replace.program import Program, best_intervals
from eisbench.training import TrainConfig, train


class RandomLinear(nn.Module):
    """A fixed random linear 10-class model on 8x8 images (not trained on the labels)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 64, generator=g))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.flatten(1) - 0.3)
        return out


class Rule(nn.Module):
    """Logits (B, 2) = [0, f(x)] for a fixed function f of the images."""

    def __init__(self, f: Any) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.f(x)  # (B,)
        return torch.stack([torch.zeros_like(z), z], 1)


SMALL = {"sparse-linear": {"steps": 100}, "templates": {"steps": 50}, "program": {"n_data": 8}}


@pytest.fixture(scope="module")
def images(digits_small: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return digits_small[0][:400]


def test_registry_holds_the_four_families() -> None:
    assert set(DISTILLERS.names()) >= {"sparse-linear", "tree", "templates", "program"}
    for name in DISTILLERS.names():
        d = DISTILLERS.get(name)
        assert d.grid and d.unit and d.size_param
    with pytest.raises(KeyError, match="did you mean"):
        DISTILLERS.get("treee")


@pytest.mark.parametrize("name", DISTILLERS.names())
def test_distiller_contract(name: str, images: torch.Tensor,
                            digits_small: tuple[torch.Tensor, ...]) -> None:
    model = RandomLinear().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = DISTILLERS.get(name)
    size = d.grid[len(d.grid) // 2]
    reps = [d(model, images, generator=torch.Generator().manual_seed(1), device="cpu",
              **{d.size_param: size}, **SMALL.get(name, {})) for _ in range(2)]
    assert model.training  # mode restored
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    x_test, y_test = digits_small[2], digits_small[3]
    pred = reps[0].predict(x_test)
    assert pred.shape == (len(x_test),) and pred.dtype == torch.long
    assert int(pred.min()) >= 0 and int(pred.max()) < 10
    torch.testing.assert_close(pred, reps[1].predict(x_test), rtol=0, atol=0)  # deterministic
    assert isinstance(reps[0].size, int) and reps[0].size >= 1
    line = reps[0].describe()
    assert isinstance(line, str) and line and "\n" not in line
    # the targets are the model's predictions, not the labels: the model is at chance on them
    mine = model_predictions(model, x_test)
    assert agreement(mine, y_test) < 0.3
    assert agreement(pred, mine) > agreement(pred, y_test) + 0.1
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        d(model, images * 255, generator=torch.Generator(), device="cpu")
    with pytest.raises(ValueError, match="shape"):
        reps[0].predict(torch.rand(3, 1, 9, 9))


def test_tree_recovers_a_one_pixel_threshold(images: torch.Tensor) -> None:
    model = Rule(lambda x: 10 * (x[:, 0, 3, 4] - 0.45))
    rep = DISTILLERS.get("tree")(model, images, generator=torch.Generator(), depth=1)
    assert rep.size == 3
    assert "first split p[3,4] <=" in rep.describe()
    assert agreement(rep.predict(images), model_predictions(model, images)) == 1.0


def test_sparse_linear_keeps_the_two_pixels_that_matter(images: torch.Tensor) -> None:
    model = Rule(lambda x: 8 * x[:, 0, 2, 3] - 8 * x[:, 0, 5, 5] + 0.5)
    dense = DISTILLERS.get("sparse-linear")(model, images, generator=torch.Generator(), l1=0.0)
    sparse = DISTILLERS.get("sparse-linear")(model, images, generator=torch.Generator(),
                                             l1=2e-2)
    assert sparse.size < dense.size and sparse.size <= 6
    w = sparse.weight.view(8, 8)  # type: ignore[attr-defined]
    assert float(w[2, 3]) > 0 > float(w[5, 5])
    assert agreement(sparse.predict(images), model_predictions(model, images)) >= 0.9


def test_templates_recover_the_prototypes_of_a_nearest_mean_model(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y = digits_small[0], digits_small[1]
    means = torch.stack([x[y == c].flatten(1).mean(0) for c in range(10)])  # (10, 64)
    model = nn.Linear(64, 10)
    with torch.no_grad():
        model.weight.copy_(2 * means)
        model.bias.copy_(-(means ** 2).sum(1))
    net = nn.Sequential(nn.Flatten(), model)  # nearest class mean
    rep = DISTILLERS.get("templates")(net, x, generator=torch.Generator().manual_seed(0),
                                      per_class=1)
    assert rep.size == 10 and "10 templates" in rep.describe()
    found = rep.templates.flatten(1)  # type: ignore[attr-defined]
    cos = torch.nn.functional.cosine_similarity(found, means, dim=1)
    assert float(cos.min()) > 0.95
    assert agreement(rep.predict(digits_small[2]), model_predictions(net, digits_small[2])) > 0.9


def test_best_intervals_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = 12
        vals = torch.randint(0, 6, (2, n), generator=g).float().sort(1).values  # with ties
        w = torch.randint(-3, 4, (2, n), generator=g).float()
        gain, i, j = best_intervals(w, vals)
        for f in range(2):
            cuts = [0] + [k for k in range(1, n) if vals[f, k] != vals[f, k - 1]] + [n]
            brute = max(float(w[f, a:b].sum()) for a in cuts for b in cuts if a <= b)
            assert float(gain[f]) == pytest.approx(brute)
            assert float(w[f, int(i[f]):int(j[f])].sum()) == pytest.approx(brute)
            assert int(i[f]) in cuts and int(j[f]) in cuts


def test_program_recovers_the_template_a_network_was_trained_on(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    x, _, x_test, _ = digits_small
    t = x[6]
    s = similarity(x, t)
    lo, hi = float(torch.quantile(s, 0.25)), float(torch.quantile(s, 0.75))
    y = ((s < lo) | (s > hi)).long()  # challenge 1's kind of rule: 0 inside the band
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    train(net, x, y, cfg=TrainConfig(epochs=60, batch_size=64, lr=5e-3), seed=0)
    y_test = ((similarity(x_test, t) < lo) | (similarity(x_test, t) > hi)).long()
    assert agreement(model_predictions(net, x_test), y_test) > 0.9
    prog = DISTILLERS.get("program")(net, x, generator=torch.Generator(), terms=1, n_data=32)
    assert isinstance(prog, Program) and prog.size == 1
    assert [n for n, _ in prog.used_templates()] == ["x[6]"]
    torch.testing.assert_close(prog.used_templates()[0][1], t)
    assert agreement(prog.predict(x_test), model_predictions(net, x_test)) > 0.9
    blind = DISTILLERS.get("program")(net, x, generator=torch.Generator(), terms=1, n_data=32,
                                      exclude=(6,))
    assert "x[6]" not in [n for n, _ in blind.used_templates()]  # type: ignore[attr-defined]


def _pt(name: str, size: int, test: float, val: float) -> Point:
    return Point(distiller=name, hyper={}, size=size, agree_fit=val, agree_val=val,
                 agree_test=test, agree_ood=None, description="", seconds=0.0)


def test_pareto_front_and_size_choice_by_hand() -> None:
    pts = [_pt("a", 1, 0.6, 0.6), _pt("a", 5, 0.9, 0.899), _pt("a", 9, 0.9, 0.9),
           _pt("b", 3, 0.5, 0.5), _pt("b", 7, 0.95, 0.95)]
    front = pareto_front(pts)
    assert [(p.distiller, p.size) for p in front] == [("a", 1), ("a", 5), ("b", 7)]
    chosen = choose(pts, tolerance=0.005)
    assert chosen["a"].size == 5 and chosen["b"].size == 7
    assert choose(pts, tolerance=0.0)["a"].size == 9
    with pytest.raises(ValueError, match="label vectors"):
        agreement(torch.zeros(3), torch.zeros(4))


def test_sweep_measures_agreement_on_every_split(images: torch.Tensor,
                                                 digits_small: tuple[torch.Tensor, ...]
                                                 ) -> None:
    model = RandomLinear()
    pts = sweep(model, fit=images[:200], val=images[200:], test=digits_small[2][:100],
                ood=digits_small[2][100:150], distillers=["tree"], grids={"tree": (1, 3)})
    assert [p.hyper for p in pts] == [{"depth": 1}, {"depth": 3}]
    assert pts[0].size < pts[1].size and pts[0].agree_fit < pts[1].agree_fit
    for p in pts:
        assert all(0 <= v <= 1 for v in (p.agree_fit, p.agree_val, p.agree_test))
        assert p.agree_ood is not None and not math.isnan(p.agree_ood)


def test_one_seed_interval_is_wilson_of_the_exact_count_and_rejects_non_rates() -> None:
    from eisbench.bench.replace_parts import over_seeds
    from eisbench.core.stats import wilson_ci

    agree = agreement(torch.tensor([1, 2, 3, 4, 5, 6, 7]), torch.tensor([1, 2, 3, 0, 0, 0, 7]))
    m = over_seeds([agree], n_items=7)
    assert m["value"] == pytest.approx(4 / 7) and m["n"] == 7
    assert m["ci95"] == pytest.approx(list(wilson_ci(4, 7)))
    with pytest.raises(ValueError, match="not a rate over 7"):
        over_seeds([0.5], n_items=7)  # 3.5 of 7: a mean, not a count over these images
    two = over_seeds([0.5, 0.7], n_items=7)  # several seeds: a t-interval over seeds
    assert two["n"] == 2 and two["ci95"][0] < 0.6 < two["ci95"][1]


def test_challenge2_difference_is_paired_over_pairs_for_one_seed_and_over_seeds_else() -> None:
    from eisbench.bench.replace_parts import paired_difference

    one = paired_difference([torch.tensor([1.0, 0.0, 0.0, -1.0, 1.0])])
    half = 2.7764451 * 0.7 ** 0.5 / 5 ** 0.5  # t(0.975, 4) * sd / sqrt(n), by hand
    assert one["value"] == pytest.approx(0.2) and one["n"] == 5
    assert one["ci95"] == pytest.approx([0.2 - half, 0.2 + half], abs=1e-6)
    seeds = paired_difference([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]),
                               torch.tensor([0.0, -1.0])])
    assert seeds["value"] == pytest.approx(0.0) and seeds["n"] == 3  # n = seeds


def test_challenge2_replacements_are_scored_on_the_true_labels_of_the_right_pairs() -> None:
    from eisbench.bench.replace_parts import Challenge2Data, truth_scores
    from eisbench.replace import challenge2 as c2

    c = Challenge2Data.load()

    class Rep:  # right on every pair except those with a == 0, which it flips
        def predict(self, x: torch.Tensor) -> torch.Tensor:
            ab = (x.flatten(1) * 112).round().long()  # (N, 2)
            y = c.truth[ab[:, 0] * 113 + ab[:, 1]]
            return torch.where(ab[:, 0] == 0, 1 - y, y)

    pt = Point(distiller="tree", hyper={}, size=1, agree_fit=1.0, agree_val=1.0,
               agree_test=1.0, agree_ood=None, description="", seconds=0.0)
    s = truth_scores(c, {"tree": pt}, [pt], {"tree": [Rep()]})["tree"]
    a_val, a_te = c2.all_pairs()[c.index("val"), 0], c2.all_pairs()[c.te, 0]
    assert s["val"] == pytest.approx(float((a_val != 0).float().mean()))
    assert s["test_ok"].tolist() == (a_te != 0).tolist()
    assert len(c.index("fit")) + len(c.index("val")) == 6384 and len(c.te) == 6385
