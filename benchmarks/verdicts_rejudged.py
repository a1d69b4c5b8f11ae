"""Re-judge one evidence-suite run under the rules of another source tree: the verdict table
before and after a change of rules, on the same measurements.

``features-vs-bugs`` writes one ``record.json`` per experiment under its ``--out`` folder. This
script loads each, calls the ``decide`` of that experiment as a given source tree has it (a
subprocess with ``PYTHONPATH=TREE/src``, so the tree's own rules and exhibit logic judge), and
prints every claim's verdict and each exhibit's world side by side for two trees. The numbers
are the same on both sides; only the rules differ. A tree whose ``decide`` cannot read a
record (a metric it expects is missing) says so for that experiment.

    git worktree add /tmp/eis_before <commit>
    python benchmarks/verdicts_rejudged.py RUN_FOLDER --before /tmp/eis_before --after .
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

JUDGE = r'''
import importlib, json, sys
from pathlib import Path

sys.path.insert(0, sys.argv[2])  # benchmarks/: _common.supplied, the arguments of each decide
from _common import supplied

run = Path(sys.argv[1])
from eisbench.experiments import suite as S
out = {"experiments": {}, "exhibits": {}}
records = []
for folder in sorted(p for p in run.iterdir() if (p / "record.json").exists()):
    rec = json.loads((folder / "record.json").read_text())
    name = rec["experiment"]
    mod = importlib.import_module("eisbench.experiments." + name.replace("-", "_"))
    decide = getattr(mod, "decide", None)
    if decide is None:
        out["experiments"][name] = {"error": "no decide"}
        continue
    try:
        claims = decide(rec["metrics"], **supplied(decide, mod, rec))
    except Exception as e:
        out["experiments"][name] = {"error": f"{type(e).__name__}: {e}"}
        continue
    pilot = getattr(mod, "pilot_check", None)  # a check of the seeds scored, outside decide
    if pilot is not None:
        claims = [pilot(tuple(rec["config"]["seeds"])), *claims]
    out["experiments"][name] = {"claims": [
        {"claim": c["claim"], "verdict": c["verdict"], "exhibit": c.get("exhibit", "D"),
         "role": c.get("role", "evidence")} for c in claims]}
    records.append((name, {"claims": claims}))
_, exhibits = S.table(records)
out["exhibits"] = {k: {"world": v["world"], "reason": v.get("reason", "")}
                   for k, v in exhibits.items()}
print(json.dumps(out))
'''


def judge(tree: Path, run: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve() / "src"), "EISBENCH_QUIET": "1"}
    p = subprocess.run([sys.executable, "-c", JUDGE, str(run), str(Path(__file__).parent)],
                       env=env, capture_output=True, text=True, check=False)
    if p.returncode:
        sys.exit(f"judging under {tree} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the --out folder of a features-vs-bugs run")
    ap.add_argument("--before", type=Path, required=True, help="source tree of the old rules")
    ap.add_argument("--after", type=Path, default=Path("."), help="source tree of the new ones")
    a = ap.parse_args()
    b, c = judge(a.before, a.run), judge(a.after, a.run)
    print(f"# {a.run}: rules of {a.before} (before) and {a.after} (after), same measurements")
    print("\n| exhibit | before | after |\n|---|---|---|")
    for k in sorted(set(b["exhibits"]) | set(c["exhibits"])):
        x, y = b["exhibits"].get(k, {}), c["exhibits"].get(k, {})
        print(f"| {k} | {x.get('world', '-')} | {y.get('world', '-')}"
              + (f" ({y['reason']})" if y.get("reason") else "") + " |")
    print("\n| experiment | claim | before | after |\n|---|---|---|---|")
    changed = 0
    for name in sorted(set(b["experiments"]) | set(c["experiments"])):
        x, y = b["experiments"].get(name, {}), c["experiments"].get(name, {})
        if "error" in x or "error" in y:
            print(f"| {name} | (could not judge) | {x.get('error', 'ok')} | "
                  f"{y.get('error', 'ok')} |")
            continue
        old = {cl["claim"]: cl for cl in x["claims"]}
        for cl in y["claims"]:
            before = old.get(cl["claim"], {}).get("verdict", "(new claim)")
            mark = "" if before == cl["verdict"] else " **changed**"
            changed += bool(mark)
            role = " [check]" if cl["role"] == "check" else ""
            print(f"| {name} | {cl['claim'][:80]}{role} | {before} | {cl['verdict']}{mark} |")
        for claim in set(old) - {cl["claim"] for cl in y["claims"]}:
            print(f"| {name} | {claim[:80]} | {old[claim]['verdict']} | (claim removed) |")
    print(f"\n{changed} claim verdicts changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
