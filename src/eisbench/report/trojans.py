"""The ``eisbench bench trojans`` report: verdicts, the judge's validation, how many trojans were
graded, the methods x graded trojans success heatmap (like Casper et al.'s figure), success
rates with CIs beside the published human figures and beside each tool's clean-model chance
rate (the lift), the tools' images per trojan, attribution boxplots, ROC curves and the zoo
table (the excluded trojans marked), and the failed cells (a tool that raised on one model,
target and seed) with their errors and how they were scored."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from safetensors.torch import load_file

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import (
    esc,
    figure,
    footer,
    header,
    legend_outside,
    page,
    table,
    verdict_table,
)
from eisbench.runs.claims import n_label
from eisbench.runs.record import Record


def _ci(m: Mapping[str, Any]) -> str:
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] ({n_label(m)})"


def _failed(rec: Record, tool: str) -> str:
    """How many of the tool's cells failed ("" for a complete tool or an older record):
    ``"2 of 10 cells failed"``, ``"ALL 10 cells failed"``."""
    c = (rec["details"].get("failures") or {}).get("per_tool", {}).get(tool)
    if not c or not c["failed"]:
        return ""
    return f"{'ALL' if c['failed'] == c['cells'] else c['failed']} of {c['cells']} cells failed"


def _failures(rec: Record) -> str:
    """The failed cells (a tool that raised on one model, target and seed): a warning, how
    they were scored, and a table of tool, trojan, phase, seed and error."""
    f = rec["details"].get("failures")
    if not f or not f["n"]:
        return ""
    every = "".join(f"<p class='warn'>{esc(t)} failed on EVERY cell: its rows measure "
                    "nothing about the tool.</p>" for t in f["every_cell"])
    rows = [[c["tool"], c["trojan"], c["phase"], c["seed"],
             f"{c['error']}: {c['message']}"] for c in rec["details"]["failed_cells"]]
    return (f"<h3>Failed cells</h3><p class='warn'>DEGRADED: {f['n']} of {f['cells']} tool "
            "cells failed (the tool raised). Each is scored against its tool: a miss on a "
            "trojan, a hit (chance) on the clean control; the all-tools and pair rows pool "
            "the images that were made. A rerun retries them (nothing is cached for a "
            "failed cell).</p>" + every
            + table(["tool", "trojan", "phase", "seed", "error"], rows))


def _rows(rec: Record) -> list[str]:
    d = rec["details"]
    return [*d["tools"], "all", *(["best_pair"] if "best_pair" in d["grid"] else []),
            *d["references"]]


def _grid_values(rec: Record) -> np.ndarray:
    """(rows, graded trojans) success fraction over seeds."""
    grid = rec["details"]["grid"]
    return np.array([[sum(g) / len(g) for g in grid[r]] for r in _rows(rec)])


def _heatmap(rec: Record) -> str:
    d = rec["details"]
    if not d["trojans"]:
        return "<p class='warn'>(no trojan meets the implant targets: nothing to grade)</p>"
    v = _grid_values(rec)
    rows = _rows(rec)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * v.shape[1], 0.8 + 0.32 * len(rows)))
    ax.imshow(v, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            ax.text(j, i, f"{v[i, j]:.2g}", ha="center", va="center", fontsize=7,
                    color="white" if v[i, j] < 0.5 else "black")
    labels = [r if r != "best_pair" else "best pair (" + "+".join(d["best_pairs"][0]) + ")"
              for r in rows]
    labels = [f"{r} ({_failed(rec, r)})" if _failed(rec, r) else r for r in labels]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xticks(range(v.shape[1]), [t.split("-", 1)[1] for t in d["trojans"]], fontsize=8,
                  rotation=60, ha="right")
    ax.axhline(len(d["tools"]) - 0.5, color="white", lw=2)
    ax.axhline(len(rows) - len(d["references"]) - 0.5, color="white", lw=2)
    ax.set_title("Judge's 8-way success per method and graded trojan (fraction over tool "
                 "seeds)", fontsize=9)
    return figure(fig)


def _success_bars(rec: Record) -> str:
    m = rec["metrics"]
    rows = [r for r in _rows(rec) if f"tool/{r}/success_rate" in m]
    if not rows:
        return ""
    vals = [m[f"tool/{r}/success_rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3))
    y = [v["value"] for v in vals]
    err = [[v["value"] - v["ci95"][0] for v in vals], [v["ci95"][1] - v["value"] for v in vals]]
    colours = ["#4c72b0"] * len(rec["details"]["tools"]) + ["#55a868"] * (
        len(rows) - len(rec["details"]["tools"]) - len(rec["details"]["references"])) + [
        "#b0b0b0"] * len(rec["details"]["references"])
    ax.bar(range(len(rows)), y, yerr=err, capsize=2, color=colours[:len(rows)])
    cas = rec["details"]["casper"]
    ax.axhline(cas["best_single"], color="#dd8452", ls="--", lw=1,
               label="Casper et al., humans: best single tool 47%")
    ax.axhline(cas["all"], color="#c44e52", ls=":", lw=1, label="all tools 49%")
    ax.axhline(1 / 8, color="gray", ls="-", lw=0.8, label="chance 1/8")
    ax.set_xticks(range(len(rows)), rows, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% CI)")
    legend_outside(ax)
    return figure(fig)


def _show(ax: Any, img: torch.Tensor) -> None:
    x = img.float().clamp(0, 1)
    if x.shape[0] == 1:
        ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(x.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def _tool_images(rec: Record, out: Path, *, per_row: int = 5) -> str:
    f = out / "tool_images.safetensors"
    if not f.exists():
        return "<p>(no tool images saved)</p>"
    s = load_file(str(f))
    d = rec["details"]
    seed = str(rec["seeds"][0])
    parts = []
    for t, (name, kind) in enumerate(zip(d["trojans"], d["kinds"], strict=True)):
        opts = s[f"options/{kind}"]
        rows = [r for r in [*d["tools"], *d["references"]] if f"{name}/{r}" in s]
        fig, axes = plt.subplots(len(rows) + 1, max(per_row, len(opts)),
                                 figsize=(0.8 * max(per_row, len(opts)), 0.85 * (len(rows) + 1)),
                                 squeeze=False)
        for j, ax in enumerate(axes[0]):
            if j < len(opts):
                _show(ax, opts[j])
                ax.set_title(("TRUE " if j == d["answers"][t] else "") + chr(65 + j),
                             fontsize=8, color="red" if j == d["answers"][t] else "black")
            else:
                ax.axis("off")
        axes[0][0].set_ylabel("options", fontsize=8, rotation=0, ha="right", va="center")
        for i, r in enumerate(rows, start=1):
            imgs = s[f"{name}/{r}"]
            choice = d["choices"][r][seed][t]
            for j, ax in enumerate(axes[i]):
                if j < min(per_row, len(imgs)):
                    _show(ax, imgs[j])
                else:
                    ax.axis("off")
            ok = choice == d["answers"][t]
            axes[i][0].set_ylabel(f"{r}\n-> {chr(65 + choice)} {'ok' if ok else 'x'}",
                                  fontsize=8, rotation=0, ha="right", va="center",
                                  color="green" if ok else "black")
        fig.suptitle(f"{name}: options (top) and each method's first {per_row} images with "
                     "the judge's answer (seed " + seed + ")", fontsize=9)
        parts.append(f"<details><summary>{esc(name)}</summary>{figure(fig)}</details>")
    return "".join(parts)


def _attribution(rec: Record) -> str:
    vals = rec["details"]["attribution_images"]
    names = [n for n in vals if vals[n]]
    if not names:
        return "<p>(no patch trojan, no attribution)</p>"
    names.sort(key=lambda n: -float(np.mean(vals[n])))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.boxplot([vals[n] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=55, ha="right", fontsize=8)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylabel("Pearson r with the trigger footprint")
    ax.set_title("Attribution on poisoned images of the patch trojans (per image)", fontsize=9)
    skipped = rec["details"]["attribution_skipped"]
    note = "".join(f"<p class='warn'>{esc(k)} skipped: {esc(v)}</p>" for k, v in skipped.items())
    return figure(fig) + note


def _control(rec: Record) -> str:
    """Per tool (and all tools): success on the trojans, on the clean control, and the lift."""
    m, d = rec["metrics"], rec["details"]
    if not d["trojans"]:
        return ""
    rows = [[r, *(_ci(m[f"tool/{r}/{k}"]) if f"tool/{r}/{k}" in m else "n/a"
                  for k in ("success_rate", "clean_success_rate", "lift")),
             _failed(rec, r) or "none"]
            for r in [*d["tools"], "all"]]
    return ("<p>The clean-model control: each tool also ran on a clean zoo model with each "
            "graded trojan's target, and the judge was asked the trojan's question (the same 8 "
            "options and answer). A clean model has no trigger to show, so the success there "
            "is the tool's chance rate on these questions; the lift is the trojan success "
            "minus it, per trojan, with an interval over trojans (clustered by the models "
            "they share).</p>"
            + table(["method", "trojan success", "clean-model success (chance)", "lift",
                     "failed cells"], rows))


def _graded(rec: Record) -> str:
    """How many trojans were graded of how many implanted, and why the others were not."""
    g = rec["details"]["graded"]
    why = "".join(f"<li>{esc(x['name'])}: {esc(x['why'])}</li>" for x in g["excluded"])
    warn = (f"<p class='warn'>Fewer than {g['min']} trojans meet the implant targets: the "
            "tool-success and detection claims are inconclusive.</p>" if g["n"] < g["min"]
            else "")
    return ("<p>" + esc(f"Graded on {g['n']} of {g['of']} implanted trojans: a trojan that "
                        "misses the implant targets (ASR >= 0.9, clean-accuracy drop <= 1 "
                        "point) grades no tool, attribution method or scan.")
            + (f" Excluded:</p><ul>{why}</ul>" if why else "</p>") + warn)


def _roc(rec: Record) -> str:
    det = {k: v for k, v in rec["details"]["detection"].items() if "skipped" not in v}
    if not det:
        why = "; ".join(f"{k}: {v['skipped']}" for k, v in rec["details"]["detection"].items())
        return f"<p>(no detection run{': ' + esc(why) if why else ''})</p>"
    fig, ax = plt.subplots(figsize=(4, 4))
    for method, r in det.items():
        ax.plot(r["fpr"], r["tpr"], drawstyle="steps-post",
                label=f"{method}: AUROC {r['auroc']:.2f} [{r['ci95'][0]:.2f}, "
                      f"{r['ci95'][1]:.2f}]")
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=0.8)
    ax.set_xlabel("false positive rate (clean models)")
    ax.set_ylabel("true positive rate (trojaned models)")
    legend_outside(ax)
    ax.set_title("Detection by the anomaly index of the smallest trigger", fontsize=8)
    rows = []
    for method, r in det.items():
        for x in r["trojaned"]:  # a failed scan: scored as missed, its error shown
            rows.append([method, x["trojan"], f"{x['score']:.2f}",
                         f"FAILED: {x['failed']}" if "failed" in x else x["suspect"],
                         x["target"], x.get("bbox", "")])
        for i, x in enumerate(r["clean"]):  # a failed scan: scored as a false alarm
            rows.append([method, f"clean #{i}", f"{x['score']:.2f}",
                         f"FAILED: {x['failed']}" if "failed" in x else x["suspect"], "-", ""])
    return figure(fig) + table(["scan", "model", "anomaly index", "suspect", "target",
                                "trigger bbox"], rows)


def _second_opinions(rec: Record) -> str:
    """Held-out view families for both judges, the second judge's agreement and rank changes,
    and the combination rules chosen held-out."""
    m, d = rec["metrics"], rec["details"]
    jv, parts = d["judge"], []
    if "held_out" in jv:
        second = jv.get("second", {}).get("held_out", {}).get("families", {})
        rows = [[f, f"{v['range'][1]:g}-{v['range'][2]:g} ({v['range'][0]})",
                 f"{v['accuracy']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]",
                 f"{second[f]['accuracy']:.3f}" if f in second else "-"]
                for f, v in jv["held_out"]["families"].items()]
        o = jv["held_out"]["overall"]
        parts.append(
            "<h3>Views the judge never saw</h3><p>True-trigger accuracy on view families "
            "outside the training transforms (target, pooled: "
            f">= {jv['held_out']['target']:.2f}; measured {o['accuracy']:.3f}, n={o['n']}: "
            + ("met" if jv["held_out"]["meets_target"] else "MISSED") + ").</p>"
            + table(["family", "range", "judge accuracy [95% CI]", "second judge (NCC)"], rows))
    sj = d.get("second_judge", {})
    if "agreement" in sj:
        a = sj["agreement"]
        changes = "; ".join(f"{c['tool']}: rank {c['rank_a']} -> {c['rank_b']}"
                            for c in sj["rank_changes"]) or "none"
        rows = [[t, f"{v['first']:.3f}", f"{v['second']:.3f}"] for t, v in sj["success"].items()]
        parts.append(
            "<h3>A second judge</h3><p>Normalised cross-correlation with each option's template "
            "(nothing learned) answers the same questions about the same images. Agreement on "
            f"the option chosen: Cohen's kappa {_ci(m['judge/kappa'])} (raw agreement "
            f"{a['agreement']:.3f}; interval over trojans). Tools whose rank changes: "
            f"{esc(changes)}.</p>"
            + table(["tool", "success (judge)", "success (NCC)"], rows))
    comb = d.get("combination", {})
    if "in_sample" in comb:
        rows = [[r, f"{v:.3f}"] for r, v in comb["in_sample"].items()]
        parts.append(
            "<h3>Combining tools</h3><p>Each trojan is scored by the rule chosen on the other "
            "trojans: held-out success "
            + _ci(m["tool/combined-held-out/success_rate"])
            + f" (rule chosen on all: {esc(comb['chosen_overall'])}; in-sample rates below "
            "are optimistic).</p>" + table(["rule", "in-sample success"], rows))
    return "".join(parts)


def write_report(rec: Record, out: Path) -> Path:
    m, d = rec["metrics"], rec["details"]
    jv = d["judge"]
    fav = "; ".join(f"{k}: {v['option']} ({v['share']:.0%})"
                    for k, v in jv["noise"]["favourite"].items())
    un = jv["noise"]["uniformity"]
    true_acc = jv["true_trigger"]["per_kind"]  # kind -> accuracy
    judge_rows = [[k, f"{true_acc[k.split(' (')[0]]:.3f}", f"{u['chi2']:.1f}", f"{u['p']:.2g}",
                   f"{u['largest_share']:.3f}"]  # k: "<kind> (<group> noise)"
                  for k, u in un["per_kind"].items()]
    zoo_rows = [[z["name"], z["kind"], "all" if z["universal"] else z["source"], z["target"],
                 f"{z['clean_acc']:.4f}", f"{100 * z['drop']:+.2f}", f"{z['asr']:.3f}",
                 "met" if z["meets_target"] else "MISSED: excluded"] for z in d["zoo"]]
    metric_rows = [[k, _ci(v)] for k, v in m.items()]
    body = (
        header(rec) + "<h2>Verdicts</h2>" + verdict_table(rec["claims"])
        + "<h2>The judge</h2><p>An independent encoder trained on trigger views only. "
        + f"True-trigger accuracy {_ci(m['judge/true_trigger_acc'])} (target >= 0.95); "
        + f"noise {_ci(m['judge/noise_acc'])} (chance 1/8). Noise's favourite options: "
        + esc(fav) + ". A tool that shows nothing is 'right' on those options' trojans: the "
        + "noise row of the heatmap shows where. Noise accuracy against a random truth is 1/8 "
        + "for any judge, a constant one included; the check that can fail is the chi-square "
        + f"test of the noise choices against uniform (biased when p < {un['bar']:.4f}, "
        + f"i.e. {un['alpha']:g} over the tests: each kind, on noise like the judge's "
        + "training backgrounds and on noise it never saw): "
        + ("passed" if un["uniform"] else "FAILED, the judge favours some triggers") + ".</p>"
        + table(["kind (noise)", "true-trigger accuracy", "noise chi-square", "p",
                 "largest share"],
                judge_rows)
        + _second_opinions(rec)
        + "<h2>Success of each method</h2>" + _graded(rec) + _failures(rec)
        + _success_bars(rec)
        + _control(rec) + _heatmap(rec)
        + "<p>Rows: tools; all tools together; the best pair (chosen on these trojans, so "
        + "optimistic: the leave-one-trojan-out figure is "
        + (_ci(m["tool/best_pair_cv/success_rate"]) if "tool/best_pair_cv/success_rate" in m
           else "n/a")
        + "); references: noise images and fresh views of the true trigger.</p>"
        + "<h2>Images per trojan</h2>" + _tool_images(rec, out)
        + "<h2>Attribution on patch trojans</h2>" + _attribution(rec)
        + "<h2>Detection</h2>" + _roc(rec)
        + "<h2>The trojan zoo</h2>"
        + table(["trojan", "kind", "source", "target", "clean acc", "drop (pts)", "ASR",
                 "ASR >= 0.9, drop <= 1 pt"], zoo_rows)
        + "<h2>All metrics</h2>" + table(["metric", "value [95% CI] (n)"], metric_rows)
        + footer(rec))
    path = out / "report.html"
    atomic_write_bytes(path, page("Trojan rediscovery benchmark", body).encode())
    return path
