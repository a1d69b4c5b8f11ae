"""The transfer report: verdicts, measured values beside Ilyas et al.'s claim, a heatmap of the
transfer matrix (mean over seeds), transfer rate vs D_det accuracy per architecture (every seed),
a per-architecture table and every per-seed run."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import (
    esc,
    figure,
    footer,
    header,
    legend_outside,
    page,
    plain,
    table,
    verdict_table,
)
from eisbench.runs.record import Metric, Record


def _ci(m: Metric, pct: bool = True) -> str:
    lo, hi = m["ci95"]
    if pct:
        return f"{m['value']:.1%} [{lo:.1%}, {hi:.1%}]"
    return f"{m['value']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _mean_matrix(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """(S, T) mean over seeds of a per-seed nested list; NaN where a cell is None."""
    mats = np.array([[[np.nan if v is None else v for v in row] for row in r[key]]
                     for r in runs], dtype=float)  # (seeds, S, T)
    with warnings.catch_warnings():  # an all-None cell (white-box) is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmean(mats, axis=0))


def _heatmaps(rec: Record) -> str:
    runs = rec["details"]["per_seed"]
    rows = [f"{rec['details']['source_arch']} (D_det source)" if s == "source" else s
            for s in runs[0]["sources"]]
    cols = runs[0]["targets"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "transfer", "adversarial, targeted y+1 (untargeted)"),
                           (axes[1], "noise", "random noise of the same L2 norm")):
        m = _mean_matrix(runs, key) * 100  # (S, T)
        mu = _mean_matrix(runs, f"{key}_untargeted") * 100  # (S, T)
        im = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=100, cmap="viridis")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                txt = "white-box" if np.isnan(m[i, j]) else f"{m[i, j]:.0f} ({mu[i, j]:.0f})"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                        color="white" if np.isnan(m[i, j]) or m[i, j] < 50 else "black")
        ax.set_xticks(range(len(cols)), cols, fontsize=8, rotation=20)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xlabel("target model (trained on D)")
        ax.set_title(f"Rate into target (%), {title}", fontsize=9)
        ax.set_facecolor("#999999")
    axes[0].set_ylabel("source of the adversarial examples")
    fig.colorbar(im, ax=axes, fraction=0.025)
    return figure(fig)


def _scatter(rec: Record) -> str:
    runs = rec["details"]["per_seed"]
    archs = runs[0]["targets"]
    colors = plt.get_cmap("tab10")
    markers = "osD^v<>p*h"
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, a in enumerate(archs):
        xs = [(r["transfer_from_source"][a] or 0.0) * 100 for r in runs]
        ys = [r["det_acc"][a] * 100 for r in runs]
        for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
            ax.scatter([x], [y], color=colors(i), marker=markers[j % len(markers)], s=28,
                       alpha=0.7, label=a if j == 0 else None)
        mx = rec["metrics"][f"transfer/{a}/transfer_from_source"]
        my = rec["metrics"][f"transfer/{a}/D_det_acc"]
        ax.errorbar([mx["value"] * 100], [my["value"] * 100],
                    xerr=[[(mx["value"] - mx["ci95"][0]) * 100], [(mx["ci95"][1] - mx["value"])
                                                                  * 100]],
                    yerr=[[(my["value"] - my["ci95"][0]) * 100], [(my["ci95"][1] - my["value"])
                                                                  * 100]],
                    color=colors(i), marker="X", markersize=10, capsize=3)
    chance = 100.0 / rec["details"]["num_classes"]
    ax.axhline(chance, color="gray", linestyle="--", linewidth=0.8, label="chance")
    r, rho = rec["metrics"]["transfer/pearson"], rec["metrics"]["transfer/spearman"]
    ax.set_title(f"Pearson r = {_ci(r, False)}, Spearman = {_ci(rho, False)}", fontsize=8)
    ax.text(0.01, 0.99, "Ilyas et al. 2019 (CIFAR-10): architectures that learn D_det worse\n"
            "receive fewer transferred examples (a rising trend)", transform=ax.transAxes,
            fontsize=7, va="top", color="#8a4b00")
    ax.set_xlabel("transfer rate from the D_det source into the architecture (%)")
    ax.set_ylabel("test accuracy when trained on D_det (%)")
    legend_outside(ax, title="markers: seeds; X: mean, 95% CI", title_fontsize=9)
    return figure(fig)


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a transfer record; returns its path."""
    det, ms, lit = rec["details"], rec["metrics"], rec["details"]["literature"]
    runs, archs = det["per_seed"], det["per_seed"][0]["targets"]
    measured = table(["quantity", "measured (mean, 95% CI over seeds)", "literature"], [
        ["Pearson r (transfer from source vs D_det accuracy)", _ci(ms["transfer/pearson"], False),
         lit["correlation"]],
        ["Spearman rho", _ci(ms["transfer/spearman"], False), "positive (qualitative)"],
        ["Pearson r, untargeted transfer", _ci(ms["transfer/pearson_untargeted"], False), "-"],
        ["Pearson r, transfer of the D_det images themselves",
         _ci(ms["transfer/pearson_det_set"], False), "-"],
        ["transfer between distinct models (targeted)", _ci(ms["transfer/cross_transfer_rate"]),
         lit["transfer"]],
        ["same-norm random noise, same pairs (targeted)", _ci(ms["transfer/cross_noise_rate"]),
         "near 0"],
        ["transfer between distinct models (untargeted)",
         _ci(ms["transfer/cross_transfer_untargeted_rate"]), "-"],
        ["same-norm random noise (untargeted)", _ci(ms["transfer/cross_noise_untargeted_rate"]),
         "-"],
        [f"source ({det['source_arch']}) clean accuracy", _ci(ms["transfer/source/clean_acc"]),
         "-"],
        ["source attack success (clean-correct and hit y+1)",
         _ci(ms["transfer/source/attack_success"]), "-"],
    ])
    per_arch = table(["architecture", "spec", "clean accuracy (trained on D)",
                      "transfer from source (targeted)", "D_det images labelled y+1",
                      "accuracy when trained on D_det"],
                     [[a, str(det["arch_specs"][a]["arch"]) + " " +
                       plain(det["arch_specs"][a]["kwargs"] or ""),
                       _ci(ms[f"transfer/{a}/clean_acc"]),
                       _ci(ms[f"transfer/{a}/transfer_from_source"]),
                       _ci(ms[f"transfer/{a}/D_det_set_transfer"]),
                       _ci(ms[f"transfer/{a}/D_det_acc"])] for a in archs])

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    seeds = table(["seed", "Pearson", "Spearman", "cross transfer", "cross noise",
                   *(f"{a}: T / D_det acc / clean" for a in archs)],
                  [[r["seed"], f"{r['pearson']:+.3f}", f"{r['spearman']:+.3f}",
                    f(r["cross_transfer"]), f(r["cross_noise"]),
                    *(f"{f(r['transfer_from_source'][a])} / {f(r['det_acc'][a])} / "
                      f"{f(r['clean_acc'][a])}" for a in archs)] for r in runs])
    matrices = "".join(
        f"<h3>Seed {r['seed']}</h3>" + table(
            ["source \\ target", *r["targets"]],
            [[s, *(f"{f(t)} (u {f(tu)}, noise {f(n)}, n={c})" for t, tu, n, c in
                   zip(tr, tru, nr, cr, strict=True))]
             for s, tr, tru, nr, cr in zip(r["sources"], r["transfer"],
                                           r["transfer_untargeted"], r["noise"], r["n"],
                                           strict=True)]) for r in runs)
    stages = table(["stage", "seconds (this run)"],
                   [[k, f"{v:.1f}"] for k, v in det["stage_seconds"].items()])
    body = f"""{header(rec)}
<p>Source of D_det and of the transferred examples: the standard <code>{esc(det['source_arch'])}
</code> model of features-vs-bugs. Attack: {esc(det['attack'])}. Transfer rate from s into t =
among images that s classifies correctly, whose attack succeeds on s, and that t classifies
correctly, the fraction that t classifies as the target y+1 (u: t no longer predicts y). Target
models are independent of the source (own init seed, training images disjoint from D_det's).
Learnability: a fresh model of each architecture trained on D_det, tested on the original test
set.</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
<h2>Measured values and the literature</h2>{measured}
<h2>Transfer matrix (mean over seeds)</h2>{_heatmaps(rec)}
<h2>Transfer rate vs learnability of D_det</h2>{_scatter(rec)}
<h2>Per architecture</h2>{per_arch}
<h2>Every run</h2>{seeds}{matrices}
<h2>Time per stage</h2>{stages}
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: transferability vs learnability (Ilyas et al. 2019, "
                                  "Fig. 3)", body).encode())
    return path
