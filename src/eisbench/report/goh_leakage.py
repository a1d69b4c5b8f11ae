"""The goh-leakage report: verdicts, probe accuracies with CIs against chance and Goh's
figures, and a bar chart."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from eisbench.paths import atomic_write_bytes
from eisbench.record import Record
from eisbench.report.html import esc, figure, page, table

SETS = {"D": "D (true labels, reference)", "D_rand": "D_rand (random targets)",
        "D_det": "D_det (targets y+1)", "D_det_shifted": "D_det, scored against y+1"}


def _bars(rec: Record, chance: float) -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    keys = [k for k in SETS if f"goh_leakage/{k}/probe_acc" in rec["metrics"]]
    ms = [rec["metrics"][f"goh_leakage/{k}/probe_acc"] for k in keys]
    vals = [m["value"] * 100 for m in ms]
    err = [[(m["value"] - m["ci95"][0]) * 100 for m in ms],
           [(m["ci95"][1] - m["value"]) * 100 for m in ms]]
    ax.bar(range(len(keys)), vals, yerr=err, capsize=3, color="#4c72b0")
    lit = rec["details"]["literature"]
    for i, k in enumerate(keys):
        if k in lit:
            ax.plot([i], [lit[k] * 100], marker="D", color="#dd8452", linestyle="",
                    label="Goh 2019 (CIFAR-10)" if k == "D_rand" else None)
    ax.axhline(chance * 100, color="gray", linestyle="--", label="chance")
    ax.set_xticks(range(len(keys)), [SETS[k] for k in keys], fontsize=7, rotation=10)
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title("Linear probe on the robust model's features (mean, 95% CI over seeds)",
                 fontsize=9)
    return figure(fig)


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a goh-leakage record; returns its path."""
    chance = 1.0 / rec["details"]["num_classes"]
    claims = rec["claims"]
    verdicts = table(["claim", "rule (fixed in advance)", "measured", "verdict"],
                     [[c["claim"], c["rule"], c["measured"], c["verdict"]] for c in claims],
                     [c["verdict"].replace(" ", "-") for c in claims])
    lit = rec["details"]["literature"]
    rows = []
    for k, label in SETS.items():
        m = rec["metrics"].get(f"goh_leakage/{k}/probe_acc")
        if m is not None:
            rows.append([label, f"{m['value']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]",
                         f"{lit[k]:.1%}" if k in lit else "-"])
    per_seed = table(["seed", *SETS], [[s, *(f"{r.get(k, float('nan')):.3f}" for k in SETS)]
                                       for s, r in zip(rec["seeds"], rec["details"]["per_seed"],
                                                       strict=True)])
    body = f"""
<p>Data: {esc(rec['data'])}. Seeds: {esc(rec['seeds'])}. Device: {esc(rec['device'])}.
Git: {esc(rec['git'])}. Wall time: {rec['wall_seconds']:.0f} s.</p>
<p>Probe: {esc(rec['details']['probe'])}. A robust model sees only robust features, so a probe
trained on the wrong-label sets that beats chance ({chance:.0%}) on clean images shows that
the attack moved robust features too (leakage).</p>
<h2>Verdicts</h2>{verdicts}
<h2>Probe accuracy on the clean test set</h2>
{table(["training set of the probe", "accuracy (95% CI)", "Goh 2019"], rows)}
{_bars(rec, chance)}
<h2>Every run</h2>{per_seed}
<h2>Hyper-parameters</h2><pre>{esc(json.dumps(rec['config'], indent=2))}</pre>
<h2>Versions</h2><pre>{esc(json.dumps(rec['versions'], indent=2))}</pre>"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: robust-feature leakage (Goh 2019)", body).encode())
    return path
