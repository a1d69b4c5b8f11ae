"""The superposition report (exhibit F): verdicts, the scaling sanity check of Elhage et al.'s
features-per-dimension measure, the measure per layer of the deep-narrow and shallow-wide
networks, and their robustness (suite at one eps, FMN curves over eps)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from eisbench.core.paths import atomic_write_bytes
from eisbench.core.stats import mean_ci
from eisbench.report.html import (
    esc,
    figure,
    footer,
    header,
    legend_below,
    legend_outside,
    page,
    table,
    verdict_table,
)
from eisbench.runs.record import Record

SHAPES = {"shallow_wide": "shallow-wide", "deep_narrow": "deep-narrow"}
COLOURS = {"shallow_wide": "#4c72b0", "deep_narrow": "#dd8452"}


def _ci(m: Mapping[str, Any], fmt: str = ".3f") -> str:
    return f"{m['value']:{fmt}} [{m['ci95'][0]:{fmt}}, {m['ci95'][1]:{fmt}}]"


def _curves(rec: Record) -> str:
    """Robust accuracy (%) vs eps from FMN minimal norms, Linf and L2, mean and 95% CI band."""
    cfg, runs = rec["config"], rec["details"]["per_seed"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, norm in zip(axes, ("linf", "l2"), strict=True):
        grid = cfg[f"curve_{norm}"]
        for shape, label in SHAPES.items():
            stats = [mean_ci([r[shape][f"curve_{norm}"][i] * 100 for r in runs])
                     for i in range(len(grid))]
            ax.plot(grid, [s[0] for s in stats], marker="o", ms=3, color=COLOURS[shape],
                    label=f"{label} (FMN)")
            ax.fill_between(grid, [s[1] for s in stats], [s[2] for s in stats],
                            color=COLOURS[shape], alpha=0.2)
            if norm == "linf":
                m = rec["metrics"][f"superposition/{shape}/robust_acc"]
                ax.errorbar([cfg["eps"]], [m["value"] * 100],
                            yerr=[[(m["value"] - m["ci95"][0]) * 100],
                                  [(m["ci95"][1] - m["value"]) * 100]],
                            marker="D", color=COLOURS[shape], capsize=3, linestyle="",
                            label=f"{label} (suite {cfg['suite']})")
        ax.set_xlabel(f"{'Linf' if norm == 'linf' else 'L2'} eps")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        legend_below(ax)
    fig.suptitle("Robust accuracy vs budget (mean, 95% CI over seeds)", fontsize=9)
    return figure(fig)


def _layer_names(widths: list[int]) -> list[str]:
    return [f"hidden {i + 1} (m={w})" for i, w in enumerate(widths)] + ["logits"]


def _measure_rows(rec: Record) -> tuple[list[list[Any]], str]:
    """Per-layer features per dimension (trained, at init) and a bar chart of them."""
    runs = rec["details"]["per_seed"]
    rows: list[list[Any]] = []
    labels, trained, init = [], [], []
    for shape, label in SHAPES.items():
        names = _layer_names(runs[0][shape]["widths"])
        for i, name in enumerate(names):
            t = mean_ci([r[shape]["fpd"][i] for r in runs])
            z = mean_ci([r[shape]["fpd_init"][i] for r in runs])
            rows.append([label, name, f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]", f"{z[0]:.3f}"])
            labels.append(f"{label}\n{name.split(' (')[0]}")
            trained.append(t[0])
            init.append(z[0])
    fig, ax = plt.subplots(figsize=(8, 3))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], trained, width=0.4, label="trained", color="#4c72b0")
    ax.bar([x + 0.2 for x in xs], init, width=0.4, label="at initialisation", color="#bbbbbb")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("||W||_F^2 / m")
    ax.set_title("Features per dimension of each layer (mean over seeds)", fontsize=9)
    legend_outside(ax)
    return rows, figure(fig)


def _scaling_plot(rec: Record) -> str:
    """Measured ratio of the measure vs c (log-log) against c^2."""
    rows = [row for r in rec["details"]["per_seed"] for row in r["scaling"]]
    cs = sorted({row["c"] for row in rows})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(cs, [c * c for c in cs], color="gray", linestyle="--", label="c^2")
    ax.plot(cs, [1 / (c * c) for c in cs], color="gray", linestyle=":", label="c^-2")
    for mode, marker in (("all", "o"), ("balanced", "x")):
        pts = [(row["c"], ratio) for row in rows if row["mode"] == mode
               for ratio in row["ratios"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle="",
                label=f"measured ({mode})", alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("scale factor c")
    ax.set_ylabel("measure after / before")
    legend_outside(ax)
    ax.set_title("Features per dimension under rescaling (every layer, seed, shape)", fontsize=9)
    return figure(fig)


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a superposition record; returns its path."""
    d, m, cfg = rec["details"], rec["metrics"], rec["config"]
    lit = d["literature"]
    measured = [
        *[[f"{SHAPES[s]}: {what}", _ci(m[f"superposition/{s}/{key}"]), ref]
          for s in SHAPES for key, what, ref in (
              ("std_acc", "clean accuracy", "equal by design"),
              ("robust_acc", f"robust accuracy (suite {cfg['suite']}, Linf eps={cfg['eps']:g})",
               "-"),
              ("median_l2", "median minimal L2 perturbation (FMN)", "-"),
              ("median_linf", "median minimal Linf perturbation (FMN)", "-"),
              ("fpd_hidden_mean", "features per dimension, mean over hidden layers",
               lit["measure"]))],
        ["deep minus shallow: clean accuracy", _ci(m["superposition/deep_minus_shallow/clean_gap"],
                                                   "+.3f"), "0 (matched)"],
        ["deep minus shallow: robust accuracy",
         _ci(m["superposition/deep_minus_shallow/robust_gap"], "+.3f"), lit["depth"]],
        ["deep / shallow - 1: median L2", _ci(m["superposition/deep_minus_shallow/l2_rel_gap"],
                                               "+.1%"), lit["depth"]],
        ["scaling: worst relative error of the measure vs c^2",
         _ci(m["superposition/scaling/max_rel_error"], ".1e"), lit["scaling"]],
        ["scaling: predictions changed (worst)", _ci(m["superposition/scaling/pred_changed"],
                                                     "g"), "0"],
        ["scaling: worst relative error of the logits vs prod(c) * logits",
         _ci(m["superposition/scaling/logit_rel_error"], ".1e"), "0 (float rounding)"],
    ]
    rows_measure, measure_fig = _measure_rows(rec)
    fpd = {s: m[f"superposition/{s}/fpd_hidden_mean"]["value"] for s in SHAPES}
    scaling_rows = [
        [r["seed"], SHAPES[row["shape"]], row["mode"], f"{row['c']:g}",
         ", ".join(f"{x:.6g}" for x in row["ratios"]),
         ", ".join(f"{x:.6g}" for x in row["expected"]), f"{row['max_rel_error']:.1e}",
         f"{row['pred_changed']} / {row['n']}", f"{row['logit_rel_error']:.1e}"]
        for r in d["per_seed"] for row in r["scaling"]]
    per_seed = table(
        ["seed", "shape", "widths", "params", "clean acc", "robust acc", "median L2",
         "median Linf", "FMN not found", "failed checks"],
        [[r["seed"], SHAPES[s], r[s]["widths"], r[s]["params"], f"{r[s]['std_acc']:.4f}",
          f"{r[s]['robust_acc']:.3f}", f"{r[s]['median_l2']:.3f}", f"{r[s]['median_linf']:.4f}",
          r[s]["fmn_not_found"], ", ".join(r[s]["checks_failed"]) or "none"]
         for r in d["per_seed"] for s in SHAPES])
    params = ", ".join(f"{SHAPES[s]} {d['widths'][s]}: {d['params'][s]}" for s in SHAPES)
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in d["timing_seconds"].items())
    body = f"""{header(rec)}
<p>Measure: {esc(d['measure'])}. Networks: bias-free ReLU MLPs, parameters {esc(params)}.
Robust accuracy: {esc(d['attack'])} on the first {cfg['n_robust']} test images, with every
sanity check; curves: {esc(d['curve_attack'])} (an upper bound on robust accuracy).
Time per stage (computed, not cached): {esc(timing)}.</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
<h2>Measured values beside the literature</h2>
{table(["quantity", "measured (95% CI over seeds)", "literature"], measured)}
<h2>Scaling sanity check</h2>
<p>In a bias-free ReLU network relu(c z) = c relu(z) for c &gt; 0: multiplying weight matrices
by constants multiplies the logits by their product, so no predicted class (and no adversarial
example) changes, while the measure of a layer whose matrix is scaled by c moves by exactly
c^2. <i>all</i>: every matrix times c; <i>balanced</i>: the first matrix times c and the
second times 1/c (the same function, the same logits).</p>
{_scaling_plot(rec)}
{table(["seed", "shape", "rescaling", "c", "measured ratio per layer", "expected",
        "max rel. error", "predictions changed", "logit rel. error"], scaling_rows)}
<h2>Features per dimension of each layer</h2>
<p>The superposition argument needs narrow layers to pack more features per dimension. Mean over
hidden layers: shallow-wide {fpd['shallow_wide']:.3f}, deep-narrow {fpd['deep_narrow']:.3f}, so
by this measure the narrow layers pack {"more" if fpd['deep_narrow'] > fpd['shallow_wide']
else "fewer"} features per dimension. At initialisation (PyTorch's default, variance
1/(3 fan_in)) the measure is about 1/3 whatever the width.</p>
{table(["shape", "layer", "trained (95% CI)", "at initialisation"], rows_measure)}
{measure_fig}
<h2>Robustness of the two shapes</h2>
{_curves(rec)}
<h2>Every run</h2>{per_seed}
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: the superposition perspective (exhibit F)",
                                  body).encode())
    return path
