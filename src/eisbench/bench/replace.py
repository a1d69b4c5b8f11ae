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
   true template (training image 6) among its candidates.
3. EIS VII challenge 2 (:mod:`eisbench.replace.challenge2`): a one-layer transformer on pairs
   trained on half of them; every distiller on the training half, fidelity on the held-out
   half.

Fit/validation/test: replacements are fitted on the first ``n_fit`` training images (the
model's labels), one size per distiller is chosen on the last ``n_val`` training images (the
smallest within ``tolerance`` of the distiller's best validation agreement; for challenge 2 the
training half is split 80/20), and agreement is reported on the test set (challenge 2: the
held-out half). Intervals: t-intervals over network seeds when there are several (n = seeds),
else Wilson intervals over the test images (n = images).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from eisbench import data as datasets
from eisbench.core.config import resolve_device, to_plain
from eisbench.core.progress import say
from eisbench.core.stats import mean_ci, wilson_ci
from eisbench.data.ood import digits_like
from eisbench.models import ModelSpec
from eisbench.replace import DISTILLERS, challenge1, challenge2, model_predictions
from eisbench.replace.fidelity import Point, choose, sweep
from eisbench.replace.program import Program
from eisbench.runs.record import (
    SCHEMA_VERSION,
    Claim,
    Metric,
    Record,
    git_state,
    library_versions,
    now,
)
from eisbench.runs.record import write as write_record
from eisbench.runs.stages import Context, Tensors, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig

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
    c2_steps: int = 3000
    c2_batch_size: int = 512
    c2_lr: float = 3e-3


FULL = ReplaceBenchConfig()
QUICK = ReplaceBenchConfig(seeds=(0,), n_fit=5000, n_val=2000, program_terms=(1, 2, 3, 4),
                           model_program_terms=(2, 4, 8, 12), model_epochs=2,
                           model_n_train=20000)


def _metric(value: float, lo: float, hi: float, n: int, *, higher: bool = True) -> Metric:
    return {"value": float(value), "ci95": [min(lo, value), max(hi, value)], "n": int(n),
            "higher_is_better": higher}


def over_seeds(values: list[float], *, n_items: int, higher: bool = True,
               binomial: bool = True) -> Metric:
    """Mean over seeds with a t-interval (n = seeds); one seed: Wilson's interval over the
    ``n_items`` images of a rate (``binomial``), else a zero-width interval."""
    if len(values) > 1:
        m, lo, hi = mean_ci(values)
        return _metric(m, lo, hi, len(values), higher=higher)
    v = values[0]
    if binomial:
        lo, hi = wilson_ci(round(v * n_items), n_items)
        return _metric(v, lo, hi, n_items, higher=higher)
    return _metric(v, v, v, 1, higher=higher)


def _names(cfg: ReplaceBenchConfig) -> list[str]:
    names = list(cfg.distillers) or DISTILLERS.names()
    for n in names:
        DISTILLERS.get(n)  # an unknown name fails here, with suggestions
    return names


def _grids(cfg: ReplaceBenchConfig, *, many: bool = False) -> dict[str, tuple[Any, ...]]:
    """Size grids that differ from the distillers' defaults (``many``: a 10-class network)."""
    return {"program": cfg.model_program_terms if many else cfg.program_terms}


def _hyper(cfg: ReplaceBenchConfig, **program: Any) -> dict[str, dict[str, Any]]:
    return {"program": {"n_data": cfg.n_templates, **program}}


def _subject_metrics(metrics: dict[str, Metric], subject: str,
                     chosen: list[dict[str, Point]], n_test: int, n_ood: int | None) -> None:
    """Per distiller: agreement on test and OOD and size of the chosen replacement."""
    for name in chosen[0]:
        pts = [c[name] for c in chosen]
        metrics[f"replace/{subject}/{name}/agreement_test"] = over_seeds(
            [p.agree_test for p in pts], n_items=n_test)
        if n_ood is not None and all(p.agree_ood is not None for p in pts):
            metrics[f"replace/{subject}/{name}/agreement_ood"] = over_seeds(
                [float(p.agree_ood or 0.0) for p in pts], n_items=n_ood)
        metrics[f"replace/{subject}/{name}/size"] = over_seeds(
            [float(p.size) for p in pts], n_items=1, higher=False, binomial=False)


def run_replace_bench(cfg: ReplaceBenchConfig, *, out: Path, store: Store) -> Record:
    """Run the benchmark and write ``out/record.json`` and ``out/replace_images.safetensors``."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    names = _names(cfg)
    if not cfg.seeds or cfg.n_fit < 10 or cfg.n_val < 10 or not cfg.program_terms:
        raise ValueError("need at least one seed, n_fit >= 10, n_val >= 10 and program_terms")
    log = StageLog()
    ds = datasets.load(cfg.dataset, root=cfg.data_root)
    if cfg.n_fit + cfg.n_val > len(ds.x_train):
        raise ValueError(f"n_fit + n_val = {cfg.n_fit + cfg.n_val} exceeds the "
                         f"{len(ds.x_train)} training images; lower them with --set")
    key = f"{ds.name}:{ds.sha256}"
    n_test = cfg.n_test or len(ds.x_test)
    x_test = ds.x_test[:n_test]
    x_ood, _ = digits_like(ds.shape)
    images: dict[str, torch.Tensor] = {}
    metrics: dict[str, Metric] = {}
    details: dict[str, Any] = {"distillers": {n: {"size_param": DISTILLERS.get(n).size_param,
                                                  "unit": DISTILLERS.get(n).unit,
                                                  "summary": DISTILLERS.get(n).summary}
                                              for n in names},
                               "ood": "scikit-learn digits drawn like MNIST (digits_like)"}

    # 1. any model: a 10-class network
    say(f"replace: {cfg.model_arch} on {ds.name}")
    ctx = Context(store=store, log=log, device=device)
    n_tr = cfg.model_n_train or len(ds.x_train)
    train = Tensors(ds.x_train[:n_tr], ds.y_train[:n_tr], f"{key}:train:{n_tr}")
    spec = ModelSpec(arch=cfg.model_arch, in_shape=ds.shape, num_classes=ds.num_classes)
    model, _ = train_stage(ctx, spec=spec, cfg=TrainConfig(epochs=cfg.model_epochs),
                           data=train, seed=cfg.seeds[0], desc=f"{cfg.model_arch}")
    fit, val = ds.x_train[:cfg.n_fit], ds.x_train[-cfg.n_val:]
    pts = sweep(model, fit=fit, val=val, test=x_test, ood=x_ood, distillers=names,
                grids=_grids(cfg, many=True), hyper=_hyper(cfg), generator_seed=0,
                device=device)
    pred = model_predictions(model, x_test, device=device)
    acc = float((pred == ds.y_test[:n_test]).float().mean())
    _subject_metrics(metrics, "model", [choose(pts, tolerance=cfg.tolerance)], n_test,
                     len(x_ood))
    metrics["replace/model/network_acc"] = over_seeds([acc], n_items=n_test)
    details["model"] = {"arch": cfg.model_arch, "points": [p.to_dict() for p in pts],
                        "chosen": {k: p.to_dict() for k, p in choose(pts).items()}}

    # 2. challenge 1
    x28_train, x28_test = challenge1.as_mnist(ds.x_train), challenge1.as_mnist(x_test)
    x28_ood = challenge1.as_mnist(x_ood)
    rule = challenge1.true_rule(x28_train)
    c1cfg = challenge1.Challenge1Config(epochs=cfg.c1_epochs, batch_size=cfg.c1_batch_size,
                                        lr=cfg.c1_lr, n_train=cfg.c1_n_train)
    fit28, val28 = x28_train[:cfg.n_fit], x28_train[-cfg.n_val:]
    c1: dict[str, list[Any]] = {"network_acc": [], "points": [], "chosen": [], "ablation": [],
                                "found": [], "rule": [], "rule_truth_acc": [], "band": []}
    for s in cfg.seeds:
        say(f"challenge 1: seed {s}")
        net, _, info = challenge1.train_stage(store, x_train=x28_train, data_key=key, cfg=c1cfg,
                                              seed=s, device=device, log=log)
        c1["network_acc"].append(challenge1.network_accuracy(net, x28_test, rule,
                                                             device=device))
        kept: dict[str, list[Any]] = {}
        pts = sweep(net, fit=fit28, val=val28, test=x28_test, ood=x28_ood, distillers=names,
                    grids=_grids(cfg), hyper=_hyper(cfg), generator_seed=s, device=device,
                    keep=kept)
        chosen = choose(pts, tolerance=cfg.tolerance)
        c1["points"].append([p.to_dict() for p in pts])
        c1["chosen"].append(chosen)
        abl = sweep(net, fit=fit28, val=val28, test=x28_test, ood=x28_ood,
                    distillers=["program"], grids=_grids(cfg),
                    hyper=_hyper(cfg, exclude=(challenge1.TEMPLATE_INDEX,)),
                    generator_seed=s, device=device)
        c1["ablation"].append(choose(abl, tolerance=cfg.tolerance)["program"].to_dict())
        if "program" in chosen:
            prog = kept["program"][[p for p in pts if p.distiller == "program"]
                                   .index(chosen["program"])]
            assert isinstance(prog, Program)
            used = prog.used_templates()
            c1["found"].append([n for n, _ in used])
            c1["rule"].append(prog.describe())
            c1["rule_truth_acc"].append(float((prog.predict(x28_test) ==
                                               rule.labels(x28_test)).float().mean()))
            if s == cfg.seeds[0]:
                for i, (n, img) in enumerate(used):
                    images[f"c1/found/{i}:{n}"] = img.contiguous()
        c1["band"].append(info)
    images["c1/true_template"] = rule.template.contiguous()
    _subject_metrics(metrics, "challenge1", c1["chosen"], n_test, len(x_ood))
    metrics["replace/challenge1/network_acc"] = over_seeds(c1["network_acc"], n_items=n_test)
    if "program" in names:
        prog_pts = [c["program"] for c in c1["chosen"]]
        metrics["replace/challenge1/agreement"] = over_seeds([p.agree_test for p in prog_pts],
                                                             n_items=n_test)
        metrics["replace/challenge1/ablation_agreement"] = over_seeds(
            [a["agree_test"] for a in c1["ablation"]], n_items=n_test)
        metrics["replace/challenge1/rule_truth_acc"] = over_seeds(c1["rule_truth_acc"],
                                                                  n_items=n_test)
    details["challenge1"] = {
        "true_rule": rule.describe(), "template_index": challenge1.TEMPLATE_INDEX,
        "band_quantiles": list(challenge1.BAND_QUANTILES), "published_acc":
        challenge1.PUBLISHED_ACC, "network_acc": c1["network_acc"], "points": c1["points"],
        "chosen": [{k: p.to_dict() for k, p in c.items()} for c in c1["chosen"]],
        "ablation": c1["ablation"], "found_templates": c1["found"], "rules": c1["rule"],
        "rule_truth_acc": c1["rule_truth_acc"], "band": c1["band"],
        "candidates_include_true_template": cfg.n_templates > challenge1.TEMPLATE_INDEX}

    # 3. challenge 2
    c2cfg = challenge2.Challenge2Config(steps=cfg.c2_steps, batch_size=cfg.c2_batch_size,
                                        lr=cfg.c2_lr)
    tr, te = challenge2.split()
    pairs = challenge2.all_pairs()
    n_c2fit = round(0.8 * len(tr))
    p_fit, p_val = (challenge2.as_images(pairs[i]) for i in (tr[:n_c2fit], tr[n_c2fit:]))
    p_test = challenge2.as_images(pairs[te])
    c2: dict[str, list[Any]] = {"network_acc": [], "train_acc": [], "points": [], "chosen": [],
                                "best": []}
    for s in cfg.seeds:
        say(f"challenge 2: seed {s}")
        net2, _, info2 = challenge2.train_stage(store, cfg=c2cfg, seed=s, device=device,
                                                log=log)
        c2["network_acc"].append(info2["heldout_acc"])
        c2["train_acc"].append(info2["train_acc"])
        wrapped = challenge2.PairsAsImages(net2)
        kept2: dict[str, list[Any]] = {}
        pts = sweep(wrapped, fit=p_fit, val=p_val, test=p_test, distillers=names,
                    generator_seed=s, device=device, keep=kept2)
        chosen = choose(pts, tolerance=cfg.tolerance)
        best = max(chosen.values(), key=lambda p: p.agree_val)
        c2["points"].append([p.to_dict() for p in pts])
        c2["chosen"].append(chosen)
        c2["best"].append(best.to_dict())
        if s == cfg.seeds[0]:
            mine = [p for p in pts if p.distiller == best.distiller]
            rep = kept2[best.distiller][mine.index(best)]
            g = challenge2.grids(net2, rep.predict, device=device)
            for k, v in g.items():
                images[f"c2/{k}"] = torch.tensor(v).view(challenge2.P, challenge2.P)
    images["c2/train_mask"] = torch.zeros(challenge2.P ** 2, dtype=torch.long).index_fill(
        0, tr, 1).view(challenge2.P, challenge2.P)
    _subject_metrics(metrics, "challenge2", c2["chosen"], len(te), None)
    metrics["replace/challenge2/fidelity"] = over_seeds([b["agree_test"] for b in c2["best"]],
                                                        n_items=len(te))
    metrics["replace/challenge2/network_acc"] = over_seeds(c2["network_acc"], n_items=len(te))
    details["challenge2"] = {
        "label_fn": "ours: 1 if sin(2pi(1.3u^2 + 1.1v)) + cos(2pi(1.2u - 0.9v^2 + 0.3uv)) "
                    "- 0.15 > 0, u = a/112, v = b/112",
        "published_acc": challenge2.PUBLISHED_ACC, "network_acc": c2["network_acc"],
        "train_acc": c2["train_acc"], "points": c2["points"],
        "chosen": [{k: p.to_dict() for k, p in c.items()} for c in c2["chosen"]],
        "best": c2["best"], "pixels": "p[0,0] = a/112, p[0,1] = b/112",
        "note": "replacements are fitted on 80% of the training half and chosen on the other "
                "20%; where the transformer fits its training half exactly, its labels there "
                "are the truth, so the held-out fidelity measures whether the replacement "
                "generalises the way the network does"}

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in images.items()},
              str(out / "replace_images.safetensors"))
    rec: Record = {
        "schema_version": SCHEMA_VERSION, "experiment": "replace", "created": now(),
        "config": to_plain(cfg), "seeds": list(cfg.seeds), "git": git_state(),
        "versions": library_versions(), "device": str(device), "data": {ds.name: ds.sha256},
        "stages": log.entries, "wall_seconds": time.perf_counter() - t0, "metrics": metrics,
        "claims": judge_claims(metrics, details, target=TARGET), "details": details,
    }
    write_record(rec, out / "record.json")
    return rec


def _verdict(ok: bool, bad: bool) -> str:
    return "reproduced" if ok else ("not reproduced" if bad else "inconclusive")


def _ci(m: Metric) -> str:
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] (n={m['n']})"


def judge_claims(metrics: dict[str, Metric], details: dict[str, Any], *,
                 target: float) -> list[Claim]:
    """Verdicts by rules fixed in advance."""
    claims: list[Claim] = []
    m = metrics
    c1 = details["challenge1"]
    if "replace/challenge1/agreement" in m:
        a = m["replace/challenge1/agreement"]
        found = all(f and f[0] == f"x[{c1['template_index']}]" for f in c1["found_templates"])
        claims.append({
            "claim": "The program search recovers challenge 1's rule from the network alone: "
                     "a one-line rule that agrees with the network on >= 95% of the test set",
            "rule": f"mean test agreement >= {target} and the rule's first template is "
                    f"training image {c1['template_index']} for every seed (reproduced); mean "
                    f"< {target} (not reproduced); else inconclusive",
            "measured": f"agreement {_ci(a)}; templates found {c1['found_templates']}; "
                        f"rule (first seed): {c1['rules'][0] if c1['rules'] else '-'}",
            "verdict": _verdict(a["value"] >= target and found, a["value"] < target)})
        b = m["replace/challenge1/ablation_agreement"]
        claims.append({
            "claim": "The recovery needs the true template among the candidates (ablation: "
                     f"training image {c1['template_index']} excluded)",
            "rule": f"ablation agreement CI upper bound < {target} (reproduced); mean >= "
                    f"{target} (not reproduced); else inconclusive",
            "measured": f"ablation agreement {_ci(b)} vs {a['value']:.3f} with it",
            "verdict": _verdict(b["ci95"][1] < target, b["value"] >= target)})
    n1 = m["replace/challenge1/network_acc"]
    claims.append({
        "claim": "Challenge 1's network learns the labelling (published network: 95.58%)",
        "rule": f"mean test accuracy on the rule's labels >= {target} (reproduced); CI upper "
                f"bound < {target} (not reproduced); else inconclusive",
        "measured": f"network accuracy {_ci(n1)}",
        "verdict": _verdict(n1["value"] >= target, n1["ci95"][1] < target)})
    n2, f2 = m["replace/challenge2/network_acc"], m["replace/challenge2/fidelity"]
    claims.append({
        "claim": "Challenge 2's transformer generalises to the held-out half of the pairs "
                 "(published: 97.27% on the original labelling)",
        "rule": f"mean held-out accuracy >= {target} (reproduced); CI upper bound < {target} "
                "(not reproduced); else inconclusive",
        "measured": f"held-out accuracy {_ci(n2)}",
        "verdict": _verdict(n2["value"] >= target, n2["ci95"][1] < target)})
    best = details["challenge2"]["best"][0]
    claims.append({
        "claim": "A distilled replacement stands in for challenge 2's transformer on the "
                 "held-out half",
        "rule": f"mean held-out fidelity of the replacement chosen on validation >= {target} "
                f"(reproduced); CI upper bound < {target} (not reproduced); else inconclusive",
        "measured": f"fidelity {_ci(f2)}; chosen (first seed): {best['distiller']} size "
                    f"{best['size']}",
        "verdict": _verdict(f2["value"] >= target, f2["ci95"][1] < target)})
    drops = {k.split("/")[2]: (m[k]["value"], m[k.replace("_test", "_ood")]["value"])
             for k in m if k.startswith("replace/model/") and k.endswith("/agreement_test")
             and k.replace("_test", "_ood") in m}
    if drops:
        claims.append({
            "claim": "Replacements of the 10-class network are less faithful out of "
                     "distribution than on its test set",
            "rule": "OOD agreement < test agreement for every distiller's chosen size "
                    "(reproduced); >= for every one (not reproduced); else inconclusive",
            "measured": "; ".join(f"{k} {t:.3f} -> {o:.3f}" for k, (t, o) in drops.items()),
            "verdict": _verdict(all(o < t for t, o in drops.values()),
                                all(o >= t for t, o in drops.values()))})
    return claims
