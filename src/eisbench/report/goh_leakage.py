"""The goh-leakage report: verdicts, probe accuracies with CIs against chance and Goh's
figures, and a bar chart."""

from __future__ import annotations

from pathlib import Path

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import accuracy_bars, esc, footer, header, page, table, verdict_table
from eisbench.runs.record import Record

SETS = {"D": "D (true labels, reference)", "D_rand": "D_rand (random targets)",
        "D_det": "D_det (targets y+1)", "D_det_shifted": "D_det, scored against y+1"}


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a goh-leakage record; returns its path."""
    chance = 1.0 / rec["details"]["num_classes"]
    lit = rec["details"]["literature"]
    keys = [k for k in SETS if f"goh_leakage/{k}/probe_acc" in rec["metrics"]]
    ms = [rec["metrics"][f"goh_leakage/{k}/probe_acc"] for k in keys]
    rows = [[SETS[k], f"{m['value']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]",
             f"{lit[k]:.1%}" if k in lit else "-"] for k, m in zip(keys, ms, strict=True)]
    per_seed = table(["seed", *SETS], [[s, *(f"{r.get(k, float('nan')):.3f}" for k in SETS)]
                                       for s, r in zip(rec["seeds"], rec["details"]["per_seed"],
                                                       strict=True)])
    bars = accuracy_bars([SETS[k] for k in keys], ms, chance=chance,
                         literature=[lit.get(k) for k in keys],
                         literature_label="Goh 2019 (CIFAR-10)",
                         title="Linear probe on the robust model's features (mean, 95% CI)")
    body = f"""{header(rec)}
<p>Probe: {esc(rec['details']['probe'])}. A robust model sees only robust features, so a probe
trained on the wrong-label sets that beats chance ({chance:.0%}) on clean images shows that
the attack moved robust features too (leakage).</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
<h2>Probe accuracy on the clean test set</h2>
{table(["training set of the probe", "accuracy (95% CI)", "Goh 2019"], rows)}
{bars}
<h2>Every run</h2>{per_seed}
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: robust-feature leakage (Goh 2019)", body).encode())
    return path
