"""The claims of Ilyas et al. 2019 (D_NR, D_R, D_rand, D_det) and the rules that judge them,
fixed in advance (:data:`~eisbench.runs.preregistered.THRESHOLDS`, ``ilyas.*``).

Example:
    >>> claims = decide(rec_metrics, num_classes=10)
    >>> [c["exhibit"] for c in claims]
    ['D', 'D', 'D', 'D']
"""

from __future__ import annotations

from eisbench.runs.claims import (
    checks_of,
    conjunction,
    decide_against,
    decide_metric,
    gap,
    make_claim,
    needed,
)
from eisbench.runs.claims import fmt as claims_fmt
from eisbench.runs.preregistered import bar_margin, threshold
from eisbench.runs.record import Claim, Metric


def decide(metrics: dict[str, Metric], *, num_classes: int) -> list[Claim]:
    """Verdict per claim of Ilyas et al., by rules fixed in advance, each of the form of
    :func:`~eisbench.runs.claims.decide_against` (reproduced: the 95% CI over seeds lies past
    the bar; not reproduced: its far end stays short of bar + margin). Margins are about a
    quarter of the published effect past the bar (CIFAR-10), so a refutation means "at most a
    quarter of what the paper found"; K classes. The numbers are ``ilyas.*`` in
    :data:`~eisbench.runs.preregistered.THRESHOLDS`.

    - D_NR (features / bugs): reproduced if std acc CI lower > 0.80 and robust acc CI upper
      < 0.10; not reproduced if std acc CI upper < 2/K (margin 2/K - 0.80): D_NR-trained
      models do not generalise, so the standard model's non-robust features carry no usable
      signal, which is the bug world's prediction (seed: exhibit D). A robust accuracy above
      0.10 alone is inconclusive (robust cues leaked into D_NR; Goh's leakage).
    - D_R (features / bugs): robust gain = D_R model's robust acc minus the standard model's
      (interval of the difference). Reproduced if the gain's CI lower > 0.05 and D_R's robust
      acc CI lower > 0.10; not reproduced if the gain's CI upper < 0.10 (margin 0.05: a
      quarter of the published 21.9 points): robustness did not come with the robust data, so
      the vulnerability is not a property of the data's features (seed 002: "the
      hallucinations would be caused by the training process, not the data").
    - D_rand, D_det (features / bugs): reproduced if std acc CI lower > 2/K (twice chance);
      not reproduced if its CI upper < 2/K + 0.05 (a quarter of D_det's published 23.7
      points past 2/K): mislabelled adversarial examples teach nothing that generalises.
    Anything in between is inconclusive. The D_NR and D_R claims carry the sanity checks of the
    robust accuracies they read (:func:`~eisbench.runs.claims.checks_of`): a failed one makes
    the claim inconclusive.
    """
    def fmt(name: str) -> str:
        return claims_fmt(metrics, name)

    claims: list[Claim] = []
    x_nr, x_det = (threshold("ilyas.D_NR.std_acc.refute_x_chance"),
                   threshold("ilyas.D_rand_D_det.std_acc.bar_x_chance"))
    nr_bar, nr_rob = threshold("ilyas.D_NR.std_acc.bar"), bar_margin("ilyas.D_NR.robust_acc")
    std_v = decide_metric(metrics, "train_on_D_NR/std_acc", bar=nr_bar,
                          margin=x_nr / num_classes - nr_bar)
    rob_v = decide_metric(metrics, "train_on_D_NR/robust_acc", **nr_rob,
                          higher_means_reproduced=False)
    claims.append(make_claim(
        claim="D_NR: high standard accuracy, near-zero robust accuracy",
        rule=f"std CI lower > {nr_bar:.2f} and robust CI upper < {nr_rob['bar']:.2f} "
             f"(reproduced); std CI upper < {x_nr / num_classes:.2f} = {x_nr:g}/K, i.e. D_NR "
             "does not generalise (not reproduced: bugs); a high robust accuracy alone is "
             "inconclusive",
        measured=f"{fmt('train_on_D_NR/std_acc')}; {fmt('train_on_D_NR/robust_acc')}",
        verdict=conjunction(std_v, needed(rob_v)), exhibit="D", if_reproduced="features",
        if_not="bugs", literature="CIFAR-10: 87.7% std, 0.0% robust (Ilyas et al. 2019)",
        checks=checks_of(metrics, "train_on_D_NR/robust_acc")))
    g = gap(metrics, "train_on_D_R/robust_acc", "train_on_D/robust_acc")
    gain, r_rob = bar_margin("ilyas.D_R.robust_gain"), bar_margin("ilyas.D_R.robust_acc")
    claims.append(make_claim(
        claim="D_R: clearly non-zero robust accuracy without adversarial training",
        rule=f"robust gain over the standard model: CI lower > {gain['bar']:.2f} and D_R robust "
             f"CI lower > {r_rob['bar']:.2f} (reproduced); gain CI upper < "
             f"{gain['bar'] + gain['margin']:.2f}, margin {gain['margin']:.2f} = a quarter of the "
             "published 21.9 points (not reproduced: bugs, robustness is not in the data)",
        measured=f"{fmt('train_on_D_R/robust_acc')}; {fmt('train_on_D/robust_acc')}",
        verdict=conjunction(decide_against(*g, **gain), needed(
            decide_metric(metrics, "train_on_D_R/robust_acc", **r_rob))),
        exhibit="D", if_reproduced="features", if_not="bugs",
        literature="CIFAR-10, L2 eps 0.25: 85.4% std, 21.85% robust (Ilyas et al. 2019, "
                   "Fig. 2b); the released robust_CIFAR: 84% std, 48% robust "
                   "(MadryLab/constructed-datasets README)",
        checks=checks_of(metrics, "train_on_D_R/robust_acc", "train_on_D/robust_acc")))
    bar, m = x_det / num_classes, threshold("ilyas.D_rand_D_det.std_acc.margin")
    for name, lit in (("D_rand", "63.3%"), ("D_det", "43.7%")):
        key = f"train_on_{name}/std_acc"
        claims.append(make_claim(
            claim=f"{name}: well above chance on the original test set",
            rule=f"std acc CI lower > {bar:.2f} = {x_det:g}/K (reproduced); CI upper < "
                 f"{bar + m:.2f}, margin {m:.2f} = a quarter of D_det's published 23.7 "
                 f"points past {x_det:g}/K (not reproduced: bugs)", measured=fmt(key),
            verdict=decide_metric(metrics, key, bar=bar, margin=m), exhibit="D",
            if_reproduced="features", if_not="bugs", literature=f"CIFAR-10: {lit}"))
    return claims


__all__ = ["decide"]
