"""``eisbench bench replace``: distil networks into simpler, readable replacements and measure
how faithfully they stand in (the "replace" task of Casper's engineering tasks).

1. Any model: a 10-class network on the dataset (``model_arch``, cached) is distilled by every
   distiller of :data:`~eisbench.replace.DISTILLERS` at every size of its grid; agreement with
   the network on the test set and on out-of-distribution images (scikit-learn's digits drawn
   like MNIST, :func:`~eisbench.data.ood.digits_like`) against size: the Pareto plot.
2. EIS VII challenge 1 (:mod:`eisbench.replace.challenge1`): the challenge's CNN trained on
   MNIST relabelled by a template-similarity band; the program search recovers a rule from the
   network alone. Headline ``replace/challenge1/agreement``: the recovered rule's agreement
   with the network on the test set (target >= 0.95). Ablation: the same search without the
   true template (training image 6) among its candidates. Without the hint
   (:mod:`eisbench.bench.replace_recover`): candidates recovered from the network and the
   whole training set, for this network and for networks whose clue is a training image past
   the first candidates or a test image (``replace/challenge1/<case>/agreement``).
3. EIS VII challenge 2 (:mod:`eisbench.replace.challenge2`): the challenge's one-layer
   transformer trained on the challenge's own labelling of the pairs, on the original's
   training half (``c2``: the published recipe cut to 1000 epochs, ``--set c2.epochs=5000`` for
   all of it; the quick preset a smaller network, 400 epochs); every distiller on the training
   half, fidelity on the held-out half, and every replacement's accuracy on the true labels
   beside the network's: ``replace/challenge2/best_distiller_minus_network`` answers whether
   a replacement recovers the labelling better than the network it was distilled from.

The parts are in :mod:`eisbench.bench.replace_parts`.

Fit/validation/test: replacements are fitted on the first ``n_fit`` training images (the
model's labels), one size per distiller is chosen on the last ``n_val`` training images (the
smallest within ``tolerance`` of the distiller's best validation agreement; for challenge 2 the
training half is split 80/20), and agreement is reported on the test set (challenge 2: the
held-out half). Intervals: t-intervals over network seeds when there are several (n = seeds),
else Wilson intervals over the test images (n = images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eisbench import data as datasets
from eisbench.bench.replace_parts import Setting, any_model, challenge_1, challenge_2
from eisbench.core.config import resolve_device
from eisbench.data.ood import digits_like
from eisbench.replace import DISTILLERS, challenge2
from eisbench.replace.challenge2 import Challenge2Config
from eisbench.runs.claims import verdict
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.store import StageLog, Store

TARGET = 0.95


@dataclass(frozen=True)
class ReplaceBenchConfig:
    """The benchmark's settings; :data:`QUICK` and :data:`FULL` are the presets."""

    dataset: str = "mnist"
    data_root: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)  # network training seeds (both challenges)
    device: str = "cpu"
    distillers: tuple[str, ...] = ()  # () = every registered distiller
    n_fit: int = 10000  # first training images: the distillation set
    n_val: int = 5000  # last training images: choosing the size
    n_test: int | None = None  # first test images (None: all)
    tolerance: float = 0.005
    program_terms: tuple[int, ...] = (1, 2, 3, 4, 6)  # the challenges' program sizes
    model_program_terms: tuple[int, ...] = (2, 4, 8, 12, 16)  # the 10-class network's
    n_templates: int = 32  # the program's data templates: the first images of the fit set
    model_arch: str = "cnn-small"  # the 10-class network of part 1
    model_epochs: int = 3
    model_n_train: int | None = None
    c1_epochs: int = 8
    c1_batch_size: int = 128
    c1_lr: float = 3e-3
    c1_n_train: int | None = None
    c1_recover_k: int = 16  # without the hint: training images nearest the network's probe
    c1_clues: tuple[str, ...] = ("train", "test")  # ... and networks on other clues
    c2: Challenge2Config = challenge2.SHORT  # challenge 2's transformer (ORIGINAL: 5000 ep.)


FULL = ReplaceBenchConfig()
QUICK = ReplaceBenchConfig(seeds=(0,), n_fit=5000, n_val=2000, program_terms=(1, 2, 3, 4),
                           model_program_terms=(2, 4, 8, 12), model_epochs=2,
                           model_n_train=20000,
                           c2=challenge2.QUICK)


def distiller_names(cfg: ReplaceBenchConfig) -> list[str]:
    """The distillers benchmarked (default: every registered one); an unknown name fails."""
    names = list(cfg.distillers) or DISTILLERS.names()
    for n in names:
        DISTILLERS.get(n)  # an unknown name fails here, with suggestions
    return names


def setting(cfg: ReplaceBenchConfig, store: Store) -> Setting:
    """Check the config and load the dataset, its test and out-of-distribution images."""
    device = resolve_device(cfg.device)
    names = distiller_names(cfg)
    if not cfg.seeds or cfg.n_fit < 10 or cfg.n_val < 10 or not cfg.program_terms:
        raise ValueError("need at least one seed, n_fit >= 10, n_val >= 10 and program_terms")
    ds = datasets.load(cfg.dataset, root=cfg.data_root)
    if cfg.n_fit + cfg.n_val > len(ds.x_train):
        raise ValueError(f"n_fit + n_val = {cfg.n_fit + cfg.n_val} exceeds the "
                         f"{len(ds.x_train)} training images; lower them with --set")
    n_test = cfg.n_test or len(ds.x_test)
    x_ood, _ = digits_like(ds.shape)
    return Setting(store=store, device=device, names=names, ds=ds, log=StageLog(),
                   n_test=n_test, x_test=ds.x_test[:n_test], x_ood=x_ood)


def measure(cfg: ReplaceBenchConfig, *, out: Path, store: Store) -> Result:
    """Distil the 10-class network and both challenges' networks, judge the claims; the
    images the report shows go to ``replace_images.safetensors``."""
    st = setting(cfg, store)
    metrics: dict[str, Metric] = {}
    images: dict[str, torch.Tensor] = {}
    details: dict[str, Any] = {
        "distillers": {n: {"size_param": DISTILLERS.get(n).size_param,
                           "unit": DISTILLERS.get(n).unit,
                           "summary": DISTILLERS.get(n).summary} for n in st.names},
        "ood": "scikit-learn digits drawn like MNIST (digits_like)"}
    for part, run in (("model", any_model), ("challenge1", challenge_1),
                      ("challenge2", challenge_2)):
        m, d, im = run(st, cfg)
        metrics |= m
        details[part] = d
        images |= im
    return Result(metrics=metrics, claims=decide(metrics, details, target=TARGET),
                  details=details,
                  artifacts={"replace_images.safetensors": {k: v.contiguous()
                                                            for k, v in images.items()}},
                  data={st.ds.name: st.ds.sha256}, stages=st.log.entries,
                  device=str(st.device))


def _ci(m: Metric) -> str:
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] (n={m['n']})"


def _challenge1_claims(m: dict[str, Metric], c1: dict[str, Any], target: float
                       ) -> list[Claim]:
    """The program search recovers challenge 1's rule, and needs the true template."""
    a = m["replace/challenge1/agreement"]
    found = all(f and f[0] == f"x[{c1['template_index']}]" for f in c1["found_templates"])
    b = m["replace/challenge1/ablation_agreement"]
    return [{
        "claim": "The program search recovers challenge 1's rule from the network alone: "
                 "a one-line rule that agrees with the network on >= 95% of the test set",
        "rule": f"mean test agreement >= {target} and the rule's first template is "
                f"training image {c1['template_index']} for every seed (reproduced); mean "
                f"< {target} (not reproduced); else inconclusive",
        "measured": f"agreement {_ci(a)}; templates found {c1['found_templates']}; "
                    f"rule (first seed): {c1['rules'][0] if c1['rules'] else '-'}",
        "verdict": verdict(a["value"] >= target and found, a["value"] < target)}, {
        "claim": "The search over the first training images as candidates needs the true "
                 f"template among them (ablation: training image {c1['template_index']} "
                 "excluded)",
        "rule": f"ablation agreement CI upper bound < {target} (reproduced); mean >= "
                f"{target} (not reproduced); else inconclusive",
        "measured": f"ablation agreement {_ci(b)} vs {a['value']:.3f} with it",
        "verdict": verdict(b["ci95"][1] < target, b["value"] >= target)},
        *_nohint_claims(m, c1, target)]


def _nohint_claims(m: dict[str, Metric], c1: dict[str, Any], target: float) -> list[Claim]:
    """Challenge 1's rule is found without the hint, wherever the clue image is."""
    cases = [k for k in ("recovered", "clue_train", "clue_test") if k in c1.get("nohint", {})]
    if not cases:
        return []
    a = {k: m[f"replace/challenge1/{k}/agreement"] for k in cases}
    return [{
        "claim": "Without the hint (candidate templates recovered from the network and the "
                 "whole training set, none of the first training images), the program search "
                 "finds a rule that agrees with the network on >= 95% of the test set, "
                 "whether the clue is training image 6, a training image past the first "
                 "candidates or a test image",
        "rule": f"mean test agreement >= {target} in every case (reproduced); CI upper bound "
                f"< {target} in some case (not reproduced); else inconclusive",
        "measured": "; ".join(f"{k} {_ci(v)}" for k, v in a.items())
                    + f" (first-K candidates: with image {c1['template_index']} "
                    f"{m['replace/challenge1/agreement']['value']:.3f}, without "
                    f"{m['replace/challenge1/ablation_agreement']['value']:.3f})",
        "verdict": verdict(all(v["value"] >= target for v in a.values()),
                           any(v["ci95"][1] < target for v in a.values()))}]


def _network_claims(m: dict[str, Metric], details: dict[str, Any], target: float
                    ) -> list[Claim]:
    """Both challenges' networks learn their task; a replacement stands in for challenge 2's."""
    n1 = m["replace/challenge1/network_acc"]
    return [{
        "claim": "Challenge 1's network learns the labelling (published network: 95.58%)",
        "rule": f"mean test accuracy on the rule's labels >= {target} (reproduced); CI upper "
                f"bound < {target} (not reproduced); else inconclusive",
        "measured": f"network accuracy {_ci(n1)}",
        "verdict": verdict(n1["value"] >= target, n1["ci95"][1] < target)},
        *_challenge2_claims(m, details["challenge2"], target)]


def _challenge2_claims(m: dict[str, Metric], c2: dict[str, Any], target: float
                       ) -> list[Claim]:
    """Challenge 2's transformer learns the original labelling, a replacement stands in for
    it, and whether a replacement recovers the labelling better than the network."""
    n2, f2 = m["replace/challenge2/network_acc"], m["replace/challenge2/fidelity"]
    d = m["replace/challenge2/best_distiller_minus_network"]
    best, pub = c2["best"][0], c2["published_network"]
    truth = "; ".join(f"{k} {v['value']:.4f}" for k, v in m.items()
                      if k.startswith("replace/challenge2/") and k.endswith("/truth_acc"))
    return [{
        "claim": "Challenge 2's transformer generalises to the held-out half of the pairs "
                 f"(the challenge's labelling; published network: {c2['published_acc']} by the "
                 f"challenge's count, {pub['heldout_acc']:.4f} on the held-out half)",
        "rule": f"mean held-out accuracy >= {target} (reproduced); CI upper bound < {target} "
                "(not reproduced); else inconclusive",
        "measured": f"held-out accuracy {_ci(n2)}",
        "verdict": verdict(n2["value"] >= target, n2["ci95"][1] < target)}, {
        "claim": "A distilled replacement stands in for challenge 2's transformer on the "
                 "held-out half",
        "rule": f"mean held-out fidelity of the replacement chosen on validation >= {target} "
                f"(reproduced); CI upper bound < {target} (not reproduced); else inconclusive",
        "measured": f"fidelity {_ci(f2)}; chosen (first seed): {best['distiller']} size "
                    f"{best['size']}",
        "verdict": verdict(f2["value"] >= target, f2["ci95"][1] < target)}, {
        "claim": "No replacement distilled from challenge 2's transformer recovers the "
                 "challenge's labelling better than the transformer itself",
        "rule": "held-out accuracy on the true labels of the distiller chosen on the true "
                "labels of the validation pairs, minus the network's, paired: CI upper bound < "
                "0 (reproduced); CI lower bound > 0 (not reproduced); else inconclusive",
        "measured": f"difference {_ci(d)}; network {n2['value']:.4f}; distillers: {truth}; "
                    f"chosen per seed: {c2['truth_pick']}",
        "verdict": verdict(d["ci95"][1] < 0, d["ci95"][0] > 0)}]


def _ood_claims(m: dict[str, Metric]) -> list[Claim]:
    """Replacements of the 10-class network are less faithful out of distribution."""
    drops = {k.split("/")[2]: (m[k]["value"], m[k.replace("_test", "_ood")]["value"])
             for k in m if k.startswith("replace/model/") and k.endswith("/agreement_test")
             and k.replace("_test", "_ood") in m}
    if not drops:
        return []
    return [{
        "claim": "Replacements of the 10-class network are less faithful out of "
                 "distribution than on its test set",
        "rule": "OOD agreement < test agreement for every distiller's chosen size "
                "(reproduced); >= for every one (not reproduced); else inconclusive",
        "measured": "; ".join(f"{k} {t:.3f} -> {o:.3f}" for k, (t, o) in drops.items()),
        "verdict": verdict(all(o < t for t, o in drops.values()),
                           all(o >= t for t, o in drops.values()))}]


def decide(metrics: dict[str, Metric], details: dict[str, Any], *,
           target: float) -> list[Claim]:
    """Verdicts by rules fixed in advance."""
    claims: list[Claim] = []
    if "replace/challenge1/agreement" in metrics:
        claims += _challenge1_claims(metrics, details["challenge1"], target)
    return claims + _network_claims(metrics, details, target) + _ood_claims(metrics)
