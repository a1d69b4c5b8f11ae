"""Mutation testing of the algorithm packages with mutmut: which share of mutants do the tests kill?

Target: >= 85% killed per package (attacks, construct, evaluation, tools, edit). Not run in CI.

mutmut 3 (``pip install -c constraints.txt -e .[mutation]``) copies the code to ``mutants/``,
writes each function's mutants (an operator swapped, a constant changed, an argument dropped...)
next to it behind a trampoline, runs the selected tests once to record which tests call which
function, then runs each mutant against those tests only (``pytest -x``, one forked process each).
It skips decorated functions, and most algorithms here are registered by decorator
(``@ATTACKS.register("pgd")``, ``@CHECKS.register``, ``@torch.no_grad``). So each package gets a
folder ``mutants/by-package/<package>/`` with a copy of ``src`` in which the package's
module-level ``@d def f`` become ``def f`` + ``f = (d)(f)`` (the same module, by Python's
definition of decoration) and links to ``tests`` and ``pyproject.toml``; ``--keep-decorators``
measures mutmut's stock behaviour. mutmut's config (``[tool.mutmut]`` in pyproject.toml) is
narrowed to that package and to the files of ``TESTS``: the unit, contract and wrong-algorithm
tests that import it. Experiment-level tests that also reach it are left out for time, so the
killed share counts the mapped tests only; ``--all-tests`` takes the whole suite instead (its
single-process run, ~6 min on 2 cores, then precedes each package's mutants).

Columns: mutants in the package; mutants run (all, or a seeded uniform sample of ``--sample N``);
their verdicts. killed share = (killed + timeout) / run, where a mutant no selected test calls
("no tests"), a suspicious or a crashed one (other) counts as not killed. Its interval is the
Wilson 95% interval over the run mutants (a sample: over the package's mutants; all: over
mutants as draws of plausible bugs). Target met: the interval's lower end >= 85% for a sample
(below the upper end: not met, else inconclusive); the share itself for a full run. Surviving
mutants and their diffs go to ``--survivors`` (default ``mutants/mutation_survivors.txt``).
Verdicts are recomputed on each run (fresh call map); ``--resume`` keeps the previous ones.
Every survivor is then re-run against the package's whole test selection (:func:`recheck`):
mutmut's call map misses tests that read a session-scoped fixture another test built, so a
survivor may still be killed. The share with those kills is printed beside mutmut's, with its
own verdict; the table and the target's verdict are mutmut's alone.

    python benchmarks/mutation.py --list
    python benchmarks/mutation.py --packages construct --max-children 1
    python benchmarks/mutation.py --packages evaluation --sample 40 --seed 0
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants" / "by-package"
PACKAGES = ("attacks", "construct", "evaluation", "tools", "edit")
TARGET = 0.85
DETECTED = ("killed", "timeout")
SHOWN = ("killed", "survived", "timeout", "suspicious", "no tests")
UNDECIDED = ("not checked", "check was interrupted by user")
TESTS: dict[str, tuple[str, ...]] = {
    "attacks": ("test_attacks", "test_apgd", "test_fmn", "test_square", "test_construct",
                "test_evaluation", "test_wrong_algorithms", "test_registry",
                "test_mutants_attacks", "test_mutants_attacks_steps",
                "test_mutants_attacks_defaults", "test_pass_counting"),
    "construct": ("test_construct", "test_wrong_algorithms", "test_registry"),
    "evaluation": ("test_evaluation", "test_wrong_algorithms", "test_registry", "test_api",
                   "test_mutants_evaluation_checks", "test_mutants_evaluation_suite",
                   "test_mutants_evaluation_robustness"),
    "tools": ("test_tools_contract", "test_attribution", "test_feature_tools",
              "test_trigger_reconstruction", "test_edit", "test_edit_ablation", "test_edit_lat",
              "test_edit_methods", "test_api", "test_mutants_tools_core",
              "test_mutants_tools_attribution", "test_mutants_tools_feature_vis",
              "test_mutants_tools_triggers", "test_mutants_tools_patches",
              "test_mutants_tools_feature_adversary"),
    "edit": ("test_edit", "test_edit_ablation", "test_edit_lat", "test_edit_methods",
             "test_edit_bench", "test_training", "test_wrong_algorithms",
             "test_mutants_edit_metrics", "test_mutants_edit_ablation", "test_mutants_edit_lat",
             "test_mutants_edit_unlearn"),
}
INSTALL_HINT = "mutmut is missing: .venv/bin/pip install -c constraints.txt -e '.[mutation]'"


def test_selection(package: str, *, all_tests: bool) -> list[str]:
    """pytest arguments selecting the tests mutants of ``package`` are run against."""
    return ["tests"] if all_tests else [f"tests/{name}.py" for name in TESTS[package]]


# --- worker: runs inside mutants/by-package/<package>/, never imports eisbench itself ----------

def _worker(args: argparse.Namespace) -> int:
    """Generate (and with ``run``, test) one package's mutants; write their verdicts as JSON."""
    try:
        import mutmut.__main__ as mm
        from mutmut.configuration import config
        from mutmut.mutation.data import SourceFileMutationData
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        from mutmut.mutation.trampoline import set_mutant_under_test
        from mutmut.stats import status_by_exit_code
        from mutmut.utils.file_utils import walk_mutatable_files
    except ImportError:
        sys.exit(INSTALL_HINT)
    selection = json.loads(Path(args.names_file).read_text())
    cfg = config()
    cfg.only_mutate = [f"src/eisbench/{args.package}/*"]
    cfg.pytest_add_cli_args_test_selection = test_selection(args.package, all_tests=args.all_tests)
    if args.timeout_factor is not None:
        cfg.timeout_multiplier = args.timeout_factor
    if args.worker == "generate":
        set_mutant_under_test("mutant_generation")
        Path("mutants").mkdir(exist_ok=True)
        mm.copy_src_dir()
        mm.copy_also_copy_files()
        mm.setup_source_paths()
        mm.create_mutants(args.max_children)
    else:
        names = selection["todo"]
        for path in walk_mutatable_files():  # forget old verdicts: an interrupted run resumes here
            data = SourceFileMutationData(path=path)
            data.load()
            data.exit_code_by_key.update({n: None for n in names if n in data.exit_code_by_key})
            data.save()
        if names:
            mm._run(names, args.max_children)
    show = set(selection["chosen"])
    verdicts: dict[str, dict[str, Any]] = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            status = status_by_exit_code[code]
            diff = (get_diff_for_mutant(name, path=path)
                    if name in show and status not in DETECTED else "")
            verdicts[name] = {"status": status, "duration": data.durations_by_key.get(name),
                              "file": str(path), "diff": diff}
    Path(args.out).write_text(json.dumps(verdicts))
    return 0


# --- driver --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One package's line of the table."""

    package: str
    total: int
    counts: dict[str, int]
    wall_s: float
    ran: int  # mutants tested by this invocation (fewer than run with --resume)
    mutant_s: float  # their summed test time
    rechecked: int = 0  # survivors killed when re-run against every mapped test file

    @property
    def run(self) -> int:
        return sum(self.counts.values())

    def share(self, *, recheck: bool = False) -> tuple[float, float, float] | None:
        """killed share and its Wilson 95% interval (``recheck``: counting the survivors the
        re-check killed), or None when nothing was run."""
        from eisbench.core.stats import wilson_ci

        if self.run == 0:
            return None
        detected = sum(self.counts.get(s, 0) for s in DETECTED)
        detected += self.rechecked if recheck else 0
        return detected / self.run, *wilson_ci(detected, self.run)

    def verdict(self, *, recheck: bool = False) -> str:
        s = self.share(recheck=recheck)
        if s is None:
            return "n/a"
        p, lo, hi = s
        if self.run == self.total:
            return "met" if p >= TARGET else "not met"
        return "met" if lo >= TARGET else "not met" if hi < TARGET else "inconclusive"


_children: list[subprocess.Popen[bytes]] = []


def _stop_children() -> None:
    for proc in _children:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the worker and every mutant process it forked
    for proc in _children:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _children.clear()


def _on_signal(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _call_worker(action: str, package: str, args: argparse.Namespace, *,
                 todo: Sequence[str] = (), chosen: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Every mutant's verdict after running ``todo`` (diffs for ``chosen``); log: <action>.log"""
    work = WORK / package
    names_file, out = work / "selection.json", work / f"{action}.json"
    names_file.write_text(json.dumps({"todo": list(todo), "chosen": list(chosen)}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", action, "--package", package,
           "--names-file", str(names_file), "--out", str(out),
           "--max-children", str(args.max_children)]
    cmd += ["--all-tests"] if args.all_tests else []
    if args.timeout_factor is not None:
        cmd += ["--timeout-factor", str(args.timeout_factor)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", EISBENCH_QUIET="1")
    with open(work / f"{action}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        _children.append(proc)
        code = proc.wait()
        _children.remove(proc)
    if code != 0:  # e.g. "failed to collect stats": a selected test fails on the unmutated code
        last = (work / f"{action}.log").read_text(errors="replace").strip().rpartition("\n")[2]
        raise RuntimeError(f"mutmut {action} for {package} failed (exit {code}: {last!r}); see "
                           f"{(work / f'{action}.log').relative_to(ROOT)}")
    return dict(json.loads(out.read_text()))


def undecorate(source: str) -> str:
    """``@a @b def f`` at module level -> ``def f`` then ``f = (a)((b)(f))`` right after it.

    Example:
        >>> print(undecorate("@R.register('x')\\ndef f():\\n    return 1\\n"), end="")
        <BLANKLINE>
        def f():
            return 1
        f = (R.register('x'))(f)
    """
    lines = source.splitlines(keepends=True)
    for node in reversed(ast.parse(source).body):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.decorator_list:
            continue
        call = node.name
        for deco in reversed(node.decorator_list):
            call = f"({ast.get_source_segment(source, deco)})({call})"
        end = node.end_lineno or node.lineno
        lines.insert(end, f"{node.name} = {call}\n")
        first = node.decorator_list[0].lineno - 1
        lines[first:node.lineno - 1] = ["\n"] * (node.lineno - 1 - first)
    return "".join(lines)


def _prepare(package: str, *, resume: bool, keep_decorators: bool) -> None:
    """The package's mutmut folder: a fresh copy of src (undecorated) and links to the rest."""
    work = WORK / package
    work.mkdir(parents=True, exist_ok=True)
    for name in ("tests", "pyproject.toml"):
        if not (work / name).is_symlink():
            (work / name).symlink_to(ROOT / name)
    src = work / "src"
    if src.is_symlink():
        src.unlink()
    elif src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for path in sorted((src / "eisbench" / package).rglob("*.py")):
        text = path.read_text()  # rewritten, so newer than its mutants: mutmut regenerates them
        path.write_text(text if keep_decorators else undecorate(text))
    if not resume:  # a fresh map of which test calls which function
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)


def _select(names: list[str], *, sample: int, seed: int) -> list[str]:
    names = sorted(names)
    return sorted(random.Random(seed).sample(names, sample)) if 0 < sample < len(names) else names


def run_package(package: str, args: argparse.Namespace,
                survivors: list[tuple[str, dict[str, Any]]]) -> Row:
    """Generate, select and run one package's mutants; append its survivors."""
    start = time.perf_counter()
    _prepare(package, resume=args.resume, keep_decorators=args.keep_decorators)
    print(f"{package}: generating mutants", flush=True)
    generated = _call_worker("generate", package, args)
    if args.list:
        files = {v["file"] for v in generated.values()}
        functions = {name.partition("__mutmut_")[0] for name in generated}
        print(f"{package}: {len(generated)} mutants in {len(functions)} functions, "
              f"{len(files)} files", flush=True)
        return Row(package, len(generated), {}, time.perf_counter() - start, 0, 0.0)
    chosen = _select(list(generated), sample=args.sample, seed=args.seed)
    todo = [n for n in chosen if not args.resume or generated[n]["status"] in UNDECIDED]
    print(f"{package}: running {len(todo)} of {len(generated)} mutants against "
          f"{' '.join(test_selection(package, all_tests=args.all_tests))}", flush=True)
    verdicts = _call_worker("run", package, args, todo=todo, chosen=chosen)
    counts = Counter(verdicts[n]["status"] for n in chosen
                     if verdicts[n]["status"] not in UNDECIDED)
    alive = [n for n in chosen if verdicts[n]["status"] == "survived"]
    print(f"{package}: re-checking {len(alive)} survivors against every mapped test file",
          flush=True)
    killed = recheck(package, alive, all_tests=args.all_tests, workers=args.max_children)
    survivors += [(n, verdicts[n] | ({"status": "survived mutmut, killed on re-check"}
                                     if n in killed else {}))
                  for n in chosen if verdicts[n]["status"] not in (*DETECTED, *UNDECIDED)]
    mutant_s = sum(verdicts[n]["duration"] or 0.0 for n in todo)
    return Row(package, len(generated), dict(counts), time.perf_counter() - start, len(todo),
               mutant_s, rechecked=len(killed))


RECHECK_TIMEOUT_S = 900


def recheck(package: str, names: Sequence[str], *, all_tests: bool, workers: int) -> set[str]:
    """The surviving mutants ``names`` that fail a test when the package's whole test selection
    runs against them (``MUTANT_UNDER_TEST``; a timeout counts as a kill, as in mutmut).

    mutmut runs a mutant only against the tests its call map links to the function, and it
    builds that map by recording calls per test: a call made while a session-scoped fixture is
    built is credited to the first test that asked for it, so later tests that read the
    fixture's result never run against the mutant. Seen on the seed-8 sample (evaluation:
    ``evaluate_robustness`` without its ``control`` survived; the fixture's other reader kills
    it). Added after that sample had been measured: reported beside mutmut's share, not in it.
    """
    work = WORK / package / "mutants"
    env = dict(os.environ, PYTHONPATH="src", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               EISBENCH_QUIET="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           *test_selection(package, all_tests=all_tests)]

    def fails(name: str) -> bool:
        try:
            rc = subprocess.run(cmd, cwd=work, env=env | {"MUTANT_UNDER_TEST": name},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=RECHECK_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            return True
        return rc == 1  # a test failed (2-5: interrupted, internal or usage error, no tests)

    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        return {n for n, dead in zip(names, pool.map(fails, names), strict=True) if dead}


def _estimate_full_s(row: Row, max_children: int) -> float | None:
    """Full-package wall time: the measured fixed cost + the mean mutant time x all mutants."""
    if row.ran == 0:
        return None
    fixed = max(row.wall_s - row.mutant_s / max_children, 0.0)
    return fixed + row.mutant_s / row.ran * row.total / max_children


def print_table(rows: list[Row], max_children: int) -> None:
    head = (f"{'package':<11}{'mutants':>8}{'run':>6}{'killed':>7}{'surv':>6}{'tmout':>6}"
            f"{'susp':>6}{'no-tst':>7}{'other':>6}  {'killed share [95% CI]':<24}{'target':>7}"
            f"  {'verdict':<13}{'wall s':>7}{'full s~':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        other = r.run - sum(r.counts.get(s, 0) for s in SHOWN)
        s = r.share()
        share = "-" if s is None else f"{s[0]:.1%} [{s[1]:.1%}, {s[2]:.1%}]"
        est = _estimate_full_s(r, max_children)
        print(f"{r.package:<11}{r.total:>8}{r.run:>6}" + "".join(
            f"{r.counts.get(k, 0):>{w}}" for k, w in zip(SHOWN, (7, 6, 6, 6, 7), strict=True))
            + f"{other:>6}  {share:<24}{TARGET:>7.0%}  {r.verdict():<13}{r.wall_s:>7.0f}"
            + f"{'-' if est is None else f'{est:.0f}':>8}")


def write_survivors(path: Path, survivors: list[tuple[str, dict[str, Any]]]) -> None:
    """Every mutant no test killed, with its diff: each is a test to write (atomic write)."""
    parts = [f"# {len(survivors)} mutants not killed (mutmut 3.8.1; "
             "`cd mutants/by-package/<package> && mutmut show NAME` shows one again)\n"]
    for name, v in survivors:
        parts.append(f"\n## {name}: {v['status']}\n{v['diff']}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(parts))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packages", nargs="+", choices=PACKAGES, default=list(PACKAGES))
    p.add_argument("--sample", type=int, default=0, help="mutants per package (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument("--max-children", type=int, default=len(os.sched_getaffinity(0)),
                   help="mutants tested at once (default: the cores)")
    p.add_argument("--timeout-factor", type=float, default=None,
                   help="mutmut's timeout_multiplier: a mutant times out after this many times "
                        "(its tests' clean time + 1 s); mutmut's default 15")
    p.add_argument("--list", action="store_true", help="count mutants per package, run none")
    p.add_argument("--all-tests", action="store_true", help="the whole suite for every package")
    p.add_argument("--keep-decorators", action="store_true",
                   help="leave decorated functions decorated (mutmut then skips them)")
    p.add_argument("--resume", action="store_true",
                   help="keep verdicts and the call map of the previous run")
    p.add_argument("--survivors", type=Path, default=ROOT / "mutants" / "mutation_survivors.txt")
    p.add_argument("--worker", choices=("generate", "run"), help=argparse.SUPPRESS)
    p.add_argument("--package", help=argparse.SUPPRESS)
    p.add_argument("--names-file", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    try:
        import mutmut
    except ImportError:
        sys.exit(INSTALL_HINT)

    for sig in (signal.SIGINT, signal.SIGTERM):  # also where SIGINT starts out ignored
        signal.signal(sig, _on_signal)
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} usable cores (os.cpu_count {os.cpu_count()}), load average "
          f"{os.getloadavg()[0]:.2f}; mutmut {mutmut.__version__}; max children "
          f"{args.max_children}; sample {args.sample or 'all'} (seed {args.seed})", flush=True)
    start = time.perf_counter()
    rows: list[Row] = []
    survivors: list[tuple[str, dict[str, Any]]] = []
    failed: list[str] = []
    try:
        for package in args.packages:
            try:
                rows.append(run_package(package, args, survivors))
            except RuntimeError as e:  # the other packages still run
                print(e, file=sys.stderr)
                failed.append(package)
    except KeyboardInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        _stop_children()
        print("\ninterrupted: mutant processes stopped; partial verdicts stay in "
              "mutants/by-package/; the same command with --resume continues", file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    if args.list:
        print(json.dumps({"mutants": {r.package: r.total for r in rows}, "wall_s": round(wall)}))
        return 1 if failed else 0
    print()
    print_table(rows, args.max_children)
    print("killed share = (killed + timeout) / run; no-tests, suspicious and other "
          "(crash, skipped) count as not killed. full s~: estimated wall time of all mutants.")
    for r in rows:
        s = r.share(recheck=True)
        if s is not None:
            print(f"{r.package}: with the {r.rechecked} survivors killed on re-check (every "
                  f"mapped test file): {s[0]:.1%} [{s[1]:.1%}, {s[2]:.1%}], "
                  f"{r.verdict(recheck=True)}")
    write_survivors(args.survivors, survivors)
    print(f"{len(survivors)} surviving mutants with diffs: {args.survivors}")
    print(f"wall time {wall:.0f} s on {cores} cores (load average now {os.getloadavg()[0]:.2f})")
    print(json.dumps({
        "cores": cores, "max_children": args.max_children, "sample": args.sample,
        "seed": args.seed, "all_tests": args.all_tests, "wall_s": round(wall, 1),
        "packages": {r.package: {"mutants": r.total, "run": r.run, "counts": r.counts,
                                 "killed_share": r.share(), "verdict": r.verdict(),
                                 "rechecked": r.rechecked,
                                 "killed_share_rechecked": r.share(recheck=True),
                                 "verdict_rechecked": r.verdict(recheck=True),
                                 "wall_s": round(r.wall_s, 1)} for r in rows}, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
