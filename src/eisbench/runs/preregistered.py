"""The pre-registered rules' numbers, in one versioned place: every bar and margin that the
evidence suite's claims are judged by, and the tuned hyper-parameters known to come from a pilot.

Each entry of :data:`THRESHOLDS` is a :class:`Threshold`: its value, why it is that value, the
paper and table or figure it comes from (``source``, empty for a convention) and the pilot it
was chosen on (``pilot``, with ``disjoint`` saying honestly whether that pilot's seeds, trojans
or models are kept apart from the scored ones). Names are dotted and stable:
``<experiment>.<claim or metric>.<bar | margin | ...>``; ``bar_x_chance`` is a multiple of
chance (the bar is value / K), ``bar_over_chance`` an offset above it (chance + value).

Code reads an entry by :func:`threshold` (a number), :func:`bar_margin` (a rule's pair, to pass
as ``**bar_margin(name)``) or :func:`choice` (a named choice, such as a layer). Every record
holds :data:`RULES_VERSION` and the table's :func:`digest` (``versions``), and
``tests/test_preregistered.py`` pins both: changing a value without bumping the version fails.

Example:
    >>> threshold("ilyas.D_NR.std_acc.bar")
    0.8
    >>> bar_margin("ntk.high_index.robust_acc")
    {'bar': 0.1, 'margin': 0.05}
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypedDict

RULES_VERSION = 9
"""The version of the claims' decision rules, recorded in every record (``versions``'s
``claim_rules``, beside ``thresholds``: the first 16 hex digits of :func:`digest`). A rule
changed after results were seen bumps it, and says so here:

- 1: the first rules (refuted only when a whole interval lies past the bar; several claims
  could only ever support one world).
- 2 (2026-12): every claim states what each outcome means for each world (``if_not``);
  identities and sanity checks are checks (``role="check"``), never evidence; rules take the
  form :func:`~eisbench.runs.claims.decide_against` with a stated margin, so a refutation is
  reachable; some reproduce rules tightened (D_NR, squares: the interval's lower bound, not the
  mean) or paired (A1-A3). Chosen after the rule-1 verdicts of the digits and MNIST suites had
  been seen.
- 3 (2026-12): the bars, margins and pilot-tuned hyper-parameters moved from literals scattered
  over the experiments into :data:`THRESHOLDS`, each with its reason, source and pilot, and the
  record holds the table's digest. A move, not a change, and not chosen on results: no value
  changed, and every experiment's ``decide`` gave the same verdicts and rule texts before and
  after the move on the same 63,000 random synthetic metric sets. Also new in 3, fixed before
  any judge was scored with them: the trojan benchmark's judge is trusted only if it also
  reaches ``trojans.judge.held_out_target`` on view families it never saw in training, and the
  claim that combining tools helps is inconclusive when the judge is not trusted. And the edit
  benchmark's ablation claims are judged on a cluster bootstrap over models (n = models), not a
  t-interval over (model, class) pairs; this interval changed after its results had been seen.
- 4 (2026-12): every pilot is disjoint from what it scores. The saliency rules (unchanged) were
  written after a pilot on seed 0, which was also scored: ``saliency.pilot.seed`` records it,
  the suite and the saliency presets score seeds from 1 up, and a check claim makes exhibit A
  inconclusive when seed 0 is scored. LAT's layer and bound were re-chosen on a pilot zoo of 3
  trojans on trigger-bank entries the scored zoo never implants (``trojans/zoo.PILOT_TABLE``,
  seeds 100-102) by a rule committed before the pilot ran (``benchmarks/lat_pilot.py``:
  highest mean DER, ties to the smaller bound); the old choice came from 3 of the 12 scored
  trojans. The pilot chose what was there (first conv block, bound 0.5: mean DER 0.894 against
  0.858 for the next config, on the quick recipe), so the edit bench's LAT rows stand. Also
  new, not a threshold: the squares claim reads a robust accuracy from the ``binary`` attack
  suite and is gated by its sanity checks. Chosen after the rules-3 verdicts
  of a quick MNIST run had been seen; no bar or margin changed.
- 5 (2026-12): the trojan judge's noise check and the quick zoo, changed after the rules-4
  judge validation (97.5% of noise questions sent to one option) and quick zoos (9 of 12 MNIST
  and 6 of 12 Fashion-MNIST trojans implanted) had been seen. The noise questions add two
  families the judge never sees in training (smooth noise, sparse dots) and the uniformity test
  runs on them apart from the two like its training backgrounds (uniform, Gaussian): a judge
  trained to spread its background evenly passes the latter partly by construction. New entry
  ``trojans.judge.flat`` (1.0, fixed before a judge was trained with it): the weight of the
  judge's loss that spreads background views evenly over the trigger classes. The judge now
  abstains, answering a guess that depends on the images' bytes only, when its classifier puts
  the background class first (a first rule, mean background probability >= 0.5, was replaced
  after it never fired on noise in one MNIST validation). Quick benchmarks use the full zoo
  recipe, the only one measured to implant all 12 trojans on both datasets. No bar or margin
  changed.
- 6 (2026-12): new rules for the D_R recipe ladder (``experiments/ilyas_ladder.py``), fixed
  before any rung ran: ``ilyas.ladder.dr_gain_shift`` (a rung moves D_R when the per-seed
  shift of D_R's robust gain over rung (a) has CI lower > 0.05, and does not when CI upper <
  0.10) and ``ilyas.ladder.source_robust_acc`` (a "does not move" counts only when the rung's
  robust source keeps robust acc CI lower > 0.5). Written after the quick and full suites'
  D_R verdicts (robust accuracy 0.002) had been seen, which is what the ladder examines; no
  existing bar or margin changed.
- 7 (2026-12): two of the papers' recipes, followed more closely, after the rules-6 verdicts
  had been seen. The NTK claim that robustness falls with the eigen-index tests the Spearman
  correlation of the index with each eigen-feature's survival ratio (robust / clean accuracy)
  instead of with its robust accuracy, which also falls when only usefulness does: entries
  ``ntk.spearman_index_robust.*`` renamed ``ntk.spearman_index_survival.*``, values unchanged.
  Goh's leakage probe reads an L2-robust model at the budget of the L2 attack that built D_rand
  and D_det (``goh-leakage``'s ``probe_train``) instead of the Linf-robust source; no bar or
  margin changed.
- 8 (2026-12): the D_R ladder's "moves" also needs the rung's D_R model to learn the task
  (``ilyas.ladder.dr_std_acc``: standard accuracy CI lower > 2/K), since a model at chance
  keeps its ~1/K accuracy under attack and would read as a robust gain. Added after a
  one-seed check of the ladder on 200 MNIST images (rules-6 verdicts: every rung inconclusive,
  one seed) showed a D_R model at 0.13 standard and 0.12 robust accuracy; no rung has run at
  its preset's size, and no bar or margin changed.
- 9 (2026-12): LAT against its real baseline (Casper et al. 2024), fixed before any pilot or
  scored run of the new rows: the edit bench's input-space AT row takes the Linf bound
  ``edit.input_at.eps`` whose mean clean-accuracy drop on the pilot zoo is closest to LAT's
  (``benchmarks/input_at_pilot.py``: ties within 0.002 to the smaller eps), and "LAT beats
  input-AT" is judged at matched clean accuracy with ``edit.lat_vs_input_at.clean_tolerance``
  (:func:`eisbench.edit.lat_compare.matched_verdict`). The pilot then chose 0.3, the grid's
  largest bound: LAT costs 9.3 points of clean accuracy on the pilot, input-AT at most 2.1, so
  the costs are not matched. New entries only; no bar or margin changed.
"""


@dataclass(frozen=True)
class Threshold:
    """One pre-registered number (or named choice) and its provenance.

    ``source``: the paper and table or figure a literature-derived value comes from ("" for a
    convention). ``pilot``: the pilot it was chosen on, naming its seeds, trojans or models (""
    if none); ``disjoint``: whether that pilot is disjoint from the scored data today (None
    exactly when there is no pilot).
    """

    value: float | str
    why: str
    source: str = ""
    pilot: str = ""
    disjoint: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.value, str) and not self.value:
            raise ValueError("a named choice must not be empty")
        if not isinstance(self.value, str) and not math.isfinite(self.value):
            raise ValueError(f"a threshold must be finite, got {self.value!r}")
        if not self.why.strip():
            raise ValueError("every threshold says why it is what it is (why='')")
        if (self.pilot == "") != (self.disjoint is None):
            raise ValueError("name the pilot and say whether it is disjoint from the scored "
                             f"data, or neither (pilot={self.pilot!r}, disjoint={self.disjoint})")


class BarMargin(TypedDict):
    """The ``bar`` and ``margin`` of one :func:`~eisbench.runs.claims.decide_against` rule."""

    bar: float
    margin: float


def build(entries: Iterable[tuple[str, Threshold]]) -> Mapping[str, Threshold]:
    """A read-only table from ``(name, threshold)`` pairs; a repeated name raises (a dict
    literal would keep the last one silently)."""
    out: dict[str, Threshold] = {}
    for name, t in entries:
        if name in out:
            raise ValueError(f"threshold {name!r} is defined twice")
        out[name] = t
    return MappingProxyType(out)


_T = Threshold
_ILYAS = "Ilyas et al. 2019 (NeurIPS), CIFAR-10"
_QUARTER = ("about a quarter of the published effect past the bar, so a refutation means 'at "
            "most a quarter of what the paper found'")
_SIGN = "a check's sign test (0 separates its outcomes): margin 0"
_NEEDED = "a precondition: its refutation never counts (needed/provided), so no equivalence margin"
_TWO_K = "twice chance (2/K): 'well above chance' for a K-way classifier"
_SALIENCY_PILOT = ("a one-seed pilot on MNIST, seed 0, of the attribution and inversion "
                  "measurements (experiments/saliency.py, PROTOCOL_NOTE); scored on seeds 1, 2, 3 "
                  "since rules 4, and a check makes the exhibit inconclusive on seed 0")
_LAT_PILOT = ("the pilot zoo (trojans/zoo.PILOT_TABLE: 3 trojans on trigger-bank entries the "
              "scored zoo never implants, seeds 100-102, the quick bench's zoo recipe and "
              "budget), grid layer x eps, benchmarks/lat_pilot.py; until rules 4: 3 of the 12 "
              "scored trojans")

_INPUT_AT_PILOT = ("the pilot zoo of edit.lat (trojans/zoo.PILOT_TABLE, seeds 100-102, the quick "
                   "bench's zoo recipe and budget), grid of Linf eps, "
                   "benchmarks/input_at_pilot.py")

THRESHOLDS: Mapping[str, Threshold] = build([
    # exhibit D: Ilyas et al. 2019
    ("ilyas.D_NR.std_acc.bar", _T(0.80, "D_NR-trained models generalise: a bar below the "
                                 "published 87.7% standard accuracy", f"{_ILYAS}, Fig. 2b (D_NR)")),
    ("ilyas.D_NR.std_acc.refute_x_chance", _T(2.0, "refuted when std acc CI upper < 2/K (margin "
                                             "2/K - bar): D_NR does not generalise at all")),
    ("ilyas.D_NR.robust_acc.bar", _T(0.10, "near-zero robust accuracy: under 10 points")),
    ("ilyas.D_NR.robust_acc.margin", _T(0.0, _NEEDED)),
    ("ilyas.D_R.robust_gain.bar", _T(0.05, "robust gain of D_R's model over the standard one: "
                                    "5 points is clearly non-zero")),
    ("ilyas.D_R.robust_gain.margin", _T(0.05, f"{_QUARTER}: 21.9 points of robust accuracy",
                                       f"{_ILYAS}, Fig. 2b (D_R, L2 eps 0.25)")),
    ("ilyas.D_R.robust_acc.bar", _T(0.10, "D_R's own robust accuracy clearly non-zero")),
    ("ilyas.D_R.robust_acc.margin", _T(0.0, _NEEDED)),
    ("ilyas.ladder.dr_gain_shift.bar", _T(0.05, "a rung moves D_R's robust gain over rung "
                                        "(a): 5 points, the bar of ilyas.D_R.robust_gain")),
    ("ilyas.ladder.dr_gain_shift.margin", _T(0.05, f"{_QUARTER}: 21.85 points of D_R robust "
                                           "accuracy, as ilyas.D_R.robust_gain.margin",
                                           f"{_ILYAS}, Fig. 2b (D_R, L2 eps 0.25)")),
    ("ilyas.ladder.source_robust_acc.bar", _T(0.5, "a rung's robust source is robust: it keeps "
                                             "at least half the test images under the rung's "
                                             "attack; else its D_R says nothing")),
    ("ilyas.ladder.source_robust_acc.margin", _T(0.0, _NEEDED)),
    ("ilyas.ladder.dr_std_acc.bar_x_chance", _T(2.0, f"{_TWO_K}: a rung's D_R model learns the "
                                              "task, else its robust accuracy is chance kept")),
    ("ilyas.ladder.dr_std_acc.margin", _T(0.0, _NEEDED)),
    ("ilyas.D_rand_D_det.std_acc.bar_x_chance", _T(2.0, _TWO_K)),
    ("ilyas.D_rand_D_det.std_acc.margin", _T(0.05, f"{_QUARTER}: D_det's 43.7% is 23.7 points "
                                            "past 2/K", f"{_ILYAS}, Table 1 (D_det)")),
    # exhibit D: Wallace 2019, Goh 2019
    ("wallace.std_acc.bar_x_chance", _T(2.0, _TWO_K)),
    ("wallace.std_acc.margin", _T(0.05, "the margin of the D_rand and D_det claims "
                                 "(ilyas.D_rand_D_det.std_acc.margin), which these resemble")),
    ("goh_leakage.probe_acc.bar_over_chance", _T(0.05, "leakage: a robust-feature probe 5 points "
                                                "above chance (1/K)")),
    ("goh_leakage.probe_acc.margin", _T(0.02, "about a quarter of the published D_rand leakage "
                                       "past the bar (23.5% vs 15%)", "Goh 2019 (Distill, "
                                       "'Robust Feature Leakage'), table of linear-probe "
                                       "accuracies, CIFAR-10 robust ResNet-50: D_rand 23.5%, "
                                       "D_det 6.8%")),
    ("goh_linear.singular.useful_rho", _T(0.1, "a singular direction counts as useful when its "
                                         "usefulness rho exceeds 0.1 (the claim's definition)")),
    ("goh_linear.singular.frac_useful_nonrobust.bar", _T(0.0, "any useful non-robust direction")),
    ("goh_linear.singular.frac_useful_nonrobust.margin", _T(0.02, "fewer than one direction in "
                                                           "fifty: none worth naming")),
    ("goh_linear.ensemble.usefulness.bar", _T(0.5, "a 'very useful' feature: rho above 0.5")),
    ("goh_linear.ensemble.usefulness.margin", _T(0.1, "smallest difference in rho worth naming")),
    ("goh_linear.ensemble.robust_usefulness.bar", _T(0.0, "non-robust: robust usefulness < 0")),
    ("goh_linear.ensemble.robust_usefulness.margin", _T(0.0, "a sign: robust or not, margin 0")),
    ("goh_linear.contaminated.usefulness.bar_x_base", _T(0.9, "stays useful: at least 0.9 x the "
                                                        "robust base feature's rho")),
    ("goh_linear.contaminated.usefulness.margin", _T(0.0, "a construction: no equivalence bound")),
    ("goh_linear.contaminated.robust_usefulness.bar", _T(0.0, "non-robust: gamma < 0")),
    ("goh_linear.contaminated.robust_usefulness.margin", _T(0.0, "a sign: margin 0")),
    ("goh_linear.robust_base.robust_usefulness.bar", _T(0.0, "the base feature is robust: gamma "
                                                       "> 0")),
    ("goh_linear.robust_base.robust_usefulness.margin", _T(0.0, _NEEDED)),
    # exhibit B: transfer
    ("transfer.pearson.bar", _T(0.0, "a positive correlation across architectures")),
    ("transfer.pearson.margin", _T(0.2, "no coefficient is published (a strong, monotone relation "
                                  "is shown); r under 0.2 is 'none to speak of'",
                                  "Ilyas et al. 2019 (NeurIPS), Fig. 3: transfer rate vs D_det "
                                  "accuracy over five architectures, qualitative")),
    ("transfer.spearman.bar", _T(0.0, "the rank correlation agrees in sign (mean > 0)")),
    ("transfer.excess_over_noise.bar", _T(0.10, "transfer 'well above' same-norm noise: 10 "
                                         "points more often")),
    ("transfer.excess_over_noise.margin", _T(-0.05, "refuted only within 5 points of noise "
                                            "(a gap below the bar, not an equivalence bound)")),
    # exhibit E: Nakkiran 2019
    ("nakkiran.transfer_rate.clearly", _T(0.20, "a transfer rate that clearly transfers")),
    ("nakkiran.transfer_rate.barely", _T(0.05, "a transfer rate that barely transfers; a claim is "
                                        "refuted only across the gap to 'clearly'")),
    ("nakkiran.non_transferable.success_rate.bar", _T(0.5, "the attack reached its target on f "
                                                     "for most images")),
    ("nakkiran.non_transferable.success_rate.margin", _T(0.0, _NEEDED)),
    ("nakkiran.D_det.std_acc.bar_x_chance", _T(2.0, _TWO_K)),
    ("nakkiran.D_det.std_acc.margin", _T(0.05, f"{_QUARTER}: D_det's 23.7 points past 2/K "
                                        "(the margin of ilyas.D_rand_D_det.std_acc.margin)",
                                        f"{_ILYAS}, Table 1 (D_det 43.7%)")),
    ("nakkiran.squares.net_std_acc.bar", _T(0.9, "setup check: the network fits the squares")),
    ("nakkiran.squares.net_std_acc.margin", _T(0.0, _NEEDED)),
    ("nakkiran.squares.robust_classifier_robust_acc.bar", _T(0.99, "setup check: the exact robust "
                                                            "classifier is robust")),
    ("nakkiran.squares.robust_classifier_robust_acc.margin", _T(0.0, _NEEDED)),
    ("nakkiran.squares.net_robust_acc.bar", _T(0.5, "fragile: robust accuracy below one half")),
    ("nakkiran.squares.net_robust_acc.margin", _T(-0.4, "refuted only when robust accuracy CI "
                                                 "lower > 0.9 (the old pair of bars)")),
    # exhibit H: frequency
    ("frequency.filtered.acc.bar_x_chance", _T(2.0, _TWO_K)),
    ("frequency.filtered.acc.margin", _T(0.05, "smallest accuracy gain over 2/K worth naming")),
    ("frequency.filtered.clean_learns.margin", _T(0.0, _NEEDED)),
    ("frequency.at_gain.bar", _T(0.02, "accuracy points an effect of adversarial training must "
                                "clear to count")),
    ("frequency.at_gain.margin", _T(0.02, "refuted when the gain stays within twice the bar")),
    # exhibit G: NTK
    ("ntk.spearman_index_survival.bar", _T(0.0, "robustness (robust / clean accuracy) falls "
                                           "with the eigen-index")),
    ("ntk.spearman_index_survival.margin", _T(0.2, "a 'weak' rank correlation: no fall worth the "
                                           "name")),
    ("ntk.high_index.clean_acc.bar_over_chance", _T(0.0, "useful: above the majority-class rate")),
    ("ntk.high_index.clean_acc.margin", _T(0.05, "about a quarter of the published 18 points of "
                                          "eigen-feature 1 (68% vs 50%)", "Tsilivis & Kempe "
                                          "2022 (NeurIPS), Sec. 4 and their NTK-features "
                                          "notebook: CIFAR-10 classes 0 vs 1")),
    ("ntk.high_index.robust_acc.bar", _T(0.10, "non-robust: robust accuracy under 10 points")),
    ("ntk.high_index.robust_acc.margin", _T(0.05, "smallest robust accuracy worth naming")),
    # exhibit C: Tsipras et al. 2019
    ("tsipras.synthetic.robust_feature_share.bar", _T(0.5, "most of |w|_1 on the robust feature "
                                                     "x_1 (the theory's robust classifier: all)")),
    ("tsipras.synthetic.robust_feature_share.margin", _T(0.0, "a check's side of 0.5: margin 0")),
    ("tsipras.synthetic.std_acc_fall.bar", _T(0.0, _SIGN)),
    ("tsipras.synthetic.std_acc_fall.margin", _T(0.0, _SIGN)),
    ("tsipras.synthetic.robust_std_acc.band", _T(0.05, "the robust model's clean accuracy within "
                                                "p +- 0.05 of the theory's p")),
    ("tsipras.synthetic.robust_std_acc.margin", _T(0.0, "a check against theory: margin 0")),
    ("tsipras.synthetic.standard_std_acc.over_p", _T(0.02, "the standard model clearly above p")),
    ("tsipras.synthetic.standard_std_acc.margin", _T(-0.02, "fails only when CI upper < p")),
    ("tsipras.image.robust_gain.bar", _T(0.1, "adversarial training bought 10 points of robust "
                                        "accuracy, else the image claims say nothing")),
    ("tsipras.image.robust_gain.margin", _T(0.0, "a check: margin 0")),
    ("tsipras.image.std_acc_cost.bar", _T(0.0, "any clean-accuracy cost")),
    ("tsipras.image.std_acc_cost.margin", _T(0.02, "about a quarter of the published CIFAR-10 cost "
                                            "of 7.9 points", "Madry et al. 2018 (ICLR), CIFAR-10: "
                                            "95.2% -> 87.3% at Linf 8/255; Tsipras et al. 2019 "
                                            "(ICLR), Fig. 2: a slight cost on MNIST")),
    # exhibit F: superposition (the config's defaults)
    ("superposition.scaling.max_rel_error.bar", _T(1e-4, "float32 rounding of the measure's ratio "
                                                  "against c^2")),
    ("superposition.scaling.max_rel_error.margin", _T(0.0, "an identity: margin 0")),
    ("superposition.clean_gap.tolerance", _T(0.01, "'equal clean accuracy': |mean gap| <= 1 pt")),
    ("superposition.robust_gap.margin", _T(0.02, "non-inferiority bound on robust accuracy "
                                          "(bar -margin; refuted when CI upper < 0)")),
    ("superposition.l2_rel_gap.margin", _T(0.05, "non-inferiority bound on the relative median "
                                          "minimal L2 perturbation")),
    # exhibit A: saliency (rules written after the pilot)
    ("saliency.pilot.seed", _T(0, "the pilot's seed: the saliency claims are judged only on "
                               "other seeds", pilot=_SALIENCY_PILOT, disjoint=True)),
    *((f"saliency.{k}", _T(v, why, pilot=_SALIENCY_PILOT, disjoint=True)) for k, v, why in (
        ("check.robust_diff.bar", 0.0, "adversarial training made the fast-AT model robust"),
        ("check.robust_diff.margin", 0.05, "5 points of robust accuracy: smallest worth naming"),
        ("input_grad.robust_diff.bar", 0.0, "input-gradient regularisation buys robustness"),
        ("input_grad.robust_diff.margin", 0.05, "5 points of robust accuracy"),
        ("stroke_share_diff.bar", 0.0, "saliency aligns better with the strokes"),
        ("stroke_share_diff.margin", 0.02, "2 points of stroke share: smallest worth naming"),
        ("inversion.judge_target_diff.bar", 0.10, "'far more often': 10 points of the judge's "
                                                  "target rate"),
        ("inversion.judge_target_diff.margin", 0.05, "5 points of the judge's target rate"),
        ("inversion.judge_target_rate.bar_x_chance", 2.0, _TWO_K),
        ("inversion.judge_target_rate.margin", 0.05, "5 points of the judge's target rate"),
        ("inversion.self_target_rate.bar", 0.5, "the inversion reached its target on the "
                                                "inverted model itself for most images"),
        ("inversion.self_target_rate.margin", 0.0, _NEEDED))),
    # bench/ and trojans/ (read there)
    ("trojans.min_graded", _T(3, "fewest graded trojans for the tool-success and detection claims: "
                             "fewer give no usable interval over trojans; fixed before any run was "
                             "graded with it (bench/trojan_scores.py)")),
    ("trojans.judge.accuracy_target", _T(0.95, "a judge is trusted only if it names the true "
                                        "trigger from fresh views this often")),
    ("trojans.judge.held_out_target", _T(0.80, "a judge is trusted only if its true-trigger "
                                         "accuracy pooled over view families it never saw in "
                                         "training reaches this: the 0.95 in-distribution target "
                                         "less an allowance, as occlusion and edge-crop hide up "
                                         "to half a trigger; 6.4 x chance (1/8); fixed before "
                                         "any judge was scored on them (trojans/views_held_out)")),
    ("trojans.judge.flat", _T(1.0, "weight of the judge's loss that spreads each background "
                             "view evenly over the trigger classes, beside its other terms of "
                             "weight 1: fixed before any judge was trained with it, not tuned "
                             "(trojans/judge.py)")),
    ("trojans.judge.uniformity_alpha", _T(0.01, "noise answers fail uniformity when a kind's "
                                         "chi-square p < alpha / kinds (Bonferroni)")),
    ("trojans.zoo.asr_target", _T(0.90, "a trojan is implanted when its attack success rate is at "
                                 "least this (the zoo's target, issue #5)")),
    ("trojans.zoo.max_drop", _T(0.01, "...with a clean-accuracy drop of at most one point "
                               "(issue #5)")),
    ("edit.lat.layer", _T("body.1", "LAT's latent layer: cnn-small's first conv block",
                         pilot=_LAT_PILOT, disjoint=True)),
    ("edit.lat.eps", _T(0.5, "LAT's latent perturbation bound", pilot=_LAT_PILOT, disjoint=True)),
    ("edit.input_at.eps", _T(0.3, "input-space AT's Linf bound on [0,1] images: the grid bound "
                             "(0.02-0.3; 0.3 is MNIST's usual Linf budget, past which a digit's "
                             "strokes can be erased) whose mean clean-accuracy drop is closest "
                             "to LAT's at its pre-registered layer and bound, the same budget; "
                             "ties to the smaller eps (LAT against input-space AT at matched "
                             "clean cost). The pilot chose the grid's largest: LAT's drop, 9.3 "
                             "points, exceeds every grid bound's (0.3: 2.1), so the costs are "
                             "not matched and input-AT is the cheaper row",
                             pilot=_INPUT_AT_PILOT, disjoint=True)),
    ("edit.lat_vs_input_at.clean_tolerance", _T(0.01, "clean accuracies within 1 point count "
                                                "as matched (the bar of LAT's own clean-cost "
                                                "claim against plain fine-tuning)")),
])
"""Every pre-registered number, by name (see the module docstring)."""


def _entry(name: str) -> Threshold:
    try:
        return THRESHOLDS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(THRESHOLDS), n=5, cutoff=0.6)
        if not close:
            head = name.split(".", 1)[0] + "."
            close = [k for k in THRESHOLDS if k.startswith(head)][:8]
        raise KeyError(f"no pre-registered threshold {name!r}; closest: {close or 'none'} "
                       "(eisbench.runs.preregistered.THRESHOLDS)") from None


def threshold(name: str) -> float:
    """The number pre-registered as ``name``; a KeyError lists the closest names.

    Example:
        >>> threshold("transfer.excess_over_noise.bar")
        0.1
    """
    v = _entry(name).value
    if isinstance(v, str):
        raise TypeError(f"{name!r} is the named choice {v!r}, not a number: use choice({name!r})")
    return float(v)


def choice(name: str) -> str:
    """The named choice pre-registered as ``name`` (e.g. a layer).

    Example:
        >>> choice("edit.lat.layer")
        'body.1'
    """
    v = _entry(name).value
    if not isinstance(v, str):
        raise TypeError(f"{name!r} is the number {v!r}: use threshold({name!r})")
    return v


def bar_margin(name: str) -> BarMargin:
    """``{"bar": threshold(name + ".bar"), "margin": threshold(name + ".margin")}``, to pass to
    :func:`~eisbench.runs.claims.decide_metric` as ``**bar_margin(name)``."""
    return {"bar": threshold(f"{name}.bar"), "margin": threshold(f"{name}.margin")}


def canonical_json(table: Mapping[str, Threshold] | None = None) -> str:
    """The table as canonical JSON (sorted keys, no spaces): what :func:`digest` hashes."""
    t = THRESHOLDS if table is None else table
    return json.dumps({k: dataclasses.asdict(v) for k, v in t.items()}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)


def digest(table: Mapping[str, Threshold] | None = None) -> str:
    """sha256 (hex) of :func:`canonical_json`: changes with any value, reason, source or pilot.

    Example:
        >>> len(digest())
        64
    """
    return hashlib.sha256(canonical_json(table).encode()).hexdigest()


__all__ = ["RULES_VERSION", "THRESHOLDS", "BarMargin", "Threshold", "bar_margin", "build",
           "canonical_json", "choice", "digest", "threshold"]
