"""The goh-linear report: usefulness vs robust usefulness of linear features (scatter), the
contamination curve, and the verdicts. Every figure is its value on the full training set
with a 95% percentile bootstrap interval over resamples of the training images."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import (
    esc,
    figure,
    footer,
    header,
    is_share,
    legend_below,
    legend_outside,
    page,
    pct,
    table,
    verdict_table,
)
from eisbench.runs.record import Metric, Record


def _scatter(rec: Record) -> str:
    r = rec["details"]["full"]
    sv = np.array(r["singular"])  # (rank, 2)
    fig, ax = plt.subplots(figsize=(6, 4))
    order = np.arange(len(sv))
    pts = ax.scatter(sv[:, 0], sv[:, 1], c=order, cmap="viridis", s=8,
                     label="singular directions (colour: index)")
    fig.colorbar(pts, ax=ax, label="singular-value index (0 = most variance)")
    for name, marker, colour in (("logreg", "s", "black"), ("ensemble", "*", "red"),
                                 ("robust_base", "D", "blue")):
        ax.plot([r[name][0]], [r[name][1]], marker=marker, color=colour, markersize=10,
                linestyle="", label=name)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("usefulness E[y f(x)]")
    ax.set_ylabel("robust usefulness (symlog)")
    legend_below(ax, ncol=2)  # the colourbar takes the right of the axes
    ax.set_title("Linear features of the full training set: useful is not robust", fontsize=9)
    return figure(fig)


def _contamination(rec: Record) -> str:
    alphas = rec["config"]["contamination"]
    fig, ax = plt.subplots(figsize=(6, 3))
    for kind, label in (("usefulness", "usefulness"), ("robust_usefulness", "robust usefulness")):
        ms = [rec["metrics"][f"goh_linear/contaminated_{a:g}/{kind}"] for a in alphas]
        v = np.array([m["value"] for m in ms])
        lo, hi = (np.array([m["ci95"][i] for m in ms]) for i in (0, 1))
        ax.errorbar(alphas, v, yerr=[v - lo, hi - v], marker="o", capsize=2, label=label)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("weight of the non-robust (ensemble) direction added to the robust feature")
    ax.set_yscale("symlog", linthresh=1.0)
    legend_outside(ax)
    ax.set_title("Contamination (full training set, 95% percentile bootstrap intervals)",
                 fontsize=9)
    return figure(fig)


def _widened(m: Metric, replicates: list[float]) -> str:
    """"yes" when the value lies outside the replicates' 2.5-97.5 percentiles (so the interval
    was widened to include it)."""
    lo, hi = np.percentile(replicates, [2.5, 97.5])
    return "yes" if not lo <= m["value"] <= hi else ""


def _value_and_ci(key: str, m: Metric) -> tuple[str, str]:
    """Shares (the fraction of useful non-robust features) in percent with one decimal;
    usefulness (a correlation E[y f(x)], not an accuracy) with three decimals."""
    v, (lo, hi) = m["value"], m["ci95"]
    if is_share(key):
        return pct(v), f"[{100 * lo:.1f}, {100 * hi:.1f}]%"
    return f"{v:.3f}", f"[{lo:.3f}, {hi:.3f}]"


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a goh-linear record; returns its path."""
    reps = rec["details"]["replicates"]
    rows = [[k, *_value_and_ci(k, m), m["n"], _widened(m, reps[k])]
            for k, m in rec["metrics"].items()]
    cfg, d = rec["config"], rec["details"]
    body = f"""{header(rec)}
<p>Data: {esc(', '.join(rec['data']) or cfg['dataset'])}, classes
{esc(' and '.join(map(str, cfg['classes'])))} as -1/+1. Threat model:
{esc(cfg['norm'])} eps={esc(cfg['eps'])} in pixel space. Usefulness and robust usefulness are
closed-form for linear features and measured on the test set.</p>
<p>Each value is the statistic of the full training set (n = {esc(d['n_train'])} training
images, {esc(d['n_pixels'])} pixels that vary). Its 95% interval is the percentile bootstrap
over B = {esc(d['n_bootstrap'])} resamples of the training images (n of n, with replacement;
the unit of replication), each analysed from scratch, drawn by a generator seeded with the
seeds {esc(', '.join(map(str, rec['seeds'])))} together; the test set is fixed. Where the
value falls outside the 2.5-97.5 percentiles of the resamples, the interval is widened
to include it ("widened").</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
{_scatter(rec)}
{_contamination(rec)}
<h2>Every metric</h2>{table(["metric", "value (full set)", "95% CI (percentile bootstrap)",
                            "n (training images)", "widened"], rows)}
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: useful non-robust linear features (Goh 2019)",
                                  body).encode())
    return path
