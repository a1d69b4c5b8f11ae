"""Rules that combine several tools' answers to a trojan question, and the held-out choice of
one rule (:func:`held_out_choice`).

For each tool and graded trojan t the judge gives similarities ``sims[tool][t]`` (K,) to the
K options (cosines in [-1, 1], a mean over the tool's images). A rule maps the similarities
of a set of tools to scores (T, K) whose argmax (the first option on a tie) is the combined
answer. The rules, in :data:`COMBINATION_RULES` order (the order settles ties in selection):

- ``pooled``: the mean similarity vector (:func:`~eisbench.bench.trojan_scores.combine`,
  equal weights), which is what the judge answers when shown every tool's images together
  (equal image counts). The benchmark's "all tools" row uses it; :data:`DEFAULT_RULE`.
- ``weighted-vote``: each tool votes for its own answer with weight = its confidence, the
  judge's softmax probability of that answer, softmax(:data:`VOTE_SCALE` x similarities).
- ``max-margin``: per trojan, the answer of the tool with the largest top1 - top2 margin
  (scores: that tool's similarities; ties: the first tool in sorted name order).
- ``majority``: one vote per tool for its answer.

A failed cell (a tool that made no images for trojan t: its row is all NaN,
:data:`~eisbench.bench.trojan_scores.MISSING`) casts no vote and adds nothing to the pool;
where every tool failed, a rule's row is NaN and :func:`rule_correct` counts it wrong.

Vote totals are compared to 1e-8 (float noise); tied totals go to the option with the higher
pooled similarity, then to the first option. Every rule sorts the tools first, so its answer
does not depend on the order in which tools are given.

Why the choice of a rule is held out: picking the best of four rules on the same trojans it
is then scored on reports the luckiest rule's success, which is optimistic (on pure-noise
similarities the best in-sample rule beats chance). :func:`held_out_choice` leaves each
trojan out in turn, chooses the rule with the most successes (summed over tool seeds) on the
other trojans, and scores that rule on the trojan left out. The unit is the trojan: a trojan
is left out with all its seeds, since a tool's seeds on one trojan are not independent, and
the held-out grid (per trojan, per seed) is summarised over trojans like any tool's grid.
With a single trojan there is nothing to choose on: the pre-stated :data:`DEFAULT_RULE` is
scored and the result says ``held_out: False``.

Example:
    >>> sims = {"a": torch.tensor([[0.9, 0.0, 0.8]]), "b": torch.tensor([[0.9, 0.0, 0.8]]),
    ...         "c": torch.tensor([[0.0, 0.5, 0.0]])}  # (trojans, options)
    >>> [int(RULES.get(r)(sims, ["a", "b", "c"]).argmax(1)) for r in COMBINATION_RULES]
    [0, 0, 1, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from eisbench.bench.trojan_scores import MISSING, answered, combine, picks
from eisbench.core.registry import Registry

Sims = Mapping[str, torch.Tensor]  # tool -> (T, K) judge similarities per trojan and option
Rule = Callable[[Sims, Sequence[str]], torch.Tensor]  # (sims, tools) -> (T, K) scores
RULES: Registry[Rule] = Registry("combination rule")

COMBINATION_RULES: tuple[str, ...] = ("pooled", "weighted-vote", "max-margin", "majority")
"""The combination rules, in the order that settles ties when one is chosen (pooled first:
it is the rule the benchmark used before there was a choice)."""

DEFAULT_RULE = "pooled"
"""The rule scored when there is no other trojan to choose on (a single graded trojan)."""

VOTE_SCALE = 16.0
"""Inverse temperature of the weighted vote's confidence softmax (temperature 1/16). It is
the judge's own: the judge is trained as a cosine classifier with logits 16 x cosine
(``JudgeConfig.scale``) and each option's image is pulled to its class centre, so
softmax(16 x similarity) is the probability the judge was trained to give. A probability
(bounded in [1/K, 1], using all K options) rather than the top1 - top2 margin, which the
max-margin rule already uses. Fixed from the judge's training before any combination was
scored (2026-12), not tuned on results."""

VOTE_TOL = 1e-8  # vote totals closer than this are tied
_TIE_BONUS = 1e-9  # < VOTE_TOL: the pooled tie-break never overturns distinct vote totals


def _checked(sims: Sims, tools: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The tools, sorted, and their similarities stacked (M, T, K) as float64; raise for no
    tools, a repeated or unknown tool, a non-(T, K) tensor, differing shapes, or a row that is
    neither finite nor a failed cell's (all NaN)."""
    if isinstance(tools, str):
        raise TypeError(f"tools must be a sequence of tool names, got the string {tools!r}")
    names = sorted(tools)
    if not names:
        raise ValueError("combining needs at least one tool; got an empty tool list")
    if len(set(names)) != len(names):
        raise ValueError(f"each tool may be given once, got {list(tools)}")
    unknown = [t for t in names if t not in sims]
    if unknown:
        raise ValueError(f"unknown tool(s) {unknown}: the similarities hold "
                         f"{sorted(sims)}")
    shape = tuple(sims[names[0]].shape)
    for t in names:
        s = sims[t]
        if s.dim() != 2 or s.shape[1] < 2:
            raise ValueError(f"{t}: similarities must be (trojans, options >= 2), got "
                             f"{tuple(s.shape)}")
        if tuple(s.shape) != shape:
            raise ValueError(f"every tool's similarities must have the same shape; "
                             f"{names[0]} has {shape}, {t} has {tuple(s.shape)}")
        answered(s, name=f"{t}: similarities")
    return names, torch.stack([sims[t].double() for t in names])  # (M, T, K)


def _blank_unanswered(scores: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """``scores`` (T, K) with the rows of the trojans every tool failed set to NaN."""
    none = ~answered(stacked).any(0)  # (T,)
    return torch.where(none[:, None], MISSING, scores)


def _votes_with_tiebreak(votes: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Scores (T, K) whose argmax is the option with the most votes (to :data:`VOTE_TOL`),
    ties to the higher pooled similarity, then to the first option."""
    q = torch.round(votes / VOTE_TOL) * VOTE_TOL  # (T, K)
    lo, hi = pooled.amin(1, keepdim=True), pooled.amax(1, keepdim=True)
    unit = torch.where(hi > lo, (pooled - lo) / (hi - lo).clamp_min(1e-300), 0.0)  # in [0, 1]
    return q + _TIE_BONUS * unit


def _answers(stacked: torch.Tensor) -> torch.Tensor:
    """Each tool's answer per trojan (M, T), as a one-hot (M, T, K); all zeros for a failed
    cell (no answer)."""
    k = stacked.shape[-1]
    hot = torch.nn.functional.one_hot(torch.nan_to_num(stacked, nan=0.0).argmax(-1), k)
    return hot.double() * answered(stacked)[..., None]


@RULES.register("pooled")
def pooled(sims: Sims, tools: Sequence[str]) -> torch.Tensor:
    """The mean of the tools' similarity vectors (T, K): the judge's answer to all their
    images shown together (equal image counts)."""
    names, _ = _checked(sims, tools)
    return combine(sims, names)


@RULES.register("weighted-vote")
def weighted_vote(sims: Sims, tools: Sequence[str]) -> torch.Tensor:
    """Per option, the summed confidence (T, K) of the tools that answer it; a tool's
    confidence is its answer's probability under softmax(:data:`VOTE_SCALE` x similarities).

    Example:
        >>> weighted_vote({"a": torch.tensor([[0.0, 0.1]])}, ["a"]).argmax(1)
        tensor([1])
    """
    names, stacked = _checked(sims, tools)  # (M, T, K)
    conf = torch.softmax(VOTE_SCALE * torch.nan_to_num(stacked, nan=0.0), -1).amax(-1)  # (M, T)
    votes = (conf[..., None] * _answers(stacked)).sum(0)  # (T, K)
    return _blank_unanswered(_votes_with_tiebreak(votes, pooled(sims, names).double()), stacked)


@RULES.register("max-margin")
def max_margin(sims: Sims, tools: Sequence[str]) -> torch.Tensor:
    """Per trojan, the similarities (T, K) of the tool whose top1 - top2 margin is largest
    (ties: the first tool in sorted name order).

    Example:
        >>> s = {"a": torch.tensor([[0.5, 0.4]]), "b": torch.tensor([[0.0, 0.3]])}
        >>> max_margin(s, ["a", "b"]).argmax(1)
        tensor([1])
    """
    _, stacked = _checked(sims, tools)  # (M, T, K)
    top2 = torch.nan_to_num(stacked, nan=0.0).topk(2, dim=-1).values  # (M, T, 2)
    margin = torch.where(answered(stacked), top2[..., 0] - top2[..., 1], -torch.inf)  # (M, T)
    best = margin.argmax(0)  # (T,) index of the tool; all failed: a NaN row
    return stacked[best, torch.arange(stacked.shape[1])]  # (T, K)


@RULES.register("majority")
def majority(sims: Sims, tools: Sequence[str]) -> torch.Tensor:
    """Per option, the number of tools (T, K) that answer it; ties go to the higher pooled
    similarity."""
    names, stacked = _checked(sims, tools)
    votes = _votes_with_tiebreak(_answers(stacked).sum(0), pooled(sims, names).double())
    return _blank_unanswered(votes, stacked)


def rule_correct(rule: str, sims: Sims, *, tools: Sequence[str],
                 answers: Sequence[int]) -> list[bool]:
    """Per trojan, whether the rule's combined answer is the true option ``answers[t]`` (a
    trojan every tool failed: False).

    Example:
        >>> rule_correct("pooled", {"a": torch.tensor([[0.9, 0.1]])}, tools=["a"], answers=[0])
        [True]
    """
    got = RULES.get(rule)(sims, tools)  # (T, K)
    if len(got) != len(answers):
        raise ValueError(f"answers must give one true option per trojan ({len(got)}), got "
                         f"{len(answers)}")
    return picks(got, answers, missing=False)


def _first_best(totals: Mapping[str, int], rules: Sequence[str]) -> str:
    """The rule with the largest total; ties: the first in ``rules``."""
    return max(rules, key=lambda r: (totals[r], -rules.index(r)))


def held_out_choice(sims_by_seed: Sequence[Sims], *, answers: Sequence[int],
                    tools: Sequence[str],
                    rules: Sequence[str] = COMBINATION_RULES) -> dict[str, Any]:
    """Leave-one-trojan-out choice of a combination rule and its held-out success.

    ``sims_by_seed[s][tool]`` is (T, K), for tool seed s; ``answers`` (T,) the true options.
    For each trojan t the rule with the most successes summed over seeds on the other
    trojans is chosen (ties: first in ``rules``) and scored on t, per seed. With T = 1 the
    pre-stated :data:`DEFAULT_RULE` is scored instead and ``held_out`` is False.

    Returns a JSON-able dict: ``rules``; ``grid`` {rule: per trojan, per seed, correct};
    ``in_sample`` {rule: success rate over trojans x seeds}; ``chosen`` (per trojan, the
    rule scored on it); ``chosen_overall`` (the rule chosen on all trojans, for display: its
    in-sample rate is optimistic); ``held_out_correct`` (per trojan, per seed);
    ``held_out_success`` (its rate); ``held_out`` (False only with one trojan).

    Example:
        >>> s = {"a": torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
        ...      "b": torch.tensor([[0.6, 0.4], [0.3, 0.7]])}  # (trojans, options)
        >>> held_out_choice([s], answers=[0, 1], tools=["a", "b"])["held_out_correct"]
        [[True], [True]]
    """
    rules = list(rules)
    if not rules or len(set(rules)) != len(rules):
        raise ValueError(f"rules must name at least one rule, each once; got {rules}")
    for r in rules:
        RULES.get(r)  # an unknown name fails here, with suggestions
    if not sims_by_seed:
        raise ValueError("sims_by_seed needs the similarities of at least one seed")
    n_trojans = len(answers)
    if n_trojans == 0:
        raise ValueError("no trojans to score: answers is empty")
    for s, sims in enumerate(sims_by_seed):
        _, stacked = _checked(sims, tools)
        if stacked.shape[1] != n_trojans:
            raise ValueError(f"seed {s}: similarities cover {stacked.shape[1]} trojans, "
                             f"answers {n_trojans}")
        if not all(0 <= a < stacked.shape[2] for a in answers):
            raise ValueError(f"answers must be option indices in [0, {stacked.shape[2]}), "
                             f"got {list(answers)}")
    by_seed = {r: [rule_correct(r, sims, tools=tools, answers=answers)
                   for sims in sims_by_seed] for r in rules}  # rule -> (S, T)
    grid = {r: [list(t) for t in zip(*g, strict=True)] for r, g in by_seed.items()}  # (T, S)
    wins = {r: [sum(t) for t in g] for r, g in grid.items()}  # rule -> (T,)
    n_seeds = len(sims_by_seed)
    held_out = n_trojans > 1
    if held_out:
        chosen = [_first_best({r: sum(w) - w[t] for r, w in wins.items()}, rules)
                  for t in range(n_trojans)]
    else:
        if DEFAULT_RULE not in rules:
            raise ValueError(f"with a single trojan there is no other trojan to choose a rule "
                             f"on, and the default rule {DEFAULT_RULE!r} is not among {rules}")
        chosen = [DEFAULT_RULE]
    correct = [grid[r][t] for t, r in enumerate(chosen)]  # (T, S)
    return {
        "rules": rules,
        "grid": grid,
        "in_sample": {r: sum(w) / (n_trojans * n_seeds) for r, w in wins.items()},
        "chosen": chosen,
        "chosen_overall": _first_best({r: sum(w) for r, w in wins.items()}, rules),
        "held_out_correct": correct,
        "held_out_success": sum(map(sum, correct)) / (n_trojans * n_seeds),
        "held_out": held_out,
    }
