"""The run record (``record.json``): one documented, versioned schema for every experiment.

Schema version 1::

    {
      "schema_version": 1,
      "experiment": "features-vs-bugs",
      "created": "2026-01-01T00:00:00+00:00",       # UTC, ISO 8601
      "config": {...},                               # the resolved, frozen config
      "seeds": [0, 1, 2],
      "git": {"sha": "abc..." | null, "dirty": bool | null},
      "versions": {"python": ..., "torch": ..., "eisbench": ..., ...},
      "device": "cpu",
      "data": {"mnist": "<sha256 of the source file>"},
      "stages": [{"name", "key", "seconds", "cached"}],
      "wall_seconds": 123.4,
      "metrics": {"<name>": {"value": float, "ci95": [lo, hi], "n": int,
                              "higher_is_better": bool,
                              "unit": "seeds (95% t-interval)",      # optional: see Metric
                              "checks": {"<check>": bool | null}}},  # optional: see Metric
      "claims": [{"claim", "rule", "measured", "verdict",     # verdict: reproduced |
                                                               # not reproduced | inconclusive
                  "exhibit", "if_reproduced", "if_not", "literature",
                  "role", "checks"}],                          # optional: see Claim
      "details": {...}                                         # per-seed values, attack specs
    }

Accuracies are fractions in [0, 1]. A metric's ``unit`` says what ``n`` counts and what
``ci95`` is over (seeds, models, trojans, images; t-interval, bootstrap, Wilson); it is set
where the metric is built, never filled in afterwards. Adding it kept the schema at version 1:
it is optional, and older records, which lack it, still read.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from eisbench.core.paths import atomic_write_bytes

SCHEMA_VERSION = 1
VERDICTS = ("reproduced", "not reproduced", "inconclusive")
WORLDS = ("features", "bugs", "inconclusive")
ROLES = ("evidence", "check")  # a check (an identity, a sanity check) is never evidence
EXHIBITS = {  # the exhibits of "features or bugs?" (EIS IX) plus the Distill responses
    "A": "Robustness <-> interpretability",
    "B": "Adversarial transferability",
    "C": "Adversarial training and task performance",
    "D": "Generalisation from training on non-robust features",
    "E": "Genuine non-robust features (bugs)",
    "F": "The superposition perspective",
    "G": "Evidence from the neural tangent kernel",
    "H": "Beyond Lp: frequency and corruptions (Distill responses)",
}


class Metric(TypedDict):
    """A number with its 95% interval over ``n`` units. ``unit`` (optional, a non-empty
    string): what ``n`` counts and what the interval is over, e.g. ``"seeds (95%
    t-interval)"``, ``"graded trojans' models (95% cluster bootstrap)"``, ``"test images
    (Wilson)"``. ``checks`` (optional; on robust accuracies from an attack suite): each sanity
    check's outcome over every evaluation behind the number: False if it failed on any of
    them, None if it never ran, else True."""

    value: float
    ci95: list[float]
    n: int
    higher_is_better: bool
    unit: NotRequired[str]
    checks: NotRequired[dict[str, bool | None]]


class _ClaimCore(TypedDict):
    claim: str
    rule: str
    measured: str
    verdict: str


class Claim(_ClaimCore, total=False):
    """A claim judged by a rule fixed in advance. ``exhibit`` (a key of :data:`EXHIBITS`) and
    the world each outcome supports (``if_reproduced``, ``if_not``: one of :data:`WORLDS`)
    place it in the features-vs-bugs verdict table; ``literature`` is the published figure.
    ``role`` (one of :data:`ROLES`, ``evidence`` when absent): a ``check`` (an identity or a
    sanity check) supports no world, and when it fails it gates its exhibit's evidence.
    ``checks``: the sanity checks of the evaluations behind the claim's numbers (as in
    :class:`Metric`); a failed one made the verdict inconclusive."""

    exhibit: str
    if_reproduced: str
    if_not: str
    literature: str
    role: str
    checks: dict[str, bool | None]


class Record(TypedDict):
    schema_version: int
    experiment: str
    created: str
    config: dict[str, Any]
    seeds: list[int]
    git: dict[str, Any]
    versions: dict[str, str]
    device: str
    data: dict[str, str]
    stages: list[dict[str, Any]]
    wall_seconds: float
    metrics: dict[str, Metric]
    claims: list[Claim]
    details: dict[str, Any]


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """``{"sha", "dirty"}`` of the eisbench source tree (nulls when not in a git checkout)."""
    here = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip() != ""
        return {"sha": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("eisbench", "torch", "numpy", "scipy", "scikit-learn", "safetensors", "captum",
                "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def validate(rec: dict[str, Any]) -> None:
    """Raise ValueError listing every way ``rec`` departs from the schema."""
    problems: list[str] = []
    for key in Record.__annotations__:
        if key not in rec:
            problems.append(f"missing field {key!r}")
    if rec.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version must be {SCHEMA_VERSION}")
    for name, m in rec.get("metrics", {}).items():
        if set(m) - {"checks", "unit"} != {"value", "ci95", "n", "higher_is_better"}:
            problems.append(f"metric {name!r} has fields {sorted(m)}")
            continue
        if "unit" in m and not (isinstance(m["unit"], str) and m["unit"].strip()):
            problems.append(f"metric {name!r} unit {m['unit']!r} is not a non-empty string")
        if "checks" in m and not _checks_ok(m["checks"]):
            problems.append(f"metric {name!r} checks {m['checks']!r} are not a mapping of "
                            "check name to true, false or null")
        v, ci = m["value"], m["ci95"]
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            problems.append(f"metric {name!r} value {v!r} is not a finite number")
        elif not (isinstance(ci, list) and len(ci) == 2 and ci[0] <= v + 1e-9 <= ci[1] + 2e-9):
            problems.append(f"metric {name!r} ci95 {ci!r} does not bracket its value {v}")
        if not (isinstance(m["n"], int) and m["n"] >= 1):
            problems.append(f"metric {name!r} n must be a positive int")
        if "acc" in name.rsplit("/", 1)[-1] and not 0.0 <= v <= 1.0:
            problems.append(f"accuracy {name!r} = {v} is not a fraction in [0,1]")
    for c in rec.get("claims", []):
        if c.get("verdict") not in VERDICTS:
            problems.append(f"claim {c.get('claim')!r} has verdict {c.get('verdict')!r}")
        if "exhibit" in c and c["exhibit"] not in EXHIBITS:
            problems.append(f"claim {c.get('claim')!r} has exhibit {c['exhibit']!r}")
        for k in ("if_reproduced", "if_not"):
            if k in c and c[k] not in WORLDS:
                problems.append(f"claim {c.get('claim')!r} has {k} {c[k]!r}")
        if "role" in c and c["role"] not in ROLES:
            problems.append(f"claim {c.get('claim')!r} has role {c['role']!r}")
        if "checks" in c and not _checks_ok(c["checks"]):
            problems.append(f"claim {c.get('claim')!r} has checks {c['checks']!r}, not a mapping "
                            "of check name to true, false or null")
    if problems:
        raise ValueError("invalid record: " + "; ".join(problems))


def _checks_ok(checks: Any) -> bool:
    """Whether ``checks`` maps check names (str) to True, False or None."""
    return isinstance(checks, dict) and all(
        isinstance(k, str) and (v is None or isinstance(v, bool)) for k, v in checks.items())


def write(rec: Record, path: Path) -> None:
    """Validate and atomically write ``rec`` as JSON."""
    validate(dict(rec))
    atomic_write_bytes(path, json.dumps(rec, indent=2).encode())


def read(path: Path) -> Record:
    rec = json.loads(Path(path).read_text())
    validate(rec)
    out: Record = rec
    return out
