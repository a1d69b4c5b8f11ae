"""The evidence-suite report: a summary per exhibit, a chart of the worlds each exhibit's claims
support, one compact verdict table (exhibit | claim | measured | verdict | supports, with each
claim's rule and literature folded under it), the checks and warnings per exhibit, links to
every experiment's own page, and the time each took. Accuracies are shown in percent with one
decimal (:func:`eisbench.report.html.measured_html`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from markupsafe import Markup

from eisbench.core.paths import atomic_write_bytes
from eisbench.core.progress import duration
from eisbench.report.html import (
    claim_cell,
    esc,
    figure,
    footer,
    header,
    legend_outside,
    measured_html,
    page,
    table,
)
from eisbench.runs.page_context import page_context
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
        for k in keys], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("evidence claims (each judged by its rule, fixed in advance; checks apart)")
    legend_outside(ax, title="claims support")
    ax.set_title("Which world each exhibit's measured claims support", fontsize=10)
    return figure(fig, alt="Stacked bars, one per exhibit, of how many evidence claims "
                           "support features, bugs or neither: " + "; ".join(
                               f"{k}: {_counts(exhibits[k])}" for k in keys))


def _counts(ex: dict[str, Any]) -> str:
    """``'1 claim supports features, 0 bugs, 2 inconclusive'`` (never a printed dict)."""
    c = ex["counts"]
    total = sum(int(v) for v in c.values())
    return (f"of {total} evidence claim{'s' if total != 1 else ''}: {c.get('features', 0)} "
            f"support features, {c.get('bugs', 0)} bugs, {c.get('inconclusive', 0)} "
            "inconclusive")


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


def verdict_rows(rows: list[dict[str, Any]]) -> str:
    """The compact verdict table of the evidence claims: exhibit | claim (rule, literature and
    experiment one click away) | measured (95% CI) | verdict | supports (the world the
    verdict counts for)."""
    evidence = [r for r in rows if r.get("role", "evidence") == "evidence"]
    return table(["exhibit", "claim", "measured (95% CI over seeds)", "verdict", "supports"],
                 [[r["exhibit"], claim_cell(r), measured_html(r["measured"]), r["verdict"],
                   r["world"]] for r in evidence],
                 [r["verdict"].replace(" ", "-") for r in evidence])


def _notes(key: str, ex: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One exhibit's warnings (incomplete, check failed) and its checks, folded."""
    checks = [r for r in rows if r.get("role", "evidence") == "check"]
    lost = ex.get("incomplete", [])
    warn = (f"<p class='warn'>INCOMPLETE: {esc(', '.join(lost))} did not run to the end; "
            "this exhibit's world rests on the remaining claims only.</p>" if lost else "")
    if ex.get("reason"):
        warn += (f"<p class='warn'>CHECK FAILED: {esc(ex['reason'])}. Every claim of this "
                 "exhibit counts as inconclusive.</p>")
    folded = ""
    if checks:
        folded = ("<details><summary>its checks (identities and sanity checks: never "
                  f"evidence): {esc(_checks(ex))}</summary>"
                  + table(["check", "measured", "verdict"],
                          [[claim_cell(r), measured_html(r["measured"]), r["verdict"]]
                           for r in checks], [r["verdict"].replace(" ", "-") for r in checks])
                  + "</details>")
    return (f"<h3>Exhibit {esc(key)}: {esc(ex['title'])}</h3>{warn}"
            f"<p>Measured: <b>{esc(_world(ex))}</b> ({esc(_counts(ex))}). "
            f"The source document's verdict: {esc(ex['seed_verdict'])}.</p>{folded}")


def write_report(rec: Record, out: Path) -> Path:
    """Write ``out/report.html`` for an evidence-suite record; returns its path."""
    d = rec["details"]
    exhibits = d["exhibits"]
    notes = [_notes(key, ex, [r for r in d["table"] if r["exhibit"] == key])
             for key, ex in exhibits.items()]
    summary = table(["exhibit", "measured world", "evidence claims", "checks",
                     "the source document's verdict"],
                    [[f"{k}: {ex['title']}", _world(ex), ex["claims"], _checks(ex),
                      ex["seed_verdict"]] for k, ex in exhibits.items()])
    runs = table(["experiment", "status", "time", "page"],
                 [[r["experiment"], "ok" if r["ok"] else f"{r['status']}: {r['error']}",
                   duration(r["seconds"]), Markup(f'<a href="{esc(r["report"])}">'
                                                  f'{esc(r["report"])}</a>')
                   if r.get("report") else "-"] for r in d["runs"]])
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
<h2>The verdict table</h2>
<p>Each row is one evidence claim; open "rule, literature" under a claim for the rule fixed in
advance, the published figure and the experiment. "supports" is the world the verdict counts
for.</p>{verdict_rows(d["table"])}
<h2>Exhibit by exhibit: warnings and checks</h2>{''.join(notes)}
<h2>Pages per experiment</h2><p>{links}</p>
<h2>Runs</h2>{runs}
{footer(rec)}"""
    path = out / "report.html"
    pages = tuple((r["experiment"], r["report"]) for r in d["runs"] if r["ok"])
    with page_context(suite=None, siblings=pages, current=None):
        html = page("eisbench: features or bugs? The evidence suite", body)
    atomic_write_bytes(path, html.encode())
    return path
