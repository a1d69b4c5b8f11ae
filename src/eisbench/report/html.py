"""Self-contained HTML reports: the page template (Jinja2, ``templates/``), escaped tables,
embedded PNG figures with alt text, the provenance table and the verdict table.

Units on the pages: accuracies (and other shares) are shown as percentages with one decimal
(``86.1%``) in tables and sentences, via :func:`pct` and :func:`measured_html`; records keep
fractions in [0, 1]. Page structure: navigation (back to the suite, sibling experiments) and a
banner naming the preset come from :mod:`eisbench.runs.page_context`; a report module builds
its body from :func:`header` (provenance), its own fragments and :func:`footer` (the machine
details, collapsed), then :func:`page`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
from markupsafe import Markup

from eisbench.core.progress import duration
from eisbench.runs.page_context import current

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CSS = """*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222;
line-height:1.4}
table{border-collapse:collapse;margin:1em 0;max-width:100%}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;
overflow-wrap:break-word}.nw{white-space:nowrap}.tok{overflow-wrap:anywhere}
th{background:#f3f3f3}.reproduced{background:#dff5df}
.not-reproduced{background:#f9dede}.inconclusive{background:#fff4cc}
code,pre{background:#f6f6f6;padding:2px 4px}pre{overflow-x:auto;white-space:pre-wrap}
img{max-width:100%;height:auto}.warn{color:#a00000}
nav{padding:.4em 0;border-bottom:1px solid #ddd;font-size:.95em}nav a,nav b{margin-right:.8em}
.banner{padding:.5em .8em;border-left:4px solid #888;background:#f4f4f4}
.banner.quick{border-color:#d08700;background:#fff6e0}.banner.full{border-color:#2a7a2a}
table.provenance th{width:9em}details>summary{cursor:pointer;color:#345}
td details{margin-top:.3em;font-size:.9em}.measured{white-space:normal}"""

_TEMPLATES = Path(__file__).parent / "templates"


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True)


def render(template: str, **values: Any) -> str:
    """Render ``templates/<template>`` (autoescaped; pass :class:`Markup` for HTML)."""
    return _env().get_template(template).render(**values)


def plain(x: Any) -> str:
    """``x`` as text for a reader: a mapping as ``"k v, k v"`` (never a printed dict).

    Example:
        >>> plain({"l2": 0, "linf": {"eps": 0.3}})
        'l2 0, linf (eps 0.3)'
    """
    if isinstance(x, Mapping):
        return ", ".join(f"{k} " + (f"({plain(v)})" if isinstance(v, Mapping) else plain(v))
                         for k, v in x.items())
    return str(x)


def esc(x: Any) -> str:
    """``x`` as escaped HTML text (mappings as :func:`plain` text);
    :class:`markupsafe.Markup` passes through as HTML."""
    if isinstance(x, Markup):
        return str(x)
    return html.escape(plain(x))


def pct(x: float | None, *, digits: int = 1) -> str:
    """A fraction as a percentage: ``pct(0.8612) == '86.1%'``; None gives ``'-'``."""
    return "-" if x is None else f"{100 * x:.{digits}f}%"


_TAG = re.compile(r"<[^>]*>")
SHORT = 14  # a column whose every cell is at most this many characters never wraps
PAGE_PX = 1000  # the width a table may take in the 1100 px page (margins, borders)
LONG_TOKEN = 28  # a cell with a word longer than this may break inside it (hashes)


def _text(x: Any) -> str:
    """What a cell shows, without tags (for the width of its column)."""
    return html.unescape(_TAG.sub(" ", esc(x)))


def ci_cell(m: Mapping[str, Any], *, share: bool = True) -> str:
    """A metric's value and 95% CI for a table cell: accuracies and other shares in percent
    with one decimal (``'86.1% [84.0, 88.0]'``), other quantities with three decimals."""
    v, (lo, hi) = m["value"], m["ci95"]
    if share:
        return f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def is_share(key: str) -> bool:
    """Whether a metric key names an accuracy or another share (shown in percent)."""
    return _is_share(key)


def _breakable(x: Any) -> str:
    """Escaped text that may wrap after ``_``, ``/`` and ``-`` (metric keys as headers)."""
    if isinstance(x, Markup):
        return str(x)
    return re.sub(r"([_/-])(?=\w)", r"\1<wbr>", esc(x))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]],
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped unless they are :class:`markupsafe.Markup`.

    Columns of short cells (verdicts, roles, counts, numbers: at most ``SHORT`` characters)
    get ``class="nw"`` and never wrap; other cells wrap between words, after ``_``, ``/`` and ``-``
    (metric keys); only a cell with a word longer than ``LONG_TOKEN`` characters even so (a
    hash, a cache key) may break anywhere inside it."""
    texts = [[_text(c) for c in r] for r in rows]
    ncol = max([len(header), *(len(r) for r in rows)])
    cols = [[t[j] for t in texts if j < len(t)] for j in range(ncol)]
    short = [bool(c) and all(len(x) <= SHORT for x in c) for c in cols]

    def width(j: int) -> float:  # a rough estimate in px at 16 px system-ui
        words = [len(w) for x in cols[j] for w in (x if short[j] else x).split()] or [0]
        return 8.5 * (max(map(len, cols[j]), default=0) if short[j] else max(words)) + 18

    # a wide table keeps nowrap only where it fits: first unwrap the widest spaced columns
    for j in sorted(range(ncol), key=width, reverse=True):
        if sum(map(width, range(ncol))) <= PAGE_PX:
            break
        if short[j] and any(" " in x.strip() for x in cols[j]):
            short[j] = False

    def cls(j: int, text: str) -> str:
        if short[j]:
            return ' class="nw"'
        parts = re.split(r"[\s_/-]+", text)
        return ' class="tok"' if any(len(w) > LONG_TOKEN for w in parts) else ""

    head = "".join(f"<th>{_breakable(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes else ""
        body.append(f"<tr{rc}>" + "".join(f"<td{cls(j, texts[i][j])}>{_breakable(c)}</td>"
                                          for j, c in enumerate(r)) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _default_alt(fig: Figure) -> str:
    """The figure's suptitle, else its axes' titles, else their axis labels."""
    suptitle = getattr(fig, "_suptitle", None)  # matplotlib keeps it private
    sup = suptitle.get_text() if suptitle is not None else ""
    titles = [t for ax in fig.axes if (t := ax.get_title())]
    labels = [f"{ax.get_ylabel()} against {ax.get_xlabel()}" for ax in fig.axes
              if ax.get_xlabel() and ax.get_ylabel()]
    parts = [sup] if sup else titles or labels
    return "; ".join(dict.fromkeys(parts)) or "figure"


def figure(fig: Figure, alt: str | None = None) -> str:
    """Embed ``fig`` as a base64 PNG <img> and close it. ``alt``: the image's text for screen
    readers and broken images; default: the figure's suptitle, axes titles or axis labels."""
    text = alt if alt is not None else _default_alt(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return (f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" '
            f'alt="{esc(text)}">')


def legend_outside(ax: Any, **kwargs: Any) -> None:
    """A legend right of the axes, clear of bars and ticks, at a readable 9 pt."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, borderaxespad=0.0,
              **kwargs)


def legend_below(ax: Any, *, ncol: int = 1, **kwargs: Any) -> None:
    """A legend under the axes (below the x label), clear of the data, at 9 pt."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=9, ncol=ncol,
              borderaxespad=0.0, **kwargs)


def page(title: str, body: str) -> str:
    """The whole page: ``templates/base.html.j2`` around ``body`` (trusted HTML), with the
    navigation and preset banner of :func:`eisbench.runs.page_context.current`."""
    return render("base.html.j2", title=title, body=Markup(body), css=Markup(CSS),
                  ctx=current())


_MEASURED = re.compile(r"(?P<key>[A-Za-z_][\w/.\-=]*) = (?P<v>-?\d+(?:\.\d+)?) "
                       r"\[(?P<lo>-?\d+(?:\.\d+)?), (?P<hi>-?\d+(?:\.\d+)?)\]")


def _words(key: str) -> str:
    """A metric key in words: the experiment's prefix dropped, the settings before a colon,
    ``eta`` as η: ``'tsipras/synthetic/eps=2eta/std_acc'`` -> ``'synthetic, eps = 2η: std
    acc'``; ``'D_R/std_acc'`` -> ``'D_R std acc'``."""
    parts = [p for p in key.split("/") if p]
    if len(parts) >= 3:
        parts = parts[1:]

    def word(p: str) -> str:
        p = re.sub(r"(\d)eta\b", "\\1η", p)
        p = p if p[:2] == "D_" else p.replace("_", " ")
        return p.replace("=", " = ")

    if len(parts) >= 3 or "=" in "".join(parts[:-1]):
        return ", ".join(map(word, parts[:-1])) + ": " + word(parts[-1])
    return " ".join(map(word, parts))


def _is_share(key: str) -> bool:
    return bool(re.search(r"acc|rate|frac|success|agreement|share", key))


def measured_html(text: str) -> Markup:
    """A claim's ``measured`` string for a reader: each ``key = v [lo, hi]`` becomes the key in
    words with its 95% CI, accuracies and other shares in percent; parts joined by ``;`` go on
    separate lines.

    Example:
        >>> str(measured_html("D_R/std_acc = 0.861 [0.84, 0.88]; gap = 0.1 [0.0, 0.2]"))
        'D_R std acc 86.1% (95% CI 84.0–88.0%)<br>gap 0.100 (95% CI 0.000–0.200)'
    """
    def one(m: re.Match[str]) -> str:
        v, lo, hi = (float(m[k]) for k in ("v", "lo", "hi"))
        if _is_share(m["key"]) and all(-1.0 <= x <= 1.0 for x in (v, lo, hi)):
            shown = f"{100 * v:.1f}% (95% CI {100 * lo:.1f}–{100 * hi:.1f}%)"
        else:
            shown = f"{v:.3f} (95% CI {lo:.3f}–{hi:.3f})"
        return f"\x00{_words(m['key'])}\x01 {shown}"

    parts = [esc(_MEASURED.sub(one, p.strip())).replace("\x00", "").replace("\x01", "")
             for p in text.split(";") if p.strip()]
    return Markup("<br>".join(parts))


def _rule_details(c: Mapping[str, Any]) -> str:
    bits = [f"<b>Rule (fixed in advance):</b> {esc(c['rule'])}"]
    if c.get("literature"):
        bits.append(f"<b>Literature:</b> {esc(c['literature'])}")
    for k, label in (("if_reproduced", "if reproduced, supports"),
                     ("if_not", "if not, supports")):
        if c.get(k):
            bits.append(f"<b>{label}:</b> {esc(c[k])}")
    if c.get("experiment"):
        bits.append(f"<b>Experiment:</b> {esc(c['experiment'])}")
    return "<details><summary>rule, literature</summary>" + "<br>".join(bits) + "</details>"


def claim_cell(c: Mapping[str, Any]) -> Markup:
    """The claim in words, with its rule and literature one click away."""
    return Markup(f"{esc(c['claim'])}{_rule_details(c)}")


def verdict_table(claims: Sequence[Mapping[str, Any]]) -> str:
    """The claims of a record, one row each, coloured by verdict: claim (rule and literature
    folded under it) | measured (95% CI) | verdict | role; a check (identity, sanity check)
    is never evidence."""
    return table(["claim", "measured (95% CI)", "verdict", "role"],
                 [[claim_cell(c), measured_html(c["measured"]), c["verdict"],
                   "check" if c.get("role") == "check" else "evidence"] for c in claims],
                 [c["verdict"].replace(" ", "-") for c in claims])


def provenance_rows(rec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The record's provenance as ``(label, text)`` rows: never a printed dict."""
    data = rec.get("data") or {}
    shown = [f"{name} (sha256 {str(h)[:12]}…)" if h else str(name) for name, h in data.items()]
    cfg = rec.get("config") or {}
    if not shown and cfg.get("dataset"):
        shown = [str(cfg["dataset"])]
    seeds = list(rec.get("seeds") or [])
    git = rec.get("git") or {}
    sha = git.get("sha")
    dirty = git.get("dirty")
    git_text = ("unknown (not a git checkout)" if not sha else str(sha)[:10] + (
        " (with uncommitted changes)" if dirty else " (clean)" if dirty is False else ""))
    preset = current().preset or cfg.get("preset")
    rows = [("data", ", ".join(shown) or "-"),
            ("seeds", f"{', '.join(map(str, seeds))} ({len(seeds)} seed"
                      f"{'s' if len(seeds) != 1 else ''})" if seeds else "-"),
            ("device", str(rec.get("device", "-"))),
            ("code", f"git {git_text}"),
            ("wall time", duration(float(rec.get("wall_seconds", 0.0)))),
            ("preset", str(preset) if preset else "not recorded")]
    if rec.get("created"):
        rows.append(("run at", str(rec["created"]).replace("T", " ")[:19] + " UTC"))
    return rows


def header(rec: Mapping[str, Any]) -> str:
    """Provenance table: data and short hash, seeds, device, git sha and dirty flag, wall
    time, preset."""
    return render("provenance.html.j2", rows=provenance_rows(rec))


def footer(rec: Mapping[str, Any]) -> str:
    """Every hyper-parameter, library version and stage (with its cache key), collapsed in a
    ``<details>`` at the bottom of the page."""
    versions = table(["library", "version"],
                     [[k, v] for k, v in (rec.get("versions") or {}).items()])
    stages = (table(["stage", "seconds", "cached", "key"],
                    [[s["name"], f"{s['seconds']:.1f}", "yes" if s.get("cached") else "no",
                      s["key"]] for s in rec["stages"]]) if rec.get("stages") else "")
    return render("machine.html.j2", config=json.dumps(rec.get("config", {}), indent=2),
                  versions=Markup(versions), stages=Markup(stages))


def accuracy_bars(labels: Sequence[str], metrics: Sequence[Mapping[str, Any]], *,
                  chance: float, title: str, literature: Sequence[float | None] = (),
                  literature_label: str = "literature") -> str:
    """Bars of accuracy metrics (mean and 95% CI, in %) with a chance line and, where given,
    the literature's figure as a diamond; the legend sits right of the axes."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    vals = [m["value"] * 100 for m in metrics]
    err = [[(m["value"] - m["ci95"][0]) * 100 for m in metrics],
           [(m["ci95"][1] - m["value"]) * 100 for m in metrics]]
    ax.bar(range(len(labels)), vals, yerr=err, capsize=3, color="#4c72b0", label="measured")
    shown = False
    for i, lit in enumerate(literature):
        if lit is not None:
            ax.plot([i], [lit * 100], marker="D", color="#dd8452", linestyle="",
                    label=None if shown else literature_label)
            shown = True
    ax.axhline(chance * 100, color="gray", linestyle="--", label="chance")
    ax.set_xticks(range(len(labels)), list(labels), fontsize=9, rotation=15, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    legend_outside(ax)
    ax.set_title(title, fontsize=10)
    return figure(fig, alt=f"{title}: bars of test accuracy (%) for "
                           + ", ".join(f"{lab} {v:.1f}%" for lab, v in zip(labels, vals,
                                                                          strict=True)))
