"""The claims of the saliency experiment (exhibit A) and the rules that judge them."""

from __future__ import annotations

from collections.abc import Sequence

from eisbench.runs.claims import checks_of, decide_metric, fmt, make_claim, provided, unanimous
from eisbench.runs.preregistered import bar_margin, threshold
from eisbench.runs.record import Claim, Metric

LITERATURE = {
    "robustness": "Ross & Doshi-Velez 2018 (MNIST, SVHN, notMNIST): input-gradient-regularised "
                  "networks resist FGSM, TGSM and JSMA examples, transferred ones included, "
                  "better than standard networks (accuracy-vs-eps curves, no single figure)",
    "saliency": "Tsipras et al. 2019 (Fig. 2, MNIST/CIFAR-10/ImageNet) and Ross & Doshi-Velez "
                "2018: input gradients of robust or gradient-regularised models align with the "
                "object's strokes and edges; standard models' look like noise (qualitative)",
    "inversion": "Engstrom et al. 2019 (CIFAR-10, ImageNet): inverting a robust model's "
                 "representation yields an image of the target's class, a standard model's "
                 "stays an image of the start (qualitative figures)",
}


def decide(metrics: dict[str, Metric], *, num_classes: int) -> list[Claim]:
    """Verdicts by rules fixed in advance, on 95% CIs over seeds, each of the form of
    :func:`~eisbench.runs.claims.decide_against` on a paired per-seed difference or a rate
    (reproduced: the CI lies past the bar; not reproduced: its far end stays short of bar +
    margin). The literature is qualitative here, so margins are the smallest effects worth
    naming: 5 points of robust accuracy or of a judge's rate, 2 points of stroke share. The
    numbers are ``saliency.*`` in :data:`~eisbench.runs.preregistered.THRESHOLDS`, which names
    the pilot they were chosen on (seed ``saliency.pilot.seed``, 0: ``PROTOCOL_NOTE``), which
    :func:`pilot_check` keeps out of the scored seeds.

    - Check: the fast-AT model is more robust than the standard one (paired robust-accuracy
      difference CI lower > 0; refuted if CI upper < 0.05). Every claim below compares a
      robust model with a standard one; if adversarial training bought nothing, none of them
      says anything, so a failed check makes the exhibit inconclusive.
    - Input-gradient regularisation buys robustness (paired difference from the standard
      model, bar 0, margin 0.05). Both worlds predict this (a regulariser for the bug world,
      fewer non-robust features for the feature world): either outcome maps to inconclusive.
    - Robust models' saliency aligns better with the strokes: the fast-AT model's paired
      stroke-share gain over the standard model's (bar 0, margin 0.02) is reproduced for both
      gradient and smoothgrad; not reproduced only if refuted for both. Integrated gradients
      are reported, not judged: from a black baseline they give zero attribution to black
      pixels by construction, from a grey one they score a path through grey images. Both
      worlds predict better alignment (fast adversarial training is, to first order, an
      input-gradient penalty, which smooths the gradient maps themselves): inconclusive
      either way.
    - Robust models' inversions are recognised far more often: the paired gain of the judge's
      target rate on fast-AT inversions (start: another class's image) over the standard
      model's: bar 0.10, margin 0.05. Reproduced supports the feature world (the robust
      features are the human-meaningful ones, Engstrom et al. 2019); not reproduced is
      inconclusive: on data whose standard features are already legible, or where a standard
      model's inversion carries the target's non-robust features to the judge (they
      transfer, in the feature world), both rates are high.
    - Robust models' inversions are recognised at all: the judge's target rate on fast-AT
      inversions, bar 2/K, margin 0.05; a refutation counts only if the inversion reached the
      target on the fast-AT model itself (its own target rate CI lower > 0.5). Reproduced is
      inconclusive (the regulariser account also allows legible inversions); not reproduced
      supports bugs: the model is robust (the check) yet its representation is not
      human-legible, so robustness came without the change of features that the feature
      account says it requires ("the non-robust and non-interpretable features are the same
      ones", seed exhibit A), as the regulariser account allows.

    The check and the input-gradient claim read robust accuracies: they carry the attack
    suite's sanity checks (:func:`~eisbench.runs.claims.checks_of`), and a failed one makes
    them inconclusive.
    """
    def f(name: str) -> str:
        return fmt(metrics, name)

    claims = [_robust_check(metrics)]
    ig, std = "saliency/input-grad/robust_acc", "saliency/standard/robust_acc"
    diff, ir = "saliency/input-grad-vs-standard/robust-diff", bar_margin(
        "saliency.input_grad.robust_diff")
    claims.append(make_claim(
        claim="Input-gradient regularisation buys robustness (robust accuracy above the "
              "standard model's)",
        rule=f"paired robust-accuracy difference from the standard model: CI lower > "
             f"{ir['bar']:g} (reproduced); CI upper < {ir['bar'] + ir['margin']:.2f}, margin "
             f"{ir['margin']:.2f} (not reproduced); inconclusive for the worlds either way (both "
             "predict it)",
        measured=f"{f(ig)}; {f(std)}; {f(diff)}; clean: "
                 f"{f('saliency/input-grad/std_acc')}",
        verdict=decide_metric(metrics, diff, **ir), exhibit="A",
        if_reproduced="inconclusive", if_not="inconclusive",
        literature=LITERATURE["robustness"], checks=checks_of(metrics, ig, std, diff)))
    meths = ("gradient", "smoothgrad")
    keys = [(f"saliency/fast-at/{m}/stroke_share", f"saliency/standard/{m}/stroke_share",
             f"saliency/fast-at-vs-standard/{m}/stroke-share-diff") for m in meths]
    st = bar_margin("saliency.stroke_share_diff")
    claims.append(make_claim(
        claim="Robust models' saliency maps align better with the digit strokes",
        rule=f"paired stroke-share gain of fast-AT over standard (|attribution| mass on pixels "
             f"> stroke_threshold): CI lower > {st['bar']:g} for gradient and smoothgrad "
             f"(reproduced); CI upper < {st['bar'] + st['margin']:.2f}, margin "
             f"{st['margin']:.2f}, for both (not reproduced); inconclusive for the worlds either "
             "way (an input-gradient penalty smooths the maps in both)",
        measured="; ".join(f"{f(r)} vs {f(s)}" for r, s, _ in keys),
        verdict=unanimous(*(decide_metric(metrics, d, **st) for _, _, d in keys)),
        exhibit="A", if_reproduced="inconclusive", if_not="inconclusive",
        literature=LITERATURE["saliency"]))
    claims.extend(_inversion_claims(metrics, num_classes=num_classes))
    return claims


def pilot_check(seeds: Sequence[int]) -> Claim:
    """The check that goes before :func:`decide`'s claims: the scored ``seeds`` exclude the
    pilot's. The rules were written after seeing the pilot's seed, so verdicts on it are not
    pre-registered: if it is among the seeds, the check fails and the exhibit is inconclusive.

    Example:
        >>> pilot_check((1, 2, 3))["verdict"], pilot_check((0, 1, 2))["verdict"]
        ('reproduced', 'not reproduced')
    """
    pilot = int(threshold("saliency.pilot.seed"))
    return make_claim(
        claim="Check: the rules are judged on seeds their pilot never saw",
        rule=f"the scored seeds exclude the pilot's seed {pilot} (passes); otherwise fails: the "
             "rules were written after seeing it, and the exhibit is inconclusive",
        measured=f"scored seeds {', '.join(map(str, seeds))}",
        verdict="not reproduced" if pilot in seeds else "reproduced", exhibit="A",
        if_reproduced="inconclusive", if_not="inconclusive", role="check")


def _robust_check(metrics: dict[str, Metric]) -> Claim:
    """The check of :func:`decide`: adversarial training made the fast-AT model robust."""
    d, c = "saliency/fast-at-vs-standard/robust-diff", bar_margin("saliency.check.robust_diff")
    return make_claim(
        claim="Check: the fast-AT model is more robust than the standard model (every claim "
              "of this exhibit compares the two)",
        rule=f"paired robust-accuracy difference: CI lower > {c['bar']:g} (passes); CI upper < "
             f"{c['bar'] + c['margin']:.2f}, margin {c['margin']:.2f} (fails: the exhibit is "
             "inconclusive)",
        measured=f"{fmt(metrics, 'saliency/fast-at/robust_acc')}; "
                 f"{fmt(metrics, 'saliency/standard/robust_acc')}; {fmt(metrics, d)}",
        verdict=decide_metric(metrics, d, **c), exhibit="A",
        if_reproduced="inconclusive", if_not="inconclusive", role="check",
        checks=checks_of(metrics, "saliency/fast-at/robust_acc", "saliency/standard/robust_acc",
                         d))


def _inversion_claims(metrics: dict[str, Metric], *, num_classes: int) -> list[Claim]:
    """The two inversion claims of :func:`decide`."""
    r, s = ("saliency/fast-at/inversion_other/judge_target_rate",
            "saliency/standard/inversion_other/judge_target_rate")
    diff = "saliency/fast-at-vs-standard/inversion_other/judge-target-diff"
    own = "saliency/fast-at/inversion_other/self_target_rate"
    dg, own_bm = (bar_margin("saliency.inversion.judge_target_diff"),
                  bar_margin("saliency.inversion.self_target_rate"))
    x, m = (threshold("saliency.inversion.judge_target_rate.bar_x_chance"),
            threshold("saliency.inversion.judge_target_rate.margin"))
    chance2 = x / num_classes
    return [make_claim(
        claim="Robust models' representation inversions are recognised as the target class by "
              "an independent classifier far more often than standard models'",
        rule=f"paired gain of the judge's target rate, fast-AT minus standard inversions "
             f"(start: an image of another class): CI lower > {dg['bar']:.2f} (reproduced: "
             f"features); CI upper < {dg['bar'] + dg['margin']:.2f}, margin {dg['margin']:.2f} "
             "(not reproduced: inconclusive, a standard model's inversion can fool the judge "
             "through transferable non-robust features)",
        measured=f"{fmt(metrics, r)}; {fmt(metrics, s)}; {fmt(metrics, diff)}",
        verdict=decide_metric(metrics, diff, **dg),
        exhibit="A", if_reproduced="features", if_not="inconclusive",
        literature=LITERATURE["inversion"]), make_claim(
        claim="Robust models' representation inversions are recognised as the target class by "
              "an independent classifier (robust features are human-legible)",
        rule=f"judge's target rate on fast-AT inversions: CI lower > {chance2:.2f} = {x:g}/K "
             f"(reproduced: inconclusive); CI upper < {chance2 + m:.2f}, margin {m:.2f}, while "
             f"the fast-AT model itself gives its inversions the target (own target rate CI "
             f"lower > {own_bm['bar']:g}) (not reproduced: bugs, robust yet not legible)",
        measured=f"{fmt(metrics, r)}; {fmt(metrics, own)}",
        verdict=provided(decide_metric(metrics, r, bar=chance2, margin=m),
                         decide_metric(metrics, own, **own_bm)),
        exhibit="A", if_reproduced="inconclusive", if_not="bugs",
        literature=LITERATURE["inversion"])]
