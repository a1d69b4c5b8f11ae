"""Checks of a trojan-benchmark judge on questions whose right answer is known, so that a judge
that would mislead the benchmark fails them before it grades any tool.

- :func:`validate`: accuracy on fresh views of the true trigger (target
  :data:`ACCURACY_TARGET`), on noise images with a chi-square test that no option is favoured
  (:func:`uniformity`: noise accuracy against a random "truth" is about 1/K for ANY judge, a
  constant one included, so it cannot fail; uniformity can), and on each trigger's own image.
- Views of a family the judge never saw in training: :mod:`eisbench.trojans.views_held_out`.

Every check takes a judge as an *answer function* ``answer(images, options) -> index``, so the
learned encoder (:func:`encoder_answer`) and a second judge of another representation are
checked by the same code.

Example:
    >>> rep = validate(encoder_answer(enc, shape=(1, 28, 28)), bank=banks, shape=(1, 28, 28),
    ...                n_trials=5, generator=torch.Generator().manual_seed(1))
    >>> rep["true_trigger"]["meets_target"], rep["noise"]["uniformity"]["uniform"]
    (True, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from eisbench.core.stats import wilson_ci
from eisbench.runs.preregistered import threshold
from eisbench.trojans.judge import JudgeEncoder, ask
from eisbench.trojans.stamp import Trigger
from eisbench.trojans.views import ViewConfig, layers, render

__all__ = ["ACCURACY_TARGET", "NOISE_FAMILIES", "NOISE_GROUP", "NOISE_GROUPS",
           "UNIFORMITY_ALPHA", "AnswerFn", "Scorer", "encoder_answer", "noise_images",
           "scorer_answer", "uniformity", "validate"]

ACCURACY_TARGET = threshold("trojans.judge.accuracy_target")
"""A judge is trusted only if it names the true trigger from fresh views of it this often."""

UNIFORMITY_ALPHA = threshold("trojans.judge.uniformity_alpha")
"""The noise questions' choices fail the uniformity test when the chi-square test of any kind's
counts against uniform has p < ``UNIFORMITY_ALPHA`` / (number of kinds) (Bonferroni)."""

AnswerFn = Callable[[torch.Tensor, list[Trigger]], int]
"""A judge: images (n, C, H, W) in [0,1] and the options -> the index of the option chosen."""

Scorer = Callable[[torch.Tensor, Sequence[Trigger]], torch.Tensor]
"""A judge's scores: images (n, C, H, W) and K options -> (K,) similarities (higher: shown)."""


def scorer_answer(scorer: Scorer) -> AnswerFn:
    """The answer of a scorer: its most similar option (the first on a tie)."""
    def answer(images: torch.Tensor, options: list[Trigger]) -> int:
        return int(scorer(images, options).argmax())
    return answer

Banks = Mapping[str, Sequence[Trigger]]


def encoder_answer(encoder: JudgeEncoder, *, shape: tuple[int, int, int]) -> AnswerFn:
    """The learned judge as an answer function (:func:`~eisbench.trojans.judge.ask`)."""
    def answer(images: torch.Tensor, options: list[Trigger]) -> int:
        return ask(encoder, images=images, options=options, shape=shape).choice
    return answer


def as_banks(bank: Banks | Sequence[Trigger]) -> dict[str, list[Trigger]]:
    """``bank`` as kind -> triggers (one list becomes the kind "bank")."""
    if isinstance(bank, Mapping):
        return {k: list(v) for k, v in sorted(bank.items())}
    return {"bank": list(bank)}


def rate(correct: int, n: int) -> dict[str, Any]:
    """``correct`` of ``n`` as an accuracy with its Wilson 95% interval."""
    lo, hi = wilson_ci(correct, n)
    return {"accuracy": correct / n, "ci": [lo, hi], "n": n}


def uniformity(counts: Mapping[str, Sequence[float]], *, alpha: float = UNIFORMITY_ALPHA
               ) -> dict[str, Any]:
    """Is a judge unbiased on noise? ``counts``: kind -> how often each option was chosen on
    noise questions (options shuffled per question, so a judge that favours a *position* is
    uniform here and fails on true triggers instead; one that favours a *trigger* is not).

    Per kind: the chi-square statistic against uniform, its p-value and the largest share;
    ``uniform`` is False when any kind's p-value is below ``alpha`` / (number of kinds). A
    constant judge (always one trigger) fails it; a fair coin passes it but for ``alpha`` of
    the time.

    Example:
        >>> uniformity({"patch": [40, 0, 0, 0, 0, 0, 0, 0]})["uniform"]
        False
        >>> uniformity({"patch": [5, 6, 4, 5, 5, 6, 4, 5]})["uniform"]
        True
    """
    from scipy.stats import chisquare

    per_kind: dict[str, dict[str, float]] = {}
    for kind, c in counts.items():
        n = float(sum(c))
        stat, p = chisquare(list(c)) if n > 0 else (0.0, 1.0)
        per_kind[kind] = {"chi2": float(stat), "p": float(p),
                          "largest_share": max(c) / n if n else 0.0, "n": n}
    bar = alpha / max(len(counts), 1)
    return {"per_kind": per_kind, "alpha": alpha, "bar": bar,
            "min_p": min((v["p"] for v in per_kind.values()), default=1.0),
            "uniform": all(v["p"] >= bar for v in per_kind.values())}


def _asked(answer: AnswerFn, images: torch.Tensor, triggers: Sequence[Trigger],
           g: torch.Generator) -> int:
    """Ask with the options shuffled; returns the index (in ``triggers``) of the choice."""
    perm = torch.randperm(len(triggers), generator=g)
    return int(perm[answer(images, [triggers[i] for i in perm])])


NOISE_GROUP = {"uniform": "seen", "gaussian": "seen", "smooth": "unseen", "sparse": "unseen"}
"""Each noise family and its group. The noise questions' images, in turn: uniform noise; Gaussian
noise (mean 0.5, sd 0.25); and two families the judge's training never shows (its background
canvases are clean images, uniform and Gaussian noise and flat grey): *smooth* noise (uniform
noise on a coarse grid of 3-7 cells a side, bilinearly upsampled) and *sparse* dots (each pixel
white with probability 0.05-0.15, else black). A judge trained to spread its background views
evenly over the options passes the "seen" group partly by construction; the "unseen" group
tests whether it does so on images it never saw. The uniformity test runs per kind on each
group apart."""

NOISE_FAMILIES = tuple(NOISE_GROUP)
NOISE_GROUPS = tuple(dict.fromkeys(NOISE_GROUP.values()))  # ("seen", "unseen")


def noise_images(family: str, size: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Images ``size`` (n, C, H, W) in [0, 1] of one of :data:`NOISE_FAMILIES`.

    Example:
        >>> noise_images("sparse", (2, 1, 8, 8), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 8, 8])
    """
    if family == "uniform":
        return torch.rand(size, generator=g)
    if family == "gaussian":
        return (0.5 + 0.25 * torch.randn(size, generator=g)).clamp(0, 1)
    if family == "smooth":
        cells = int(torch.randint(3, 8, (1,), generator=g))
        coarse = torch.rand(*size[:2], cells, cells, generator=g)
        return F.interpolate(coarse, size=tuple(size[2:]), mode="bilinear",
                             align_corners=False).clamp(0, 1)
    if family == "sparse":
        density = 0.05 + 0.1 * float(torch.rand(1, generator=g))
        return (torch.rand(size, generator=g) < density).float()
    raise ValueError(f"unknown noise family {family!r}; choose from {', '.join(NOISE_FAMILIES)}")


def validate(judge: AnswerFn | JudgeEncoder, *, bank: Banks | Sequence[Trigger],
             shape: tuple[int, int, int], n_trials: int, generator: torch.Generator,
             data: torch.Tensor | None = None, n_images: int = 10,
             views: ViewConfig | None = None) -> dict[str, Any]:
    """Check a judge (an answer function or a :class:`JudgeEncoder`) on questions whose right
    answer is known.

    ``bank``: the options, kind -> 8 triggers (or one list). Every question shuffles them.

    - true_trigger: per trigger, ``n_trials`` questions whose ``n_images`` images are fresh
      views of it (the training distribution without its exact-image views, on ``data``, the
      clean *test* images (N, C, H, W), if given). Target: accuracy >= :data:`ACCURACY_TARGET`.
    - noise: 2 x ``n_trials`` x (options) questions per kind whose images are noise, of each of
      :data:`NOISE_FAMILIES` in turn; :func:`uniformity` tests each kind's choices on each of
      :data:`NOISE_GROUPS` apart (keys "<kind> (<group> noise)"), the part that can fail. Also
      the share of each option chosen and the most chosen one (``favourite``: a tool that
      shows nothing is "right" on the trojans of that option). Accuracy against a random
      "truth" is shown but is ~1/K for any judge.
    - exact: per trigger, one question whose one image is ``Trigger.image`` itself: must be 1.

    Returns a JSON-able dict with accuracies, Wilson intervals and counts.
    """
    answer = encoder_answer(judge, shape=shape) if isinstance(judge, JudgeEncoder) else judge
    banks = as_banks(bank)
    g = generator
    vcfg = dataclasses.replace(views or ViewConfig(), p_exact=0.0)
    true_ok = exact_ok = noise_ok = n_true = n_exact = n_noise = 0
    per_kind: dict[str, float] = {}
    per_trigger: dict[str, float] = {}
    shares: dict[str, list[float]] = {}
    chosen_counts: dict[str, list[float]] = {}
    favourite: dict[str, dict[str, Any]] = {}
    for kind, triggers in banks.items():
        k = len(triggers)
        lay = layers(triggers, shape)
        kind_ok = 0
        for t, trig in enumerate(triggers):
            ok_t = 0
            for _ in range(n_trials):
                imgs = render(lay, torch.full((n_images,), t), data=data, generator=g, cfg=vcfg)
                ok_t += _asked(answer, imgs, triggers, g) == t
            per_trigger[trig.name] = ok_t / max(n_trials, 1)
            kind_ok += ok_t
            exact_ok += _asked(answer, trig.image(shape)[None], triggers, g) == t
        per_kind[kind] = kind_ok / max(k * n_trials, 1)
        true_ok, n_true, n_exact = true_ok + kind_ok, n_true + k * n_trials, n_exact + k
        by_group = {group: torch.zeros(k) for group in NOISE_GROUPS}
        for trial in range(2 * n_trials * k):
            family = NOISE_FAMILIES[trial % len(NOISE_FAMILIES)]
            imgs = noise_images(family, (n_images, *shape), g)
            truth = int(torch.randint(k, (1,), generator=g))
            chosen = _asked(answer, imgs, triggers, g)
            by_group[NOISE_GROUP[family]][chosen] += 1
            noise_ok += chosen == truth
        n_noise += 2 * n_trials * k
        counts = sum(by_group.values(), torch.zeros(k))
        shares[kind] = (counts / counts.sum().clamp_min(1)).tolist()
        for group, c in by_group.items():
            chosen_counts[f"{kind} ({group} noise)"] = c.tolist()
        top = int(counts.argmax())
        favourite[kind] = {"option": triggers[top].name, "share": shares[kind][top]}
    if n_true == 0:
        raise ValueError("validate needs n_trials >= 1 and at least one trigger")
    true = rate(true_ok, n_true) | {"target": ACCURACY_TARGET, "per_kind": per_kind,
                                    "per_trigger": per_trigger}
    true["meets_target"] = true["accuracy"] >= ACCURACY_TARGET
    chance = sum(1 / len(v) for v in banks.values()) / len(banks)
    noise = rate(noise_ok, n_noise) | {"chance": chance, "choice_shares": shares,
                                       "favourite": favourite,
                                       "uniformity": uniformity(chosen_counts)}
    noise["chance_in_ci"] = noise["ci"][0] <= chance <= noise["ci"][1]
    return {"true_trigger": true, "noise": noise, "exact": rate(exact_ok, n_exact),
            "n_images": n_images, "n_trials": n_trials}
