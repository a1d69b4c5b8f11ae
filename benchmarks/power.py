"""How many seeds each evidence-suite rule needs: a power analysis of the rules of one or more
``features-vs-bugs`` runs, on the between-seed spread those runs measured.

``features-vs-bugs`` writes one ``record.json`` per experiment under its ``--out`` folder. For
each, this script replays the experiment's ``decide`` (as this source tree has it) on the
record's metrics and records every ``decide_metric`` call: the metric, its bar and margin. For a
metric whose 95% interval is a t-interval over seeds (``unit`` "seeds ..."), the between-seed sd
comes back from the half-width, t_{n-1} sd / sqrt(n), and
:func:`eisbench.core.stats.seeds_needed` gives the seeds with which the rule refutes (the
interval ends short of bar + margin; bar - margin where lower values reproduce) with 80% power
when the true mean sits exactly on the bar. A table row per (claim, rule) says whether today's n
reaches it; the end gives the seeds a full preset needs to cover every seed-interval rule, and
the same without the rules that need more than ``--limit`` (listed).

What is read, and how:

- A half-width clipped at a range bound (``metric_over_seeds`` clips to [lower, upper]) is read
  from the longer side; when that side ends on -1, 0 or 1 too, the sd is a lower bound ("≥").
- A rule on the gap of two seed metrics (``decide_against(*gap(metrics, a, b), ...)``) has the
  interval [a_lo - b_hi, a_hi - b_lo]; it is analysed with sd_a + sd_b, which errs towards more
  seeds ("≤": the need is at most that).
- Preconditions (the argument of ``needed``, the second of ``provided``) are listed, not
  counted: their refutation never becomes the claim's.
- Intervals over other units (images, bootstrap replicates, trojans) are listed as "interval
  over <unit>: not a seed count" and not counted; so are rules with margin <= 0, which no
  number of seeds refutes at the bar.

    python benchmarks/power.py RUN_FOLDER [RUN_FOLDER ...] [--power 0.8] [--limit 20] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from _common import supplied
from scipy import stats

import eisbench.runs.claims as C
from eisbench.core.stats import seeds_needed

BOUNDS = (-1.0, 0.0, 1.0)  # where metric_over_seeds clips an interval


class _Traced(str):
    """A verdict returned by a recorded rule, carrying that rule's index."""

    call: int


@dataclasses.dataclass
class _Tape:
    """The rules one ``decide`` called and the claims that used them."""

    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    claims: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    gaps: dict[tuple[float, float, float], tuple[str, str]] = dataclasses.field(
        default_factory=dict)
    pending: list[int] = dataclasses.field(default_factory=list)
    touched: list[int] = dataclasses.field(default_factory=list)

    def add(self, verdict: str, **call: Any) -> _Traced:
        call["role"] = "rule"
        self.calls.append(call)
        self.pending.append(len(self.calls) - 1)
        out = _Traced(verdict)
        out.call = len(self.calls) - 1
        return out

    def touch(self, *verdicts: object, role: str | None = None) -> None:
        for v in verdicts:
            if isinstance(v, _Traced):
                self.touched.append(v.call)
                if role:
                    self.calls[v.call]["role"] = role


@contextmanager
def recording(tape: _Tape) -> Iterator[None]:
    """Replace the rule helpers of :mod:`eisbench.runs.claims`, in every eisbench module that
    imported them, by recording wrappers; restored on exit."""
    orig = {k: getattr(C, k) for k in ("decide_metric", "decide_against", "gap", "make_claim",
                                       "needed", "provided", "conjunction", "unanimous")}

    def decide_metric(metrics: Any, name: str, *, bar: float, margin: float,
                      higher_means_reproduced: bool = True) -> str:
        v = orig["decide_metric"](metrics, name, bar=bar, margin=margin,
                                  higher_means_reproduced=higher_means_reproduced)
        return tape.add(v, metrics=(name,), bar=bar, margin=margin,
                        higher=higher_means_reproduced)

    def decide_against(value: float, lo: float, hi: float, *, bar: float, margin: float,
                       higher_means_reproduced: bool = True) -> str:
        v = orig["decide_against"](value, lo, hi, bar=bar, margin=margin,
                                   higher_means_reproduced=higher_means_reproduced)
        return tape.add(v, metrics=tape.gaps.get((value, lo, hi), ()), bar=bar, margin=margin,
                        higher=higher_means_reproduced, interval=(value, lo, hi))

    def gap(metrics: Any, a: str, b: str) -> tuple[float, float, float]:
        out: tuple[float, float, float] = orig["gap"](metrics, a, b)
        tape.gaps[out] = (a, b)
        return out

    def make_claim(**kw: Any) -> Any:
        tape.touch(kw.get("verdict"))
        tape.claims.append({"claim": kw["claim"], "role": kw.get("role", "evidence"),
                            "touched": set(tape.touched), "pending": list(tape.pending)})
        tape.pending, tape.touched = [], []
        return orig["make_claim"](**kw)

    def needed(v: str) -> str:
        tape.touch(v, role="precondition")
        return str(orig["needed"](v))

    def provided(v: str, precondition: str) -> str:
        tape.touch(v)
        tape.touch(precondition, role="precondition")
        return str(orig["provided"](v, precondition))

    def conjunction(*vs: str) -> str:
        tape.touch(*vs)
        return str(orig["conjunction"](*vs))

    def unanimous(*vs: str) -> str:
        tape.touch(*vs)
        return str(orig["unanimous"](*vs))

    new: dict[str, Callable[..., Any]] = {
        "decide_metric": decide_metric, "decide_against": decide_against, "gap": gap,
        "make_claim": make_claim, "needed": needed, "provided": provided,
        "conjunction": conjunction, "unanimous": unanimous}
    with ExitStack() as stack:
        for mod_name, mod in list(sys.modules.items()):
            if not mod_name.startswith("eisbench") or mod is None:
                continue
            for k, f in orig.items():
                # claims' own decide_metric calls its decide_against: keep that one unrecorded
                if getattr(mod, k, None) is f and not (mod is C and k in ("decide_against",
                                                                          "gap")):
                    stack.enter_context(mock.patch.object(mod, k, new[k]))
        yield


def seed_sd(m: dict[str, Any]) -> tuple[float, bool] | str:
    """``(sd, is_lower_bound)`` of a metric over seeds from its t-interval, or why not."""
    unit, n = str(m.get("unit", "")), int(m.get("n", 0))
    if not unit.startswith("seeds"):
        return f"interval over {unit or 'an unnamed unit'}: not a seed count"
    if n < 2:
        return "one seed: no interval to read an sd from"
    v, (lo, hi) = float(m["value"]), m["ci95"]
    below, above = v - lo, hi - v
    half = max(below, above)
    longer_end = lo if below >= above else hi
    clipped = abs(below - above) > 1e-9 * max(1.0, abs(v))
    lower_bound = (clipped and longer_end in BOUNDS) or (lo in BOUNDS and hi in BOUNDS
                                                         and lo < v < hi)
    return half * math.sqrt(n) / float(stats.t.ppf(0.975, n - 1)), lower_bound


def analyse(tape: _Tape, metrics: dict[str, Any], *, power: float,
            max_n: int) -> list[dict[str, Any]]:
    """One row per (claim, rule): the seeds the rule needs and whether today's n has them."""
    users: dict[int, list[int]] = {}
    for j, c in enumerate(tape.claims):
        for i in c["touched"]:
            users.setdefault(i, []).append(j)
    for j, c in enumerate(tape.claims):  # a rule no claim's verdict showed: the next claim's
        for i in c["pending"]:
            users.setdefault(i, [j])
    rows = []
    for i, call in enumerate(tape.calls):
        names = list(call["metrics"])
        row: dict[str, Any] = {"metric": " - ".join(names) or "(an interval computed in decide)",
                               "bar": call["bar"], "margin": call["margin"],
                               "higher_reproduces": call["higher"], "role": call["role"],
                               "n": None, "value": None, "sd": None, "bound": "",
                               "need": None, "reached": None, "counted": False, "note": ""}
        sds = [seed_sd(metrics[k]) for k in names]
        ns = {int(metrics[k]["n"]) for k in names}
        row["n"] = min(ns, default=None)
        row["value"] = call["interval"][0] if "interval" in call else metrics[names[0]]["value"]
        if not names:
            row["note"] = "interval not traced to metrics: not analysed"
        elif any(isinstance(s, str) for s in sds):
            row["note"] = next(s for s in sds if isinstance(s, str))
        elif len(ns) > 1:
            row["note"] = f"gap of metrics over different seed counts {sorted(ns)}"
        else:
            pairs = [s for s in sds if not isinstance(s, str)]
            row["n"], row["sd"] = ns.pop(), sum(s for s, _ in pairs)
            low, gap = any(b for _, b in pairs), len(names) > 1
            row["bound"] = "~" if low and gap else "≥" if low else "≤" if gap else ""
            if call["role"] != "rule":
                row["note"] = "precondition: its refutation never becomes the claim's"
            elif call["margin"] <= 0:
                row["note"] = "margin <= 0: no number of seeds refutes at the bar"
            else:
                row["need"] = seeds_needed(row["sd"], call["margin"], power=power, max_n=max_n)
                row["reached"] = row["need"] is not None and row["n"] >= row["need"]
                row["counted"] = True
        for j in users.get(i, [-1]):
            c = tape.claims[j] if j >= 0 else {"claim": "(no claim)", "role": ""}
            rows.append({**row, "claim": c["claim"], "claim_role": c["role"]})
    used = {j for js in users.values() for j in js}
    rows += [{"claim": c["claim"], "claim_role": c["role"], "metric": "-", "note":
              "no interval rule", "role": "", "counted": False, "n": None, "value": None,
              "sd": None, "bar": None, "margin": None, "higher_reproduces": True}
             for j, c in enumerate(tape.claims) if j not in used]
    return rows


def run_folder(run: Path, *, power: float, max_n: int) -> list[dict[str, Any]]:
    """Rows of every experiment record under ``run``."""
    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in run.iterdir() if (p / "record.json").exists()):
        rec = json.loads((folder / "record.json").read_text())
        name = rec["experiment"]
        mod = importlib.import_module("eisbench.experiments." + name.replace("-", "_"))
        decide = getattr(mod, "decide", None)
        base = {"run": str(run), "experiment": name}
        if decide is None:
            rows.append({**base, "error": "no decide"})
            continue
        tape = _Tape()
        try:
            kw = supplied(decide, mod, rec)
            with recording(tape):
                claims = decide(rec["metrics"], **kw)
        except Exception as e:  # a record this tree's rules cannot read
            rows.append({**base, "error": f"{type(e).__name__}: {e}"})
            continue
        recorded = {c["claim"]: c["verdict"] for c in rec["claims"]}
        changed = {c["claim"] for c in claims if recorded.get(c["claim"], c["verdict"])
                   != c["verdict"]}
        rows += [{**base, **r, "verdict_changed": r["claim"] in changed}
                 for r in analyse(tape, rec["metrics"], power=power, max_n=max_n)]
    return rows


def summary(rows: list[dict[str, Any]], *, limit: int, max_n: int) -> dict[str, Any]:
    """The seeds that cover every counted rule, and without those needing more than ``limit``."""
    counted = [r for r in rows if r.get("counted")]
    needs = [r["need"] for r in counted]
    over = [r for r in counted if r["need"] is None or r["need"] > limit]
    within = [n for n in needs if n is not None and n <= limit]
    n_min = min((r["n"] for r in counted), default=None)
    factor = None if n_min is None else [  # 95% interval of true sd / estimated sd
        math.sqrt((n_min - 1) / float(stats.chi2.ppf(q, n_min - 1))) for q in (0.975, 0.025)]
    return {"rules_counted": len(counted), "fewest_seeds": n_min, "sd_factor_95": factor,
            "seeds_for_all": None if None in needs else max(needs, default=None),
            "seeds_for_all_note": f"more than {max_n}" if None in needs else "",
            "seeds_within_limit": max(within, default=None), "limit": limit,
            "over_limit": [{k: r[k] for k in ("experiment", "claim", "metric", "need")}
                           for r in over],
            "not_refutable": [{k: r[k] for k in ("experiment", "claim", "metric", "margin")}
                              for r in rows if str(r.get("note", "")).startswith("margin")]}


def _g(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict[str, Any]], s: dict[str, Any], *, power: float) -> None:
    pct = f"{power:.0%}"
    print(f"| experiment | claim | metric | n | value | sd | bar | margin | seeds for {pct} "
          "power to refute at the bar | today's n reaches it |\n|---|---|---|---|---|---|---|"
          "---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['experiment']} | (could not judge: {r['error']}) | | | | | | | | |")
            continue
        claim = (r["claim"][:60] + (" [check]" if r["claim_role"] == "check" else "")
                 + (" (precondition)" if r["role"] == "precondition" else ""))
        sign = "" if r["higher_reproduces"] else " (lower reproduces)"
        bar = "-" if r["bar"] is None else f"{r['bar']:g}{sign}"
        if r["counted"]:
            need = (r["bound"] + str(r["need"]) if r["need"] is not None
                    else f"more than {s.get('max_n', 100)}")
            reached = "yes" if r["reached"] else "no"
        else:
            need, reached = r["note"], "-"
        sd = "-" if r["sd"] is None else r["bound"] + format(r["sd"], ".3g")
        print(f"| {r['experiment']} | {claim} | {r['metric']} | {_g(r['n'], 'd')} | "
              f"{_g(r['value'], '.3f')} | {sd} | {bar} | {_g(r['margin'], 'g')} | "
              f"{need} | {reached} |")
    print(f"\nRules counted (seed intervals, margin > 0, not preconditions): "
          f"{s['rules_counted']}")
    every = s["seeds_for_all"] if s["seeds_for_all"] is not None else s["seeds_for_all_note"]
    print(f"Seeds a full preset needs for {pct} power on every counted rule: {every}")
    print(f"Seeds it needs without the rules that need more than {s['limit']}: "
          f"{_g(s['seeds_within_limit'], 'd')}")
    for r in s["over_limit"]:
        print(f"- over {s['limit']}: {r['experiment']}: {r['claim'][:60]} ({r['metric']}): "
              + (str(r["need"]) if r["need"] is not None else "more than the maximum"))
    for r in s["not_refutable"]:
        print(f"- margin {r['margin']:g}, not refutable at the bar: {r['experiment']}: "
              f"{r['claim'][:60]} ({r['metric']})")
    for claim in dict.fromkeys((r["experiment"], r["claim"]) for r in rows
                               if r.get("verdict_changed")):
        print(f"- the record's verdict differs from this tree's rules: {claim[0]}: "
              f"{claim[1][:60]} (bars and margins above are this tree's)")
    if s["sd_factor_95"]:
        lo, hi = s["sd_factor_95"]
        print(f"\nEach sd is itself estimated from as few as {s['fewest_seeds']} seeds: the true "
              f"sd lies within {lo:.2f}x to {hi:.2f}x the estimate (95%, chi-square), and the "
              "seeds needed grow about with its square: read the needs as estimates.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="--out folders of features-vs-bugs runs")
    ap.add_argument("--power", type=float, default=0.8, help="power to refute at the bar")
    ap.add_argument("--limit", type=int, default=20, help="seeds a preset could afford")
    ap.add_argument("--max-n", type=int, default=100, help="most seeds searched")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    a = ap.parse_args()
    os.environ.setdefault("EISBENCH_QUIET", "1")
    per_run = {str(r): run_folder(r, power=a.power, max_n=a.max_n) for r in a.runs}
    every = [row for rows in per_run.values() for row in rows]
    total = summary(every, limit=a.limit, max_n=a.max_n) | {"max_n": a.max_n}
    if a.json:
        print(json.dumps({"power": a.power, "rows": every, "summary": total}, default=str))
        return 0
    for run, rows in per_run.items():
        print(f"# {run}: seeds each rule needs ({a.power:.0%} power to refute a true mean on "
              "the bar, two-sided 95% t-interval)\n")
        print_table(rows, summary(rows, limit=a.limit, max_n=a.max_n) | {"max_n": a.max_n},
                    power=a.power)
        print()
    if len(per_run) > 1:
        print(f"# All {len(per_run)} runs together\n")
        every_need = total["seeds_for_all"] or total["seeds_for_all_note"]
        print(f"Seeds for every counted rule: {every_need}; without those over {a.limit}: "
              f"{_g(total['seeds_within_limit'], 'd')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
