"""Tsipras et al. 2019, "Robustness May Be at Odds with Accuracy": the trade-off, with ground truth.

(a) Synthetic (dataset ``tsipras``): y uniform in {-1, +1}; x_1 = y with probability p, else -y
    (robust: no eps < 1 flips it); x_2..x_{d+1} ~ N(eta y, 1) (non-robust: eps >= eta turns
    each one against y). Linear models f(x) = w.x + b are trained per Linf eps of a grid (in
    units of eta) on the exact robust logistic loss: for a linear model the worst case is
    closed-form, min_{|delta|_inf <= eps} y f(x + delta) = y f(x) - eps |w|_1, and the robust
    accuracy is measured with it exactly (cross-checked by PGD). Measured: standard accuracy,
    robust accuracy at the training eps, and the share of the weight mass (L1, the dual norm
    of Linf) on the robust feature, |w_1| / |w|_1. Theory beside it: the best robust linear
    classifier at each eps, in closed form (:func:`linear_theory`): Bayes at eps = 0, the robust
    feature alone (accuracy p) once eps >= eta. The linear models' worst case, training, PGD
    and theory are in :mod:`eisbench.experiments.tsipras_linear`.
(b) Images (MNIST by default): one model per adversarial-training eps (standard training at
    eps = 0, fast adversarial training above), a cheap architecture on a training subset;
    clean accuracy and robust accuracy at one evaluation eps (attack suite with every sanity
    check) give the clean-vs-robust trade-off curve.

The seed's verdict on exhibit C is "inconclusive": both worlds explain an accuracy cost of
adversarial training at a large eps (the bug world as regularisation). The synthetic claims are
checks: the data is built to contain useful non-robust features, so the outcome is Tsipras et
al.'s theorem, not evidence about the world. The image claims can support either world: a cost
already at the mildest eps favours features, robustness at no cost at the largest favours bugs
(rules in :func:`decide`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eisbench import data as datasets
from eisbench.attacks.evaluate import AttackConfig
from eisbench.core.config import resolve_device
from eisbench.evaluation import SUITES, describe_suite
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.tsipras_claims import decide
from eisbench.experiments.tsipras_linear import (
    linear_theory,
    pgd_linear,
    robust_margin,
    train_linear,
)
from eisbench.models import ModelSpec
from eisbench.runs.claims import merge_checks, metric_over_seeds
from eisbench.runs.executor import prefetch_seeds
from eisbench.runs.record import Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import Context, Tensors, evaluate_stage, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig

LITERATURE: dict[str, Any] = {
    "mnist_madry_robust_acc_eps0.3": 0.8962,  # Madry et al.'s adversarially trained MNIST CNN
    "cifar10_standard_clean_acc": 0.952,  # Madry et al. 2018 CIFAR-10 (as tabulated by
    "cifar10_adv_clean_acc_eps8/255": 0.873,  # Raghunathan et al. 2019, Table 1)
}
LITERATURE_SOURCE = (
    "Synthetic: Tsipras et al. 2019 (ICLR), Sec. 2: the classifier sign(x_1) has standard and "
    "robust accuracy p for eps < 1; Thm 2.1: any classifier with standard accuracy 1 - delta "
    "has robust accuracy <= p/(1-p) delta at eps >= 2 eta. Images: Tsipras et al. 2019 (Fig. 2) "
    "report standard accuracy falling as the training eps grows, slightly on MNIST (Linf up to "
    "0.3), markedly on CIFAR-10 and Restricted ImageNet; Madry et al.'s MNIST model (eps=0.3) "
    "keeps 89.62% under 100-step PGD with 50 restarts (MadryLab/mnist_challenge white-box "
    "leaderboard); CIFAR-10 (eps=8/255): 95.2% -> 87.3% clean (Madry et al. 2018, via "
    "Raghunathan et al. 2019, Table 1)")


@dataclass(frozen=True)
class TsiprasConfig:
    """Every hyper-parameter of both parts (all of them are written to the record)."""

    dataset: str = "mnist"  # the image dataset of part (b); part (a) is always ``tsipras``
    data_root: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "cpu"
    # (a) synthetic: the distribution, the eps grid (in units of eta) and the optimiser
    syn_d: int = 100
    syn_p: float = 0.95
    syn_eta: float | None = None  # None: 2 / sqrt(d), the dataset's default
    syn_n_train: int = 5000
    syn_n_test: int = 10000
    # x eta, from 0 to >= 1; eta * max must stay below 2p - 1 (beyond it the robust logistic
    # loss prefers w = 0 even to x_1)
    syn_eps: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    syn_steps: int = 400  # full-batch Adam steps, learning rate decayed linearly to 0
    syn_lr: float = 0.05
    syn_pgd_steps: int = 10  # the PGD cross-check of the exact worst case ...
    syn_pgd_n: int = 2000  # ... on the first test points
    # (b) images: one model per training eps (0 = standard training), evaluated at eval_eps
    arch: str = "mlp"
    n_train: int | None = 8000
    n_test: int | None = 2000
    n_test_robust: int = 200
    train_eps: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)  # first must be 0
    std_train: TrainConfig = TrainConfig(method="standard", epochs=3, lr=5e-3)
    adv_train: TrainConfig = TrainConfig(method="fast-at", epochs=3, lr=5e-3,
                                         eps_warmup_epochs=2)  # eps set per grid point
    eval_eps: float = 0.15  # one threat model for every point of the curve (as features-vs-bugs)
    eval_suite: str = "fast"
    n_checks: int = 50


QUICK = TsiprasConfig()
FULL = dataclasses.replace(
    QUICK, syn_n_train=20000, syn_n_test=20000, syn_steps=800, n_train=15000, n_test=None,
    n_test_robust=1000, std_train=TrainConfig(method="standard", epochs=5, lr=5e-3),
    adv_train=TrainConfig(method="fast-at", epochs=5, lr=5e-3, eps_warmup_epochs=3),
    n_checks=100)


# --- (a) synthetic: one linear model per eps, cached per seed ---------------------------------

def synthetic_seed(cfg: TsiprasConfig, seed: int) -> dict[str, Any]:
    """Train and measure one linear model per eps of ``cfg.syn_eps`` on seed ``seed``'s draw."""
    ds = datasets.load("tsipras", d=cfg.syn_d, p=cfg.syn_p, eta=cfg.syn_eta,
                       n_train=cfg.syn_n_train, n_test=cfg.syn_n_test, seed=seed)
    eta = syn_eta(cfg)
    x_tr, x_te = ds.x_train.flatten(1), ds.x_test.flatten(1)  # (N, d+1) float32
    y_tr, y_te = ds.y_train.float() * 2 - 1, ds.y_test.float() * 2 - 1  # (N,) in {-1, +1}
    r = datasets.tsipras_robust_feature_index
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, float]] = []
    models = [train_linear(x_tr, y_tr, eps=k * eta, steps=cfg.syn_steps, lr=cfg.syn_lr)
              for k in cfg.syn_eps]  # models[0]: the standard one (syn_eps starts at 0)
    w0, b0 = models[0]
    for k, (w, b) in zip(cfg.syn_eps, models, strict=True):
        eps = k * eta
        xp, yp = x_te[:cfg.syn_pgd_n], y_te[:cfg.syn_pgd_n]
        x_adv = pgd_linear(w, b, xp, yp, eps=eps, steps=cfg.syn_pgd_steps, generator=gen)
        exact_p = (robust_margin(w, b, xp, yp, eps=eps) > 0).float().mean()
        rows.append({
            "eps_over_eta": k, "eps": eps,
            "std_acc": float((robust_margin(w, b, x_te, y_te, eps=0.0) > 0).float().mean()),
            "robust_acc": float((robust_margin(w, b, x_te, y_te, eps=eps) > 0).float().mean()),
            "pgd_minus_exact": float((yp * (x_adv @ w + b) > 0).float().mean() - exact_p),
            "robust_feature_share": float(w[r].abs() / w.abs().sum().clamp_min(1e-12)),
            "standard_model_robust_acc": float(
                (robust_margin(w0, b0, x_te, y_te, eps=eps) > 0).float().mean()),
            "w_robust": float(w[r]), "w_rest_l1": float(w.abs().sum() - w[r].abs()),
            "bias": float(b)})
    return {"seed": seed, "sha256": ds.sha256, "rows": rows}


def synthetic_stage(ctx: Context, cfg: TsiprasConfig, seed: int) -> dict[str, Any]:
    """:func:`synthetic_seed`, cached in the store under the synthetic fields of ``cfg``."""
    params = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
              if f.name.startswith("syn_")}

    def save(out: dict[str, Any], d: Path) -> None:
        (d / "result.json").write_text(json.dumps(out))

    def load(d: Path) -> dict[str, Any]:
        out: dict[str, Any] = json.loads((d / "result.json").read_text())
        return out

    result, _ = ctx.store.run("tsipras-linear", {"cfg": params, "seed": seed},
                              compute=lambda _work: synthetic_seed(cfg, seed), save=save,
                              load=load, log=ctx.log)
    return result


def syn_eta(cfg: TsiprasConfig) -> float:
    return 2 / math.sqrt(cfg.syn_d) if cfg.syn_eta is None else float(cfg.syn_eta)


# --- the experiment ---------------------------------------------------------------------------

def _check(cfg: TsiprasConfig) -> None:
    if (not cfg.syn_eps or cfg.syn_eps[0] != 0.0 or list(cfg.syn_eps) != sorted(cfg.syn_eps)
            or cfg.syn_eps[-1] < 1):
        raise ValueError(f"syn_eps (in units of eta) must be ascending, start at 0 and reach "
                         f"1 (where the weak features stop paying), got {cfg.syn_eps}")
    if not cfg.train_eps or cfg.train_eps[0] != 0.0 or list(cfg.train_eps) != sorted(
            cfg.train_eps) or len(cfg.train_eps) < 2:
        raise ValueError(f"train_eps must be ascending, start at 0 (the standard model) and "
                         f"hold another eps, got {cfg.train_eps}")
    if cfg.dataset in datasets.UNBOUNDED:
        raise ValueError(f"dataset names the image dataset of the trade-off curve; "
                         f"{cfg.dataset!r} is not one (the synthetic part always runs)")
    top = syn_eta(cfg) * max(cfg.syn_eps)
    if top >= 2 * cfg.syn_p - 1:  # the robust logistic loss then prefers w = 0 to using x_1
        raise ValueError(f"the largest synthetic eps ({top:.3g}) must stay below 2p - 1 = "
                         f"{2 * cfg.syn_p - 1:.3g}: beyond it even x_1 does not pay under the "
                         "robust logistic loss (and at eps >= 1 it flips)")
    SUITES.get(cfg.eval_suite)


def image_curve(ctx: Context, cfg: TsiprasConfig, seeds: Sequence[int] | None = None
                ) -> tuple[datasets.ImageData, list[dict[str, Any]]]:
    """(b) Load the image dataset; per seed (of ``seeds``, default ``cfg.seeds``) and training
    eps, train a model (standard at eps 0, fast adversarial training above; cached) and
    evaluate it with the attack suite at ``eval_eps`` (cached). Returns the dataset and one
    row per (seed, eps)."""
    ds = datasets.load(cfg.dataset, root=cfg.data_root).subset(n_train=cfg.n_train,
                                                                n_test=cfg.n_test)
    key = f"{ds.name}:{ds.sha256}"
    train_d = Tensors(ds.x_train, ds.y_train, f"{key}:train:{len(ds.x_train)}")
    test_d = Tensors(ds.x_test, ds.y_test, f"{key}:test:{len(ds.x_test)}")
    spec = ModelSpec(arch=cfg.arch, in_shape=ds.shape, num_classes=ds.num_classes)
    attack = AttackConfig(name="apgd", norm="linf", eps=cfg.eval_eps)
    img: list[dict[str, Any]] = []
    for seed in cfg.seeds if seeds is None else seeds:
        std: tuple[Any, str] | None = None
        for e in cfg.train_eps:
            tcfg = cfg.std_train if e == 0 else dataclasses.replace(cfg.adv_train, eps=e)
            model, mkey = train_stage(ctx, spec=spec, cfg=tcfg, data=train_d, seed=seed,
                                      desc=f"[seed {seed}] train eps={e:g}")
            std = std or (model, mkey)
            m = evaluate_stage(ctx, model=model, model_key=mkey, test=test_d,
                               n_robust=cfg.n_test_robust, attack=attack, seed=seed,
                               desc=f"[seed {seed}] evaluate eps={e:g}", suite=cfg.eval_suite,
                               control=None if e == 0 else std, n_checks=cfg.n_checks)
            img.append({"seed": seed, "train_eps": e, "std_acc": m["std_acc"],
                        "robust_acc": m["robust_acc"], "n_robust": m["n_robust"],
                        "n_std": m["n_std"], "checks": m["checks"],
                        "failed_checks": [c["name"] for c in m["checks"]
                                          if c["passed"] is False]})
    return ds, img


def _seed_unit(cfg: TsiprasConfig, store: Store, seed: int) -> None:
    """One seed's cached stages: its synthetic models and its image models with their
    evaluations (an executor's task: :func:`prefetch_seeds`)."""
    ctx = Context(store=store, log=StageLog(), device=resolve_device(cfg.device))
    synthetic_stage(ctx, cfg, seed)
    image_curve(ctx, cfg, seeds=(seed,))


def measure(cfg: TsiprasConfig, *, out: Path, store: Store) -> Result:
    """Check the config; (a) the synthetic models of every seed (cached per seed); (b) the
    image trade-off curve; then the metrics, the claims and the closed-form theory."""
    _check(cfg)
    ctx = Context(store=store, log=StageLog(), device=resolve_device(cfg.device))
    prefetch_seeds(_seed_unit, cfg, store, cfg.seeds, device=ctx.device)  # loops load them
    t0 = time.perf_counter()
    syn = [synthetic_stage(ctx, cfg, seed) for seed in cfg.seeds]
    t_syn = time.perf_counter() - t0
    ds, img = image_curve(ctx, cfg)
    metrics = aggregate(syn, img, dataset=cfg.dataset)
    timing = {"synthetic_s": t_syn, "images_s": time.perf_counter() - t0 - t_syn}
    return Result(
        metrics=metrics,
        claims=decide(metrics, syn_eps=cfg.syn_eps, p=cfg.syn_p, train_eps=cfg.train_eps,
                      dataset=cfg.dataset, eval_eps=cfg.eval_eps),
        details={"per_seed": {"synthetic": syn, "images": img},
                 "synthetic": synthetic_details(cfg, syn),
                 "images": {"dataset": ds.name, "train_eps": list(cfg.train_eps),
                            "eval_eps": cfg.eval_eps, "attack": describe_suite(
                                cfg.eval_suite, "linf", cfg.eval_eps)},
                 "literature": LITERATURE, "literature_source": LITERATURE_SOURCE,
                 "timing": timing},
        data={ds.name: ds.sha256, **{f"tsipras:seed{s['seed']}": s["sha256"] for s in syn}},
        stages=ctx.log.entries, device=str(ctx.device))


def synthetic_details(cfg: TsiprasConfig, syn: list[dict[str, Any]]) -> dict[str, Any]:
    """The synthetic distribution, the best robust linear classifier at each eps of the grid
    and on a fine curve (closed form), and the largest gap between PGD and the exact worst
    case."""
    eta = syn_eta(cfg)
    theory = {f"{k:g}": linear_theory(d=cfg.syn_d, p=cfg.syn_p, eta=eta, eps=k * eta)
              for k in cfg.syn_eps}
    grid = np.linspace(0, max(cfg.syn_eps), 41).tolist()
    curve = [linear_theory(d=cfg.syn_d, p=cfg.syn_p, eta=eta, eps=k * eta) for k in grid]
    return {"d": cfg.syn_d, "p": cfg.syn_p, "eta": eta,
            "theory": theory, "theory_curve": {"eps_over_eta": grid,
                                               **{k: [c[k] for c in curve] for k in curve[0]}},
            "bayes_std_acc": theory["0"]["std_acc"],
            "pgd_minus_exact_max": max(abs(r["pgd_minus_exact"])
                                       for s in syn for r in s["rows"])}


def aggregate(syn: list[dict[str, Any]], img: list[dict[str, Any]], *,
              dataset: str) -> dict[str, Metric]:
    """Metrics over seeds: ``tsipras/synthetic/eps=<k>eta/<what>`` and
    ``tsipras/<dataset>/train_eps=<e>/{std_acc,robust_acc}``; each image ``robust_acc``
    carries the attack suite's sanity checks merged over the seeds."""
    out: dict[str, Metric] = {}
    for i, row in enumerate(syn[0]["rows"]):
        for what in ("std_acc", "robust_acc", "robust_feature_share",
                     "standard_model_robust_acc"):
            out[f"tsipras/synthetic/eps={row['eps_over_eta']:g}eta/{what}"] = metric_over_seeds(
                [s["rows"][i][what] for s in syn])
    for e in dict.fromkeys(r["train_eps"] for r in img):
        rows = [r for r in img if r["train_eps"] == e]
        for what in ("std_acc", "robust_acc"):
            out[f"tsipras/{dataset}/train_eps={e:g}/{what}"] = metric_over_seeds(
                [r[what] for r in rows])
        if any("checks" in r for r in rows):
            out[f"tsipras/{dataset}/train_eps={e:g}/robust_acc"]["checks"] = merge_checks(
                r.get("checks", []) for r in rows)
    return out


register(Experiment(name="tsipras",
                    summary="Tsipras et al. 2019: the robustness-accuracy trade-off, with ground "
                            "truth on synthetic data and the clean-vs-robust curve on images",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.tsipras")))
