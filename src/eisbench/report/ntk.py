"""The ntk report: clean and robust accuracy of the NTK's eigen-features against the
eigen-index (95% CI bands over seeds), the eigenvalue spectrum, a few eigen-features drawn as
input gradients, the verdicts and every per-seed run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from eisbench.core.paths import atomic_write_bytes
from eisbench.core.stats import mean_ci
from eisbench.report.html import (
    esc,
    figure,
    footer,
    header,
    legend_outside,
    page,
    pct,
    table,
    verdict_table,
)
from eisbench.runs.record import Record


def _band(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-interval per column of (seeds, M) values."""
    cols = [mean_ci(list(c)) for c in np.array(rows).T]
    m, lo, hi = (np.array(v) for v in zip(*cols, strict=True))
    return m, np.clip(lo, 0, 1), np.clip(hi, 0, 1)


def _accuracy_plot(rec: Record) -> str:
    runs = rec["details"]["per_seed"]
    m_feat = len(runs[0]["clean_acc"])
    idx = np.arange(m_feat)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label, colour in (("clean_acc", "clean accuracy", "#4c72b0"),
                               ("robust_acc", "robust accuracy", "#c44e52")):
        m, lo, hi = _band([r[key] for r in runs])
        ax.plot(idx, m * 100, marker="o", markersize=3, color=colour, label=label)
        ax.fill_between(idx, lo * 100, hi * 100, color=colour, alpha=0.2)
    ax.axhline(rec["details"]["chance"] * 100, color="gray", linestyle="--",
               label="chance (majority class)")
    ax.axvspan(m_feat // 2 - 0.5, m_feat - 0.5, color="#eeeeee", zorder=0,
               label="high-index band (claim 2)")
    ax.set_xlabel("eigen-index i (0 = largest eigenvalue)")
    ax.set_ylabel("test accuracy of sign f_i (%)")
    ax.set_ylim(-2, 102)
    legend_outside(ax)
    ax.set_title(f"NTK eigen-features: mean and 95% CI over {len(runs)} seeds "
                 f"({rec['details']['attack']})", fontsize=8)
    return figure(fig)


def _spectrum_plot(rec: Record) -> str:
    runs = rec["details"]["per_seed"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    for r in runs:
        lam = np.array(r["eigenvalues"])
        ax.loglog(np.arange(1, len(lam) + 1), lam, label=f"seed {r['seed']} (n={r['n']})")
        ax2.semilogy(np.arange(len(r["label_alignment"])),
                     np.maximum(r["label_alignment"], 1e-8), marker=".", linestyle="")
    ax.set_xlabel("rank i + 1")
    ax.set_ylabel("eigenvalue of K")
    legend_outside(ax)
    ax.set_title("Eigenvalue spectrum of the empirical NTK", fontsize=9)
    ax2.set_xlabel("eigen-index i")
    ax2.set_ylabel("(v_i . y)^2 / ||y||^2")
    ax2.set_title("Label energy on each eigenvector", fontsize=9)
    fig.tight_layout()
    return figure(fig)


def _feature_images(rec: Record) -> str:
    r = rec["details"]["per_seed"][0]
    grads = [np.array(g) for g in r["input_gradients"]]
    side = math.isqrt(len(grads[0])) if grads else 0
    if not grads or side * side != len(grads[0]):
        return "<p>(input gradients are not square single-channel images; not drawn)</p>"
    fig, axes = plt.subplots(1, len(grads), figsize=(1.5 * len(grads), 1.8))
    for ax, i, g in zip(np.atleast_1d(axes), r["shown"], grads, strict=True):
        v = float(np.abs(g).max()) or 1.0
        shown = ax.imshow(g.reshape(side, side) / v, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"f_{i}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"Input gradient of each eigen-feature at the mean test image (seed "
                 f"{r['seed']}; red: pixels that push towards class +1)", fontsize=9)
    bar = fig.colorbar(shown, ax=np.atleast_1d(axes).tolist(), shrink=0.8, pad=0.02)
    bar.set_label("gradient / its max |value|", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    names = ", ".join(f"f_{i}" for i in r["shown"])
    return figure(fig, alt=f"Input gradients of the NTK eigen-features {names} at the mean "
                           "test image, red-blue images")


def _ci(m: Mapping[str, Any], pct: bool = True) -> str:
    if pct:
        return f"{m['value']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]"
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for an ntk record; returns its path."""
    ms, lit, cfg = rec["metrics"], rec["details"]["literature"], rec["config"]
    rows = [
        ["full kernel predictor", _ci(ms["ntk/kernel/clean_acc"]),
         _ci(ms["ntk/kernel/robust_acc"]), f"{lit['kernel'][0]:.0%} / {lit['kernel'][1]:.0%}"],
        [f"sum of the first {cfg['n_features']} features", _ci(ms["ntk/top_sum/clean_acc"]),
         _ci(ms["ntk/top_sum/robust_acc"]), "-"],
        ["feature 1", _ci(ms["ntk/feature_1/clean_acc"]), _ci(ms["ntk/feature_1/robust_acc"]),
         f"{lit['feature_1'][0]:.0%} / {lit['feature_1'][1]:.0%}"],
        [f"features {cfg['n_features'] // 2}..{cfg['n_features'] - 1} (mean)",
         _ci(ms["ntk/high_index/clean_acc"]), _ci(ms["ntk/high_index/robust_acc"]),
         "useful, non-robust"],
    ]
    corr = [[k.split("/")[-1].replace("_", " "), _ci(ms[k], pct=False)]
            for k in ("ntk/spearman_index_robust", "ntk/spearman_index_clean",
                      "ntk/spearman_index_survival")]
    runs = rec["details"]["per_seed"]
    quantities: list[tuple[str, Any]] = [
        ("n (bound)", lambda r: f"{r['n']} ({r['n_bound']})"),
        ("params", lambda r: r["params"]),
        ("memory est. (GiB)", lambda r: f"{r['memory_estimate_gib']:.3f}"),
        ("chance", lambda r: pct(r["chance"])),
        ("Spearman robust", lambda r: f"{r['spearman_robust']:.3f}"),
        ("Spearman clean", lambda r: f"{r['spearman_clean']:.3f}"),
        ("high clean acc", lambda r: pct(r["high_clean_acc"])),
        ("high robust acc", lambda r: pct(r["high_robust_acc"])),
        ("kernel clean / robust acc",
         lambda r: f"{pct(r['kernel'][0])} / {pct(r['kernel'][1])}"),
        ("excluded", lambda r: r["n_excluded"]),
        ("seconds", lambda r: ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items()))]
    per_seed = table(["quantity", *(f"seed {r['seed']}" for r in runs)],
                     [[name, *(get(r) for r in runs)] for name, get in quantities])
    per_feature = table(["seed", "i", "lambda_i", "clean acc", "robust acc"],
                        [[r["seed"], i, f"{r['eigenvalues'][i]:.4g}", pct(c), pct(a)]
                         for r in runs for i, (c, a) in enumerate(zip(r["clean_acc"],
                                                                      r["robust_acc"],
                                                                      strict=True))])
    body = f"""{header(rec)}
<p>Empirical NTK K = J J<sup>T</sup> of a {cfg['depth']}-hidden-layer ReLU MLP (width
{cfg['width']}, scalar output, at initialisation) on n training images of classes
{esc(cfg['classes'])} of {esc(cfg['dataset'])} (labels -1/+1), n chosen from a memory budget of
{cfg['memory_gib']:g} GiB (and capped by n_max={esc(cfg['n_max'])}). Eigen-feature i:
f<sub>i</sub>(x) = K(x, X) v<sub>i</sub> v<sub>i</sub><sup>T</sup> y / lambda<sub>i</sub>,
evaluated as a Jacobian-vector product. Accuracy of sign f<sub>i</sub> on
{runs[0]['n_test']} clean test images and on {runs[0]['n_test_robust']} attacked ones
({esc(rec['details']['attack'])}). Peak memory of the process: {
rec['details']['peak_rss_gib']:.2f} GiB.</p>
<p>Literature: {esc(rec['details']['literature_source'])}.</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
<h2>Measured and published</h2>
{table(["predictor", "clean accuracy (95% CI)", "robust accuracy (95% CI)",
        "Tsilivis & Kempe (clean / robust)"], rows)}
{table(["Spearman correlation with the eigen-index", "mean [95% CI]"], corr)}
<p>The survival ratio is robust / clean accuracy on the attacked images: if it also falls with
the index, robustness falls beyond what the loss of clean accuracy explains. Features that
predict one class on every test image are left out of the correlations.</p>
<h2>Accuracy against the eigen-index</h2>{_accuracy_plot(rec)}
<h2>Spectrum</h2>{_spectrum_plot(rec)}
<h2>Eigen-features as images</h2>{_feature_images(rec)}
<h2>Every run</h2>{per_seed}
<details><summary>Every feature of every seed</summary>{per_feature}</details>
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: NTK eigen-features (Tsilivis & Kempe 2022)",
                                  body).encode())
    return path
