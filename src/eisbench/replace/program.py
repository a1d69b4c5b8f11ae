"""Search over a small program space: decision lists of interval tests on template
similarities and region ink statistics (:mod:`eisbench.replace.features`).

A program is ``if A: c1 elif B and C: c2 ... else d``; each condition is a threshold or a band
``lo < f(x) <= hi`` on one feature; a rule with several conditions is their AND, several rules
with the same class are their OR. ``size`` = the number of conditions (terms).

The search is greedy on the distillation set, whose targets are the model's labels. Each step
adds one term, the better (by exact agreement with the model) of:

- a new rule before the default: for every feature and class c, the interval of the feature
  that maximises #(model says c) - #(model says another class) among the images no earlier
  rule takes (images a rule takes are final, so every wrong one counts against it; a
  maximum-sum subarray over the feature's sorted values, exact and vectorised over features;
  cuts only between distinct values);
- an AND refinement of the last rule: the interval of another feature that best narrows it
  by the same count.

It stops early when no step improves agreement by at least ``min_gain`` (a fraction of the
images). The default class is the model's majority label among the images no rule takes.

Honesty note for template recovery: candidate templates are *data* (the first ``n_data``
images of the distillation set, class means, principal components). If the true template is
among them by construction (challenge 1's MNIST training image 6 is ``x[6]`` when the
distillation set is MNIST's training set in order), the search only has to find it; pass
``exclude=(6,)`` for the ablation without it. Without that hint, ``extra`` takes templates
recovered from the network itself (:func:`eisbench.replace.recover.recover`: the recovered
image and the images of a whole pool nearest to it), with ``n_data=0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from eisbench.replace import features as fx
from eisbench.replace.core import as_shape, check_input, register, targets


@dataclass(frozen=True)
class Condition:
    feature: int  # index into the program's features
    lo: float  # -inf: no lower bound
    hi: float  # +inf: no upper bound

    def holds(self, v: torch.Tensor) -> torch.Tensor:
        """(N,) bool for feature values v (N,)."""
        return (v > self.lo) & (v <= self.hi)


@dataclass(frozen=True)
class Rule:
    conditions: tuple[Condition, ...]
    label: int


@dataclass(frozen=True)
class Program:
    """A decision list over ``features`` computed against ``templates`` (M, C, H, W)."""

    features: tuple[fx.Feature, ...]
    templates: torch.Tensor  # (M, C, H, W) (only those the rules use)
    template_names: tuple[str, ...]
    rules: tuple[Rule, ...]
    default: int
    shape: tuple[int, int, int]

    @property
    def size(self) -> int:
        return sum(len(r.conditions) for r in self.rules)

    def feature_values(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) values of the program's features."""
        check_input(x, self.shape)
        return fx.compute(x, list(self.features), self.templates.flatten(1))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.rules, self.default, self.feature_values(x))

    def describe(self) -> str:
        if not self.rules:
            return f"always {self.default}"
        parts = []
        for k, r in enumerate(self.rules):
            cond = " and ".join(_cond_text(c, self.features[c.feature].name)
                                for c in r.conditions)
            if len(self.rules) == 1:
                return f"{r.label} if {cond} else {self.default}"
            parts.append(f"{'if' if k == 0 else 'elif'} {cond}: {r.label}")
        return " ".join(parts) + f" else: {self.default}"

    def used_templates(self) -> list[tuple[str, torch.Tensor]]:
        """(name, image (C, H, W)) of every template the rules use, in order of use."""
        seen: list[int] = []
        for r in self.rules:
            for c in r.conditions:
                t = self.features[c.feature].template
                if t >= 0 and t not in seen:
                    seen.append(t)
        return [(self.template_names[t], self.templates[t]) for t in seen]


def _cond_text(c: Condition, name: str) -> str:
    if math.isinf(c.lo):
        return f"{name} <= {c.hi:.4g}"
    if math.isinf(c.hi):
        return f"{name} > {c.lo:.4g}"
    return f"{c.lo:.4g} < {name} <= {c.hi:.4g}"


def _run(rules: tuple[Rule, ...] | list[Rule], default: int, v: torch.Tensor) -> torch.Tensor:
    """Labels (N,) of a decision list on feature values v (N, F)."""
    out = torch.full((len(v),), default, dtype=torch.long)
    free = torch.ones(len(v), dtype=torch.bool)
    for r in rules:
        hit = free.clone()
        for c in r.conditions:
            hit &= c.holds(v[:, c.feature])
        out[hit] = r.label
        free &= ~hit
    return out


def best_intervals(w: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """Maximum-sum contiguous runs of weights w (F, N) sorted by feature values vals (F, N)
    (ascending), cutting only between distinct values: gain (F,), start i and end j (F,)
    (the run covers sorted positions i..j-1)."""
    f, n = w.shape
    c = torch.cat([torch.zeros(f, 1, dtype=w.dtype), w.cumsum(1)], 1)  # (F, N+1)
    valid = torch.ones(f, n + 1, dtype=torch.bool)
    valid[:, 1:n] = vals[:, 1:] != vals[:, :-1]
    start = torch.where(valid, c, torch.full_like(c, math.inf))
    mins, arg = torch.cummin(start, 1)
    diff = torch.where(valid, c - mins, torch.full_like(c, -math.inf))
    gain, j = diff.max(1)
    i = arg.gather(1, j[:, None])[:, 0]
    return gain, i, j


def _interval(vals: torch.Tensor, i: int, j: int) -> tuple[float, float]:
    """(lo, hi) thresholds for sorted values vals (N,) covering positions i..j-1."""
    n = len(vals)
    lo = -math.inf if i == 0 else float(vals[i - 1] + vals[i]) / 2
    hi = math.inf if j == n else float(vals[j - 1] + vals[j]) / 2
    return lo, hi


class _Search:
    """The greedy search state over a feature matrix v (N, F) and targets y (N,)."""

    def __init__(self, v: torch.Tensor, y: torch.Tensor, classes: list[int]) -> None:
        self.v, self.y, self.classes = v, y, classes
        self.order = v.argsort(0).T.contiguous()  # (F, N)
        self.sorted = v.T.gather(1, self.order)  # (F, N)

    def majority(self, mask: torch.Tensor) -> int:
        ys = self.y[mask] if bool(mask.any()) else self.y
        return int(torch.bincount(ys).argmax())

    def free(self, rules: list[Rule]) -> torch.Tensor:
        """(N,) images no rule takes."""
        free = torch.ones(len(self.y), dtype=torch.bool)
        for r in rules:
            hit = free.clone()
            for c in r.conditions:
                hit &= c.holds(self.v[:, c.feature])
            free &= ~hit
        return free

    def best_condition(self, w: torch.Tensor,
                       skip: set[int] | None = None) -> tuple[float, Condition | None]:
        """The interval condition maximising the sum of per-image weights w (N,) (features
        in ``skip`` excluded)."""
        ws = w[self.order]  # (F, N)
        gain, i, j = best_intervals(ws, self.sorted)
        for f in skip or ():
            gain[f] = -math.inf
        f = int(gain.argmax())
        if not math.isfinite(float(gain[f])) or float(gain[f]) <= 0:
            return 0.0, None
        lo, hi = _interval(self.sorted[f], int(i[f]), int(j[f]))
        return float(gain[f]), Condition(feature=f, lo=lo, hi=hi)

    def new_rule(self, rules: list[Rule]) -> list[Rule] | None:
        free = self.free(rules)
        best: tuple[float, Rule] | None = None
        for c in self.classes:
            # images the rule would take are final: +1 if the model says c, -1 otherwise
            w = (2 * (self.y == c).float() - 1) * free  # (N,)
            g, cond = self.best_condition(w)
            if cond is not None and (best is None or g > best[0]):
                best = (g, Rule(conditions=(cond,), label=c))
        return None if best is None else [*rules, best[1]]

    def refine_last(self, rules: list[Rule]) -> list[Rule] | None:
        if not rules:
            return None
        last = rules[-1]
        hit = self.free(rules[:-1])
        for c in last.conditions:
            hit &= c.holds(self.v[:, c.feature])
        w = (2 * (self.y == last.label).float() - 1) * hit  # (N,): keep images of its class
        _, cond = self.best_condition(w, skip={c.feature for c in last.conditions})
        if cond is None:
            return None
        return [*rules[:-1], Rule(conditions=(*last.conditions, cond), label=last.label)]

    def agreement(self, rules: list[Rule]) -> tuple[int, int]:
        """(number of images where the program equals the model, the program's default)."""
        d = self.majority(self.free(rules))
        return int((_run(rules, d, self.v) == self.y).sum()), d


@register("program", size_param="terms", grid=(1, 2, 3, 4, 6, 8), unit="terms",
          summary="decision list of bands on template similarities and region ink")
def program(model: nn.Module, x: torch.Tensor, *, generator: torch.Generator,
            device: str | torch.device = "cpu", terms: int = 2, n_data: int = 32,
            exclude: tuple[int, ...] = (), n_pca: int = 8, grid: int = 4,
            min_gain: float = 1e-3,
            extra: tuple[tuple[str, torch.Tensor], ...] = ()) -> Program:
    """Distil ``model`` on images x (N, C, H, W) into a decision list with at most ``terms``
    conditions (see the module docstring). ``n_data``: the first images of x used as candidate
    templates (minus ``exclude``); ``extra``: more candidate templates, (name, image (C, H, W)
    in [0,1]); ``n_pca``: principal components as templates; ``grid``: the ink regions'
    tiling. Deterministic (``generator`` accepted for the contract)."""
    if terms < 1 or n_data < 0 or n_pca < 0 or grid < 1:
        raise ValueError(f"need terms >= 1, n_data >= 0, n_pca >= 0, grid >= 1; got {terms}, "
                         f"{n_data}, {n_pca}, {grid}")
    y, k = targets(model, x, device=device)
    shape = as_shape(x)
    temps, names, bounded = fx.candidates(x, y, num_classes=k, n_data=n_data,
                                          exclude=tuple(exclude), n_pca=n_pca,
                                          extra=tuple(extra))
    feats = fx.bank(shape, names, bounded, grid)
    v = fx.compute(x, feats, temps)  # (N, F)
    search = _Search(v, y, sorted(int(c) for c in y.unique()))
    rules: list[Rule] = []
    score, default = search.agreement(rules)
    need = max(1, math.ceil(min_gain * len(y)))
    used = 0
    while used < terms:
        options = [r for r in (search.new_rule(rules), search.refine_last(rules))
                   if r is not None]
        scored = [(search.agreement(r), r) for r in options]
        if not scored:
            break
        (s, d), best = max(scored, key=lambda t: t[0][0])
        if s - score < need:
            break
        rules, score, default, used = best, s, d, used + 1
    return _compact(rules, default, feats, temps, names, shape)


def _compact(rules: list[Rule], default: int, feats: list[fx.Feature], temps: torch.Tensor,
             names: list[str], shape: tuple[int, int, int]) -> Program:
    """Keep only the features and templates the rules use (re-indexed)."""
    f_used = sorted({c.feature for r in rules for c in r.conditions})
    t_used = sorted({feats[f].template for f in f_used if feats[f].template >= 0})
    t_map = {t: i for i, t in enumerate(t_used)}
    f_map = {f: i for i, f in enumerate(f_used)}
    new_feats = tuple(fx.Feature(kind=feats[f].kind, template=t_map.get(feats[f].template, -1),
                                 region=feats[f].region, name=feats[f].name) for f in f_used)
    new_rules = tuple(Rule(conditions=tuple(Condition(feature=f_map[c.feature], lo=c.lo,
                                                      hi=c.hi) for c in r.conditions),
                           label=r.label) for r in rules)
    t = temps[t_used] if t_used else torch.zeros(0, *shape)
    return Program(features=new_feats, templates=t.reshape(-1, *shape).contiguous(),
                   template_names=tuple(names[i] for i in t_used), rules=new_rules,
                   default=default, shape=shape)
