"""Exhibit F of "features or bugs?": the superposition perspective.

Elhage et al. 2022 ("Toy Models of Superposition") relate a network's adversarial vulnerability
to how many features it packs into a layer, measured as "features per dimension": the SQUARED
Frobenius norm of the weight matrix into the layer divided by the layer's width,
``||W||_F^2 / m`` for ``W`` of shape (m, n). Two tests of that argument:

1. Sanity check (the seed's second point). In a bias-free ReLU network, ``relu(c z) = c relu(z)``
   for ``c > 0``, so multiplying weight matrices by constants multiplies the logits by their
   product and leaves every predicted class unchanged, while the measure of a layer whose matrix
   is scaled by ``c`` changes by exactly ``c^2``. Two rescalings per ``c``: ``all`` (every matrix
   times ``c``: logits times ``c^(L+1)``) and ``balanced`` (the first matrix times ``c``, the
   second times ``1/c``: the network computes the same function, yet the two measures move by
   ``c^2`` and ``c^-2``). A quantity that moves freely while the decision function (hence every
   adversarial example) stays put cannot by itself carry the superposition argument.
2. Huang et al. 2022's test (the seed's fourth point). If narrow layers superpose more features
   and superposition causes adversarial vulnerability, a deep-narrow network should be LESS
   robust than a shallow-wide one with the same parameter count and clean accuracy. Per seed:
   one bias-free MLP with a single wide hidden layer and one with ``deep_depth`` narrow hidden
   layers whose width makes the parameter counts match (within 2%), both trained with the same
   recipe; robustness = robust accuracy under the attack suite at a small Linf eps (with every
   sanity check) and the median minimal L2 perturbation found by FMN (no eps to choose).

The networks, the measure, the parameter matching and the scaling check are in
:mod:`eisbench.experiments.superposition_models`. Claims are judged by rules fixed in
:func:`decide` before any number was seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench import data as datasets
from eisbench.attacks.evaluate import AttackConfig
from eisbench.attacks.fmn import fmn_min_norm
from eisbench.core.config import resolve_device
from eisbench.evaluation import SUITES, describe_suite
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.superposition_models import (
    BiasFreeMLP,
    layer_measures,
    matched_width,
    num_params,
    scaling_check,
)
from eisbench.models import MODELS, ModelSpec
from eisbench.runs.claims import (
    checks_of,
    conjunction,
    decide_metric,
    make_claim,
    merge_checks,
    metric_over_seeds,
)
from eisbench.runs.executor import prefetch_seeds
from eisbench.runs.preregistered import threshold
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import Context, Tensors, evaluate_stage, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig

SHAPES = ("shallow_wide", "deep_narrow")
# BiasFreeMLP is registered under the name it had when it lived in this module: the name is part
# of the training stages' cache keys and of the checkpoints' specs (which import nothing)
ARCH = f"{__name__}:BiasFreeMLP"
MODELS.register(ARCH)(BiasFreeMLP)
LITERATURE = {
    "measure": "Elhage et al. 2022 (Toy Models of Superposition): adversarial vulnerability "
               "rises with features per dimension ||W||_F^2 / m",
    "scaling": "EIS IX (Casper 2023), exhibit F: scaling a bias-free ReLU network's weight "
               "matrix by c scales features per dimension by c^2 and leaves the classification "
               "unchanged",
    "depth": "Huang et al. 2022 (arXiv 2212.11005, adversarially trained residual networks on "
             "CIFAR-10): at an equal parameter budget, deep-narrow networks are more robust than "
             "shallow-wide ones",
}


@dataclass(frozen=True)
class SuperpositionConfig:
    """Every hyper-parameter of the experiment (all of them are written to the record)."""

    dataset: str = "mnist"
    data_root: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int | None = 25000  # training images (the first n of D; None: all)
    n_test: int | None = 2000  # test images for clean accuracy and the scaling check
    n_robust: int = 200  # test images attacked (suite and FMN)
    shallow_width: int = 256  # the one hidden layer of the shallow-wide network
    deep_depth: int = 4  # hidden layers of the deep-narrow one (its width matches the params)
    bias: bool = False  # the sanity check needs bias-free layers (exact positive homogeneity)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=5e-3))
    scales: tuple[float, ...] = (0.5, 2.0, 3.0, 4.0, 10.0)
    eps: float = 0.05  # Linf budget of the suite's robust accuracy
    suite: str = "fast"
    n_checks: int = 100  # test images for the costlier sanity checks of the suite
    fmn_steps: int = 50
    curve_linf: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15)
    curve_l2: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    # the rules' numbers default to the pre-registered ones (runs/preregistered.py)
    acc_tolerance: float = threshold("superposition.clean_gap.tolerance")  # |clean gap| allowed
    robust_margin: float = threshold("superposition.robust_gap.margin")  # fraction
    l2_margin: float = threshold("superposition.l2_rel_gap.margin")  # relative median L2
    scale_tolerance: float = threshold("superposition.scaling.max_rel_error.bar")  # relative
    device: str = "cpu"


QUICK = SuperpositionConfig()
FULL = SuperpositionConfig(n_train=None, n_test=None, n_robust=500, n_checks=200,
                           train=TrainConfig(epochs=3, lr=5e-3), fmn_steps=100)


def min_norm_stage(ctx: Context, *, model: nn.Module, model_key: str, test: Tensors, n: int,
                   norm: str, steps: int, seed: int) -> torch.Tensor:
    """FMN's minimal ``norm`` perturbation (n,) for the first n test images (cached); 0 where
    the clean image is already misclassified, inf where none was found."""

    def compute(work: Path) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        _, norms = fmn_min_norm(model, test.x[:n].to(ctx.device), test.y[:n].to(ctx.device),
                                norm=norm, steps=steps, generator=gen)
        return norms.cpu()

    def save(out: torch.Tensor, d: Path) -> None:
        save_file({"norms": out.contiguous()}, str(d / "norms.safetensors"))

    def load(d: Path) -> torch.Tensor:
        return load_file(str(d / "norms.safetensors"))["norms"]

    out, _ = ctx.store.run("fmn-min-norm", {"norm": norm, "steps": steps, "n": n, "seed": seed},
                           inputs=(model_key, test.key), compute=compute, save=save, load=load,
                           log=ctx.log)
    return out


def robust_curve(norms: torch.Tensor, grid: Sequence[float]) -> list[float]:
    """Robust accuracy at each budget of ``grid`` from minimal norms (n,): the fraction > eps."""
    return [float((norms > e).float().mean()) for e in grid]


def _one_model(ctx: Context, cfg: SuperpositionConfig, *, spec: ModelSpec, train: Tensors,
               test: Tensors, seed: int, shape: str, timing: dict[str, float]
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train, measure, attack and rescale one network; its per-seed entry and scaling rows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initialisation train_stage starts from
        init = spec.build()
    assert isinstance(init, BiasFreeMLP)
    model, key = train_stage(ctx, spec=spec, cfg=cfg.train, data=train, seed=seed,
                             desc=f"[seed {seed}] {shape}")
    assert isinstance(model, BiasFreeMLP)
    attack = AttackConfig(name="pgd", norm="linf", eps=cfg.eps)
    ev = evaluate_stage(ctx, model=model, model_key=key, test=test, n_robust=cfg.n_robust,
                        attack=attack, seed=seed, desc=f"[seed {seed}] evaluate {shape}",
                        suite=cfg.suite, n_checks=cfg.n_checks)
    norms = {nm: min_norm_stage(ctx, model=model, model_key=key, test=test, n=cfg.n_robust,
                                norm=nm, steps=cfg.fmn_steps, seed=seed)
             for nm in ("l2", "linf")}
    t0 = time.perf_counter()
    rows = scaling_check(model, test.x.to(ctx.device), scales=cfg.scales)
    timing["scaling_check"] = timing.get("scaling_check", 0.0) + time.perf_counter() - t0
    for r in rows:
        r["shape"] = shape
    entry = {
        "widths": list(spec.kwargs["widths"]),
        "params": sum(p.numel() for p in model.parameters()),
        "std_acc": ev["std_acc"], "robust_acc": ev["robust_acc"],
        "median_l2": float(norms["l2"].median()), "median_linf": float(norms["linf"].median()),
        "fmn_not_found": {nm: int(torch.isinf(v).sum()) for nm, v in norms.items()},
        "fpd": layer_measures(model), "fpd_init": layer_measures(init),
        "curve_linf": robust_curve(norms["linf"], cfg.curve_linf),
        "curve_l2": robust_curve(norms["l2"], cfg.curve_l2),
        "checks": ev["checks"],
        "checks_failed": [c["name"] for c in ev["checks"] if c["passed"] is False],
    }
    return entry, rows


def _at_most(n: int | None, have: int) -> int | None:
    return None if n is None else min(n, have)


def load_data(cfg: SuperpositionConfig) -> datasets.ImageData:
    """The first ``n_train`` training and ``n_test`` test images (all of a smaller set)."""
    full = datasets.load(cfg.dataset, root=cfg.data_root)
    ds = full.subset(n_train=_at_most(cfg.n_train, len(full.y_train)),  # small sets: all of it
                     n_test=_at_most(cfg.n_test, len(full.y_test)))
    if cfg.n_robust > len(ds.x_test):
        raise ValueError(f"n_robust={cfg.n_robust} exceeds the {len(ds.x_test)} test images")
    return ds


def network_specs(cfg: SuperpositionConfig, ds: datasets.ImageData
                  ) -> tuple[dict[str, list[int]], dict[str, ModelSpec]]:
    """The hidden widths of the shallow-wide and the deep-narrow network (parameter counts
    matched) and their specs."""
    in_dim, k = math.prod(ds.shape), ds.num_classes
    narrow = matched_width(in_dim=in_dim, num_classes=k, shallow_width=cfg.shallow_width,
                           depth=cfg.deep_depth, bias=cfg.bias)
    widths = {"shallow_wide": [cfg.shallow_width], "deep_narrow": [narrow] * cfg.deep_depth}
    specs = {s: ModelSpec(arch=ARCH, in_shape=ds.shape, num_classes=k,
                          kwargs={"in_shape": list(ds.shape), "num_classes": k, "widths": w,
                                  "bias": cfg.bias})
             for s, w in widths.items()}
    return widths, specs


def _seed_unit(cfg: SuperpositionConfig, store: Store, seed: int) -> None:
    """One seed's cached stages: both networks trained, evaluated and attacked (an executor's
    task: :func:`prefetch_seeds`)."""
    ds = load_data(cfg)
    ctx = Context(store=store, log=StageLog(), device=resolve_device(cfg.device))
    train, test = _tensors(ds)
    specs = network_specs(cfg, ds)[1]
    for shape in SHAPES:
        _one_model(ctx, cfg, spec=specs[shape], train=train, test=test, seed=seed, shape=shape,
                   timing={})


def _tensors(ds: datasets.ImageData) -> tuple[Tensors, Tensors]:
    """The training and the test set with their cache keys."""
    key = f"{ds.name}:{ds.sha256}"
    return (Tensors(ds.x_train, ds.y_train, f"{key}:train:{len(ds.x_train)}"),
            Tensors(ds.x_test, ds.y_test, f"{key}:test:{len(ds.x_test)}"))


def measure(cfg: SuperpositionConfig, *, out: Path, store: Store) -> Result:
    """Load the data; per seed, train, attack and rescale both networks; then the metrics and
    the claims."""
    device = resolve_device(cfg.device)
    SUITES.get(cfg.suite)  # a typo fails now, not after training
    ds = load_data(cfg)
    ctx = Context(store=store, log=StageLog(), device=device)
    train, test = _tensors(ds)
    widths, specs = network_specs(cfg, ds)
    prefetch_seeds(_seed_unit, cfg, store, cfg.seeds, device=device)  # the loop loads them
    per_seed: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    for seed in cfg.seeds:
        entry: dict[str, Any] = {"seed": seed, "scaling": []}
        for shape in SHAPES:
            entry[shape], rows = _one_model(ctx, cfg, spec=specs[shape], train=train, test=test,
                                            seed=seed, shape=shape, timing=timing)
            entry["scaling"] += rows
        per_seed.append(entry)
    metrics = _metrics(per_seed)
    for s in ctx.log.entries:
        timing[s["name"]] = timing.get(s["name"], 0.0) + (0.0 if s["cached"] else s["seconds"])
    return Result(metrics=metrics, claims=decide(metrics, cfg=cfg),
                  details=_details(cfg, ds, per_seed, widths, timing),
                  data={ds.name: ds.sha256}, stages=ctx.log.entries, device=str(device))


def _details(cfg: SuperpositionConfig, ds: datasets.ImageData, per_seed: list[dict[str, Any]],
             widths: dict[str, list[int]], timing: dict[str, float]) -> dict[str, Any]:
    """The record's details: per-seed entries, the networks' shapes, the attacks, the measure."""
    in_dim, k = math.prod(ds.shape), ds.num_classes
    return {"per_seed": per_seed, "widths": widths, "num_classes": k,
            "n_train": len(ds.y_train), "n_test": len(ds.y_test),
            "params": {s: num_params(in_dim, w, k, bias=cfg.bias) for s, w in widths.items()},
            "attack": describe_suite(cfg.suite, "linf", cfg.eps),
            "curve_attack": f"FMN minimal norm ({cfg.fmn_steps} steps), L2 and Linf; "
                            "robust at eps iff the minimal norm found exceeds eps",
            "measure": "features per dimension = ||W||_F^2 / m for W (m, n), the "
                       "matrix into a layer of width m (scales by c^2 with W)",
            "timing_seconds": timing, "literature": LITERATURE,
            "literature_source": "Elhage et al. 2022; EIS IX (Casper 2023); Huang et "
                                 "al. 2022 (arXiv 2212.11005)"}


def _metrics(per_seed: list[dict[str, Any]]) -> dict[str, Metric]:
    inf = float("inf")
    m: dict[str, Metric] = {}
    for shape in SHAPES:
        runs = [r[shape] for r in per_seed]
        for name in ("std_acc", "robust_acc"):
            m[f"superposition/{shape}/{name}"] = metric_over_seeds([r[name] for r in runs])
        m[f"superposition/{shape}/robust_acc"]["checks"] = merge_checks(r["checks"] for r in runs)
        for name in ("median_l2", "median_linf"):
            m[f"superposition/{shape}/{name}"] = metric_over_seeds([r[name] for r in runs],
                                                                  upper=inf)
        m[f"superposition/{shape}/fpd_hidden_mean"] = metric_over_seeds(
            [sum(r["fpd"][:-1]) / (len(r["fpd"]) - 1) for r in runs], higher_is_better=False,
            upper=inf)
    gap = {"clean_gap": ("std_acc", False), "robust_gap": ("robust_acc", False),
           "l2_rel_gap": ("median_l2", True)}
    for name, (key, relative) in gap.items():
        vals = [r["deep_narrow"][key] / r["shallow_wide"][key] - 1 if relative
                else r["deep_narrow"][key] - r["shallow_wide"][key] for r in per_seed]
        m[f"superposition/deep_minus_shallow/{name}"] = metric_over_seeds(
            vals, lower=-1.0, upper=inf if relative else 1.0)
    m["superposition/deep_minus_shallow/robust_gap"]["checks"] = merge_checks(
        r[s]["checks"] for r in per_seed for s in SHAPES)
    for name in ("max_rel_error", "logit_rel_error", "pred_changed"):
        m[f"superposition/scaling/{name}"] = metric_over_seeds(
            [float(max(row[name] for row in r["scaling"])) for r in per_seed],
            higher_is_better=False, upper=inf)
    return m


def decide(metrics: dict[str, Metric], *, cfg: SuperpositionConfig) -> list[Claim]:
    """Rules fixed in advance (95% t-intervals over seeds; differences are deep-narrow minus
    shallow-wide, paired by seed), of the form of :func:`~eisbench.runs.claims.decide_against`
    (reproduced: the CI lies past the bar; not reproduced: its far end stays short of bar +
    margin). The config's defaults of the numbers below are ``superposition.*`` in
    :data:`~eisbench.runs.preregistered.THRESHOLDS` (a record holds the config's values).

    1. Check (role "check", counts for neither world): "features per dimension fails the
       scaling sanity check". It is an identity of bias-free ReLU networks (relu(c z) =
       c relu(z)), true before anything is measured: it checks the code, and its failure
       means the measurement is broken, making the exhibit inconclusive. Passes if no
       predicted class changes under any rescaling of any seed (``scaling/pred_changed`` = 0,
       an exact test) and the worst relative error of the measure's ratio against c^2 has CI
       upper < ``scale_tolerance``; fails if a prediction changes or that CI's lower end >
       the tolerance (margin 0).
    2, 3. "Deep-narrow networks are at least as robust as shallow-wide ones at equal
       parameters and clean accuracy", judged on each robustness measure on its own: the
       robust-accuracy gap (bar -``robust_margin``) and the relative median-L2 gap (bar
       -``l2_margin``), each a non-inferiority bound. Reproduced (features, Huang et al.
       2022's finding, which the feature account explains) if the CI lower > the bar; not
       reproduced (bugs: shallow-wide clearly more robust, as "superposition in narrow layers
       causes vulnerability" predicts) if the CI upper < 0 (margin = the bar's distance
       from 0: the CI excludes "deep at least as robust"). Both are inconclusive if the mean
       clean-accuracy gap exceeds ``acc_tolerance`` in absolute value (accuracies not
       matched). Two measures, two claims: where they disagree the exhibit is mixed. The
       robust-accuracy gap carries the attack suite's sanity checks of both networks (a failed
       one makes its claim inconclusive); FMN's minimal norms come without such checks.
    """
    tol = cfg.scale_tolerance
    err, changed = (metrics["superposition/scaling/max_rel_error"],
                    metrics["superposition/scaling/pred_changed"])
    exact = "reproduced" if changed["value"] == 0 else "not reproduced"
    claims = [make_claim(
        claim="Check: features per dimension (||W||_F^2 / width) fails the scaling sanity "
              "check: rescaling a bias-free ReLU network's weight matrices by c changes it by "
              "c^2 and changes no prediction",
        rule=f"an identity, so a check: no predicted class changes under any rescaling and "
             f"worst relative error of the measure's ratio vs c^2: CI upper < {tol:g} "
             f"(passes); a changed prediction or that CI's lower end > {tol:g} (fails)",
        measured=f"predictions changed (worst per seed, mean) = {changed['value']:g}; worst "
                 f"relative error = {err['value']:.2e} [{err['ci95'][0]:.2e}, "
                 f"{err['ci95'][1]:.2e}]",
        verdict=conjunction(exact, decide_metric(
            metrics, "superposition/scaling/max_rel_error", bar=tol,
            margin=threshold("superposition.scaling.max_rel_error.margin"),
            higher_means_reproduced=False)),
        exhibit="F", if_reproduced="inconclusive", if_not="inconclusive", role="check",
        literature=LITERATURE["scaling"])]
    clean = metrics["superposition/deep_minus_shallow/clean_gap"]
    matched = abs(clean["value"]) <= cfg.acc_tolerance
    shown = (f"clean gap = {clean['value']:+.3f} [{clean['ci95'][0]:+.3f}, "
             f"{clean['ci95'][1]:+.3f}]")
    for key, what, m, pct in (("robust_gap", f"robust accuracy at Linf eps={cfg.eps:g}",
                               cfg.robust_margin, False),
                              ("l2_rel_gap", "median minimal L2 perturbation (relative)",
                               cfg.l2_margin, True)):
        g = metrics[f"superposition/deep_minus_shallow/{key}"]
        v, lo, hi = g["value"], *g["ci95"]
        nums = (f"{v:+.1%} [{lo:+.1%}, {hi:+.1%}]" if pct else
                f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        claims.append(make_claim(
            claim="Deep-narrow networks are at least as robust as shallow-wide ones with the "
                  f"same parameter count and clean accuracy ({what})",
            rule=f"if |clean-accuracy gap| <= {cfg.acc_tolerance:g} (else inconclusive): "
                 f"deep minus shallow CI lower > -{m:g} (reproduced: features); CI upper < 0, "
                 f"margin {m:g} (not reproduced: bugs)",
            measured=f"{shown}; {key.replace('_', ' ')} = {nums}",
            verdict=(decide_metric(metrics, f"superposition/deep_minus_shallow/{key}", bar=-m,
                                   margin=m) if matched else "inconclusive"),
            exhibit="F", if_reproduced="features", if_not="bugs",
            literature=LITERATURE["depth"],
            checks=checks_of(metrics, f"superposition/deep_minus_shallow/{key}")))
    return claims


register(Experiment(name="superposition",
                    summary="Exhibit F: the features-per-dimension measure fails a scaling "
                            "sanity check; deep-narrow vs shallow-wide robustness at equal "
                            "parameters and accuracy",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.superposition")))
