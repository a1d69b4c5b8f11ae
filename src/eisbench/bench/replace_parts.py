"""The three parts of the replace benchmark (:mod:`eisbench.bench.replace`): distilling a
10-class network (:func:`any_model`), EIS VII challenge 1 (:func:`challenge_1`) and
challenge 2 (:func:`challenge_2`). Each returns its metrics, its details and the images the
report shows.

Intervals (:func:`over_seeds`): t-intervals over network seeds when there are several
(n = seeds), else Wilson intervals over the test images (n = images).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from eisbench import data as datasets
from eisbench.bench import replace_recover
from eisbench.core.progress import say
from eisbench.core.stats import mean_ci, wilson_ci
from eisbench.models import ModelSpec
from eisbench.replace import challenge1, challenge2, model_predictions
from eisbench.replace.fidelity import Point, choose, sweep
from eisbench.replace.program import Program
from eisbench.runs.record import Metric
from eisbench.runs.stages import Context, Tensors, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig

if TYPE_CHECKING:
    from eisbench.bench.replace import ReplaceBenchConfig

Part = tuple[dict[str, Metric], dict[str, Any], dict[str, torch.Tensor]]
"""A part's metrics, details and images."""


@dataclass(frozen=True)
class Setting:
    """What every part shares: the dataset, its test and out-of-distribution images."""

    store: Store
    device: torch.device
    names: list[str]  # the distillers
    ds: datasets.ImageData
    log: StageLog
    n_test: int
    x_test: torch.Tensor  # (n_test, C, H, W)
    x_ood: torch.Tensor  # scikit-learn digits drawn like the dataset

    @property
    def key(self) -> str:
        return f"{self.ds.name}:{self.ds.sha256}"


def _metric(value: float, lo: float, hi: float, n: int, *, unit: str,
            higher: bool = True) -> Metric:
    return {"value": float(value), "ci95": [min(lo, value), max(hi, value)], "n": int(n),
            "higher_is_better": higher, "unit": unit}


def rate_count(v: float, n_items: int) -> int:
    """The number of the ``n_items`` images behind the rate ``v`` (a fraction k / n_items);
    a value that is not such a fraction fails here rather than get the interval of a
    neighbouring count (a mean over seeds or subsets, a rate over another denominator)."""
    k = v * n_items
    if n_items < 1 or abs(k - round(k)) > 0.05:
        raise ValueError(f"{v} is not a rate over {n_items} items (k = {k:.3f})")
    return round(k)


def over_seeds(values: list[float], *, n_items: int, higher: bool = True,
               binomial: bool = True, items: str = "test images") -> Metric:
    """Mean over seeds with a t-interval (n = seeds); one seed: Wilson's interval over the
    ``n_items`` images (``items`` names them) of a rate (``binomial``; the value is exactly
    k / n_items, checked by :func:`rate_count`), else a zero-width interval."""
    if len(values) > 1:
        m, lo, hi = mean_ci(values)
        return _metric(m, lo, hi, len(values), higher=higher, unit="seeds (95% t-interval)")
    v = values[0]
    if binomial:
        lo, hi = wilson_ci(rate_count(v, n_items), n_items)
        return _metric(v, lo, hi, n_items, higher=higher, unit=f"{items} (Wilson)")
    return _metric(v, v, v, 1, higher=higher, unit="seeds (one seed: no interval)")


def grids(cfg: ReplaceBenchConfig, *, many: bool = False) -> dict[str, tuple[Any, ...]]:
    """Size grids that differ from the distillers' defaults (``many``: a 10-class network)."""
    return {"program": cfg.model_program_terms if many else cfg.program_terms}


def hyper(cfg: ReplaceBenchConfig, **program: Any) -> dict[str, dict[str, Any]]:
    """Fixed keyword arguments per distiller: the program's data templates (and ``program``)."""
    return {"program": {"n_data": cfg.n_templates, **program}}


def subject_metrics(subject: str, chosen: list[dict[str, Point]], n_test: int,
                    n_ood: int | None, *, items: str = "test images") -> dict[str, Metric]:
    """Per distiller: agreement on test (``items`` names them) and OOD and size of the chosen
    replacement."""
    metrics: dict[str, Metric] = {}
    for name in chosen[0]:
        pts = [c[name] for c in chosen]
        metrics[f"replace/{subject}/{name}/agreement_test"] = over_seeds(
            [p.agree_test for p in pts], n_items=n_test, items=items)
        if n_ood is not None and all(p.agree_ood is not None for p in pts):
            metrics[f"replace/{subject}/{name}/agreement_ood"] = over_seeds(
                [float(p.agree_ood or 0.0) for p in pts], n_items=n_ood,
                items="out-of-distribution images")
        metrics[f"replace/{subject}/{name}/size"] = over_seeds(
            [float(p.size) for p in pts], n_items=1, higher=False, binomial=False)
    return metrics


def any_model(st: Setting, cfg: ReplaceBenchConfig) -> Part:
    """Part 1: a 10-class network on the dataset (cached) distilled by every distiller at
    every size; agreement on the test set and out of distribution."""
    ds = st.ds
    say(f"replace: {cfg.model_arch} on {ds.name}")
    ctx = Context(store=st.store, log=st.log, device=st.device)
    n_tr = cfg.model_n_train or len(ds.x_train)
    train = Tensors(ds.x_train[:n_tr], ds.y_train[:n_tr], f"{st.key}:train:{n_tr}")
    spec = ModelSpec(arch=cfg.model_arch, in_shape=ds.shape, num_classes=ds.num_classes)
    model, _ = train_stage(ctx, spec=spec, cfg=TrainConfig(epochs=cfg.model_epochs),
                           data=train, seed=cfg.seeds[0], desc=f"{cfg.model_arch}")
    pts = sweep(model, fit=ds.x_train[:cfg.n_fit], val=ds.x_train[-cfg.n_val:], test=st.x_test,
                ood=st.x_ood, distillers=st.names, grids=grids(cfg, many=True),
                hyper=hyper(cfg), generator_seed=0, device=st.device)
    pred = model_predictions(model, st.x_test, device=st.device)
    acc = float((pred == ds.y_test[:st.n_test]).float().mean())
    metrics = subject_metrics("model", [choose(pts, tolerance=cfg.tolerance)], st.n_test,
                              len(st.x_ood))
    metrics["replace/model/network_acc"] = over_seeds([acc], n_items=st.n_test)
    details = {"arch": cfg.model_arch, "points": [p.to_dict() for p in pts],
               "chosen": {k: p.to_dict() for k, p in choose(pts).items()}}
    return metrics, details, {}


@dataclass(frozen=True)
class Challenge1Data:
    """Challenge 1's images as 28x28 and its rule (from the training images)."""

    train: torch.Tensor
    test: torch.Tensor
    ood: torch.Tensor
    rule: challenge1.Rule


def challenge1_seed(st: Setting, cfg: ReplaceBenchConfig, c: Challenge1Data, seed: int,
                    runs: dict[str, list[Any]], images: dict[str, torch.Tensor]) -> None:
    """One network seed of challenge 1: train it (cached), distil it with and without the
    true template among the candidates, read the recovered rule; appends to ``runs``."""
    say(f"challenge 1: seed {seed}")
    c1cfg = challenge1.Challenge1Config(epochs=cfg.c1_epochs, batch_size=cfg.c1_batch_size,
                                        lr=cfg.c1_lr, n_train=cfg.c1_n_train)
    fit, val = c.train[:cfg.n_fit], c.train[-cfg.n_val:]
    net, _, info = challenge1.challenge1_train_stage(
        st.store, x_train=c.train, data_key=st.key, cfg=c1cfg, seed=seed, device=st.device,
        log=st.log)
    runs["network_acc"].append(challenge1.network_accuracy(net, c.test, c.rule,
                                                           device=st.device))
    kept: dict[str, list[Any]] = {}
    pts = sweep(net, fit=fit, val=val, test=c.test, ood=c.ood, distillers=st.names,
                grids=grids(cfg), hyper=hyper(cfg), generator_seed=seed, device=st.device,
                keep=kept)
    chosen = choose(pts, tolerance=cfg.tolerance)
    runs["points"].append([p.to_dict() for p in pts])
    runs["chosen"].append(chosen)
    abl = sweep(net, fit=fit, val=val, test=c.test, ood=c.ood, distillers=["program"],
                grids=grids(cfg), hyper=hyper(cfg, exclude=(challenge1.TEMPLATE_INDEX,)),
                generator_seed=seed, device=st.device)
    runs["ablation"].append(choose(abl, tolerance=cfg.tolerance)["program"].to_dict())
    if "program" in chosen:
        prog = kept["program"][[p for p in pts if p.distiller == "program"]
                               .index(chosen["program"])]
        assert isinstance(prog, Program)
        used = prog.used_templates()
        runs["found"].append([n for n, _ in used])
        runs["rule"].append(prog.describe())
        runs["rule_truth_acc"].append(float((prog.predict(c.test) ==
                                             c.rule.labels(c.test)).float().mean()))
        if seed == cfg.seeds[0]:
            for i, (n, img) in enumerate(used):
                images[f"c1/found/{i}:{n}"] = img.contiguous()
        runs["nohint"].append(replace_recover.run_cases(st, cfg, c, seed, net, images))
    runs["band"].append(info)


def challenge_1(st: Setting, cfg: ReplaceBenchConfig) -> Part:
    """Part 2: EIS VII challenge 1, per network seed (see :func:`challenge1_seed`)."""
    x28 = challenge1.as_mnist(st.ds.x_train)
    c = Challenge1Data(train=x28, test=challenge1.as_mnist(st.x_test),
                       ood=challenge1.as_mnist(st.x_ood), rule=challenge1.true_rule(x28))
    runs: dict[str, list[Any]] = {"network_acc": [], "points": [], "chosen": [],
                                  "ablation": [], "found": [], "rule": [],
                                  "rule_truth_acc": [], "band": [], "nohint": []}
    images: dict[str, torch.Tensor] = {}
    for s in cfg.seeds:
        challenge1_seed(st, cfg, c, s, runs, images)
    images["c1/true_template"] = c.rule.template.contiguous()
    n_test = st.n_test
    metrics = subject_metrics("challenge1", runs["chosen"], n_test, len(st.x_ood))
    metrics["replace/challenge1/network_acc"] = over_seeds(runs["network_acc"], n_items=n_test)
    if "program" in st.names:
        metrics["replace/challenge1/agreement"] = over_seeds(
            [c_["program"].agree_test for c_ in runs["chosen"]], n_items=n_test)
        metrics["replace/challenge1/ablation_agreement"] = over_seeds(
            [a["agree_test"] for a in runs["ablation"]], n_items=n_test)
        metrics["replace/challenge1/rule_truth_acc"] = over_seeds(runs["rule_truth_acc"],
                                                                  n_items=n_test)
        for case in runs["nohint"][0]:  # without the hint (replace_recover)
            recs = [r[case] for r in runs["nohint"]]
            for key, vals in (("agreement", [r["point"]["agree_test"] for r in recs]),
                              ("rule_truth_acc", [r["truth_acc"] for r in recs]),
                              ("network_acc", [r.get("network_acc") for r in recs])):
                if None not in vals:
                    metrics[f"replace/challenge1/{case}/{key}"] = over_seeds(vals,
                                                                            n_items=n_test)
    details = {
        "true_rule": c.rule.describe(), "template_index": challenge1.TEMPLATE_INDEX,
        "band_quantiles": list(challenge1.BAND_QUANTILES),
        "published_acc": challenge1.PUBLISHED_ACC, "network_acc": runs["network_acc"],
        "points": runs["points"],
        "chosen": [{k: p.to_dict() for k, p in c_.items()} for c_ in runs["chosen"]],
        "ablation": runs["ablation"], "found_templates": runs["found"], "rules": runs["rule"],
        "rule_truth_acc": runs["rule_truth_acc"], "band": runs["band"],
        "candidates_include_true_template": cfg.n_templates > challenge1.TEMPLATE_INDEX,
        "nohint": {case: [r[case] for r in runs["nohint"]] for case in
                   (runs["nohint"][0] if runs["nohint"] else ())}}
    return metrics, details, images


@dataclass(frozen=True)
class Challenge2Data:
    """Challenge 2's pairs: the split, the images the distillers read, the true labels and
    the published network's labels (both (P*P,), row-major)."""

    tr: torch.Tensor  # training half, indices (6384,)
    te: torch.Tensor  # held-out half, indices (6385,)
    n_fit: int  # the first n_fit of the training half fit the replacements, the rest choose
    truth: torch.Tensor
    published: torch.Tensor

    @staticmethod
    def load() -> Challenge2Data:
        tr, te = challenge2.split()
        return Challenge2Data(tr=tr, te=te, n_fit=round(0.8 * len(tr)),
                              truth=challenge2.labels().flatten(),
                              published=challenge2.published_network_labels().flatten())

    def images(self, part: str) -> torch.Tensor:
        """The pair images (N, 1, 1, 2) of ``part``: fit, val or test (the held-out half)."""
        return challenge2.as_images(challenge2.all_pairs()[self.index(part)])

    def index(self, part: str) -> torch.Tensor:
        return {"fit": self.tr[:self.n_fit], "val": self.tr[self.n_fit:], "test": self.te}[part]


def truth_scores(c: Challenge2Data, chosen: dict[str, Point], pts: list[Point],
                 kept: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Per chosen replacement: accuracy on the TRUE labels of the validation fifth of the
    training half (``val``) and whether it is right on each held-out pair (``test_ok``,
    (6385,) bool)."""
    out: dict[str, dict[str, Any]] = {}
    for name, p in chosen.items():
        rep = kept[name][[q for q in pts if q.distiller == name].index(p)]
        val_ok = rep.predict(c.images("val")) == c.truth[c.index("val")]
        out[name] = {"val": float(val_ok.float().mean()),
                     "test_ok": rep.predict(c.images("test")) == c.truth[c.te]}
    return out


def challenge2_seed(st: Setting, cfg: ReplaceBenchConfig, seed: int, c: Challenge2Data,
                    runs: dict[str, list[Any]], images: dict[str, torch.Tensor]) -> None:
    """One transformer seed of challenge 2: train it (cached), distil it on the training
    half, score the replacements against the network (fidelity) and the true labels (the
    distiller with the best validation accuracy on the true labels against the network, pair
    by pair on the held-out half); appends to ``runs``."""
    say(f"challenge 2: seed {seed}")
    net2, _, info2 = challenge2.train_stage(st.store, cfg=cfg.c2, seed=seed, device=st.device,
                                            log=st.log)
    grid = challenge2.predict_grid(net2, device=st.device)  # (P*P,)
    runs["network_acc"].append(info2["heldout_acc"])
    runs["train_acc"].append(info2["train_acc"])
    runs["published_agreement"].append(float((grid[c.te] == c.published[c.te]).float().mean()))
    wrapped: nn.Module = challenge2.PairsAsImages(net2)
    kept: dict[str, list[Any]] = {}
    pts = sweep(wrapped, fit=c.images("fit"), val=c.images("val"), test=c.images("test"),
                distillers=st.names, generator_seed=seed, device=st.device, keep=kept)
    chosen = choose(pts, tolerance=cfg.tolerance)
    best = max(chosen.values(), key=lambda p: p.agree_val)
    truth = truth_scores(c, chosen, pts, kept)
    pick = max(truth, key=lambda n: truth[n]["val"])
    runs["points"].append([p.to_dict() for p in pts])
    runs["chosen"].append(chosen)
    runs["best"].append(best.to_dict())
    runs["truth_acc"].append({n: float(t["test_ok"].float().mean()) for n, t in truth.items()})
    runs["truth_val"].append({n: t["val"] for n, t in truth.items()})
    runs["truth_pick"].append(pick)
    runs["minus_network"].append(truth[pick]["test_ok"].float()
                                 - (grid[c.te] == c.truth[c.te]).float())  # (6385,)
    if seed == cfg.seeds[0]:
        mine = [p for p in pts if p.distiller == best.distiller]
        rep = kept[best.distiller][mine.index(best)]
        for k, v in challenge2.grids(net2, rep.predict, device=st.device).items():
            images[f"c2/{k}"] = torch.tensor(v).view(challenge2.P, challenge2.P)


CHALLENGE2_NOTE = (
    "replacements are fitted on 80% of the training half (the network's labels) and chosen on "
    "the other 20%; fidelity is agreement with the network on the held-out half. Against the "
    "true labels, the distiller with the best accuracy on the true labels of that 20% is "
    "compared with the network on the held-out half, pair by pair")


def paired_difference(diffs: list[torch.Tensor]) -> Metric:
    """Mean of per-pair differences (one (N,) tensor per seed, values in {-1, 0, 1}): a
    t-interval over seeds when there are several (n = seeds), else the paired t-interval over
    the pairs of the one seed (n = pairs)."""
    values = [float(d.mean()) for d in diffs]
    if len(values) > 1:
        return over_seeds(values, n_items=len(diffs[0]), binomial=False)
    m, lo, hi = mean_ci(diffs[0].tolist())
    return _metric(m, lo, hi, len(diffs[0]), unit="held-out pairs (paired t-interval)")


def challenge_2(st: Setting, cfg: ReplaceBenchConfig) -> Part:
    """Part 3: EIS VII challenge 2 on its own labelling, per transformer seed (see
    :func:`challenge2_seed`)."""
    c = Challenge2Data.load()
    runs: dict[str, list[Any]] = {k: [] for k in (
        "network_acc", "train_acc", "published_agreement", "points", "chosen", "best",
        "truth_acc", "truth_val", "truth_pick", "minus_network")}
    images: dict[str, torch.Tensor] = {}
    for s in cfg.seeds:
        challenge2_seed(st, cfg, s, c, runs, images)
    images["c2/train_mask"] = torch.zeros(challenge2.P ** 2, dtype=torch.long).index_fill(
        0, c.tr, 1).view(challenge2.P, challenge2.P)
    n_te = len(c.te)

    def held(values: list[float]) -> Metric:
        return over_seeds(values, n_items=n_te, items="held-out pairs")

    metrics = subject_metrics("challenge2", runs["chosen"], n_te, None, items="held-out pairs")
    metrics["replace/challenge2/fidelity"] = held([b["agree_test"] for b in runs["best"]])
    metrics["replace/challenge2/network_acc"] = held(runs["network_acc"])
    metrics["replace/challenge2/published_agreement"] = held(runs["published_agreement"])
    for name in runs["truth_acc"][0]:
        metrics[f"replace/challenge2/{name}/truth_acc"] = held([t[name] for t in
                                                               runs["truth_acc"]])
    metrics["replace/challenge2/best_distiller_minus_network"] = paired_difference(
        runs["minus_network"])
    details = {
        "labels": {"source": challenge2.LABELS_SOURCE, "sha256": challenge2.LABELS_SHA256,
                   "ones": float(c.truth.float().mean())},
        "split": f"the original's: Python random.seed({challenge2.SPLIT_SEED}), shuffle of the "
                 f"pairs in row-major order, the first {len(c.tr)} train, {n_te} held out",
        "network": dataclasses.asdict(cfg.c2),
        "published_acc": challenge2.PUBLISHED_ACC,
        "published_network": challenge2.published_network_accuracy(),
        "network_acc": runs["network_acc"], "train_acc": runs["train_acc"],
        "published_agreement": runs["published_agreement"], "points": runs["points"],
        "chosen": [{k: p.to_dict() for k, p in c_.items()} for c_ in runs["chosen"]],
        "best": runs["best"], "truth_acc": runs["truth_acc"], "truth_val": runs["truth_val"],
        "truth_pick": runs["truth_pick"], "pixels": "p[0,0] = a/112, p[0,1] = b/112",
        "note": CHALLENGE2_NOTE}
    return metrics, details, images
