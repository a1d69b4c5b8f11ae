"""The nakkiran report: verdicts; success and transfer of plain vs non-transferable targeted
PGD and the test accuracy of their D_det beside Nakkiran's figures; sample images of both
attacks; the adversarial-squares result; every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from safetensors.torch import load_file

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import (
    accuracy_bars,
    esc,
    figure,
    footer,
    header,
    is_share,
    legend_outside,
    page,
    pct,
    table,
    verdict_table,
)
from eisbench.runs.record import Metric, Record

ATTACKS = {"pgd": "plain targeted PGD", "non_transferable": "non-transferable PGD"}
SHORT = {"pgd": "plain PGD", "non_transferable": "non-transf."}
ROWS = [("pgd/success_rate", "plain PGD: success on f"),
        ("pgd/transfer_rate", "plain PGD: transfer to held-out g"),
        ("pgd/ensemble_transfer_rate", "plain PGD: transfer to the ensemble f_i"),
        ("non_transferable/success_rate", "non-transferable: success on f"),
        ("non_transferable/transfer_rate", "non-transferable: transfer to held-out g"),
        ("non_transferable/ensemble_transfer_rate",
         "non-transferable: transfer to the ensemble f_i (in its loss)"),
        ("pgd/D_det_std_acc", "D_det (plain PGD): test accuracy"),
        ("non_transferable/D_det_std_acc", "D_det (non-transferable): test accuracy"),
        ("pgd/D_det_shifted_acc", "D_det (plain PGD): test predictions = y+1"),
        ("non_transferable/D_det_shifted_acc", "D_det (non-transferable): test predictions = y+1"),
        ("target_model_std_acc", "target model f: test accuracy"),
        ("heldout_model_std_acc", "held-out models g: test accuracy (mean)")]
SQUARES = [("squares/net_std_acc", "network: clean test accuracy"),
           ("squares/net_robust_acc", "network: robust accuracy (PGD)"),
           ("squares/net_train_loss", "network: training loss"),
           ("squares/robust_classifier_std_acc", "mean-pixel threshold: clean accuracy"),
           ("squares/robust_classifier_robust_acc", "mean-pixel threshold: exact robust accuracy"),
           ("squares/mean_margin_min", "smallest mean-pixel margin on the test set"),
           ("squares/pixel_margin", "every pixel's own margin")]


def _fmt(m: Metric, pct: bool = True) -> str:
    if pct:
        return f"{m['value']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]"
    return f"{m['value']:.3g} [{m['ci95'][0]:.3g}, {m['ci95'][1]:.3g}]"


def _rate_bars(rec: Record) -> str:
    """Success and transfer of each attack (mean, 95% CI), Nakkiran's transfer as diamonds."""
    met, lit = rec["metrics"], rec["details"]["literature"]
    fig, ax = plt.subplots(figsize=(6, 3))
    for j, (what, color) in enumerate((("success_rate", "#4c72b0"),
                                       ("transfer_rate", "#dd8452"),
                                       ("ensemble_transfer_rate", "#8c8c8c"))):
        ms = [met[f"nakkiran/{a}/{what}"] for a in ATTACKS]
        xs = [i + (j - 1) * 0.27 for i in range(len(ATTACKS))]
        ax.bar(xs, [m["value"] * 100 for m in ms], width=0.27, color=color,
               yerr=[[(m["value"] - m["ci95"][0]) * 100 for m in ms],
                     [(m["ci95"][1] - m["value"]) * 100 for m in ms]], capsize=3,
               label=what.replace("_", " ").replace(" rate", ""))
    for i, a in enumerate(ATTACKS):
        v = lit.get(f"{a}/transfer_rate")
        if v is not None:
            ax.plot([i], [v * 100], marker="D", color="black", linestyle="",
                    label="Nakkiran 2019 transfer" if i == 0 else None)
    ax.set_xticks(range(len(ATTACKS)), list(ATTACKS.values()), fontsize=8)
    ax.set_ylabel("% of examples")
    ax.set_ylim(0, 105)
    legend_outside(ax)
    ax.set_title("Targeted attacks on f: success, transfer to g and to the ensemble "
                 "(mean, 95% CI)", fontsize=9)
    return figure(fig)


def _images(s: dict[str, torch.Tensor]) -> str:
    """Clean images, both attacks' outputs and their perturbations, with predictions."""
    n = min(8, len(s["clean"]))
    rows: list[tuple[str, torch.Tensor, list[str]]] = [
        ("clean", s["clean"], [f"y={int(v)}" for v in s["labels"][:n]])]
    for a, label in SHORT.items():
        rows.append((label, s[a], [f"f:{int(p)} g:{int(q)}" for p, q in
                                   zip(s[f"{a}_pred_f"][:n], s[f"{a}_pred_g"][:n], strict=True)]))
    for a, label in SHORT.items():
        rows.append((f"{label}\nx' - x", s[a] - s["clean"], [""] * n))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.35 * len(rows)), squeeze=False)
    for r, (label, imgs, titles) in enumerate(rows):
        delta = "x' - x" in label
        lim = float(imgs[:n].abs().max()) or 1.0
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c, 0].numpy(), cmap="RdBu_r" if delta else "gray",
                      vmin=-lim if delta else 0.0, vmax=lim if delta else 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("Targets are y+1; f: target model, g: first held-out model", fontsize=9)
    return figure(fig)


def _squares_images(s: dict[str, torch.Tensor]) -> str:
    n = len(s["squares_clean"])
    fig, axes = plt.subplots(2, n, figsize=(1.5 * n, 3.2), squeeze=False)
    for c in range(n):
        for r, (key, title) in enumerate((("squares_clean", f"class {int(s['squares_labels'][c])}"),
                                          ("squares_adv",
                                           f"net says {int(s['squares_adv_pred'][c])}"))):
            ax = axes[r][c]
            ax.imshow(s[key][c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
    axes[0][0].set_ylabel("clean", fontsize=8)
    axes[1][0].set_ylabel("PGD on the net", fontsize=8)
    return figure(fig)


def _g3(key: str, x: Any) -> str:
    """Accuracies and rates in percent with one decimal, other numbers to three significant
    digits."""
    if isinstance(x, (int, float)) and is_share(key) and 0.0 <= x <= 1.0:
        return pct(x)
    return f"{x:.3g}" if isinstance(x, (int, float)) else str(x)


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a nakkiran record; returns its path."""
    det = rec["details"]
    met, lit, k = rec["metrics"], det["literature"], det["num_classes"]
    cfg: dict[str, Any] = rec["config"]
    measured = table(["quantity", "measured (95% CI over seeds)", "Nakkiran 2019 (CIFAR-10)"],
                     [[label, _fmt(met[f"nakkiran/{key}"]),
                       f"{lit[key]:.1%}" if key in lit else "-"] for key, label in ROWS])
    d_det = accuracy_bars([f"D_det ({v})" for v in ATTACKS.values()],
                          [met[f"nakkiran/{a}/D_det_std_acc"] for a in ATTACKS], chance=1.0 / k,
                          literature=[lit.get(f"{a}/D_det_std_acc") for a in ATTACKS],
                          literature_label="Nakkiran 2019 (CIFAR-10)",
                          title="Fresh model trained on D_det, clean test accuracy")
    squares = table(["quantity", "measured (95% CI over seeds)"],
                    [[label, _fmt(met[f"nakkiran/{key}"], pct="acc" in key)]
                     for key, label in SQUARES])
    keys = [k for k in det["per_seed"][0] if not isinstance(det["per_seed"][0][k], list)]
    per_seed = table(["quantity", *(f"seed {s}" for s in rec["seeds"])],
                     [[k.replace("_", " "), *(_g3(k, r[k]) for r in det["per_seed"])]
                      for k in keys])
    per_g = table(["seed", *(f"{a}: transfer to each held-out g" for a in ATTACKS)],
                  [[s, *(", ".join(f"{v:.3f}" for v in r[f"{a}/transfer_rate_per_heldout"])
                         for a in ATTACKS)]
                   for s, r in zip(rec["seeds"], det["per_seed"], strict=True)])
    path = out / "samples.safetensors"
    samples = load_file(str(path)) if path.exists() else {}
    images = _images(samples) if "clean" in samples else "<p>(no sample images)</p>"
    sq_images = _squares_images(samples) if "squares_clean" in samples else ""
    sq = cfg["squares"]
    body = f"""{header(rec)}
<p>{esc(det['literature_source'])}. Per seed: a target model f, an ensemble of
{cfg['ensemble']} independently trained copies f_i and {cfg['heldout']} held-out copies g
({esc(cfg['arch'])}, {det['n_train']} training images). Both attacks are targeted L2 PGD
(eps={cfg['eps']:g}, {cfg['steps']} steps of {cfg['step_size']:g}, targets y+1) on
{det['n_construct']} training images; the non-transferable one minimises
L(f, x', t) + {cfg['ensemble_weight']:g} * mean_i L(f_i, x', y). Transfer: {esc(det['transfer'])}.
Each attack's outputs, labelled with the target, form a D_det; a fresh model trained on it is
tested on the clean test set (chance {1 / k:.0%}; a model that learnt the images' true class
predicts y+1, the "shifted" accuracy).</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
<h2>Measured values beside Nakkiran's</h2>{measured}
{_rate_bars(rec)}
{d_det}
<h2>Sample images (first seed)</h2>{images}
<h2>Adversarial squares</h2>
<p>{sq['side']}x{sq['side']} images, every pixel at {sq['low']:g} (class 0) or {sq['high']:g}
(class 1) plus uniform noise in [-{sq['noise']:g}, {sq['noise']:g}]: every pixel alone
separates the classes with margin {(sq['high'] - sq['low']) / 2 - sq['noise']:g}, the mean
pixel with more, so every useful feature is robust. A {esc(sq['arch'])} fit to (near) zero
loss on {sq['n_train']} samples is attacked with {esc(det['squares_attack'])}; the
mean-pixel threshold's robust accuracy at the same eps is computed exactly.</p>
{squares}{sq_images}
<h2>Every run</h2>{per_seed}{per_g}
<p>Time: {det['seconds']['models_attacks_D_det']:.0f} s for the models, attacks and D_det;
{det['seconds']['squares']:.0f} s for the squares ({det['seconds']['cpu_total']:.0f} s of CPU
time in all).</p>
{footer(rec)}"""
    out_path = out / "report.html"
    atomic_write_bytes(out_path, page("eisbench: adversarial examples that are bugs "
                                      "(Nakkiran 2019)", body).encode())
    return out_path
