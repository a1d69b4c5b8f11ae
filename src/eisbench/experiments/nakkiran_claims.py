"""The claims of the Nakkiran experiment (:mod:`eisbench.experiments.nakkiran`): verdicts by
rules fixed in advance (:mod:`eisbench.runs.preregistered`) on its metrics."""

from __future__ import annotations

from typing import Any

from eisbench.runs.claims import checks_of, conjunction, decide_metric, fmt, make_claim, needed
from eisbench.runs.preregistered import bar_margin, threshold
from eisbench.runs.record import Claim, Metric

BARELY, CLEARLY = (threshold("nakkiran.transfer_rate.barely"),  # "barely" and "clearly"
                   threshold("nakkiran.transfer_rate.clearly"))  # transferring rates

def decide(metrics: dict[str, Metric], *, num_classes: int) -> list[Claim]:
    """Verdicts by rules fixed in advance, on 95% CIs over seeds, each of the form of
    :func:`~eisbench.runs.claims.decide_against` (reproduced: the CI lies past the bar; not
    reproduced: its far end stays short of bar + margin). BARELY = 0.05, CLEARLY = 0.20 (a
    pre-registered pair: a transfer claim is refuted only across the gap between them), K
    classes; for D_det accuracies the margin is 0.05, about a quarter of D_det's published 23.7
    (Linf) points past 2/K (Ilyas et al.'s 43.7%). The numbers are ``nakkiran.*`` in
    :data:`~eisbench.runs.preregistered.THRESHOLDS`. (reproduced / not reproduced) supports:

    - Plain targeted PGD transfers: reproduced if its transfer rate CI lower > CLEARLY; not
      reproduced if its CI upper < BARELY (features / bugs: the seed's World 2 expects a
      feature-carrying perturbation to transfer).
    - Non-transferable examples reach the target but barely transfer: reproduced if their
      success rate CI lower > 0.5 and transfer rate CI upper < BARELY; not reproduced if the
      transfer CI lower > CLEARLY (bugs / features: even perturbations optimised to be
      specific to f still carry over to held-out models, so model-specific "bugs" could not be
      made). A success rate below 0.5 is a failed attack: inconclusive.
    - D_det of plain PGD is well above chance on the test set: reproduced if its accuracy CI
      lower > 2/K; not reproduced if its CI upper < 2/K + 0.05 (features / bugs).
    - D_det of the non-transferable attack is not: reproduced if its accuracy CI upper < 2/K;
      not reproduced if its CI lower > 2/K - 0.05 (bugs / features: even these perturbations
      teach what generalises).
    - Adversarial squares: reproduced if the network's robust accuracy CI upper < 0.5; not
      reproduced if its CI lower > 0.9 (margin -0.4, the old pair of bars) (bugs / features:
      in a distribution whose every useful feature is robust, the feature account predicts a
      robust model, the bug account a fragile overfit one). Both outcomes need the setup's
      checks: the network fits (clean acc CI lower > 0.9) and the robust classifier's exact
      robust accuracy CI lower > 0.99; otherwise inconclusive. The claim carries the sanity
      checks of the network's robust accuracy (from the ``binary`` suite by default; none if
      ``squares.suite`` is None): a failed one makes it inconclusive.
    Anything in between is inconclusive.
    """
    def at(k: str, **kw: Any) -> str:
        return decide_metric(metrics, f"nakkiran/{k}", **kw)

    x, m = (threshold("nakkiran.D_det.std_acc.bar_x_chance"),
            threshold("nakkiran.D_det.std_acc.margin"))
    bar, sr = x / num_classes, bar_margin("nakkiran.non_transferable.success_rate")
    return [
        make_claim(claim="Plain targeted PGD examples transfer to an independently trained "
                         "copy",
                   rule=f"transfer CI lower > {CLEARLY:.2f} (reproduced: features); CI upper "
                        f"< {BARELY:.2f} (not reproduced: bugs)",
                   measured=_shown(metrics, "pgd/transfer_rate", "pgd/success_rate"),
                   verdict=at("pgd/transfer_rate", bar=CLEARLY, margin=BARELY - CLEARLY),
                   exhibit="E", if_reproduced="features", if_not="bugs",
                   literature="82.5% transfer (Nakkiran 2019, CIFAR-10, L2)"),
        make_claim(claim="Non-transferable examples reach the target on f but barely transfer",
                   rule=f"success CI lower > {sr['bar']:.2f} and transfer CI upper < {BARELY:.2f} "
                        f"(reproduced: bugs); transfer CI lower > {CLEARLY:.2f} (not "
                        "reproduced: features, model-specific examples could not be made)",
                   measured=_shown(metrics, "non_transferable/success_rate",
                                   "non_transferable/transfer_rate"),
                   verdict=conjunction(
                       needed(at("non_transferable/success_rate", **sr)),
                       at("non_transferable/transfer_rate", bar=BARELY,
                          margin=BARELY - CLEARLY, higher_means_reproduced=False)),
                   exhibit="E", if_reproduced="bugs", if_not="features",
                   literature="1.7% transfer (Nakkiran 2019, CIFAR-10, L2)"),
        make_claim(claim="D_det built with plain PGD is well above chance on the test set",
                   rule=f"std acc CI lower > {bar:.2f} = {x:g}/K (reproduced: features); CI "
                        f"upper < {bar + m:.2f}, margin {m:.2f} (not reproduced: bugs)",
                   measured=_shown(metrics, "pgd/D_det_std_acc"),
                   verdict=at("pgd/D_det_std_acc", bar=bar, margin=m),
                   exhibit="E", if_reproduced="features", if_not="bugs",
                   literature="33.2% (Nakkiran 2019, CIFAR-10, L2)"),
        make_claim(claim="D_det built with the non-transferable attack is not",
                   rule=f"std acc CI upper < {bar:.2f} = {x:g}/K (reproduced: bugs); CI lower > "
                        f"{bar - m:.2f}, margin {m:.2f} (not reproduced: features)",
                   measured=_shown(metrics, "non_transferable/D_det_std_acc",
                                   "non_transferable/D_det_shifted_acc") + " (against y+1)",
                   verdict=at("non_transferable/D_det_std_acc", bar=bar, margin=m,
                              higher_means_reproduced=False),
                   exhibit="E", if_reproduced="bugs", if_not="features",
                   literature="2.8% (Nakkiran 2019, CIFAR-10, L2)"),
        _squares_claim(metrics),
    ]


def _shown(metrics: dict[str, Metric], *keys: str) -> str:
    """``"k = v [lo, hi]"`` of each ``nakkiran/k``, joined by ``"; "``."""
    return "; ".join(fmt(metrics, f"nakkiran/{k}", label=k) for k in keys)


def _squares_claim(metrics: dict[str, Metric]) -> Claim:
    """The adversarial-squares claim (rule in :func:`decide`)."""
    fits, exact, rob = (bar_margin("nakkiran.squares.net_std_acc"),
                        bar_margin("nakkiran.squares.robust_classifier_robust_acc"),
                        bar_margin("nakkiran.squares.net_robust_acc"))
    setup = conjunction(decide_metric(metrics, "nakkiran/squares/net_std_acc", **fits),
                        decide_metric(metrics, "nakkiran/squares/robust_classifier_robust_acc",
                                      **exact))
    fragile = decide_metric(metrics, "nakkiran/squares/net_robust_acc", **rob,
                            higher_means_reproduced=False)
    return make_claim(
        claim="Adversarial squares: an overfit network is fragile although every useful "
              "feature is robust",
        rule=f"net robust acc CI upper < {rob['bar']:.2f} (reproduced: bugs); CI lower > "
             f"{rob['bar'] - rob['margin']:.2f} (not reproduced: features, robust features alone "
             f"gave a robust network); either needs net clean acc CI lower > {fits['bar']:.2f} "
             f"and the robust classifier's exact robust acc CI lower > {exact['bar']:.2f}",
        measured=_shown(metrics, "squares/net_std_acc", "squares/net_robust_acc",
                        "squares/robust_classifier_robust_acc"),
        verdict=fragile if setup == "reproduced" else "inconclusive",
        exhibit="E", if_reproduced="bugs", if_not="features",
        literature="qualitative (Nakkiran 2019)",
        checks=checks_of(metrics, "nakkiran/squares/net_robust_acc"))
