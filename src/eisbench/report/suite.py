"""The evidence-suite report: the verdict table exhibit by exhibit, a chart of the worlds each
exhibit's claims support, links to every experiment's own page, and the time each took."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import esc, figure, footer, header, page, table
from eisbench.runs.record import EXHIBITS, Record

COLOURS = {"features": "#4c72b0", "bugs": "#c44e52", "inconclusive": "#bbbbbb"}


def _worlds_chart(exhibits: dict[str, dict[str, object]]) -> str:
    keys = list(exhibits)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(keys) + 1))
    left = [0.0] * len(keys)
    for w, colour in COLOURS.items():
        vals = [float(exhibits[k]["counts"][w]) for k in keys]  # type: ignore[index]
        ax.barh(range(len(keys)), vals, left=left, color=colour, label=w)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_yticks(range(len(keys)), [f"{k}: {EXHIBITS[k]}" + (" (INCOMPLETE)" if exhibits[k].get(
        "incomplete") else "") + (" (CHECK FAILED)" if exhibits[k].get("reason") else "")
        for k in keys], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("evidence claims (each judged by its rule, fixed in advance; checks apart)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Which world each exhibit's measured claims support", fontsize=9)
    return figure(fig)


def _world(ex: dict[str, Any]) -> str:
    """An exhibit's world, with ``(check failed)`` when one of its checks failed and
    ``(incomplete)`` when one of its experiments failed or was skipped."""
    marks = [m for m, on in (("check failed", ex.get("reason")),
                             ("incomplete", ex.get("incomplete"))) if on]
    return f"{ex['world']} ({', '.join(marks)})" if marks else str(ex["world"])


def _checks(ex: dict[str, Any]) -> str:
    """The exhibit's checks in one cell: how many passed, and any that did not."""
    checks = ex.get("checks", [])
    bad = [f"{c['verdict']}: {c['claim']}" for c in checks if c["verdict"] != "reproduced"]
    return f"{len(checks) - len(bad)}/{len(checks)} passed" + "".join(f"; {b}" for b in bad)


def _section(key: str, ex: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One exhibit: its world, its evidence table and, apart, its checks."""
    evidence = [r for r in rows if r.get("role", "evidence") == "evidence"]
    checks = [r for r in rows if r.get("role", "evidence") == "check"]
    body = table(["experiment", "claim", "measured (95% CI over seeds)", "verdict",
                  "supports", "literature", "rule (fixed in advance)"],
                 [[r["experiment"], r["claim"], r["measured"], r["verdict"], r["world"],
                   r["literature"], r["rule"]] for r in evidence],
                 [r["verdict"].replace(" ", "-") for r in evidence])
    if checks:
        body += ("<p>Checks (identities and sanity checks: never evidence; a failed one makes "
                 "this exhibit's evidence count as inconclusive):</p>"
                 + table(["experiment", "check", "measured", "verdict", "rule"],
                         [[r["experiment"], r["claim"], r["measured"], r["verdict"], r["rule"]]
                          for r in checks], [r["verdict"].replace(" ", "-") for r in checks]))
    lost = ex.get("incomplete", [])
    warn = (f"<p class='warn'>INCOMPLETE: {esc(', '.join(lost))} did not run to the end; "
            "this exhibit's world rests on the remaining claims only.</p>" if lost else "")
    if ex.get("reason"):
        warn += (f"<p class='warn'>CHECK FAILED: {esc(ex['reason'])}. Every claim of this "
                 "exhibit counts as inconclusive.</p>")
    return (f"<h3>Exhibit {esc(key)}: {esc(ex['title'])}</h3>{warn}"
            f"<p>Measured: <b>{esc(_world(ex))}</b> ({esc(ex['counts'])}). "
            f"The seed's verdict: {esc(ex['seed_verdict'])}.</p>{body}")


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for an evidence-suite record; returns its path."""
    d = rec["details"]
    exhibits = d["exhibits"]
    sections = [_section(key, ex, [r for r in d["table"] if r["exhibit"] == key])
                for key, ex in exhibits.items()]
    summary = table(["exhibit", "measured world", "claims (evidence)", "checks",
                     "the seed's verdict"],
                    [[f"{k}: {ex['title']}", _world(ex), ex["claims"], _checks(ex),
                      ex["seed_verdict"]] for k, ex in exhibits.items()])
    runs = table(["experiment", "status", "seconds", "page"],
                 [[r["experiment"], "ok" if r["ok"] else f"{r['status']}: {r['error']}",
                   f"{r['seconds']:.0f}", r.get("report", "-")] for r in d["runs"]])
    links = " · ".join(f'<a href="{esc(r["report"])}">{esc(r["experiment"])}</a>'
                       for r in d["runs"] if r["ok"])
    failed = "".join(
        f"<p class='warn'>{what} (their claims are missing): {esc(', '.join(d[key]))}. See "
        "the table of runs.</p>" for key, what in (("failed", "Failed experiments"),
                                                    ("skipped", "Skipped for missing data"))
        if d[key])
    chart = _worlds_chart(exhibits) if exhibits else ""
    body = f"""{header(rec)}
<p>An exhibit's world: <i>features</i> (or <i>bugs</i>) if at least one of its evidence claims
supports it and none supports the other, <i>mixed</i> if both are supported, <i>inconclusive</i>
if neither (rule in <code>experiments/suite.py::exhibit_world</code>). Checks (identities and
sanity checks) are listed apart and never counted; a failed check makes the exhibit's evidence
count as inconclusive (<code>judge_exhibit</code>). An exhibit whose experiment failed or was
skipped is marked incomplete. Each claim's verdict comes from its experiment's rule (reproduced:
the 95% CI lies past the bar; not reproduced: it stays short of the bar plus a stated margin);
the world each outcome supports is stated with the claim.</p>
{failed}
<h2>Summary</h2>{summary}{chart}
<h2>The verdict table, exhibit by exhibit</h2>{''.join(sections)}
<h2>Pages per experiment</h2><p>{links}</p>
<h2>Runs</h2>{runs}
{footer(rec)}"""
    path = out / "report.html"
    atomic_write_bytes(path, page("eisbench: features or bugs? The evidence suite",
                                  body).encode())
    return path
