"""The ``eisbench scan`` report: the verdict, the anomaly index of every class against the
threshold, the reconstructed masks, patterns and triggers per class, the per-class table and
the settings of the run."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import esc, figure, legend_outside, page, plain, table
from eisbench.tools.scan import ScanResult


def _index_bars(res: ScanResult) -> str:
    """Anomaly index per class; classes below the median in colour (only they can be
    flagged), flagged ones in red, the threshold dashed. Infinite indices are drawn capped."""
    k = len(res.l1)
    finite = [a for a in res.anomaly_index if math.isfinite(a)]
    cap = max([res.threshold * 1.5, *finite]) * 1.1
    med = statistics.median(res.l1)
    colours = ["#c44e52" if i in res.flagged else "#4c72b0" if res.l1[i] < med else "#b0b0b0"
               for i in range(k)]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(k), [min(a, cap) for a in res.anomaly_index], color=colours)
    for i, a in enumerate(res.anomaly_index):
        if not math.isfinite(a):
            ax.annotate("inf", (i, cap), ha="center", va="bottom", fontsize=7)
    ax.axhline(res.threshold, color="black", linestyle="--", lw=1,
               label=f"threshold {res.threshold:g}")
    ax.set_xticks(range(k), [str(i) for i in range(k)])
    ax.set_xlabel("class (red: flagged; blue: mask smaller than the median; grey: larger)")
    ax.set_ylabel("anomaly index (MAD units)")
    legend_outside(ax)
    ax.set_title(f"{res.method}: anomaly index of each class's mask L1 norm", fontsize=9)
    return figure(fig)


def _show(ax: Any, img: torch.Tensor) -> None:
    """Draw a (C, H, W) image in [0,1] (grey for one channel)."""
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def _trigger_grid(res: ScanResult) -> str:
    """Rows: mask, pattern, trigger alone on black (mask * pattern); one column per class."""
    k = len(res.reconstructions)
    fig, axes = plt.subplots(3, k, figsize=(1.1 * k, 3.6), squeeze=False)
    for j, r in enumerate(res.reconstructions):
        for i, img in enumerate((r.mask, r.pattern, r.image())):
            _show(axes[i][j], img.detach().cpu())
        colour = "#c44e52" if j == res.suspect else "black"
        axes[0][j].set_title(f"{j}\nL1 {r.l1:.1f}", fontsize=8, color=colour)
    for i, name in enumerate(("mask", "pattern", "trigger")):
        axes[i][0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return figure(fig)


def scan_html(res: ScanResult, *, title: str, meta: Mapping[str, Any]) -> str:
    """The whole report page; ``meta`` (model, data, settings) is shown as given."""
    d = res.to_dict()
    rows = [[r["class"], f"{r['l1']:.2f}", f"{r['success']:.1%}", r["anomaly_index"]
             if isinstance(r["anomaly_index"], str) else f"{r['anomaly_index']:.2f}",
             "yes" if r["flagged"] else "", "rows {0}-{2}, cols {1}-{3}".format(*r["bbox"])]
            for r in d["classes"]]
    body = (f"<p><b>{esc(res.verdict())}</b></p>"
            f"<p>Neural Cleanse's outlier rule: anomaly index = |L1 - median| / (1.4826 MAD) of "
            f"the reconstructed masks' L1 norms; a class is flagged above {res.threshold:g} on "
            "the small side. Success is the share of clean images (not already of the class) "
            "that the reconstructed trigger sends to the class.</p>"
            + _index_bars(res) + "<h2>Reconstructed triggers</h2>" + _trigger_grid(res)
            + "<h2>Per class</h2>"
            + table(["class", "mask L1", "success", "anomaly index", "flagged",
                     "trigger location (mask > 0.5)"], rows,
                    ["not-reproduced" if r["flagged"] else "" for r in d["classes"]])
            + "<h2>Settings</h2>" + table(["setting", "value"],
                                          [[k, plain(v)] for k, v in meta.items()]))
    return page(title, body)


def write_scan_report(res: ScanResult, out: Path, *, meta: Mapping[str, Any]) -> Path:
    """Write ``out/scan.html``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scan.html"
    atomic_write_bytes(path, scan_html(res, title="eisbench scan", meta=meta).encode())
    return path
