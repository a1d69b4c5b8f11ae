"""Side-by-side runs of eisbench and a peer on one model: interleaved, timed, their forward and
backward passes counted at the model (:func:`eisbench.attacks.count_passes`, which counts the
peer's calls alike), medians and ratios measured in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from eisbench.attacks import count_passes


@dataclass
class Measured:
    """One run: what it returned, its wall time, its passes of the model (in examples) and the
    load average when it ended."""

    output: Any
    seconds: float
    forward: int
    backward: int
    load: str


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:  # not Linux
        return "n/a"


def interleave(model: torch.nn.Module, runs: dict[str, Callable[[], Any]], *, repeats: int,
               say: Callable[[str], None] = print) -> dict[str, list[Measured]]:
    """Run each of ``runs`` ``repeats`` times, the order rotating each round (a, b, c; b, c,
    a; ...) so that each meets the same load; each run timed and its passes of ``model``
    counted."""
    names = list(runs)
    out: dict[str, list[Measured]] = {k: [] for k in names}
    for r in range(repeats):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            with count_passes(model) as p:
                t0 = time.perf_counter()
                res = runs[k]()
                dt = time.perf_counter() - t0
            out[k].append(Measured(res, dt, p.forward, p.backward, loadavg()))
            say(f"  round {r + 1}/{repeats} {k}: {dt:.1f} s, {p.forward} forward / "
                f"{p.backward} backward passes; load {out[k][-1].load}")
    return out


def medians(runs: list[Measured], per: int) -> dict[str, Any]:
    """Median seconds and passes of repeated runs, the passes also per example (``per``)."""
    f = statistics.median(m.forward for m in runs)
    b = statistics.median(m.backward for m in runs)
    return {"median_s": statistics.median(m.seconds for m in runs),
            "times_s": [round(m.seconds, 3) for m in runs], "forward": f, "backward": b,
            "forward_per_example": f / per if per else None,
            "backward_per_example": b / per if per else None,
            "loads": [m.load for m in runs]}


def ratios(peer: dict[str, Any], ours: dict[str, Any]) -> dict[str, float | None]:
    """peer / eisbench for the median time, forward and backward passes (> 1: eisbench did
    less)."""
    def q(key: str) -> float | None:
        return peer[key] / ours[key] if ours[key] else None
    return {"time": q("median_s"), "forward": q("forward"), "backward": q("backward")}


def table(rows: dict[str, dict[str, Any]], *, per_label: str, base: str) -> list[str]:
    """Lines: each row's passes (total and per example), median time, then each other row's
    ratios to ``base``."""
    w = max(len(k) for k in rows) + 2
    lines = [f"{'':<{w}}{'forward':>10}{'backward':>10}{'fwd/' + per_label:>12}"
             f"{'bwd/' + per_label:>12}{'median s':>10}"]
    for k, r in rows.items():
        fe, be = r["forward_per_example"], r["backward_per_example"]
        lines.append(f"{k:<{w}}{r['forward']:>10.0f}{r['backward']:>10.0f}"
                     f"{'-' if fe is None else f'{fe:.1f}':>12}"
                     f"{'-' if be is None else f'{be:.1f}':>12}{r['median_s']:>10.2f}")
    for k, r in rows.items():
        if k != base:
            q = ratios(r, rows[base])
            lines.append(f"ratio {k} / {base}: " + ", ".join(
                f"{name} {'-' if v is None else f'{v:.2f}x'}" for name, v in q.items()))
    return lines
