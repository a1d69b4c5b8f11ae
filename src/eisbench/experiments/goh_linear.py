"""Goh 2019 (Distill response to Ilyas et al.): useful non-robust LINEAR features.

Two classes of D (labels y in {-1, +1}). A linear feature is f_w(x) = w.(x - mu) / sd_w,
standardised on the training set (mean 0, variance 1). Following Ilyas et al.'s definitions:

- usefulness          rho(f)   = E[y f(x)]
- robust usefulness   gamma(f) = E[inf_{||d|| <= eps} y f(x + d)] = rho(f) - eps ||w||_* / sd_w

(||.||_* the dual norm: L2 for an L2 ball, L1 for Linf), exact for a linear feature. Measured
on the test set for: every principal direction of the training data (the right-singular
vectors of the centred data), a logistic regression's weight vector, and Goh's two
constructions of useful non-robust features:

- ensemble: the usefulness-weighted sum of every direction that is useful but not robust on
  its own is very useful, and not robust at all;
- contamination: a robust feature plus a little of a low-variance direction keeps (or gains)
  usefulness and loses its robustness.

Intervals, over the unit of replication (the training images). Every figure's ``value`` is the
statistic of the full training set (scored on the fixed test set); its ``ci95`` is the
percentile bootstrap interval over ``n_bootstrap`` (B) resamples of the N training images
(N drawn with replacement), each analysed from scratch (directions, logistic regression,
constructions). ``n`` counts the training images resampled (N); B is in
``details["n_bootstrap"]``. The resampling generator is ``numpy.random.default_rng(seeds)``:
every seed of the tuple feeds its SeedSequence, so changing any seed changes the draw, and
their number does not change B. The test set is not resampled: an interval covers what a
construction would be on another training set, not test-set noise.

Cost: a resample is a vector of counts (N,), and every figure is a function of the weighted
training mean, covariance (D x D) and E[y x], so a resample costs one weighted covariance, one
eigendecomposition of it (instead of an SVD of the N x D data) and a logistic regression by
preconditioned L-BFGS (:mod:`~eisbench.experiments.weighted_logistic`), warm-started at the
full-data fit and converged tightly enough that the start does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from eisbench import data as datasets
from eisbench.core.stats import percentile_ci
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.weighted_logistic import Logistic, Rows, fit_logistic, warm
from eisbench.runs.claims import conjunction, decide_metric, fmt, make_claim, needed
from eisbench.runs.preregistered import bar_margin, threshold
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.store import Store

MIN_BOOTSTRAP = 40  # a 95% percentile interval needs at least one resample in each 2.5% tail
C_REG = 1.0  # inverse L2 strength of the logistic regression (scikit-learn's C)


@dataclass(frozen=True)
class GohLinearConfig:
    dataset: str = "mnist"
    data_root: str | None = None
    classes: tuple[int, int] = (3, 8)  # -1, +1
    norm: str = "l2"  # l2 | linf
    eps: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)  # together seed the bootstrap's generator
    contamination: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)  # weight of the tail
    device: str = "cpu"  # unused: everything here is closed-form numpy
    n_bootstrap: int = 100  # B, resamples of the training images for the percentile CIs


QUICK = GohLinearConfig()
FULL = GohLinearConfig(seeds=(0, 1, 2, 3, 4), n_bootstrap=1000)


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


def dual_norm(w: np.ndarray, *, norm: str) -> float:
    """||w||_*: L1 for an Linf ball, L2 for an L2 ball."""
    return float(np.abs(w).sum() if norm == "linf" else np.linalg.norm(w))


def usefulness(f: Linear, x: np.ndarray, y: np.ndarray) -> float:
    """rho = E[y f(x)] over (x (N, D), y (N,) in {-1, +1})."""
    return float((y * f(x)).mean())


def robust_usefulness(f: Linear, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str) -> float:
    """gamma = E[inf over the eps-ball of y f(x + d)] = rho - eps ||w||_* / sd (closed form)."""
    return usefulness(f, x, y) - eps * dual_norm(f.w, norm=norm) / f.sd


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


@dataclass(frozen=True)
class Pair:
    """Training and test data of the two classes, over the pixels that vary in the training
    set (a pixel constant there is constant in every resample too, so every direction, weight
    vector and dual norm is exactly zero on it) and centred on the training mean."""

    xc: np.ndarray  # (N, D') training images minus their mean
    y: np.ndarray  # (N,) in {-1, +1}
    test_dev: np.ndarray  # (D',) E_test[y (x - mean)]
    test_ybar: float  # E_test[y]

    @staticmethod
    def of(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> Pair:
        keep = x_tr.max(0) > x_tr.min(0)  # (D,)
        if not keep.any():
            raise ValueError("every pixel is constant on the training set: nothing to analyse")
        mu = x_tr[:, keep].mean(0)
        return Pair(xc=x_tr[:, keep] - mu, y=y_tr, test_dev=y_te @ (x_te[:, keep] - mu) / len(y_te),
                    test_ybar=float(y_te.mean()))


def rows(p: Pair, counts: np.ndarray) -> Rows:
    """The training set that holds image i ``counts[i]`` times (N,), as its distinct rows."""
    nz = counts > 0
    return Rows(x=p.xc[nz], y=p.y[nz], c=counts[nz].astype(np.float64))


@dataclass(frozen=True)
class Moments:
    """What every figure but the logistic regression needs of one training set: its
    covariance (ddof 0), E[y (x - mean)], and the test set's E[y (x - mean)] with this
    training set's mean."""

    cov: np.ndarray  # (D', D')
    train_dev: np.ndarray  # (D',)
    test_dev: np.ndarray  # (D',)


def moments(p: Pair, s: Rows) -> Moments:
    """The moments of the training set ``s`` (``p``: the test side)."""
    n = s.c.sum()
    d = s.c @ s.x / n  # (D',) shift of the sample's mean from the full one
    a = s.x * np.sqrt(s.c / n)[:, None]  # (M, D')
    cov = a.T @ a - np.outer(d, d)  # a symmetric product: half a general one's work
    ybar = s.c @ s.y / n
    return Moments(cov=cov, train_dev=(s.c * s.y) @ s.x / n - ybar * d,
                   test_dev=p.test_dev - p.test_ybar * d)


def analyse(p: Pair, counts: np.ndarray, *, cfg: GohLinearConfig,
            logistic: Logistic) -> dict[str, Any]:
    """Usefulness and robust usefulness (on the test set) of every feature family, for the
    training set that holds image i ``counts[i]`` times (N,) (all ones: the full set); the
    logistic regression fitted as ``logistic`` says."""
    s = rows(p, counts)
    m = moments(p, s)
    evals, evecs = np.linalg.eigh(m.cov)  # ascending; columns
    lam, v = evals[::-1], evecs[:, ::-1].T  # (D',), (D', D') directions, most variance first
    rank = int((lam > lam[0] * 1e-12).sum())  # singular values above 1e-6 of the largest
    v, sd_v = v[:rank], np.sqrt(lam[:rank])  # (R, D'), (R,)
    rho = v @ m.train_dev / sd_v  # (R,) training usefulness
    v = v * np.where(rho < 0, -1.0, 1.0)[:, None]  # orient each direction towards +1
    train_rho = np.abs(rho)
    rho_te = v @ m.test_dev / sd_v  # (R,)
    dual = np.abs(v).sum(1) if cfg.norm == "linf" else np.ones(rank)
    sv = np.stack([rho_te, rho_te - cfg.eps * dual / sd_v], 1)  # (R, 2)

    def sd(w: np.ndarray) -> float:
        return max(float(np.sqrt(max(float(w @ m.cov @ w), 0.0))), 1e-12)

    def both(w: np.ndarray) -> tuple[float, float]:
        rho_w = float(m.test_dev @ w) / sd(w)
        return rho_w, rho_w - cfg.eps * dual_norm(w, norm=cfg.norm) / sd(w)

    w_lr, _ = fit_logistic(s, logistic, c_reg=C_REG)
    # ensemble: every direction that is useful but NOT robust on its own (on the training
    # set), weighted by its training usefulness (the best combination of uncorrelated
    # standardised features)
    nonrobust = (train_rho > 0) & (train_rho - cfg.eps * dual / sd_v < 0)
    w_ens = (train_rho * nonrobust / sd_v) @ v  # (D',)
    # contamination: the most useful of the top-10 directions (robust), plus alpha times the
    # ensemble direction, both scaled to unit variance on the training set
    top = int(np.argmax(train_rho[:10]))
    base, unit_ens = v[top] / sd_v[top], w_ens / sd(w_ens)
    return {"singular": sv.tolist(), "logreg": both(w_lr), "ensemble": both(w_ens),
            "robust_base": both(v[top]),
            "contamination": [both(base + a * unit_ens) for a in cfg.contamination],
            "rank": rank, "n_ensemble": int(nonrobust.sum())}


KINDS = ("usefulness", "robust_usefulness")


def figures(r: dict[str, Any], cfg: GohLinearConfig) -> dict[str, float]:
    """The metrics' figures (name -> number) of one :func:`analyse` result."""
    out = {f"goh_linear/{name}/{kind}": float(r[name][j])
           for name in ("logreg", "ensemble", "robust_base") for j, kind in enumerate(KINDS)}
    for a, pair in zip(cfg.contamination, r["contamination"], strict=True):
        for j, kind in enumerate(KINDS):
            out[f"goh_linear/contaminated_{a:g}/{kind}"] = float(pair[j])
    sv = np.asarray(r["singular"])  # (R, 2)
    out["goh_linear/singular/frac_useful_nonrobust"] = float(
        np.mean((sv[:, 0] > threshold("goh_linear.singular.useful_rho")) & (sv[:, 1] < 0)))
    return out


def bootstrap(p: Pair, *, cfg: GohLinearConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The full training set's analysis and, for each of ``cfg.n_bootstrap`` resamples of the
    training images (drawn by ``default_rng(cfg.seeds)``), ``{"figures", "rank",
    "n_ensemble"}``."""
    n = len(p.y)
    logistic = warm(rows(p, np.ones(n)), c_reg=C_REG)
    full = analyse(p, np.ones(n), cfg=cfg, logistic=logistic)
    rng = np.random.default_rng(list(cfg.seeds))
    reps = []
    # one BLAS thread: these are many small calls (a 600-wide eigendecomposition, matrix-vector
    # products), where waking a second thread costs more than it saves, and far more when
    # the cores are shared (measured on a loaded 2-core machine: 0.27 s per resample with one
    # thread, 0.5-1.3 s with two)
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(cfg.n_bootstrap):
            counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)  # (N,)
            r = analyse(p, counts, cfg=cfg, logistic=logistic)
            reps.append({"figures": figures(r, cfg), "rank": r["rank"],
                         "n_ensemble": r["n_ensemble"]})
    return full, reps


def measure(cfg: GohLinearConfig, *, out: Path, store: Store) -> Result:
    """Load the two classes, analyse the full training set and ``cfg.n_bootstrap`` bootstrap
    resamples of it, and decide on the full-set values with percentile intervals."""
    del out, store  # closed-form: nothing worth caching, nothing but the record
    if cfg.norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {cfg.norm!r}")
    if cfg.n_bootstrap < MIN_BOOTSTRAP:
        raise ValueError(f"n_bootstrap must be >= {MIN_BOOTSTRAP} (a 95% percentile interval "
                         f"needs resamples in each 2.5% tail), got {cfg.n_bootstrap}")
    ds = datasets.load(cfg.dataset, root=cfg.data_root)
    p = Pair.of(*_pair(ds, cfg))
    full, reps = bootstrap(p, cfg=cfg)
    metrics = _aggregate(figures(full, cfg), [r["figures"] for r in reps], n=len(p.y))
    details = {"full": full, "n_bootstrap": cfg.n_bootstrap, "n_train": len(p.y),
               "n_pixels": int(p.xc.shape[1]),
               "replicates": {k: [r["figures"][k] for r in reps] for k in metrics},
               "rank": [r["rank"] for r in reps], "n_ensemble": [r["n_ensemble"] for r in reps]}
    return Result(metrics=metrics, claims=decide(metrics, cfg=cfg), details=details,
                  data={ds.name: ds.sha256}, device="cpu")


def _aggregate(value: dict[str, float], replicates: list[dict[str, float]], *,
               n: int) -> dict[str, Metric]:
    """Each figure's full-set value with its 95% percentile bootstrap interval; ``n`` = the
    number of training images resampled."""
    return {k: {"value": v, "ci95": list(percentile_ci([r[k] for r in replicates], estimate=v)),
                "n": n, "higher_is_better": True,
                "unit": "training images (95% percentile bootstrap)"} for k, v in value.items()}


def decide(metrics: dict[str, Metric], *, cfg: GohLinearConfig) -> list[Claim]:
    """Verdicts by rules fixed in advance, on the full-set values and their 95% percentile
    bootstrap intervals over training images, of the form of
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
      feature's usefulness (its full-set value) and robust usefulness CI upper < 0
      (reproduced), given the base feature's robust usefulness CI lower > 0; usefulness CI
      upper < 0.9 x base or robust usefulness CI lower > 0 (margins 0; not reproduced).
    The two constructions are inconclusive for the worlds either way: they show what the
    definition of a "non-robust feature" admits, not which world the data lives in. The numbers
    are ``goh_linear.*`` in :data:`~eisbench.runs.preregistered.THRESHOLDS`.
    """
    def at(k: str, **kw: Any) -> str:
        return decide_metric(metrics, f"goh_linear/{k}", **kw)

    def shown(*keys: str) -> str:
        return "; ".join(fmt(metrics, f"goh_linear/{k}", label=k) for k in keys)

    a = f"contaminated_{max(cfg.contamination):g}"
    b_rho = metrics["goh_linear/robust_base/usefulness"]["value"]
    rho_cut, sv = threshold("goh_linear.singular.useful_rho"), bar_margin(
        "goh_linear.singular.frac_useful_nonrobust")
    eu, eg = (bar_margin("goh_linear.ensemble.usefulness"),
              bar_margin("goh_linear.ensemble.robust_usefulness"))
    x_base, cu = (threshold("goh_linear.contaminated.usefulness.bar_x_base"),
                  threshold("goh_linear.contaminated.usefulness.margin"))
    cg, bg = (bar_margin("goh_linear.contaminated.robust_usefulness"),
              bar_margin("goh_linear.robust_base.robust_usefulness"))
    return [
        make_claim(
            claim="The data has useful, non-robust linear directions",
            rule=f"fraction of singular directions with rho > {rho_cut:g} and gamma < 0: CI lower "
                 f"> {sv['bar']:g} (reproduced: features); CI upper < {sv['bar'] + sv['margin']:g}"
                 f", margin {sv['margin']:g} (not reproduced: bugs)",
            measured=shown("singular/frac_useful_nonrobust"),
            verdict=at("singular/frac_useful_nonrobust", **sv), exhibit="D",
            if_reproduced="features", if_not="bugs",
            literature="Goh 2019: CIFAR-10 directions"),
        make_claim(
            claim="Ensemble: directions that are non-robust on their own sum to a very useful, "
                  "non-robust feature",
            rule=f"rho CI lower > {eu['bar']:g} and gamma CI upper < {eg['bar']:g} (reproduced); "
                 f"rho CI upper < {eu['bar'] + eu['margin']:g} or gamma CI lower > "
                 f"{eg['bar'] - eg['margin']:g} (not reproduced); a construction: inconclusive "
                 "for the worlds either way",
            measured=shown("ensemble/usefulness", "ensemble/robust_usefulness"),
            verdict=conjunction(at("ensemble/usefulness", **eu),
                                at("ensemble/robust_usefulness", **eg,
                                   higher_means_reproduced=False)),
            exhibit="D", if_reproduced="inconclusive", if_not="inconclusive",
            literature="Goh 2019: constructed"),
        make_claim(
            claim="Contamination: a robust feature plus a little of a non-robust direction "
                  "stays useful and stops being robust",
            rule=f"contaminated rho CI lower > {x_base:g} x base rho and contaminated gamma CI "
                 f"upper < {cg['bar']:g}, given base gamma CI lower > {bg['bar']:g} (reproduced); "
                 f"contaminated rho CI upper < {x_base:g} x base rho or gamma CI lower > "
                 f"{cg['bar'] - cg['margin']:g} (not reproduced); a construction: inconclusive "
                 "for the worlds either way",
            measured=shown("robust_base/usefulness", "robust_base/robust_usefulness",
                           f"{a}/usefulness", f"{a}/robust_usefulness"),
            verdict=conjunction(at(f"{a}/usefulness", bar=x_base * b_rho, margin=cu),
                                at(f"{a}/robust_usefulness", **cg,
                                   higher_means_reproduced=False),
                                needed(at("robust_base/robust_usefulness", **bg))),
            exhibit="D", if_reproduced="inconclusive", if_not="inconclusive",
            literature="Goh 2019: constructed"),
    ]


register(Experiment(name="goh-linear",
                    summary="Goh 2019: usefulness vs robust usefulness of linear features; "
                            "ensemble and contamination constructions",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.goh_linear")))
