"""The saliency report (exhibit A): verdicts, robustness, saliency alignment and inversion
recognisability with CIs beside the literature, attribution and inversion grids, every run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import (
    esc,
    figure,
    footer,
    header,
    legend_outside,
    measured_html,
    page,
    pct,
    plt,
    table,
    verdict_table,
)
from eisbench.report.training import stop_note
from eisbench.runs.record import Record

SALIENCY_MODELS = ("standard", "fast-at", "input-grad")
LABELS = {"standard": "standard", "fast-at": "robust (fast-AT)",
          "input-grad": "input-gradient regularised"}
SALIENCY_LABELS = {"gradient": "gradient (captum Saliency)", "smoothgrad": "SmoothGrad",
                   "ig-black": "integrated gradients, black baseline",
                   "ig-grey": "integrated gradients, grey baseline"}
COLOURS = {"standard": "#4c72b0", "fast-at": "#dd8452", "input-grad": "#55a868"}


def _fmt(m: Mapping[str, Any] | None, pct: bool = True) -> str:
    if m is None:
        return "-"
    if pct:
        return f"{m['value']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]"
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def _models(rec: Record) -> list[str]:
    return [m for m in SALIENCY_MODELS if f"saliency/{m}/std_acc" in rec["metrics"]]


def _grouped_bars(rec: Record, groups: list[tuple[str, str]], *, ylabel: str, title: str,
                  reference: float | None = None, reference_label: str = "") -> str:
    """Bars per (metric suffix, label) group, one bar per model (mean, 95% CI)."""
    models = _models(rec)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(groups)), 3))
    w = 0.8 / max(len(models), 1)
    for j, name in enumerate(models):
        ms = [rec["metrics"].get(f"saliency/{name}/{suffix}") for suffix, _ in groups]
        xs = [i + (j - (len(models) - 1) / 2) * w for i in range(len(groups))]
        vals = [m["value"] if m else float("nan") for m in ms]
        err = [[m["value"] - m["ci95"][0] if m else 0.0 for m in ms],
               [m["ci95"][1] - m["value"] if m else 0.0 for m in ms]]
        ax.bar(xs, vals, width=w, yerr=err, capsize=3, color=COLOURS[name], label=LABELS[name])
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", label=reference_label)
    ax.set_xticks(range(len(groups)), [g for _, g in groups], fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    legend_outside(ax)
    ax.set_title(title, fontsize=9)
    return figure(fig)


def _image_grid(rows: list[tuple[str, torch.Tensor, list[str] | None]], title: str,
                *, signed: bool = False) -> str:
    """One row per (label, images (n, C, H, W), optional per-image captions)."""
    n = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 0.95), squeeze=False)
    for i, (label, ims, caps) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(ims):
                ax.axis("off")
                continue
            img = ims[j].float()
            if signed:  # attribution maps: |A| summed over channels, scaled per image
                a = img.abs().sum(0)
                shown = ax.imshow((a / a.max().clamp_min(1e-12)).numpy(), cmap="magma",
                                  vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(),
                          cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            if caps is not None:
                ax.set_title(caps[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    if signed:  # one scale for every map: |attribution| / its image's maximum
        bar = fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, pad=0.02)
        bar.set_label("|attribution| / image max", fontsize=8)
        bar.ax.tick_params(labelsize=8)
    return figure(fig, alt=f"{title}: " + "; ".join(
        f"row {label}" for label, _, _ in rows))


def _grids(rec: Record, out: Path) -> tuple[str, str]:
    f = out / "samples.safetensors"
    if not f.exists():
        return "<p>(no sample images saved)</p>", ""
    s = load_file(str(f))
    labels = [str(int(v)) for v in s["labels"]]
    sal_rows: list[tuple[str, torch.Tensor, list[str] | None]] = [("image", s["images"], labels)]
    for name in _models(rec):
        for meth in SALIENCY_LABELS:
            if f"attr/{name}/{meth}" in s:
                sal_rows.append((f"{name}\n{meth}", s[f"attr/{name}/{meth}"], None))
    sal = _image_grid(sal_rows, "|attribution| for the true class (scaled per image), first "
                                "seed", signed=True)
    tl = [str(int(v)) for v in s["target_labels"]]
    inv_rows: list[tuple[str, torch.Tensor, list[str] | None]] = [("target", s["targets"], tl)]
    for start in ("other", "noise"):
        if f"start/{start}" not in s:
            continue
        inv_rows.append((f"start\n({start})", s[f"start/{start}"], None))
        for name in _models(rec):
            k = f"inv/{name}/{start}"
            if k in s:
                caps = [f"judge: {int(v)}" for v in s[f"inv_judge/{name}/{start}"]]
                inv_rows.append((f"{name}\nfrom {start}", s[k], caps))
    inv = _image_grid(inv_rows, "Representation inversions towards the target (first seed); "
                                "caption: the independent judge's label")
    return sal, inv


def _per_seed(rec: Record) -> str:
    """Two tables, one row per seed and model: accuracies (percent), checks and inversion;
    then each saliency method's stroke share / rank correlation."""
    rows, attr = [], []
    for r in rec["details"]["per_seed"]:
        for name, m in r["models"].items():
            inv = m["inversion"].get("other", {})
            rows.append([r["seed"], name, pct(m["std_acc"]),
                         f"{pct(m['robust_acc'])} (n={m['n_robust']})",
                         ", ".join(m["checks_failed"]) or "none",
                         pct(inv.get("judge_target_rate", float("nan"))),
                         pct(inv.get("self_target_rate", float("nan"))),
                         f"{inv.get('feature_distance', float('nan')):.3f}"])
            attr.append([r["seed"], name,
                         *(f"{m['attribution'][k]['stroke_share']:.3f} / "
                           f"{m['attribution'][k]['rank_corr']:.3f}" for k in SALIENCY_LABELS
                           if k in m["attribution"])])
    return (table(["seed", "model", "clean acc", "robust acc", "failed checks",
                   "judge: target (from other)", "self: target", "feature distance"], rows)
            + table(["seed", "model",
                     *(f"{k}: stroke share / rank corr" for k in SALIENCY_LABELS)], attr))


def diagnostics(rec: Record) -> list[str]:
    """Plain-language warnings a reader should weigh with the verdicts."""
    mt, notes = rec["metrics"], []
    for name in _models(rec):
        for start in ("other", "noise"):
            m = mt.get(f"saliency/{name}/inversion_{start}/feature_distance")
            if m is not None and m["value"] > 0.2:
                notes.append(f"Inverting the {LABELS[name]} model from {start} left a relative "
                             f"feature distance of {m['value']:.2f} (0 = exact match): its "
                             "inversions may be unrecognisable because the optimiser did not "
                             "reach the target representation, not only because of what that "
                             "representation encodes.")
        for r in rec["details"]["per_seed"]:
            failed = r["models"].get(name, {}).get("checks_failed", [])
            if failed:
                notes.append(f"{LABELS[name]}, seed {r['seed']}: robustness sanity checks failed "
                             f"({', '.join(failed)}); its robust accuracy may be overstated.")
    for run, hist in rec["details"].get("training", {}).items():
        note = stop_note(run, hist)
        if note is not None:
            notes.append(f"{note} That seed's robust model differs from the others and widens "
                         "the CIs.")
    std, ig = mt.get("saliency/standard/std_acc"), mt.get("saliency/input-grad/std_acc")
    if std and ig and std["value"] - ig["value"] > 0.03:
        notes.append(f"Input-gradient regularisation cost clean accuracy: {ig['value']:.1%} "
                     f"against the standard model's {std['value']:.1%} (it is also trained on "
                     "fewer images and epochs).")
    judge = mt["saliency/judge/std_acc"]["value"]
    if judge < 0.9:
        notes.append(f"The independent judge reaches only {judge:.1%} clean accuracy.")
    return notes


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a saliency record; returns its path."""
    mt, lit, cfg = rec["metrics"], rec["details"]["literature"], rec["config"]
    models = _models(rec)
    starts = [s for s in ("other", "noise")
              if f"saliency/standard/inversion_{s}/judge_target_rate" in mt]
    rob = table(["model", "clean acc (95% CI)", "robust acc (95% CI)", "literature"],
                [[LABELS[n], _fmt(mt[f"saliency/{n}/std_acc"]),
                  _fmt(mt[f"saliency/{n}/robust_acc"]),
                  lit["robustness"] if n == "input-grad" else "-"] for n in models])
    sal = table(["attribution", *(LABELS[n] for n in models)],
                [[f"{SALIENCY_LABELS[k]}: {what}",
                  *(_fmt(mt.get(f"saliency/{n}/{k}/{key}"), pct=False) for n in models)]
                 for k in SALIENCY_LABELS for key, what in (("stroke_share", "stroke share"),
                                                     ("rank_corr", "rank corr."))])
    inv = table(["start", "quantity", *(LABELS[n] for n in models)],
                [[s, q, *(_fmt(mt.get(f"saliency/{n}/inversion_{s}/{q}"),
                               pct="distance" not in q) for n in models)]
                 for s in starts for q in ("judge_target_rate", "judge_start_rate",
                                           "self_target_rate", "feature_distance",
                                           "start_feature_distance")
                 if f"saliency/standard/inversion_{s}/{q}" in mt])
    stroke = mt["saliency/stroke_fraction"]["value"]
    bars_rob = _grouped_bars(rec, [("std_acc", "clean"), ("robust_acc", "robust")],
                             ylabel="accuracy", title="Accuracy (mean, 95% CI over seeds)")
    bars_sal = _grouped_bars(rec, [(f"{k}/stroke_share", k) for k in SALIENCY_LABELS],
                             ylabel="|attribution| share on strokes", reference=stroke,
                             reference_label="stroke pixel fraction (uniform map)",
                             title="Saliency alignment with the strokes (mean, 95% CI)")
    bars_inv = _grouped_bars(rec, [(f"inversion_{s}/judge_target_rate", f"from {s}")
                                   for s in starts],
                             ylabel="judge assigns the target class",
                             reference=mt["saliency/judge/target_acc"]["value"],
                             reference_label="judge on the targets themselves",
                             title="Inversions recognised by the independent judge "
                                   "(mean, 95% CI)")
    sal_grid, inv_grid = _grids(rec, out)
    notes = "".join(f"<li>{esc(n)}</li>" for n in diagnostics(rec))
    notes_html = f"<h2>Warnings</h2><ul>{notes}</ul>" if notes else ""
    lit_table = table(["claim", "measured (95% CI)", "verdict", "literature"],
                      [[c["claim"], measured_html(c["measured"]), c["verdict"],
                        c.get("literature", "")]
                       for c in rec["claims"]])
    timing = rec["details"].get("timing", {})
    spent = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timing.items())
    body = f"""{header(rec)}
<p>Three models of architecture <code>{esc(cfg['arch'])}</code> per seed: the standard and
robust (fast-AT) models of features-vs-bugs and a model trained with input-gradient
regularisation (lambda = {esc(cfg['input_grad_train'].get('grad_reg'))}, on the first
{esc(cfg['n_input_grad_train'])} training images). Robust accuracy: attack suite
<code>{esc(cfg['robust_suite'])}</code> with its sanity checks at {esc(cfg['eval_attack']['norm'])}
eps = {esc(cfg['eval_attack']['eps'])}. Stroke pixels: intensity &gt; {esc(cfg['stroke_threshold'])}
({stroke:.1%} of the pixels of the {esc(rec['details']['n_saliency'])} attributed test images).
Inversions: {esc(rec['details']['n_inversion'])} test images, {esc(cfg['inversion_steps'])}
Adam steps; judge: a standard <code>{esc(cfg['judge_arch'])}</code>
(seed + {esc(cfg['judge_seed_offset'])}), clean accuracy {_fmt(mt['saliency/judge/std_acc'])}.</p>
<p>{esc(rec['details'].get('protocol_note', ''))}</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
{notes_html}
<h2>Measured against the literature</h2>{lit_table}
<h2>Robustness bought</h2>{rob}{bars_rob}
<h2>Saliency alignment with the strokes</h2>
<p>Stroke share: fraction of |attribution| on stroke pixels (a uniform map scores
{stroke:.1%}); rank corr.: Spearman correlation of |attribution| with pixel intensity.
Literature: {esc(lit['saliency'])}.</p>{sal}{bars_sal}{sal_grid}
<h2>Inversion recognisability</h2>
<p>Judge target rate: share of inversions the independent judge labels as the target's class;
judge start rate: share it labels as the start image's class; self: the inverted model's own
label; feature distance: relative distance of the representations after (and before)
inversion. Literature: {esc(lit['inversion'])}.</p>{inv}{bars_inv}{inv_grid}
<h2>Every run</h2>{_per_seed(rec)}
<h2>Time</h2><p>Outside cached stages: {esc(spent or "-")}</p>
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: robustness and interpretability (exhibit A)",
                                  body).encode())
    return path
