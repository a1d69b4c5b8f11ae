"""goh-linear: closed-form (robust) usefulness of linear features, checked against sampling
and a gradient search; the fast resample analysis (moments, eigendecomposition, preconditioned
logistic regression) checked against the definitions on duplicated rows; values on the full
training set with percentile bootstrap intervals that do not shrink with the number of
resamples; and the experiment end to end on the 8x8 digits."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from eisbench import data as datasets
from eisbench.core.stats import percentile_ci
from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.goh_linear import (
    QUICK,
    GohLinearConfig,
    Pair,
    _pair,
    analyse,
    figures,
    measure,
    robust_usefulness,
    rows,
    standardise,
    usefulness,
    worst_case,
)
from eisbench.experiments.weighted_logistic import fit_logistic, from_zero, warm
from eisbench.runs import record
from eisbench.runs.result import Result
from eisbench.runs.store import Store

DIGITS = dataclasses.replace(QUICK, dataset="digits", n_bootstrap=60)


def _data(n: int = 500, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = np.where(g.random(n) < 0.5, -1.0, 1.0)
    x = g.normal(size=(n, d)) * np.linspace(1.0, 0.05, d) + 0.3 * y[:, None]
    return x, y


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_closed_form_robust_usefulness_is_the_infimum(norm: str) -> None:
    x, y = _data()
    f = standardise(np.array([1.0, -0.5, 0.2, 2.0, 0.0, 1.0]), x)
    eps = 0.3
    gamma = robust_usefulness(f, x, y, eps=eps, norm=norm)
    assert gamma < usefulness(f, x, y)
    # (1) the minimising perturbation attains it exactly
    attained = usefulness(f, x + worst_case(f, x, y, eps=eps, norm=norm), y)
    assert abs(attained - gamma) < 1e-9
    # (2) Monte Carlo: random points of the ball never go below it
    g = np.random.default_rng(1)
    for _ in range(200):
        d = g.normal(size=x.shape) if norm == "l2" else g.uniform(-1, 1, size=x.shape)
        scale = np.linalg.norm(d, axis=1, keepdims=True) if norm == "l2" else 1.0
        d = eps * d / scale
        assert usefulness(f, x + d, y) >= gamma - 1e-9
    # (3) a projected-gradient search from a random start does not go below it either
    xt, yt = torch.tensor(x), torch.tensor(y)
    w, mu = torch.tensor(f.w), torch.tensor(f.mu)
    delta = (torch.rand_like(xt) - 0.5) * eps
    for _ in range(100):
        delta.requires_grad_(True)
        obj = (yt * ((xt + delta - mu) @ w) / f.sd).sum()
        (grad,) = torch.autograd.grad(obj, delta)
        with torch.no_grad():
            if norm == "l2":
                delta = delta - 0.1 * grad / grad.norm(dim=1, keepdim=True)
                delta = delta * (eps / delta.norm(dim=1, keepdim=True)).clamp(max=1.0)
            else:
                delta = (delta - 0.1 * grad.sign()).clamp(-eps, eps)
    found = float((yt * ((xt + delta - mu) @ w) / f.sd).mean())
    assert found >= gamma - 1e-6 and found - gamma < 1e-3


def _reference(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *,
               cfg: GohLinearConfig) -> dict[str, float]:
    """Every figure straight from its definition on the given training rows (duplicated as
    resampled): an SVD of the centred images, :func:`standardise`, :func:`usefulness`,
    :func:`robust_usefulness`, scikit-learn's logistic regression converged tightly."""
    def both(w: np.ndarray) -> tuple[float, float]:
        f = standardise(w, x_tr)
        return (usefulness(f, x_te, y_te),
                robust_usefulness(f, x_te, y_te, eps=cfg.eps, norm=cfg.norm))

    mu = x_tr.mean(0)
    _, s, vt = np.linalg.svd(x_tr - mu, full_matrices=False)
    v = vt[: int((s > s[0] * 1e-6).sum())]
    v = v * np.sign(((x_tr - mu) @ v.T * y_tr[:, None]).mean(0))[:, None]
    sv = np.array([both(d) for d in v])  # (R, 2)
    train = np.array([usefulness(standardise(d, x_tr), x_tr, y_tr) for d in v])
    sd_v = ((x_tr - mu) @ v.T).std(0)
    dual = np.abs(v).sum(1) if cfg.norm == "linf" else np.ones(len(v))
    nonrobust = (train > 0) & (train - cfg.eps * dual / sd_v < 0)
    w_ens = ((train * nonrobust / sd_v)[:, None] * v).sum(0)
    top = int(np.argmax(train[:10]))
    unit_ens = w_ens / ((x_tr - mu) @ w_ens).std()
    clf = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(x_tr, y_tr)
    out = {}
    for name, w in (("logreg", clf.coef_[0]), ("ensemble", w_ens), ("robust_base", v[top])):
        out[f"goh_linear/{name}/usefulness"], out[f"goh_linear/{name}/robust_usefulness"] = both(w)
    for a in cfg.contamination:
        rho, gamma = both(v[top] / sd_v[top] + a * unit_ens)
        out[f"goh_linear/contaminated_{a:g}/usefulness"] = rho
        out[f"goh_linear/contaminated_{a:g}/robust_usefulness"] = gamma
    out["goh_linear/singular/frac_useful_nonrobust"] = float(
        np.mean((sv[:, 0] > 0.1) & (sv[:, 1] < 0)))
    return out


def _assert_figures(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        tol = 2e-5 if "logreg" in k else 1e-8  # a tightly converged fit vs the minimiser
        torch.testing.assert_close(got[k], want[k], rtol=1e-7, atol=tol, msg=k)


def _digits() -> tuple[np.ndarray, ...]:
    return _pair(datasets.load("digits"), DIGITS)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_resample_analysis_matches_the_definitions_on_duplicated_rows(norm: str) -> None:
    cfg = dataclasses.replace(DIGITS, norm=norm, eps=0.3)
    x_tr, y_tr, x_te, y_te = _digits()
    p = Pair.of(x_tr, y_tr, x_te, y_te)
    assert p.xc.shape[1] < x_tr.shape[1]  # the digits' constant border pixels are dropped
    how = warm(rows(p, np.ones(len(y_tr))))
    for seed in range(3):
        idx = np.random.default_rng(seed).integers(0, len(y_tr), len(y_tr))
        counts = np.bincount(idx, minlength=len(y_tr)).astype(np.float64)
        got = figures(analyse(p, counts, cfg=cfg, logistic=how), cfg)
        _assert_figures(got, _reference(x_tr[idx], y_tr[idx], x_te, y_te, cfg=cfg))


def test_logistic_fit_is_the_minimiser_from_any_start() -> None:
    """Sample weights are duplicated rows, and a warm start changes nothing."""
    x_tr, y_tr, x_te, y_te = _digits()
    p = Pair.of(x_tr, y_tr, x_te, y_te)
    counts = np.bincount(np.random.default_rng(7).integers(0, len(y_tr), len(y_tr)),
                         minlength=len(y_tr)).astype(np.float64)
    s = rows(p, counts)
    cold, _ = fit_logistic(s, from_zero(s))
    warmed, _ = fit_logistic(s, warm(rows(p, np.ones(len(y_tr)))))
    dup = np.repeat(np.arange(len(s.y)), s.c.astype(int))
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(
        s.x[dup], s.y[dup]).coef_[0]
    assert not np.allclose(ref, LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(
        s.x, s.y).coef_[0], atol=1e-2)  # the counts matter
    torch.testing.assert_close(cold, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    torch.testing.assert_close(warmed, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def _measure(cfg: GohLinearConfig, tmp_path: Path) -> Result:
    return measure(cfg, out=tmp_path, store=Store(tmp_path / "cache"))


def test_value_is_the_full_training_set_statistic(tmp_path: Path) -> None:
    res = _measure(DIGITS, tmp_path)
    x_tr, y_tr, x_te, y_te = _digits()
    _assert_figures({k: m["value"] for k, m in res.metrics.items()},
                    _reference(x_tr, y_tr, x_te, y_te, cfg=DIGITS))
    reps = res.details["replicates"]
    off = 0
    for k, m in res.metrics.items():
        assert m["n"] == len(y_tr)  # n counts the training images resampled
        assert len(reps[k]) == DIGITS.n_bootstrap
        # the interval is the percentile interval of the replicates, for this very value
        assert m["ci95"] == list(percentile_ci(reps[k], estimate=m["value"]))
        off += abs(float(np.mean(reps[k])) - m["value"]) > 1e-3
    assert off >= 3  # the mean of the resamples is not the value: the check above can fail


def _widths(res: Result) -> np.ndarray:
    return np.array([m["ci95"][1] - m["ci95"][0] for m in res.metrics.values()])


def test_interval_does_not_shrink_with_more_resamples(tmp_path: Path) -> None:
    """A percentile interval estimates the spread of the statistic: 4x the resamples leave its
    width about the same, where a t-interval over the resamples would halve."""
    small = _widths(_measure(dataclasses.replace(DIGITS, n_bootstrap=100), tmp_path))
    large = _widths(_measure(dataclasses.replace(DIGITS, n_bootstrap=400), tmp_path))
    keep = (small > 0) & (large > 0)
    assert keep.sum() >= 10
    ratio = float(np.median(small[keep] / large[keep]))
    assert 1 / 1.3 < ratio < 1.3, ratio


def test_seeds_seed_the_draw_and_do_not_set_its_size(tmp_path: Path) -> None:
    def run(seeds: tuple[int, ...]) -> dict[str, Any]:
        res = _measure(dataclasses.replace(DIGITS, seeds=seeds, n_bootstrap=40), tmp_path)
        return {k: m["ci95"] for k, m in res.metrics.items()} | {
            "B": len(res.details["rank"])}

    a = run((0, 1))
    assert a == run((0, 1))
    assert a != run((0, 2))
    assert run((5,))["B"] == run((0, 1, 2, 3))["B"] == 40


def test_too_few_resamples_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_bootstrap must be >= 40"):
        _measure(dataclasses.replace(DIGITS, n_bootstrap=39), tmp_path)


def test_percentile_ci_is_numpys_percentiles_widened_to_the_estimate() -> None:
    g = np.random.default_rng(0)
    for size in (1, 2, 7, 100, 1001):
        x = g.standard_exponential(size)
        lo, hi = np.percentile(x, [2.5, 97.5])
        torch.testing.assert_close(percentile_ci(list(x), estimate=float(np.median(x))),
                                   (float(lo), float(hi)))
    torch.testing.assert_close(percentile_ci([1.0, 2.0, 3.0], estimate=-1.0), (-1.0, 2.95))
    torch.testing.assert_close(percentile_ci([1.0, 2.0, 3.0], estimate=4.0), (1.05, 4.0))
    with pytest.raises(ValueError, match="finite"):
        percentile_ci([1.0, float("nan")], estimate=1.0)
    with pytest.raises(ValueError, match="finite"):
        percentile_ci([], estimate=1.0)


def test_goh_linear_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("goh-linear")
    cfg = dataclasses.replace(exp.quick, dataset="digits", eps=0.5, seeds=(0, 1),
                              n_bootstrap=40)
    rec = exp.run(cfg, out=tmp_path, store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    assert len(rec["claims"]) == 3
    m = rec["metrics"]
    assert m["goh_linear/logreg/usefulness"]["value"] > 0.5  # 3 vs 8 is linearly separable
    rho, gamma = np.array(rec["details"]["full"]["singular"]).T
    assert (gamma <= rho + 1e-12).all()  # the adversary can only hurt
    contaminated = [m[f"goh_linear/contaminated_{a:g}/robust_usefulness"]["value"]
                    for a in cfg.contamination]
    assert all(b < a for a, b in zip(contaminated, contaminated[1:], strict=False))
    html = exp.report(rec, tmp_path).read_text()
    assert "Contamination" in html and "data:image/png;base64" in html
    assert "percentile bootstrap" in html and f"B = {cfg.n_bootstrap}" in html
