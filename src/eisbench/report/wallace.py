"""The wallace report: verdicts, test accuracies of the models trained on foreign images and
on a weak model's errors, with the source and weak models for reference."""

from __future__ import annotations

from pathlib import Path

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import accuracy_bars, esc, footer, header, page, table, verdict_table
from eisbench.runs.record import Record

ROWS = {"foreign": "fresh model on foreign images labelled by the source model",
        "weak_errors": "fresh model on the weak model's errors (wrong labels)",
        "source_model": "source model (standard, on D)", "weak_model": "weak model"}


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for a wallace record; returns its path."""
    lit = rec["details"]["literature"]
    ms = [rec["metrics"][f"wallace/{k}/std_acc"] for k in ROWS]
    rows = [[label, f"{m['value']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]",
             f"{lit[k]:.1%}" if k in lit else "-"] for (k, label), m in zip(ROWS.items(), ms,
                                                                          strict=True)]
    per_seed = table(["seed", *ROWS, "n_errors"],
                     [[s, *(f"{r[k]:.3f}" for k in ROWS), r["n_errors"]]
                      for s, r in zip(rec["seeds"], rec["details"]["per_seed"], strict=True)])
    bars = accuracy_bars(["foreign images", "weak model's errors", "source", "weak"], ms,
                         chance=1.0 / rec["details"]["num_classes"],
                         literature=[lit.get(k) for k in ROWS], literature_label="Wallace 2019",
                         title="Accuracy on the clean test set (mean, 95% CI over seeds)")
    body = f"""{header(rec)}
<p>{esc(rec['details']['literature_source'])}. Foreign images are resized to the shape of D.</p>
<h2>Verdicts</h2>{verdict_table(rec['claims'])}
<h2>Accuracy on the clean test set of D</h2>
{table(["model", "accuracy (95% CI)", "Wallace 2019"], rows)}
{bars}
<h2>Every run</h2>{per_seed}
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: learning from incorrect labels (Wallace 2019)",
                                  body).encode())
    return path
