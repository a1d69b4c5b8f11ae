"""The "features or bugs?" evidence suite: every exhibit's experiment, one verdict table.

``eisbench run features-vs-bugs [--quick|--full]`` runs each experiment of
:data:`EXHIBIT_EXPERIMENTS` with its own quick or full preset (same dataset, seeds and device),
writes each one's record and report into ``out/<name>/``, and gathers every claim into one
table, exhibit by exhibit: the claim, what was measured (95% CIs over seeds), the verdict of its
rule (fixed in advance in that experiment's ``decide``), the world it supports and the
literature's figure. An experiment that fails is reported with its error and the others still
run; an interrupted suite resumes from the stage cache.

Each claim says which world it supports if reproduced and if not (``if_reproduced``,
``if_not``). An exhibit's own verdict follows a rule fixed here (:func:`exhibit_world` over its
evidence, gated by its checks: :func:`judge_exhibit`).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eisbench.core.config import resolve_device
from eisbench.core.progress import duration, say
from eisbench.data import DATASETS, DataError
from eisbench.experiments.core import EXPERIMENTS, Experiment, register, report_from
from eisbench.runs import executor, overrides
from eisbench.runs.claims import world
from eisbench.runs.overrides import root_remedy
from eisbench.runs.page_context import page_context
from eisbench.runs.record import EXHIBITS, Claim, Metric, Record
from eisbench.runs.result import Result
from eisbench.runs.store import Store
from eisbench.runs.validation import check_config as check_fields

EXHIBIT_OF = {"ilyas": "D", "goh-leakage": "D", "goh-linear": "D", "wallace": "D",
              "nakkiran": "E", "transfer": "B", "frequency": "H", "tsipras": "C",
              "superposition": "F", "ntk": "G", "saliency": "A"}
"""The exhibit each experiment's claims belong to (an exhibit whose experiment failed or was
skipped is marked incomplete, whatever its other claims say)."""
EXHIBIT_EXPERIMENTS = tuple(EXHIBIT_OF)

TYPICAL_QUICK_S = {"ilyas": 346.0, "wallace": 107.0, "transfer": 31.0, "tsipras": 28.0,
                   "goh-linear": 27.0, "saliency": 26.0, "goh-leakage": 12.0, "nakkiran": 12.0,
                   "frequency": 12.0, "superposition": 12.0, "ntk": 12.0}
"""Seconds each experiment's quick preset took on MNIST on a 2-core CPU from an empty cache
(``benchmarks/features_vs_bugs_time.py --mode quick``, the README's figures; the five that
took 5-20 s each at 12 s): the shares by which :func:`remaining_seconds` splits the pace the
suite has measured so far."""

# The seed's own verdicts ("Are adversaries features or bugs?", EIS IX), and for the Distill
# responses the discussion's consensus, shown beside the measured ones.
SEED_VERDICTS = {
    "A": "inconclusive",
    "B": "inconclusive",
    "C": "inconclusive",
    "D": "strong evidence for features",
    "E": "neither world is 100% right; somewhat supports features",
    "F": "moderate evidence for features",
    "G": "weak evidence for features",
    "H": "adversarial robustness is one axis of distribution shift (Distill discussion)",
}


@dataclass(frozen=True)
class EvidenceConfig:
    """Which experiments to run, with which of their presets, on which data."""

    dataset: str = "mnist"
    data_root: str | None = None
    seeds: tuple[int, ...] = (1, 2, 3)  # not 0: the saliency rules' pilot seed
    device: str = "cpu"
    preset: str = "quick"  # quick | full: the preset of every experiment
    experiments: tuple[str, ...] = EXHIBIT_EXPERIMENTS
    # "experiment:key=value" changes to one experiment's preset (as ``eisbench run --set``)
    overrides: tuple[str, ...] = ()


QUICK = EvidenceConfig()
FULL = dataclasses.replace(QUICK, preset="full", seeds=tuple(range(1, 17)))
"""Full: 16 seeds, the count ``benchmarks/power.py`` found gives 80% power to refute at the bar
for 19 of the 28 seed-interval rules with a margin (between-seed spreads from a 3-seed quick
MNIST run); the other 9 need more than 20 seeds (or a wider margin), and the report's
intervals say so. With the quick preset's 3 seeds most of those rules rarely refute, so a
quick "inconclusive" is often a matter of seeds."""


def exhibit_world(worlds: list[str]) -> str:
    """An exhibit's world from its claims' worlds, by a rule fixed in advance: ``features``
    (or ``bugs``) if at least one claim supports it and none supports the other; ``mixed`` if
    both are supported; ``inconclusive`` if neither is."""
    f, b = "features" in worlds, "bugs" in worlds
    if f and b:
        return "mixed"
    return "features" if f else "bugs" if b else "inconclusive"


def judge_exhibit(claims: Sequence[Claim]) -> dict[str, Any]:
    """An exhibit's verdict from its judged claims: checks (role ``check``: identities, sanity
    checks) are listed apart and never counted; the evidence's worlds give the exhibit's world
    by :func:`exhibit_world`, unless a check FAILED (verdict ``not reproduced``, or a sanity
    check of the evaluation behind its numbers failed: ``claim["checks"]``): then every
    evidence claim counts as inconclusive and ``reason`` says which check failed.

    Returns ``{"world", "claims" (evidence), "counts", "checks": [{"claim", "verdict"}]}``
    plus ``"reason"`` when a check failed.

    Example:
        >>> judge_exhibit([])["world"]
        'inconclusive'
    """
    evidence = [c for c in claims if c.get("role", "evidence") != "check"]
    checks = [c for c in claims if c.get("role", "evidence") == "check"]
    failed = [c["claim"] for c in checks if c["verdict"] == "not reproduced"
              or False in c.get("checks", {}).values()]
    worlds = ["inconclusive" if failed else world(c) for c in evidence]
    out: dict[str, Any] = {
        "world": exhibit_world(worlds), "claims": len(evidence),
        "counts": {w: worlds.count(w) for w in ("features", "bugs", "inconclusive")},
        "checks": [{"claim": c["claim"], "verdict": c["verdict"]} for c in checks]}
    if failed:
        out["reason"] = "check failed: " + "; ".join(failed)
    return out


def _sub_config(exp: Experiment, cfg: EvidenceConfig) -> Any:
    base = exp.full if cfg.preset == "full" else exp.quick
    mine = [o.partition(":")[2] for o in cfg.overrides if o.partition(":")[0] == exp.name]
    sub = dataclasses.replace(base, dataset=cfg.dataset, data_root=cfg.data_root,
                              seeds=cfg.seeds, device=cfg.device)
    try:
        sub = overrides.apply(sub, mine)
    except ValueError as e:
        raise ValueError(f"{exp.name}: {e}") from None
    return check_fields(sub, name=exp.name)


def _prefixed(name: str, metrics: dict[str, Metric]) -> dict[str, Metric]:
    stems = (f"{name}/", f"{name.replace('-', '_')}/")
    return {k if k.startswith(stems) else f"{name}/{k}": v for k, v in metrics.items()}


def check_config(cfg: EvidenceConfig) -> list[tuple[Experiment, Any]]:
    """Each experiment of ``cfg`` with its config; every mistake (a typo in a name, an override
    of an experiment not in the suite, a missing GPU, an unknown dataset, a value of the wrong
    type or out of its range) fails here, before any work."""
    check_fields(cfg, name="features-vs-bugs")
    if cfg.preset not in ("quick", "full"):
        raise ValueError(f"preset must be quick or full, got {cfg.preset!r}")
    if "features-vs-bugs" in cfg.experiments:
        raise ValueError("the suite cannot contain itself")
    exps = [EXPERIMENTS.get(n) for n in cfg.experiments]
    resolve_device(cfg.device)
    DATASETS.get(cfg.dataset)
    for o in cfg.overrides:
        if o.partition(":")[0] not in cfg.experiments or "=" not in o:
            raise ValueError(f"override {o!r}: expected 'experiment:key=value' for one of "
                             f"{', '.join(cfg.experiments)}")
    return [(e, _sub_config(e, cfg)) for e in exps]


def run_one(exp: Experiment, sub: Any, *, out: Path, store: Store, tag: str
            ) -> tuple[dict[str, Any], Record | None]:
    """Run one experiment into ``out/<name>/`` with its report; a failure is returned as a
    status row (missing data is a skip with its remedy), never raised: one broken experiment
    must not lose the others' hours."""
    say(f"{tag} {exp.name}: {exp.summary}")
    t = time.perf_counter()
    try:
        rec = exp.run(sub, out=out / exp.name, store=store)
        exp.report(rec, out / exp.name)
    except Exception as e:
        status = "skipped" if isinstance(e, DataError) else "FAILED"
        # missing data: the settings of this command that point at it (not the loader's root=)
        text = root_remedy(str(e), sub, prefix=f"overrides={exp.name}:")
        error = f"{type(e).__name__}: {text}"
        say(f"{tag} {exp.name} {status}: {error}")
        return ({"experiment": exp.name, "ok": False, "status": status,
                 "seconds": time.perf_counter() - t, "error": error,
                 "traceback": traceback.format_exc(limit=8)}, None)
    return ({"experiment": exp.name, "ok": True, "status": "ok",
             "seconds": time.perf_counter() - t, "record": f"{exp.name}/record.json",
             "report": f"{exp.name}/report.html", "wall_seconds": rec["wall_seconds"]}, rec)


def _unit(unit: tuple[Experiment, Any, Path, Store, str, dict[str, Any]]
          ) -> tuple[dict[str, Any], Record | None]:
    """One experiment of the suite as a unit of an executor (a plain picklable function: on
    Ray, a task in another process, which sets its own page context)."""
    exp, sub, out, store, tag, page = unit
    with page_context(**page, current=exp.name):
        return run_one(exp, sub, out=out, store=store, tag=tag)


def _lost(name: str, error: BaseException) -> dict[str, Any]:
    """The status row of an experiment whose unit did not return (its worker died)."""
    return {"experiment": name, "ok": False, "status": "FAILED", "seconds": 0.0,
            "error": f"{type(error).__name__}: {str(error)[:2000]}", "traceback": ""}


def table(records: list[tuple[str, Record]], missing: Sequence[str] = ()
          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The verdict table's rows (one per claim, sorted by exhibit, experiment order kept within
    an exhibit; ``role`` tells evidence from checks) and each exhibit's verdict by
    :func:`judge_exhibit`; an exhibit one of whose experiments is in ``missing`` (failed or
    skipped) lists them under ``incomplete``."""
    rows = [{"experiment": name, "exhibit": c.get("exhibit", "D"), "claim": c["claim"],
             "rule": c["rule"], "measured": c["measured"], "verdict": c["verdict"],
             "world": world(c), "role": c.get("role", "evidence"),
             "literature": c.get("literature", "")}
            for name, rec in records for c in rec["claims"]]
    rows.sort(key=lambda r: r["exhibit"])
    exhibits = {}
    for key, title in EXHIBITS.items():
        mine = [c for _, rec in records for c in rec["claims"] if c.get("exhibit", "D") == key]
        lost = [m for m in missing if EXHIBIT_OF.get(m) == key]
        if mine or lost:
            exhibits[key] = {"title": title, **judge_exhibit(mine),
                             "seed_verdict": SEED_VERDICTS[key]}
            if lost:
                exhibits[key]["incomplete"] = lost
    return rows, exhibits


def remaining_seconds(done: Sequence[tuple[str, float]], todo: Sequence[str]) -> float:
    """The seconds the experiments ``todo`` should take at the pace of those ``done``
    ((name, measured seconds)): their :data:`TYPICAL_QUICK_S` times the ratio of the measured
    to the typical seconds so far (1 before any is done), so a full preset, a faster machine
    or a warm cache scale the estimate.

    Example:
        >>> remaining_seconds([("ilyas", 692.0)], ["wallace", "ntk"])  # twice as slow
        238.0
    """
    typical = {n: TYPICAL_QUICK_S.get(n, 12.0) for n in [*(n for n, _ in done), *todo]}
    spent = sum(typical[n] for n, _ in done)
    pace = sum(s for _, s in done) / spent if done and spent > 0 else 1.0
    return pace * sum(typical[n] for n in todo)


def _suite_line(tag: str, row: dict[str, Any], rows: Sequence[dict[str, Any]],
                todo: Sequence[str], elapsed: float) -> str:
    """``"[3/11] wallace ok in 1 min 47 s; suite: 7 min 10 s elapsed, about 3 min left"``."""
    left = remaining_seconds([(r["experiment"], r["seconds"]) for r in rows if r["ok"]], todo)
    rest = f", about {duration(left)} left ({len(todo)} to go)" if todo else ", done"
    return (f"{tag} {row['experiment']} {row['status']} in {duration(row['seconds'])}; "
            f"suite: {duration(elapsed)} elapsed{rest}")


def measure(cfg: EvidenceConfig, *, out: Path, store: Store) -> Result:
    """Run every experiment of ``cfg`` into ``out/<name>/``; gather one verdict table. After
    each experiment one line says the suite's elapsed time and an estimate of what is left
    (:func:`remaining_seconds`)."""
    plan = check_config(cfg)
    names = [exp.name for exp, _ in plan]
    if cfg.preset == "quick":
        say(f"features-vs-bugs: {len(plan)} experiments, typically "
            f"{duration(remaining_seconds([], names))} (quick preset, MNIST, 2 CPU cores, "
            "empty cache)")
    t0 = time.perf_counter()
    pages = tuple((n, f"../{n}/report.html") for n in names)
    page = {"preset": cfg.preset, "dataset": cfg.dataset, "suite": "../report.html",
            "siblings": pages}
    units = [(exp, sub, out, store, f"[{i}/{len(plan)}]", page)
             for i, (exp, sub) in enumerate(plan, 1)]
    finished: list[dict[str, Any]] = []

    def on_done(i: int, result: tuple[dict[str, Any], Record | None]) -> None:
        finished.append(result[0])
        todo = [n for n in names if n not in {r["experiment"] for r in finished}]
        say(_suite_line(f"[{len(finished)}/{len(plan)}]", result[0], finished, todo,
                        time.perf_counter() - t0))

    ex = executor.current()
    results = ex.map(_unit, units, num_gpus=executor.gpus_for(cfg.device), on_done=on_done,
                     on_error=lambda i, e: (_lost(plan[i][0].name, e), None))
    runs = [row for row, _ in results]
    done = [(exp.name, rec) for (exp, _), (_, rec) in zip(plan, results, strict=True)
            if rec is not None]
    rows, exhibits = table(done, [r["experiment"] for r in runs if not r["ok"]])
    metrics: dict[str, Metric] = {}
    data: dict[str, str] = {}
    for name, rec in done:
        metrics.update(_prefixed(name, rec["metrics"]))
        data.update(rec["data"])
    return Result(
        metrics=metrics, claims=[c for _, rec in done for c in rec["claims"]],
        details={"table": rows, "exhibits": exhibits, "runs": runs,
                 "failed": [r["experiment"] for r in runs if r["status"] == "FAILED"],
                 "skipped": [r["experiment"] for r in runs if r["status"] == "skipped"],
                 "executor": ex.describe()},
        data=data, stages=[{**s, "experiment": name} for name, rec in done for s in rec["stages"]])


register(Experiment(
    name="features-vs-bugs",
    summary="the whole evidence suite (exhibits A-H): every experiment, one verdict table",
    quick=QUICK, full=FULL, measure=measure, report=report_from("eisbench.report.suite")))
