"""Goh 2019 (Distill response to Ilyas et al.): useful non-robust LINEAR features.

Two classes of D (labels y in {-1, +1}). A linear feature is f_w(x) = w.(x - mu) / sd_w,
standardised on the training set (mean 0, variance 1). Following Ilyas et al.'s definitions:

- usefulness          rho(f)   = E[y f(x)]
- robust usefulness   gamma(f) = E[inf_{||d|| <= eps} y f(x + d)] = rho(f) - eps ||w||_* / sd_w

(||.||_* the dual norm: L2 for an L2 ball, L1 for Linf), exact for a linear feature. Measured
on the test set for: every right-singular vector of the centred training data, a logistic
regression's weight vector, and Goh's two constructions of useful non-robust features:

- ensemble: the usefulness-weighted sum of every direction that is useful but not robust on
  its own is very useful, and not robust at all;
- contamination: a robust feature plus a little of a low-variance direction keeps (or gains)
  usefulness and loses its robustness.

Seeds draw bootstrap resamples of the training set, so every figure has a 95% CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from eisbench import data as datasets
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.runs.claims import (
    conjunction,
    decide_metric,
    fmt,
    make_claim,
    metric_over_seeds,
    needed,
)
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.store import Store


@dataclass(frozen=True)
class GohLinearConfig:
    dataset: str = "mnist"
    data_root: str | None = None
    classes: tuple[int, int] = (3, 8)  # -1, +1
    norm: str = "l2"  # l2 | linf
    eps: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)  # bootstrap resamples of the training set
    contamination: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)  # weight of the tail
    device: str = "cpu"  # unused: everything here is closed-form numpy


QUICK = GohLinearConfig()
FULL = GohLinearConfig(seeds=(0, 1, 2, 3, 4))


@dataclass(frozen=True)
class Linear:
    """f(x) = w.(x - mu) / sd, standardised on the training set."""

    w: np.ndarray  # (D,)
    mu: np.ndarray  # (D,)
    sd: float

    def __call__(self, x: np.ndarray) -> np.ndarray:  # (N, D) -> (N,)
        out: np.ndarray = (x - self.mu) @ self.w / self.sd
        return out


def standardise(w: np.ndarray, x_train: np.ndarray) -> Linear:
    mu = x_train.mean(0)
    sd = float(((x_train - mu) @ w).std())
    return Linear(w=w, mu=mu, sd=max(sd, 1e-12))


def usefulness(f: Linear, x: np.ndarray, y: np.ndarray) -> float:
    """rho = E[y f(x)] over (x (N, D), y (N,) in {-1, +1})."""
    return float((y * f(x)).mean())


def robust_usefulness(f: Linear, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str) -> float:
    """gamma = E[inf over the eps-ball of y f(x + d)] = rho - eps ||w||_* / sd (closed form)."""
    dual = np.abs(f.w).sum() if norm == "linf" else np.linalg.norm(f.w)
    return usefulness(f, x, y) - eps * float(dual) / f.sd


def worst_case(f: Linear, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str) -> np.ndarray:
    """The minimising perturbation of y f(x + d) itself, (N, D): -eps y times the dual
    direction of w. No [0,1] clamp: the definition is over the whole ball."""
    direction = np.sign(f.w) if norm == "linf" else f.w / np.linalg.norm(f.w)
    out: np.ndarray = -eps * y[:, None] * direction[None, :]
    return out


def _pair(ds: datasets.ImageData, cfg: GohLinearConfig) -> tuple[np.ndarray, ...]:
    """Train and test images (N, D) float64 and labels in {-1, +1} of the two classes."""
    a, b = cfg.classes
    if not (0 <= a < ds.num_classes and 0 <= b < ds.num_classes and a != b):
        raise ValueError(f"classes must be two different labels of {ds.name} "
                         f"(0..{ds.num_classes - 1}), got {cfg.classes}")
    out = []
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        keep = (y == a) | (y == b)
        out += [x[keep].flatten(1).double().numpy(), np.where(y[keep].numpy() == b, 1.0, -1.0)]
    return tuple(out)


def analyse(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *,
            cfg: GohLinearConfig, seed: int) -> dict[str, Any]:
    """Usefulness and robust usefulness (on the test set) of every feature family, for one
    training set (N, D) with labels (N,) in {-1, +1}."""
    def both(f: Linear) -> tuple[float, float]:
        return (usefulness(f, x_te, y_te),
                robust_usefulness(f, x_te, y_te, eps=cfg.eps, norm=cfg.norm))

    mu = x_tr.mean(0)
    _, s, vt = np.linalg.svd(x_tr - mu, full_matrices=False)
    rank = int((s > s[0] * 1e-6).sum())
    v = vt[:rank]  # (R, D) orthonormal directions, most variance first
    proj = (x_tr - mu) @ v.T  # (N, R) projections
    sd_v = proj.std(0)
    rho = (y_tr[:, None] * proj).mean(0) / sd_v  # (R,) training usefulness
    v = v * np.where(rho < 0, -1.0, 1.0)[:, None]  # orient each direction towards +1
    train_rho = np.abs(rho)
    rho_te = ((y_te[:, None] * ((x_te - mu) @ v.T)) / sd_v).mean(0)  # (R,)
    dual = np.abs(v).sum(1) if cfg.norm == "linf" else np.ones(rank)
    sv = np.stack([rho_te, rho_te - cfg.eps * dual / sd_v], 1)  # (R, 2)
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x_tr - mu, y_tr)
    lr = both(standardise(clf.coef_[0], x_tr))
    # ensemble: every direction that is useful but NOT robust on its own (on the training
    # set), weighted by its training usefulness (the best combination of uncorrelated
    # standardised features)
    nonrobust = (train_rho > 0) & (train_rho - cfg.eps * dual / sd_v < 0)
    w_ens = ((train_rho * nonrobust / sd_v)[:, None] * v).sum(0)  # (D,)
    ens = both(standardise(w_ens, x_tr))
    # contamination: the most useful of the top-10 directions (robust), plus alpha times the
    # ensemble direction, both scaled to unit variance on the training set
    top = int(np.argmax(train_rho[:10]))
    base = v[top] / sd_v[top]
    unit_ens = w_ens / ((x_tr - mu) @ w_ens).std()
    contam = [both(standardise(base + a * unit_ens, x_tr)) for a in cfg.contamination]
    return {"singular": sv.tolist(), "logreg": lr, "ensemble": ens,
            "robust_base": both(standardise(v[top], x_tr)), "contamination": contam,
            "rank": rank, "n_ensemble": int(nonrobust.sum())}


def measure(cfg: GohLinearConfig, *, out: Path, store: Store) -> Result:
    """Load the two classes, analyse ``len(cfg.seeds)`` bootstrap resamples of the training
    set, aggregate over them and decide."""
    del out, store  # closed-form: nothing worth caching, nothing but the record
    if cfg.norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {cfg.norm!r}")
    ds = datasets.load(cfg.dataset, root=cfg.data_root)
    x_tr, y_tr, x_te, y_te = _pair(ds, cfg)
    runs = []
    for seed in cfg.seeds:
        idx = np.random.default_rng(seed).integers(0, len(x_tr), len(x_tr))  # (N,) bootstrap
        runs.append(analyse(x_tr[idx], y_tr[idx], x_te, y_te, cfg=cfg, seed=seed))
    metrics = _aggregate(runs, cfg)
    return Result(metrics=metrics, claims=decide(metrics, cfg=cfg), details={"per_seed": runs},
                  data={ds.name: ds.sha256}, device="cpu")


def _aggregate(runs: list[dict[str, Any]], cfg: GohLinearConfig) -> dict[str, Metric]:
    """Mean and 95% CI over the resamples of every figure (usefulness is unbounded)."""
    metrics: dict[str, Metric] = {}
    for name in ("logreg", "ensemble", "robust_base"):
        for j, kind in enumerate(("usefulness", "robust_usefulness")):
            metrics[f"goh_linear/{name}/{kind}"] = metric_over_seeds(
                [r[name][j] for r in runs], lower=-np.inf, upper=np.inf)
    for a_i, a in enumerate(cfg.contamination):
        for j, kind in enumerate(("usefulness", "robust_usefulness")):
            metrics[f"goh_linear/contaminated_{a:g}/{kind}"] = metric_over_seeds(
                [r["contamination"][a_i][j] for r in runs], lower=-np.inf, upper=np.inf)
    frac = [float(np.mean([(u > 0.1) and (g < 0) for u, g in r["singular"]])) for r in runs]
    metrics["goh_linear/singular/frac_useful_nonrobust"] = metric_over_seeds(frac)
    return metrics


def decide(metrics: dict[str, Metric], *, cfg: GohLinearConfig) -> list[Claim]:
    """Verdicts by rules fixed in advance, on 95% CIs over bootstrap resamples, of the form of
    :func:`~eisbench.runs.claims.decide_against` (reproduced: the CI lies past the bar; not
    reproduced: its far end stays short of bar + margin). Goh's figures are qualitative, so
    the margins are the smallest effects worth naming.

    - Useful non-robust directions exist: the fraction of singular directions with
      usefulness > 0.1 and robust usefulness < 0 has CI lower > 0 (reproduced: features); CI
      upper < 0.02 (margin 0.02, fewer than one direction in fifty; not reproduced: bugs, every
      useful direction is robust and the non-robust ones are useless, which is World 1 in
      linear terms, and what Goh found for CIFAR-10's singular vectors).
    - Ensemble (of individually non-robust directions): usefulness CI lower > 0.5 and robust
      usefulness CI upper < 0 (reproduced); usefulness CI upper < 0.6 (margin 0.1) or robust
      usefulness CI lower > 0 (margin 0) (not reproduced).
    - Contamination: at the largest weight, usefulness CI lower > 0.9 x the robust base
      feature's mean usefulness and robust usefulness CI upper < 0 (reproduced), given the
      base feature's robust usefulness CI lower > 0; usefulness CI upper < 0.9 x base or
      robust usefulness CI lower > 0 (margins 0; not reproduced).
    The two constructions are inconclusive for the worlds either way: they show what the
    definition of a "non-robust feature" admits, not which world the data lives in.
    """
    def at(k: str, **kw: Any) -> str:
        return decide_metric(metrics, f"goh_linear/{k}", **kw)

    def shown(*keys: str) -> str:
        return "; ".join(fmt(metrics, f"goh_linear/{k}", label=k) for k in keys)

    a = f"contaminated_{max(cfg.contamination):g}"
    b_rho = metrics["goh_linear/robust_base/usefulness"]["value"]
    return [
        make_claim(
            claim="The data has useful, non-robust linear directions",
            rule="fraction of singular directions with rho > 0.1 and gamma < 0: CI lower > 0 "
                 "(reproduced: features); CI upper < 0.02, margin 0.02 (not reproduced: bugs)",
            measured=shown("singular/frac_useful_nonrobust"),
            verdict=at("singular/frac_useful_nonrobust", bar=0.0, margin=0.02), exhibit="D",
            if_reproduced="features", if_not="bugs",
            literature="Goh 2019: CIFAR-10 directions"),
        make_claim(
            claim="Ensemble: directions that are non-robust on their own sum to a very useful, "
                  "non-robust feature",
            rule="rho CI lower > 0.5 and gamma CI upper < 0 (reproduced); rho CI upper < 0.6 "
                 "or gamma CI lower > 0 (not reproduced); a construction: inconclusive for "
                 "the worlds either way",
            measured=shown("ensemble/usefulness", "ensemble/robust_usefulness"),
            verdict=conjunction(at("ensemble/usefulness", bar=0.5, margin=0.1),
                                at("ensemble/robust_usefulness", bar=0.0, margin=0.0,
                                   higher_means_reproduced=False)),
            exhibit="D", if_reproduced="inconclusive", if_not="inconclusive",
            literature="Goh 2019: constructed"),
        make_claim(
            claim="Contamination: a robust feature plus a little of a non-robust direction "
                  "stays useful and stops being robust",
            rule="contaminated rho CI lower > 0.9 x base rho and contaminated gamma CI upper "
                 "< 0, given base gamma CI lower > 0 (reproduced); contaminated rho CI upper "
                 "< 0.9 x base rho or gamma CI lower > 0 (not reproduced); a construction: "
                 "inconclusive for the worlds either way",
            measured=shown("robust_base/usefulness", "robust_base/robust_usefulness",
                           f"{a}/usefulness", f"{a}/robust_usefulness"),
            verdict=conjunction(at(f"{a}/usefulness", bar=0.9 * b_rho, margin=0.0),
                                at(f"{a}/robust_usefulness", bar=0.0, margin=0.0,
                                   higher_means_reproduced=False),
                                needed(at("robust_base/robust_usefulness", bar=0.0,
                                          margin=0.0))),
            exhibit="D", if_reproduced="inconclusive", if_not="inconclusive",
            literature="Goh 2019: constructed"),
    ]


register(Experiment(name="goh-linear",
                    summary="Goh 2019: usefulness vs robust usefulness of linear features; "
                            "ensemble and contamination constructions",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.goh_linear")))
