"""The "features or bugs?" evidence suite: every exhibit's experiment, one verdict table.

``eisbench run features-vs-bugs [--quick|--full]`` runs each experiment of
:data:`EXHIBIT_EXPERIMENTS` with its own quick or full preset (same dataset, seeds and device),
writes each one's record and report into ``out/<name>/``, and gathers every claim into one
table, exhibit by exhibit: the claim, what was measured (95% CIs over seeds), the verdict of its
rule (fixed in advance in that experiment's ``judge``), the world it supports and the
literature's figure. An experiment that fails is reported with its error and the others still
run; an interrupted suite resumes from the stage cache.

Each claim says which world it supports if reproduced and if not (``if_reproduced``,
``if_not``). An exhibit's own verdict follows a rule fixed here (:func:`exhibit_world`).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eisbench.core.config import resolve_device, to_plain
from eisbench.core.progress import say
from eisbench.data import DATASETS, DataError
from eisbench.experiments.core import EXPERIMENTS, Experiment, register, report_from
from eisbench.runs import overrides
from eisbench.runs.claims import world
from eisbench.runs.record import (
    EXHIBITS,
    SCHEMA_VERSION,
    Claim,
    Metric,
    Record,
    git_state,
    library_versions,
    now,
)
from eisbench.runs.record import write as write_record
from eisbench.runs.store import Store

EXHIBIT_EXPERIMENTS = ("ilyas", "goh-leakage", "goh-linear", "wallace", "nakkiran", "transfer",
                       "frequency", "tsipras", "superposition", "ntk", "saliency")

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
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "cpu"
    preset: str = "quick"  # quick | full: the preset of every experiment
    experiments: tuple[str, ...] = EXHIBIT_EXPERIMENTS
    # "experiment:key=value" changes to one experiment's preset (as ``eisbench run --set``)
    overrides: tuple[str, ...] = ()


QUICK = EvidenceConfig()
FULL = dataclasses.replace(QUICK, preset="full")


def exhibit_world(worlds: list[str]) -> str:
    """An exhibit's world from its claims' worlds, by a rule fixed in advance: ``features``
    (or ``bugs``) if at least one claim supports it and none supports the other; ``mixed`` if
    both are supported; ``inconclusive`` if neither is."""
    f, b = "features" in worlds, "bugs" in worlds
    if f and b:
        return "mixed"
    return "features" if f else "bugs" if b else "inconclusive"


def _sub_config(exp: Experiment, cfg: EvidenceConfig) -> Any:
    base = exp.full if cfg.preset == "full" else exp.quick
    mine = [o.partition(":")[2] for o in cfg.overrides if o.partition(":")[0] == exp.name]
    return overrides.apply(dataclasses.replace(base, dataset=cfg.dataset,
                                               data_root=cfg.data_root, seeds=cfg.seeds,
                                               device=cfg.device), mine)


def _prefixed(name: str, metrics: dict[str, Metric]) -> dict[str, Metric]:
    stems = (f"{name}/", f"{name.replace('-', '_')}/")
    return {k if k.startswith(stems) else f"{name}/{k}": v for k, v in metrics.items()}


def run(cfg: EvidenceConfig, *, out: Path, store: Store) -> Record:
    """Run every experiment of ``cfg`` into ``out/<name>/``; write the suite's record."""
    if cfg.preset not in ("quick", "full"):
        raise ValueError(f"preset must be quick or full, got {cfg.preset!r}")
    if "features-vs-bugs" in cfg.experiments:
        raise ValueError("the suite cannot contain itself")
    exps = [EXPERIMENTS.get(n) for n in cfg.experiments]  # a typo fails before any work
    resolve_device(cfg.device)  # and so do a missing GPU and an unknown dataset
    DATASETS.get(cfg.dataset)
    for o in cfg.overrides:
        if o.partition(":")[0] not in cfg.experiments or "=" not in o:
            raise ValueError(f"override {o!r}: expected 'experiment:key=value' for one of "
                             f"{', '.join(cfg.experiments)}")
    configs = [_sub_config(e, cfg) for e in exps]  # and so does a bad override
    t0 = time.perf_counter()
    claims: list[Claim] = []
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Metric] = {}
    runs: list[dict[str, Any]] = []
    data: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for i, (exp, sub) in enumerate(zip(exps, configs, strict=True), 1):
        say(f"[{i}/{len(exps)}] {exp.name}: {exp.summary}")
        t = time.perf_counter()
        try:
            rec = exp.run(sub, out=out / exp.name, store=store)
            exp.report(rec, out / exp.name)
        except Exception as e:  # one broken experiment must not lose the others' hours
            # missing data (e.g. no Fashion-MNIST for wallace) is a skip with its remedy
            status = "skipped" if isinstance(e, DataError) else "FAILED"
            runs.append({"experiment": exp.name, "ok": False, "status": status,
                         "seconds": time.perf_counter() - t, "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc(limit=8)})
            say(f"[{i}/{len(exps)}] {exp.name} {status}: {type(e).__name__}: {e}")
            continue
        runs.append({"experiment": exp.name, "ok": True, "status": "ok",
                     "seconds": time.perf_counter() - t, "record": f"{exp.name}/record.json",
                     "report": f"{exp.name}/report.html", "wall_seconds": rec["wall_seconds"]})
        data.update(rec["data"])
        stages += [{**s, "experiment": exp.name} for s in rec["stages"]]
        metrics.update(_prefixed(exp.name, rec["metrics"]))
        for c in rec["claims"]:
            claims.append(c)
            rows.append({"experiment": exp.name, "exhibit": c.get("exhibit", "D"),
                         "claim": c["claim"], "rule": c["rule"], "measured": c["measured"],
                         "verdict": c["verdict"], "world": world(c),
                         "literature": c.get("literature", "")})
    rows.sort(key=lambda r: r["exhibit"])  # stable: experiment order within an exhibit
    exhibits = {}
    for key, title in EXHIBITS.items():
        worlds = [r["world"] for r in rows if r["exhibit"] == key]
        if worlds:
            exhibits[key] = {"title": title, "world": exhibit_world(worlds),
                             "claims": len(worlds),
                             "counts": {w: worlds.count(w)
                                        for w in ("features", "bugs", "inconclusive")},
                             "seed_verdict": SEED_VERDICTS[key]}
    rec_out: Record = {
        "schema_version": SCHEMA_VERSION, "experiment": "features-vs-bugs", "created": now(),
        "config": to_plain(cfg), "seeds": list(cfg.seeds), "git": git_state(),
        "versions": library_versions(), "device": cfg.device, "data": data, "stages": stages,
        "wall_seconds": time.perf_counter() - t0, "metrics": metrics, "claims": claims,
        "details": {"table": rows, "exhibits": exhibits, "runs": runs,
                    "failed": [r["experiment"] for r in runs if r["status"] == "FAILED"],
                    "skipped": [r["experiment"] for r in runs if r["status"] == "skipped"]},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_record(rec_out, out / "record.json")
    return rec_out


register(Experiment(
    name="features-vs-bugs",
    summary="the whole evidence suite (exhibits A-H): every experiment, one verdict table",
    quick=QUICK, full=FULL, run=run, report=report_from("eisbench.report.suite")))
