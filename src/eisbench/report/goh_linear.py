"""The goh-linear report: usefulness vs robust usefulness of linear features (scatter), the
contamination curve, and the verdicts."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import esc, figure, footer, header, page, table, verdict_table
from eisbench.runs.record import Record


def _scatter(rec: Record) -> str:
    r = rec["details"]["per_seed"][0]
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
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"Linear features, seed {rec['seeds'][0]}: useful is not robust", fontsize=9)
    return figure(fig)


def _contamination(rec: Record) -> str:
    alphas = rec["config"]["contamination"]
    fig, ax = plt.subplots(figsize=(6, 3))
    for j, label in enumerate(("usefulness", "robust usefulness")):
        vals = np.array([[r["contamination"][i][j] for i in range(len(alphas))]
                         for r in rec["details"]["per_seed"]])  # (seeds, alphas)
        ax.errorbar(alphas, vals.mean(0), yerr=vals.std(0), marker="o", capsize=2, label=label)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("weight of the non-robust (ensemble) direction added to the robust feature")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7)
    ax.set_title("Contamination (mean and sd over bootstrap resamples)", fontsize=9)
    return figure(fig)


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a goh-linear record; returns its path."""
    rows = [[k, f"{m['value']:.3f}", f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"]
            for k, m in rec["metrics"].items()]
    cfg = rec["config"]
    body = f"""{header(rec)}
<p>Data: {esc(rec['data'])}, classes {esc(cfg['classes'])} as -1/+1. Threat model:
{esc(cfg['norm'])} eps={esc(cfg['eps'])} in pixel space. Seeds are bootstrap resamples of the
training set: {esc(rec['seeds'])}. Usefulness and robust usefulness are closed-form for linear
features and measured on the test set.</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
{_scatter(rec)}
{_contamination(rec)}
<h2>Every metric</h2>{table(["metric", "mean", "95% CI"], rows)}
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: useful non-robust linear features (Goh 2019)",
                                  body).encode())
    return path
