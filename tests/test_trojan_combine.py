"""Combination rules of the trojan benchmark and the held-out choice among them: each rule on
similarities where the rules disagree, invariance to tool order, deterministic ties, a
choice that never sees the trojan it is scored on, and clear errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

from eisbench.bench import trojan_combine as tc
from eisbench.bench import trojan_scores as scores
from eisbench.core.registry import UnknownNameError
from eisbench.trojans.judge import JudgeConfig

T = torch.tensor


def answers_of(sims: dict[str, torch.Tensor], tools: list[str]) -> dict[str, list[int]]:
    return {r: tc.RULES.get(r)(sims, tools).argmax(1).tolist() for r in tc.COMBINATION_RULES}


# Two weak tools agree on option 0; one confident tool says option 1.
WEAK_AGREE = {"a": T([[0.9, 0.0, 0.8]]), "b": T([[0.9, 0.0, 0.8]]), "c": T([[0.0, 0.5, 0.0]])}
# Pooled picks option 1, which neither tool answers (a compromise).
COMPROMISE = {"a": T([[0.62, 0.5, 0.0]]), "b": T([[0.0, 0.5, 0.6]])}
# Two barely-decided tools (8 options) against one sure tool: only the plain vote follows them.
_flat = [0.30] + [0.29] * 7
MANY_WEAK = {"a": T([_flat]), "b": T([_flat]), "c": T([[0.0, 0.9] + [0.0] * 6])}


@pytest.mark.parametrize(("sims", "want"), [
    (WEAK_AGREE, {"pooled": [0], "weighted-vote": [0], "max-margin": [1], "majority": [0]}),
    (COMPROMISE, {"pooled": [1], "weighted-vote": [0], "max-margin": [0], "majority": [0]}),
    (MANY_WEAK, {"pooled": [1], "weighted-vote": [1], "max-margin": [1], "majority": [0]}),
], ids=["weak-agree", "compromise", "many-weak"])
def test_each_rule_gives_its_answer_where_the_rules_disagree(
        sims: dict[str, torch.Tensor], want: dict[str, list[int]]) -> None:
    assert answers_of(sims, sorted(sims)) == want


def test_pooled_is_the_benchmarks_combination() -> None:
    g = torch.Generator().manual_seed(0)
    sims = {n: torch.rand(4, 8, generator=g) for n in "abc"}
    torch.testing.assert_close(tc.pooled(sims, ["a", "b", "c"]),
                               scores.combine(sims, ["a", "b", "c"]))


def test_weighted_vote_weights_are_the_judges_softmax_probabilities() -> None:
    sims = {"a": T([[0.5, 0.2, 0.0]]), "b": T([[0.0, 0.1, 0.3]]), "c": T([[0.1, 0.0, 0.4]])}

    def conf(row: list[float]) -> float:
        e = [math.exp(16.0 * v) for v in row]
        return max(e) / sum(e)

    got = tc.weighted_vote(sims, ["a", "b", "c"])
    want = T([[conf([0.5, 0.2, 0.0]), 0.0, conf([0.0, 0.1, 0.3]) + conf([0.1, 0.0, 0.4])]],
             dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=0)
    assert JudgeConfig().scale == tc.VOTE_SCALE  # the judge's own temperature


def test_max_margin_takes_the_row_of_the_most_decided_tool_per_trojan() -> None:
    sims = {"a": T([[0.9, 0.1, 0.0], [0.5, 0.45, 0.0]]),
            "b": T([[0.0, 0.3, 0.2], [0.0, 0.2, 0.6]])}
    torch.testing.assert_close(tc.max_margin(sims, ["a", "b"]),
                               T([[0.9, 0.1, 0.0], [0.0, 0.2, 0.6]], dtype=torch.float64))


def test_rules_do_not_depend_on_the_order_of_tools() -> None:
    g = torch.Generator().manual_seed(1)
    sims = {n: torch.rand(20, 8, generator=g) for n in "abcde"}
    sims["f"] = sims["a"].flip(1)  # same margins as a, opposite answers: a max-margin tie
    sims["g"] = sims["b"].clone()  # exact vote ties
    order = list("gfedcba")
    reordered = {n: sims[n] for n in order}
    for r in tc.COMBINATION_RULES:
        rule = tc.RULES.get(r)
        assert torch.equal(rule(sims, sorted(sims)), rule(reordered, order)), r


def test_ties_are_settled_the_same_way_every_time() -> None:
    # max-margin: equal margins, different answers -> the first tool in sorted order ("a").
    tie = {"b": T([[0.0, 0.5, 0.0]]), "a": T([[0.5, 0.0, 0.0]])}
    for tools in (["a", "b"], ["b", "a"]):
        assert tc.max_margin(tie, tools).argmax(1).tolist() == [0]
    # majority 1-1: the higher pooled similarity (option 1), not the first option.
    split = {"a": T([[0.5, 0.4, 0.0]]), "b": T([[0.0, 0.6, 0.0]])}
    assert tc.majority(split, ["b", "a"]).argmax(1).tolist() == [1]
    # weighted vote, equal confidences (b's similarities are a's permuted): pooled, option 2.
    mirror = {"a": T([[0.5, 0.0, 0.1]]), "b": T([[0.0, 0.1, 0.5]])}
    got = tc.weighted_vote(mirror, ["a", "b"])
    assert got[0, 0].item() == pytest.approx(got[0, 2].item(), abs=2e-9)  # tied votes
    assert got.argmax(1).tolist() == [2]  # pooled 0.25 vs 0.30
    # everything equal: the first option.
    flat = {"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}
    assert [tc.RULES.get(r)(flat, ["a", "b"]).argmax(1).item() for r in tc.COMBINATION_RULES] \
        == [0, 0, 0, 0]


def test_vote_totals_equal_up_to_float_noise_tie_and_distinct_ones_do_not() -> None:
    pooled = T([[0.0, 1.0]], dtype=torch.float64)  # favours option 1
    noisy = T([[(0.1 + 0.2) + 0.3, 0.1 + (0.2 + 0.3)]], dtype=torch.float64)  # 0.6 +- 1 ulp
    assert noisy[0, 0] != noisy[0, 1]
    assert tc._votes_with_tiebreak(noisy, pooled).argmax(1).tolist() == [1]
    within = T([[0.6 + 3e-9, 0.6]], dtype=torch.float64)  # under VOTE_TOL = 1e-8: a tie
    assert tc._votes_with_tiebreak(within, pooled).argmax(1).tolist() == [1]
    close = T([[0.500001, 0.5]], dtype=torch.float64)  # a real, if small, difference
    assert tc._votes_with_tiebreak(close, pooled).argmax(1).tolist() == [0]


def two_trojan_types(answers: list[int]) -> list[dict[str, torch.Tensor]]:
    """One seed; every trojan has the WEAK_AGREE similarities, so on answer 0 pooled is right
    and max-margin wrong, on answer 1 the reverse."""
    return [{n: s.repeat(len(answers), 1) for n, s in WEAK_AGREE.items()}]


def test_the_rule_scored_on_a_trojan_is_chosen_without_it() -> None:
    # rule A (pooled) wins on every trojan but t0, rule B (max-margin) only on t0.
    answers = [1, 0, 0, 0]
    out = tc.held_out_choice(two_trojan_types(answers), answers=answers, tools=["a", "b", "c"],
                             rules=("max-margin", "pooled"))
    assert out["chosen"] == ["pooled"] * 4
    assert out["held_out_correct"] == [[False], [True], [True], [True]]


def test_a_choice_that_saw_the_scored_trojan_would_score_better() -> None:
    # max-margin right on t0 and t3, pooled on t1 and t2: 2-2 over all trojans (max-margin
    # first in order), but leaving any trojan out makes the other rule win, which is wrong
    # on it. A choice made on all trojans (or on t alone) would score 0.5 (or 1.0).
    answers = [1, 0, 0, 1]
    out = tc.held_out_choice(two_trojan_types(answers), answers=answers, tools=["a", "b", "c"],
                             rules=("max-margin", "pooled"))
    assert out["chosen"] == ["pooled", "max-margin", "max-margin", "pooled"]
    assert out["held_out_correct"] == [[False]] * 4
    assert out["held_out_success"] == 0.0
    assert out["in_sample"] == {"max-margin": 0.5, "pooled": 0.5}
    assert out["chosen_overall"] == "max-margin"
    assert out["held_out"] is True


def test_the_choice_sums_successes_over_seeds_and_keeps_the_trojan_by_seed_grid() -> None:
    # Rows "w" are WEAK_AGREE (pooled answers 0, max-margin 1), rows "s" every tool sure of 0.
    w = {n: s[0] for n, s in WEAK_AGREE.items()}
    sure = T([0.9, 0.0, 0.0])
    seed0 = {n: torch.stack([w[n], w[n], w[n]]) for n in w}
    seed1 = {n: torch.stack([w[n], sure, sure]) for n in w}
    answers = [1, 0, 0]
    out = tc.held_out_choice([seed0, seed1], answers=answers, tools=["a", "b", "c"])
    assert out["grid"]["max-margin"] == [[True, True], [False, True], [False, True]]
    assert out["grid"]["pooled"] == [[False, False], [True, True], [True, True]]
    assert out["in_sample"]["max-margin"] == pytest.approx(4 / 6)
    # t1 left out: max-margin 2 + 1 = 3 successes vs pooled 0 + 2 = 2 (seed 0 alone: a tie,
    # to pooled; seed by seed: pooled on seed 0), scored on t1 on both seeds.
    assert out["chosen"] == ["pooled", "max-margin", "max-margin"]
    assert out["held_out_correct"] == [[False, False], [False, True], [False, True]]
    assert out["held_out_success"] == pytest.approx(2 / 6)


def test_held_out_success_is_below_the_best_in_sample_rate_on_noise() -> None:
    # Pure noise: every rule is at chance (1/8); the best of four in sample is lucky, the
    # held-out choice is not. A choice that saw the scored trojan would equal the best.
    g = torch.Generator().manual_seed(0)
    held, best = [], []
    for _ in range(50):
        sims = [{n: torch.rand(8, 8, generator=g) for n in "abcde"}]
        answers = torch.randint(8, (8,), generator=g).tolist()
        out = tc.held_out_choice(sims, answers=answers, tools=list("abcde"))
        held.append(out["held_out_success"])
        best.append(max(out["in_sample"].values()))
    mean_held, mean_best = sum(held) / 50, sum(best) / 50
    assert mean_held < mean_best - 0.03
    assert 0.05 < mean_held < 0.2  # about chance


def test_a_single_trojan_scores_the_default_rule_flagged_as_not_held_out() -> None:
    out = tc.held_out_choice([WEAK_AGREE], answers=[1], tools=["a", "b", "c"])
    assert out["chosen"] == ["pooled"] and out["held_out"] is False
    assert out["held_out_correct"] == [[False]]  # pooled is wrong here, max-margin right
    with pytest.raises(ValueError, match="single trojan"):
        tc.held_out_choice([WEAK_AGREE], answers=[1], tools=["a", "b", "c"],
                           rules=("max-margin",))


def test_bad_input_fails_with_a_clear_message() -> None:
    sims = {"a": torch.zeros(3, 8), "b": torch.zeros(3, 8), "odd": torch.zeros(3, 7)}
    with pytest.raises(ValueError, match="same shape"):
        tc.pooled(sims, ["a", "odd"])
    with pytest.raises(ValueError, match=r"unknown tool.*'c'"):
        tc.majority(sims, ["a", "c"])
    with pytest.raises(ValueError, match="at least one tool"):
        tc.max_margin(sims, [])
    with pytest.raises(ValueError, match="once"):
        tc.weighted_vote(sims, ["a", "a"])
    with pytest.raises(TypeError, match="sequence of tool names"):
        tc.pooled(sims, "ab")
    with pytest.raises(ValueError, match=r"\(trojans, options >= 2\)"):
        tc.pooled({"a": torch.zeros(3)}, ["a"])
    partly = torch.zeros(2, 3)
    partly[0, 1] = float("nan")  # a failed cell is a whole row of NaN, never part of one
    for bad in (partly, torch.full((2, 3), float("inf"))):
        with pytest.raises(ValueError, match="finite"):
            tc.pooled({"a": bad}, ["a"])
    ok = {"a": torch.zeros(3, 8), "b": torch.zeros(3, 8)}
    with pytest.raises(ValueError, match="cover 3 trojans, answers 2"):
        tc.held_out_choice([ok], answers=[0, 1], tools=["a", "b"])
    with pytest.raises(ValueError, match="option indices"):
        tc.held_out_choice([ok], answers=[0, 1, 8], tools=["a", "b"])
    with pytest.raises(ValueError, match="at least one seed"):
        tc.held_out_choice([], answers=[0], tools=["a"])
    with pytest.raises(UnknownNameError, match="did you mean 'pooled'"):
        tc.held_out_choice([ok], answers=[0, 1, 2], tools=["a", "b"], rules=("pooledd",))


NAN = float("nan")
# a, c failed on trojan 1; every tool failed on trojan 2 (rows of NaN: failed cells)
FAILED = {"a": T([[0.9, 0.1], [NAN, NAN], [NAN, NAN]]),
          "b": T([[0.0, 0.2], [0.1, 0.9], [NAN, NAN]]),
          "c": T([[0.8, 0.0], [NAN, NAN], [NAN, NAN]])}


@pytest.mark.parametrize("rule", tc.COMBINATION_RULES)
def test_a_failed_cell_casts_no_vote_and_a_trojan_every_tool_failed_is_wrong(rule: str) -> None:
    """Trojan 1: only b made images, so every rule gives b's answer (a failed cell read as a
    row of zeros would give a and c's 'votes' to option 0). Trojan 2: nobody made images, so
    no rule is right, although option 0 (the first, where ties go) is the true one."""
    got = tc.RULES.get(rule)(FAILED, ["a", "b", "c"])
    assert got[:2].argmax(1).tolist() == [0, 1]
    assert torch.isnan(got[2]).all() and not torch.isnan(got[:2]).any()
    assert tc.rule_correct(rule, FAILED, tools=["a", "b", "c"], answers=[0, 1, 0]) == \
        [True, True, False]


def test_held_out_choice_scores_a_trojan_every_tool_failed_as_wrong_on_every_seed() -> None:
    out = tc.held_out_choice([FAILED, FAILED], answers=[0, 1, 0], tools=["a", "b", "c"])
    assert out["held_out_correct"] == [[True, True], [True, True], [False, False]]
    assert out["held_out_success"] == pytest.approx(4 / 6)
