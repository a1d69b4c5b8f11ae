"""The D_R recipe ladder (``eisbench.experiments.ilyas_ladder``): run its rungs, then print which
rung moves D_R's robust accuracy over rung (a), with the robust source's own robust accuracy
beside it, by the rule pre-registered in rules 6 (``ilyas.ladder.*``).

Each rung is an ``ilyas`` preset run into ``OUT/<rung>``; a rung whose folder already holds a
``record.json`` is read, not re-run (so the ladder resumes, and ``--judge-only`` judges records
made by ``eisbench run ilyas --preset dr-X --out OUT/dr-X``). Every rung shares the stage cache,
so rungs reuse the stages below them that their ingredient leaves unchanged.

    python benchmarks/dr_ladder.py --out runs/dr-ladder                  # dr-a..dr-e on a CPU
    python benchmarks/dr_ladder.py --out runs/dr-ladder --rungs dr-a dr-f-paper --device cuda
    python benchmarks/dr_ladder.py --out /tmp/ladder --seeds 1 --set n_train=2000 \\
        --set n_construct=200 --set n_test=1000 --set n_test_robust=100 --set n_checks=50

Prints one row per rung and writes ``OUT/ladder.json`` (the rows and the ladder's claims).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CPU_RUNGS = ("dr-a", "dr-b", "dr-c", "dr-d", "dr-e")
SAYS = {"reproduced": "moves", "not reproduced": "does not move", "inconclusive": "inconclusive"}


def main() -> int:
    import eisbench
    from eisbench.experiments.ilyas_ladder import RUNGS, judge_ladder, ladder_rows

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rungs", nargs="+", choices=RUNGS, default=list(CPU_RUNGS))
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="KEY=VALUE applied to every rung (as eisbench run --set)")
    p.add_argument("--judge-only", action="store_true", help="read the records, run nothing")
    args = p.parse_args()
    if "dr-a" not in args.rungs:
        p.error("the ladder is judged against dr-a: include it in --rungs")
    records, seconds = {}, {}
    for rung in [r for r in RUNGS if r in args.rungs]:
        saved = args.out / rung / "record.json"
        if not saved.exists():
            if args.judge_only:
                p.error(f"no record at {saved}")
            t0 = time.perf_counter()
            eisbench.run("ilyas", rung, out=args.out / rung, seeds=args.seeds,
                         device=args.device, overrides=args.overrides)
            seconds[rung] = time.perf_counter() - t0
        records[rung] = json.loads(saved.read_text())
    rows = ladder_rows(records)
    for r in rows:
        took = f"  ({seconds[r['rung']]:.0f} s)" if r["rung"] in seconds else ""
        print(f"{r['rung']:<11} {r['adds']}{took}\n    {r['D_R robust']}; {r['standard robust']};"
              f" {r['source robust']}\n    attack: {r['attack']}")
        if r["verdict"]:
            print(f"    shift of D_R's robust gain over dr-a: {r['shift over dr-a']} -> "
                  f"{SAYS[r['verdict']]}")
    claims = judge_ladder(records)
    (args.out / "ladder.json").write_text(json.dumps(
        {"rows": rows, "claims": claims, "seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
