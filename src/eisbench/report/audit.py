"""The ``eisbench audit`` report: a summary in plain sentences first, then robust accuracy with
its checks, the trojan scan, transfer from reference models, the replacements' Pareto plot and
the tools' images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from safetensors.torch import load_file

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import esc, figure, footer, header, page, table
from eisbench.report.replace import pareto_figure
from eisbench.report.scan import _index_bars, _show, _trigger_grid
from eisbench.runs.record import Record
from eisbench.tools.scan import load_scan


def _ci(m: Mapping[str, Any]) -> str:
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def summary(rec: Record) -> list[str]:
    """The audit in sentences (also printed by the command line): what each section found,
    then every section that did not complete, with its error and remedy."""
    m, d = rec["metrics"], rec["details"]
    out = []
    labels = d.get("labels", {"source": "dataset"})
    if labels["source"] != "dataset":
        out.append(f"labels: {labels['note']}")
    if "clean_acc" in m:
        out.append(f"clean accuracy {_ci(m['clean_acc'])} on {m['clean_acc']['n']} test images")
    for eps, r in d.get("robust", {}).items():
        if f"robust_acc/eps={eps}" not in m:
            continue
        bad = r["failed_checks"]
        out.append(f"robust accuracy at Linf {eps}: {_ci(m[f'robust_acc/eps={eps}'])} "
                   f"({r['suite']} suite, {r['n']} images); checks "
                   + ("all passed" if not bad else "FAILED: " + ", ".join(bad)))
    if "scan" in d:
        out.append("trojan scan: " + d["scan"]["verdict"])
    for arch, t in d.get("transfer", {}).items():
        out.append(f"adversarial examples of an independently trained {arch} fool it "
                   f"{_ci(t['transfer'])} of the time (same-norm noise: "
                   f"{t['noise']['value']:.3f})")
    for name, p in d.get("replace", {}).get("chosen", {}).items():
        ood = "" if p["agree_ood"] is None else f", out of distribution {p['agree_ood']:.3f}"
        out.append(f"replacement {name} (size {p['size']}) agrees on {p['agree_test']:.3f} of "
                   f"the test set{ood}: {p['description']}")
    if d["output"] != "logits":
        out.append(f"the model returns {d['output']} (fine for attacks and the scan)")
    sections = d.get("sections", {})
    for sec in sections.values():
        if sec["status"] == "skipped":
            out.append(f"{sec['title']}: skipped: {sec['reason']}")
        elif sec["status"] in ("failed", "partial"):
            out.append(f"{sec['title']}: {sec['status'].upper()}: {sec['error']}. Remedy: "
                       f"{sec['remedy']}")
    if sections:
        done = sum(s["status"] == "done" for s in sections.values())
        out.append(f"sections: {done} of {len(sections)} complete"
                   + (f"; missing: {', '.join(d['missing'])}" if d.get("missing") else ""))
    return out


def _sections(rec: Record) -> str:
    rows = []
    for sec in rec["details"].get("sections", {}).values():
        what = sec.get("reason") or sec.get("error") or ""
        rows.append([sec["title"], sec["status"], what, sec.get("remedy", ""),
                     f"{sec['seconds']:.1f}"])
    return table(["section", "status", "reason or error", "remedy", "seconds"], rows)


def _robust_bars(rec: Record) -> str:
    m = rec["metrics"]
    keys = [k for k in m if k == "clean_acc" or k.startswith("robust_acc/")]
    fig, ax = plt.subplots(figsize=(5, 2.8))
    vals = [m[k]["value"] for k in keys]
    err = [[m[k]["value"] - m[k]["ci95"][0] for k in keys],
           [m[k]["ci95"][1] - m[k]["value"] for k in keys]]
    ax.bar(range(len(keys)), vals, yerr=err, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(keys)), [k.replace("robust_acc/", "Linf ") for k in keys],
                  fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI)")
    return figure(fig)


def _checks(rec: Record) -> str:
    rows = []
    for eps, r in rec["details"].get("robust", {}).items():
        for c in r["checks"]:
            rows.append([eps, c["name"], {True: "pass", False: "FAIL", None: "n/a"}[c["passed"]],
                         c.get("detail", "")])
    return table(["eps", "check", "outcome", "detail"], rows)


def _tool_images(out: Path, rec: Record) -> str:
    f = out / "images.safetensors"
    if not f.exists():
        return ""
    s = load_file(str(f))
    names = [n for n in rec["details"]["tools"]["names"] if n in s]
    if not names:
        return ""
    cols = max(len(s[n]) for n in names)
    fig, axes = plt.subplots(len(names), cols, figsize=(0.9 * cols, 0.95 * len(names)),
                             squeeze=False)
    for i, n in enumerate(names):
        for j in range(cols):
            ax = axes[i][j]
            if j < len(s[n]):
                _show(ax, s[n][j])
            else:
                ax.axis("off")
        axes[i][0].set_ylabel(n, fontsize=8, rotation=0, ha="right", va="center")
    tools = rec["details"]["tools"]
    fig.suptitle(f"Tools' images for class {tools['class']} "
                 f"({tools.get('why', 'the class of the smallest reconstructed trigger')})",
                 fontsize=8)
    return figure(fig)


def write_report(rec: Record, out: Path) -> Path:
    """``out/report.html``: the summary, the sections' table, then each section that ran."""
    d, m = rec["details"], rec["metrics"]
    parts = [header(rec), f"<h2>Summary of {esc(d['model'])}</h2><ul>",
             "".join(f"<li>{esc(s)}</li>" for s in summary(rec)), "</ul>",
             "<h2>Sections</h2>", _sections(rec)]
    if any(k == "clean_acc" or k.startswith("robust_acc/") for k in m):
        parts += ["<h2>Robust accuracy</h2>", _robust_bars(rec), _checks(rec)]
    if "scan" in d:
        parts += ["<h2>Trojan scan</h2><p>", esc(d["scan"]["verdict"]), "</p>"]
        if (out / "scan" / "scan.json").exists():
            res = load_scan(out / "scan")
            parts += [_index_bars(res), _trigger_grid(res)]
    if d.get("transfer"):
        rows = [[arch, _ci(t["transfer"]), t["n_source"], _ci(t["noise"]),
                 f"{t['white_box_on_reference']:.3f}"] for arch, t in d["transfer"].items()]
        parts += ["<h2>Transfer from reference models</h2>",
                  table(["reference", "transfer rate [95% CI]", "n (fooled the reference)",
                         "same-norm noise", "white-box success on the reference"], rows)]
    if "replace" in d:
        rep = d["replace"]
        parts += ["<h2>Replacements</h2>",
                  pareto_figure(rep["points"], title="agreement with the model against size",
                                units=rep.get("units", {}))]
    if "tools" in d:
        parts += ["<h2>Tools</h2>", _tool_images(out, rec)]
    parts.append(footer(rec))
    path = out / "report.html"
    atomic_write_bytes(path, page("Audit", "".join(parts)).encode())
    return path
