"""The features-vs-bugs report: verdicts, the accuracy table, a Figure-2-style bar chart,
sample images of each constructed dataset, and every hyper-parameter."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from safetensors.torch import load_file

from eisbench.core.paths import atomic_write_bytes
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
from eisbench.report.training import stop_note
from eisbench.runs.claims import n_label
from eisbench.runs.record import Record

ROWS = ["train_on_D", "adv_train_on_D", "train_on_D_R", "train_on_D_NR", "train_on_D_rand",
        "train_on_D_det"]
LABELS = {"train_on_D": "Std training on D", "adv_train_on_D": "Adv training on D",
          "train_on_D_R": "Std training on D_R", "train_on_D_NR": "Std training on D_NR",
          "train_on_D_rand": "Std training on D_rand", "train_on_D_det": "Std training on D_det"}


def _fmt(m: dict[str, object] | None) -> str:
    if m is None:
        return "-"
    ci = m["ci95"]
    assert isinstance(ci, list)
    return (f"{float(m['value']):.1%} [{ci[0]:.1%}, {ci[1]:.1%}] "  # type: ignore[arg-type]
            f"({n_label(m)})")


def _bars(rec: Record) -> str:
    rows = ROWS[:4]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = np.arange(len(rows))
    for off, kind, color in ((-0.2, "std_acc", "#4c72b0"), (0.2, "robust_acc", "#dd8452")):
        ms = [rec["metrics"][f"{r}/{kind}"] for r in rows]
        vals = np.array([m["value"] for m in ms]) * 100
        err = np.array([[m["value"] - m["ci95"][0], m["ci95"][1] - m["value"]] for m in ms]).T
        attack = rec["details"]["attack"]
        label = "Std accuracy" if kind == "std_acc" else f"Adv accuracy ({attack})"
        ax.bar(xs + off, vals, 0.4, yerr=err * 100, capsize=3, color=color, label=label)
    ax.set_xticks(xs, [LABELS[r].replace(" training on ", "\n") for r in rows])
    ax.set_ylabel("Test accuracy on D (%)")
    ax.set_ylim(0, 105)
    legend_outside(ax)
    ax.set_title("Accuracy on the original test set (mean, 95% CI over seeds)", fontsize=10)
    return figure(fig, alt="Bars of standard and adversarial test accuracy (%, mean and 95% CI "
                           "over seeds) of the models trained on D, adversarially on D, on D_R "
                           "and on D_NR")


def _curve(rec: Record) -> str:
    """Robust accuracy against eps for every model (mean and 95% CI over seeds): the curve
    attack at each eps of the curve, and the suite's reported number as a star."""
    main_eps = float(rec["config"]["eval_attack"]["eps"])
    curve = sorted(map(float, rec["config"].get("eps_curve", [])))
    if len(curve) < 2:
        return ""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for r in ROWS:
        pts = [(eps, m["value"], m["ci95"][0], m["ci95"][1]) for eps in curve
               if (m := rec["metrics"].get(f"{r}/robust_acc_eps={eps:g}")) is not None]
        if not pts:
            continue
        e, v, lo, hi = (np.array(t) for t in zip(*pts, strict=True))
        line = ax.errorbar(e, v * 100, yerr=[(v - lo) * 100, (hi - v) * 100], marker="o",
                           capsize=2, label=LABELS[r])
        main = rec["metrics"].get(f"{r}/robust_acc")
        if main is not None:
            ax.plot([main_eps], [main["value"] * 100], marker="*", markersize=10, linestyle="",
                    color=line.lines[0].get_color())
    ax.set_xlabel(f"{rec['config']['eval_attack']['norm']} eps")
    ax.set_ylabel("Robust accuracy (%)")
    ax.set_ylim(-2, 102)
    legend_outside(ax)
    ax.set_title("Robust accuracy vs. budget: lines "
                 f"{rec['details'].get('curve_attack', 'curve attack')}; stars: the suite",
                 fontsize=9)
    return figure(fig)


def failed_checks(rec: Record) -> list[str]:
    """One line per sanity check that failed on a reported robust accuracy."""
    out = []
    for r in ROWS:
        for seed, m in zip(rec["seeds"], rec["details"]["per_seed"].get(r, []), strict=False):
            for ch in m.get("checks", []):
                if ch["passed"] is False:
                    out.append(f"{LABELS[r]}, seed {seed}: check '{ch['name']}' failed: "
                               f"{ch['detail']}. {ch['advice']}")
    return out


def _checks_table(rec: Record) -> str:
    """Checks by model, one row per check and one column per model: how many seeds passed it
    (n/a: it could not run)."""
    names: list[str] = []
    cols: list[tuple[str, dict[str, list[bool | None]]]] = []
    for r in ROWS:
        by: dict[str, list[bool | None]] = {}
        for m in rec["details"]["per_seed"].get(r, []):
            for ch in m.get("checks", []):
                by.setdefault(ch["name"], []).append(ch["passed"])
        names += [n for n in by if n not in names]
        if by:
            cols.append((LABELS[r], by))
    rows = [[n, *(_passes(by.get(n, [])) for _, by in cols)] for n in names]
    return table(["check", *(label for label, _ in cols)], rows) if cols else ""


def _passes(vals: list[bool | None]) -> str:
    ran = [v for v in vals if v is not None]
    return f"{sum(ran)}/{len(ran)}" if ran else "n/a"


def _per_seed(rec: Record) -> str:
    rows = []
    for r in ROWS:
        for seed, m in zip(rec["seeds"], rec["details"]["per_seed"].get(r, []), strict=False):
            rows.append([LABELS[r], seed, f"{m['std_acc']:.1%}", f"{m['robust_acc']:.1%}"])
    return table(["model", "seed", "std acc", "robust acc"], rows)


def diagnostics(rec: Record) -> list[str]:
    """Plain-language warnings about the run that a reader should weigh with the verdicts."""
    notes = []
    for name in ("D_rand", "D_det"):
        m = rec["metrics"].get(f"construct/{name}/target_rate")
        if m is not None and m["value"] < 0.9:
            notes.append(f"The targeted attack that builds {name} reached its target class on "
                         f"the source model for only {m['value']:.0%} of images (L2 eps "
                         f"{rec['config']['wrong_label_eps']}); the rest carry a wrong label "
                         "without the target's non-robust features.")
    for r in ROWS:
        runs = rec["details"]["per_seed"].get(r, [])
        vals = [x["robust_acc"] for x in runs]
        if len(vals) > 1 and max(vals) - min(vals) > 0.2:
            notes.append(f"{LABELS[r]}: robust accuracy varies across seeds from {min(vals):.1%}"
                         f" to {max(vals):.1%}; see the per-seed table.")
    for run, hist in rec["details"].get("training", {}).items():
        note = stop_note(run, hist)
        if note is not None:
            notes.append(note)
    for name in ("D_R", "D_NR"):
        m = rec["metrics"].get(f"construct/{name}/feature_distance")
        if m is not None and m["value"] > 0.2:
            notes.append(f"Representation inversion for {name} left a relative feature distance "
                         f"of {m['value']:.2f} (0 = exact match); more inversion steps would "
                         "match the representation more closely.")
    return notes


def _samples(out: Path) -> str:
    f = out / "samples.safetensors"
    if not f.exists():
        return "<p>(no sample images saved)</p>"
    s = load_file(str(f))
    if "D_R_labels" in s:
        s["D_labels"] = s["D_R_labels"]  # D_R keeps the original labels
    names = [k for k in ("D", "D_R", "D_NR", "D_rand", "D_det") if k in s]
    n = s["D"].shape[0]
    fig, axes = plt.subplots(len(names), n, figsize=(n * 0.9, len(names) * 1.0), squeeze=False)
    for i, name in enumerate(names):
        for j in range(n):
            img = s[name][j].permute(1, 2, 0).numpy()
            ax = axes[i][j]
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if f"{name}_labels" in s:
                ax.set_title(str(int(s[f"{name}_labels"][j])), fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("Row D: originals. D_R/D_NR match their representations; "
                 "D_rand/D_det carry the label shown", fontsize=8)
    return figure(fig)


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a features-vs-bugs record; returns its path."""
    lit = rec["details"]["literature"]
    verdicts = verdict_table(rec["claims"])
    rows = []
    for r in ROWS:
        s, a = lit.get(r, [None, None])
        rows.append([LABELS[r], _fmt(rec["metrics"].get(f"{r}/std_acc")),  # type: ignore[arg-type]
                     _fmt(rec["metrics"].get(f"{r}/robust_acc")),  # type: ignore[arg-type]
                     pct(s), pct(a)])
    acc = table(["model", "std acc (95% CI)", "robust acc (95% CI)", "paper std (CIFAR-10)",
                 "paper robust"], rows)
    failed = "".join(f"<li>{esc(n)}</li>" for n in failed_checks(rec))
    failed_html = (f"<h2 class='warn'>Sanity checks failed</h2><p>These robust accuracies may "
                   f"overstate robustness:</p><ul>{failed}</ul>") if failed else ""
    notes = "".join(f"<li>{esc(n)}</li>" for n in diagnostics(rec))
    notes_html = f"<h2>Warnings</h2><ul>{notes}</ul>" if notes else ""
    extra = table(["construction diagnostic", "value"],
                  [[k, _fmt(v)] for k, v in rec["metrics"].items()  # type: ignore[arg-type]
                   if k.startswith("construct/")])
    body = f"""{header(rec)}
<p>Robust accuracy: {esc(rec['details']['attack'])} on the first
{esc(rec['config']['n_test_robust'])} test images.</p>
{failed_html}
<h2>Verdicts</h2>{verdicts}
{notes_html}
<h2>Accuracy on the original test set</h2>{acc}
<p>Paper figures: {esc(rec['details']['literature_source'])}; different data, architecture and
budget, shown for the pattern only.</p>
{_bars(rec)}
{_curve(rec)}
{extra}
<h2>Sanity checks of the robust accuracies (seeds passed)</h2>{_checks_table(rec)}
<h2>Every run</h2>{_per_seed(rec)}
<h2>Constructed datasets</h2>{_samples(out)}
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: features vs bugs (Ilyas et al. 2019)", body).encode())
    return path
