"""The trojan benchmark's judge, checked three more ways (issue 20, part 5 b, d and e).

- Held-out views (:mod:`eisbench.trojans.views_held_out`): true-trigger accuracy on families of
  views whose transform the encoder never saw in training (rotation, scales and blurs outside
  its ranges, low contrast, large occlusions, triggers cut by the image's edge). A judge that
  only recognises its training views passes its own validation and fails here. The judge is
  trusted only if its pooled held-out accuracy reaches
  :data:`~eisbench.trojans.views_held_out.HELD_OUT_TARGET`.
- A second judge of another representation (:mod:`eisbench.trojans.matcher`: normalised
  cross-correlation with each option's template, nothing learned) answers the same questions
  about the same images. It is validated by the same checks, and the two judges' agreement
  (Cohen's kappa over every tool question) and the tools whose rank changes between them are
  reported. A judge's blind spots are shared by a validation drawn from its own training
  distribution; a judge built another way fails differently.
- Combining tools (:mod:`eisbench.bench.trojan_combine`): the rule that combines the tools'
  answers (pooled similarity, a confidence-weighted vote, max-margin, majority) is chosen on the
  trojans other than the one it is scored on, and that held-out success is reported.

Calibrating both judges on clean data images (subtracting each option's mean score on 256
clean training images) was tried after the MNIST validation showed the learned judge sending
97.5% of noise questions to one option: it sent all of them to one option, for both judges,
and was dropped (``benchmarks/judge_check.py`` measures the judges as they are).

Example:
    >>> judges = judge_scorers(enc, shape=(1, 28, 28))
    >>> val = check_judges(judges, banks=banks, shape=(1, 28, 28), n_trials=5, data=x_test)
    >>> val["cnn"]["held_out"]["overall"]["accuracy"], val["ncc"]["true_trigger"]["accuracy"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from eisbench.bench import trojan_combine
from eisbench.bench.trojan_control import rates
from eisbench.bench.trojan_scores import GRADED, answered, ci_metric, mean_metric
from eisbench.runs.record import Metric
from eisbench.trojans.judge import JudgeEncoder, ask
from eisbench.trojans.judge_checks import AnswerFn, Scorer, scorer_answer, validate
from eisbench.trojans.matcher import agreement, agreement_on_correct, ncc_ask, rank_changes
from eisbench.trojans.stamp import Trigger
from eisbench.trojans.views_held_out import validate_held_out

FIRST_JUDGE = "cnn"  # the learned encoder
SECOND_JUDGE = "ncc"  # the second judge's name in the record

Shape = tuple[int, int, int]
Judges = Mapping[str, Scorer]  # FIRST_JUDGE and SECOND_JUDGE -> scorer
Sims = dict[str, dict[int, torch.Tensor]]  # row -> seed -> (graded trojans, 8) similarities


def judge_scorers(encoder: JudgeEncoder, *, shape: Shape) -> Judges:
    """Both judges as scorers: the learned encoder (:func:`~eisbench.trojans.judge.ask`) and
    the template matcher (:func:`ncc_ask`, with its noise baseline)."""
    def cnn(x: torch.Tensor, o: Sequence[Trigger]) -> torch.Tensor:
        return ask(encoder, images=x, options=o, shape=shape).similarities

    def ncc(x: torch.Tensor, o: Sequence[Trigger]) -> torch.Tensor:
        return ncc_ask(images=x, options=o, shape=shape).similarities

    return {FIRST_JUDGE: cnn, SECOND_JUDGE: ncc}


def check_judge(answer: AnswerFn, *, banks: Mapping[str, Sequence[Trigger]], shape: Shape,
                n_trials: int, data: torch.Tensor | None) -> dict[str, Any]:
    """One judge's validation (:func:`~eisbench.trojans.judge_checks.validate`) with its
    held-out view families under ``held_out``, each from its own fixed generator."""
    val = validate(answer, bank=banks, shape=shape, n_trials=n_trials,
                   generator=torch.Generator().manual_seed(1), data=data)
    val["held_out"] = validate_held_out(answer, bank=banks, shape=shape, n_trials=n_trials,
                                        generator=torch.Generator().manual_seed(2), data=data)
    return val


def check_judges(judges: Judges, *, banks: Mapping[str, Sequence[Trigger]], shape: Shape,
                 n_trials: int, data: torch.Tensor | None) -> dict[str, Any]:
    """The first judge's validation (the keys of
    :func:`~eisbench.trojans.judge_checks.validate` plus ``held_out``), with the second
    judge's under ``second``. ``data``: clean *test* images (N, C, H, W) held apart from the
    tools' images."""
    val = check_judge(scorer_answer(judges[FIRST_JUDGE]), banks=banks, shape=shape,
                      n_trials=n_trials, data=data)
    val["second"] = check_judge(scorer_answer(judges[SECOND_JUDGE]), banks=banks, shape=shape,
                                n_trials=n_trials, data=data) | {"judge": SECOND_JUDGE}
    return val


def judge_metrics(val: Mapping[str, Any]) -> dict[str, Metric]:
    """Each judge's validation accuracies: ``judge/true_trigger_acc``, ``judge/noise_acc``,
    ``judge/held_out_acc`` and the same under ``judge/{SECOND_JUDGE}/`` (n = questions,
    Wilson)."""
    out: dict[str, Metric] = {}
    for prefix, v in (("judge", val), (f"judge/{SECOND_JUDGE}", val.get("second"))):
        if v is None:
            continue
        parts = {"true_trigger_acc": (v["true_trigger"], True), "noise_acc": (v["noise"], False)}
        if v.get("held_out", {}).get("overall"):
            parts["held_out_acc"] = (v["held_out"]["overall"], True)
        for name, (r, higher) in parts.items():
            out[f"{prefix}/{name}"] = ci_metric(r["accuracy"], r["ci"][0], r["ci"][1], r["n"],
                                                higher=higher,
                                                unit="validation questions (Wilson)")
    return out


NO_CHOICE = -1
"""The choice recorded for a failed cell (:mod:`eisbench.bench.trojan_cells`): no images, no
answer; never equal to a true option."""


def choices(s: torch.Tensor) -> torch.Tensor:
    """The option chosen per row of similarities ``s`` (T, K): (T,) bank indices, with
    :data:`NO_CHOICE` for a failed cell's row (all NaN)."""
    ok = answered(s)
    return torch.where(ok, torch.nan_to_num(s, nan=0.0).argmax(1), NO_CHOICE)


def _choices(sims: Sims, rows: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
    """The option chosen per (row, seed, graded trojan): (R, S, T) bank indices
    (:func:`choices`)."""
    return torch.stack([torch.stack([choices(sims[r][s]) for s in seeds]) for r in rows])


def _asked(a: torch.Tensor, b: torch.Tensor) -> tuple[list[int], list[int]]:
    """The paired choices of the questions that were asked (images to judge), flattened."""
    keep = (a != NO_CHOICE) & (b != NO_CHOICE)
    return a[keep].tolist(), b[keep].tolist()


def kappa_interval(a: torch.Tensor, b: torch.Tensor, *, n_boot: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of Cohen's kappa between the choices ``a`` and ``b``
    (R, S, T), resampling the T graded trojans (a tool's questions on one trojan are not
    independent; the trojans are the unit). Failed cells are left out of each resample (and a
    resample with no question asked). Fewer than 3 trojans: [-1, 1]."""
    t = a.shape[-1]
    if t < 3:
        return -1.0, 1.0
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_boot):
        idx = torch.randint(t, (t,), generator=g)
        xa, xb = _asked(a[..., idx], b[..., idx])
        if xa:
            vals.append(agreement(xa, xb)["kappa"])
    if not vals:
        return -1.0, 1.0
    q = torch.tensor(vals, dtype=torch.float64).quantile(
        torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(q[0]), float(q[1])


def second_opinion(first: Sims, second: Sims, *, rows: Sequence[str], seeds: Sequence[int],
                   answers: Sequence[int], keys: Sequence[str]
                   ) -> tuple[dict[str, Metric], dict[str, Any]]:
    """The two judges on the same tool images: ``judge/kappa`` (Cohen's kappa of their choices
    over every tool x graded trojan x seed question, with a bootstrap interval over trojans),
    per tool its success under the second judge (``tool/{row}/success_rate_{SECOND_JUDGE}``,
    the unit of the first's), and the tools whose rank changes. A failed cell is a miss for
    both judges and no question for their agreement (no images to judge)."""
    if not answers or not rows:
        return {}, {"judge": SECOND_JUDGE, "note": "no graded trojans"}
    a, b = _choices(first, rows, seeds), _choices(second, rows, seeds)  # (R, S, T)
    truth = torch.tensor(list(answers)).expand_as(a)
    xa, xb = _asked(a, b)
    if not xa:
        return {}, {"judge": SECOND_JUDGE, "note": "every tool cell failed: no question asked"}
    kappa = agreement(xa, xb)
    asked = (a != NO_CHOICE) & (b != NO_CHOICE)
    on_correct = agreement_on_correct((a == truth)[asked].tolist(),
                                      (b == truth)[asked].tolist())
    metrics: dict[str, Metric] = {}
    values = {}
    for i, row in enumerate(rows):
        ok_a, ok_b = (a[i] == truth[i]).float().mean(0), (b[i] == truth[i]).float().mean(0)
        m = mean_metric(ok_b.tolist(), list(keys), unit=GRADED)  # per trojan: over seeds
        metrics[f"tool/{row}/success_rate_{SECOND_JUDGE}"] = m
        values[row] = (float(ok_a.mean()), m["value"])
    lo, hi = kappa_interval(a, b)
    k = kappa["kappa"]
    how = ("95% bootstrap over graded trojans" if a.shape[-1] >= 3
           else "fewer than 3 graded trojans: the whole range")
    metrics["judge/kappa"] = ci_metric(k, lo, hi, kappa["n"],
                                       unit=f"tool questions (tools x graded trojans x seeds, "
                                            f"less failed cells; {how})")
    changes = rank_changes({r: v[0] for r, v in values.items()},
                           {r: v[1] for r, v in values.items()})
    return metrics, {"judge": SECOND_JUDGE, "agreement": kappa, "agreement_on_correct": on_correct,
                     "success": {r: {"first": v[0], "second": v[1]} for r, v in values.items()},
                     "rank_changes": changes}


def combination(sims: Sims, *, tools: Sequence[str], seeds: Sequence[int],
                answers: Sequence[int], keys: Sequence[str]
                ) -> tuple[dict[str, Metric], dict[str, Any]]:
    """Every combination rule's success and the held-out one's
    (:func:`~eisbench.bench.trojan_combine.held_out_choice`): ``tool/combined-held-out/
    success_rate`` (the rule chosen without the trojan it is scored on; unit: trojans, as every
    tool's) and the details ``combination``."""
    if len(tools) < 2 or not answers:
        return {}, {"note": "needs at least two tools and one graded trojan"}
    res = trojan_combine.held_out_choice([{n: sims[n][s] for n in tools} for s in seeds],
                                         answers=answers, tools=tools)
    metrics = {"tool/combined-held-out/success_rate":
               mean_metric(rates(res["held_out_correct"]), list(keys), unit=GRADED)}
    return metrics, res
