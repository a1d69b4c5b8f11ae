"""Small helpers for self-contained HTML reports: escaped tables, embedded PNG figures."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left}th{background:#f3f3f3}.reproduced{background:#dff5df}
.not-reproduced{background:#f9dede}.inconclusive{background:#fff4cc}
code,pre{background:#f6f6f6;padding:2px 4px}img{max-width:100%}.warn{color:#a00000}"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]],
          row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def figure(fig: Figure) -> str:
    """Embed ``fig`` as a base64 PNG <img> and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>")


def verdict_table(claims: Sequence[Mapping[str, Any]]) -> str:
    """The claims of a record, one row each, coloured by verdict; when some are checks
    (identities, sanity checks: never evidence), a ``role`` column says which."""
    roles = any(c.get("role") == "check" for c in claims)
    return table(["claim", "rule (fixed in advance)", "measured", "verdict"]
                 + (["role"] if roles else []),
                 [[c["claim"], c["rule"], c["measured"], c["verdict"]]
                  + ([c.get("role", "evidence")] if roles else []) for c in claims],
                 [c["verdict"].replace(" ", "-") for c in claims])


def header(rec: Mapping[str, Any]) -> str:
    """Provenance line: data, seeds, device, git, wall time."""
    return (f"<p>Data: {esc(rec['data'])}. Seeds: {esc(rec['seeds'])}. Device: "
            f"{esc(rec['device'])}. Git: {esc(rec['git'])}. Wall time: "
            f"{rec['wall_seconds']:.0f} s.</p>")


def footer(rec: Mapping[str, Any]) -> str:
    """Every hyper-parameter and library version."""
    import json

    return (f"<h2>Hyper-parameters</h2><pre>{esc(json.dumps(rec['config'], indent=2))}</pre>"
            f"<h2>Versions</h2><pre>{esc(json.dumps(rec['versions'], indent=2))}</pre>")


def accuracy_bars(labels: Sequence[str], metrics: Sequence[Mapping[str, Any]], *,
                  chance: float, title: str, literature: Sequence[float | None] = (),
                  literature_label: str = "literature") -> str:
    """Bars of accuracy metrics (mean and 95% CI, in %) with a chance line and, where given,
    the literature's figure as a diamond."""
    fig, ax = plt.subplots(figsize=(6, 3))
    vals = [m["value"] * 100 for m in metrics]
    err = [[(m["value"] - m["ci95"][0]) * 100 for m in metrics],
           [(m["ci95"][1] - m["value"]) * 100 for m in metrics]]
    ax.bar(range(len(labels)), vals, yerr=err, capsize=3, color="#4c72b0")
    shown = False
    for i, lit in enumerate(literature):
        if lit is not None:
            ax.plot([i], [lit * 100], marker="D", color="#dd8452", linestyle="",
                    label=None if shown else literature_label)
            shown = True
    ax.axhline(chance * 100, color="gray", linestyle="--", label="chance")
    ax.set_xticks(range(len(labels)), list(labels), fontsize=7, rotation=10)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return figure(fig)
