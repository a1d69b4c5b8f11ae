"""Prove that a change to eisbench's source keeps every stage cache key and every metric.

The proof drives only the command line (``python -m eisbench.cli ...``), so the same script runs
against any two source trees, e.g. the commit before a reorganisation and the one after:

1. ``run`` executes every experiment, every benchmark, the evidence suite (two cheap experiments)
   and ``train`` + ``audit`` on the 8x8 digits with tiny settings (the ones the tests use), each
   as a subprocess with ``PYTHONPATH=TREE/src`` and a fresh ``EISBENCH_HOME`` per item, and
   writes one folder per item under ``--out``;
2. ``compare`` loads every ``record.json`` of two such folders (matched by relative path), drops
   what legitimately changes from run to run (``created``, ``wall_seconds``, ``git``,
   ``versions``, any key named ``time`` or ending in ``seconds`` or ``_s``, the peak resident
   memory ``peak_rss_*``; the run folder's own path inside strings) and compares the rest
   recursively: stage names and cache keys, metrics, claims, details, config. Floats must be
   equal exactly unless ``--tol`` says otherwise. It also compares the trained checkpoint byte
   for byte.

Every item runs with a fixed number of intra-op threads (``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS``, ``--threads``, default 1): with one thread two runs of the same code give
bitwise identical records; float reductions may be ordered differently with another thread
count, so compare folders made with the same ``--threads`` (``run.json`` records it and
``compare`` warns if the two differ).

Usage (from the repository root; ``git worktree add /tmp/eis_before <commit>`` for the old tree)::

    python benchmarks/record_compare.py run --src /tmp/eis_before --out /tmp/records_before
    python benchmarks/record_compare.py run --src . --out /tmp/records_after
    python benchmarks/record_compare.py compare /tmp/records_before /tmp/records_after

``run`` exits 1 if an item failed; ``compare`` exits 0 only if every record matches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Sets = tuple[str, ...]

# Tiny settings, translated from the end-to-end tests into --set lines.
_TRAIN_TINY = ("epochs=3", "lr=0.005")
ILYAS: Sets = (
    "n_construct=120", "n_test_robust=60",
    *(f"std_train.{s}" for s in _TRAIN_TINY),
    *(f"robust_train.{s}" for s in _TRAIN_TINY),
    "robust_train.eps=0.1", "robust_train.alpha=none", "robust_train.eps_warmup_epochs=0",
    *(f"fresh_train.{s}" for s in _TRAIN_TINY),
    "inversion_steps=5", "wrong_label_steps=5", "eval_attack.eps=0.05", "eval_attack.steps=3",
    "n_checks=30",
)
WALLACE: Sets = (
    "foreign=fashion-mnist", "foreign_root={out}/foreign", "n_weak=100", "n_construct=100",
    "n_foreign=2000", "std_train.epochs=5", "std_train.lr=0.005", "fresh_train.epochs=5",
    "fresh_train.lr=0.005", "weak_train.epochs=1", "weak_train.lr=0.001",
)
NAKKIRAN: Sets = (
    "n_train=none", "n_construct=300", "ensemble=2", "heldout=2", "train.epochs=5",
    "train.lr=0.003", "fresh_train.epochs=10", "fresh_train.lr=0.003", "eps=1.5", "steps=20",
    "step_size=0.1875", "squares.side=8", "squares.n_train=16", "squares.n_test=200",
    "squares.train.epochs=150", "squares.attack.steps=10", "squares.attack.restarts=1",
)
TRANSFER: Sets = (
    "n_construct=300", "n_target_train=600", "std_train.epochs=6", "std_train.lr=0.005",
    "target_train.epochs=6", "target_train.lr=0.005", "det_train.epochs=6", "det_train.lr=0.005",
    "wrong_label_eps=2.0", "wrong_label_steps=20", "wrong_label_step_size=0.2", "n_attack=120",
    "transfer_steps=10", "transfer_step_size=0.4",
)
FREQUENCY: Sets = (
    "n_construct=100", *(f"std_train.{s}" for s in _TRAIN_TINY),
    *(f"robust_train.{s}" for s in _TRAIN_TINY), "robust_train.eps=0.1",
    "robust_train.alpha=0.125", "robust_train.eps_warmup_epochs=0", "filter_train.epochs=10",
    "filter_train.lr=0.005", "n_filter_train=1000", "n_filter_test=none", "n_corrupt=200",
    "n_fourier=60", "fourier_stride=1", "fourier_seeds=1",
)
TSIPRAS: Sets = (
    "syn_d=50", "syn_p=0.9", "syn_n_train=2000", "syn_n_test=2000", "syn_eps=0.0,0.5,1.0,2.0",
    "syn_steps=200", "syn_pgd_n=500", "n_train=none", "n_test=none", "n_test_robust=60",
    "train_eps=0.0,0.1", "std_train.epochs=5", "adv_train.epochs=5",
    "adv_train.eps_warmup_epochs=0", "eval_eps=0.05", "n_checks=30",
)
SUPERPOSITION: Sets = (
    "n_robust=50", "n_checks=20", "shallow_width=64", "train.epochs=6", "fmn_steps=15",
    "scales=0.5,3.0",
)
NTK: Sets = (
    "classes=3,7", "width=16", "n_features=8", "n_test_robust=40", "steps=5", "eps=0.1",
    "n_show=0,1,7", "memory_gib=0.1",
)
SALIENCY: Sets = (
    "n_construct=100", "std_train.epochs=6", "std_train.lr=0.005", "robust_train.epochs=8",
    "robust_train.lr=0.01", "robust_train.eps=0.1", "robust_train.alpha=none",
    "robust_train.eps_warmup_epochs=0", "input_grad_train.epochs=6", "input_grad_train.lr=0.005",
    "input_grad_train.grad_reg=1.0", "n_input_grad_train=1000", "eval_attack.eps=0.1",
    "eval_attack.steps=10", "n_test_robust=40", "n_checks=10", "n_robust_input_grad=40",
    "n_checks_input_grad=10", "judge_train.epochs=8", "judge_train.lr=0.005",
    "n_judge_train=1000", "n_saliency=32", "ig_steps=8", "smoothgrad_samples=4",
    "n_inversion=16", "inversion_steps=30", "inversion_starts=other,noise", "n_shown=4",
)
# the suite's overrides are comma-separated, so only single-valued fields can be overridden
SUITE: Sets = (
    "experiments=goh-linear,superposition",
    "overrides=" + ",".join(f"superposition:{s}" for s in SUPERPOSITION if s.count(",") == 0),
)
TROJANS: Sets = (
    "n_train=none", "epochs=12", "n_clean=2", "tools=neural-cleanse,fv-class-fourier",
    "tool_steps=0.2", "n_images=4", "n_data=128", "judge_steps=300", "judge_trials=2",
    "n_attr=8", "scan_methods=neural-cleanse", "scan_steps=30", "n_scan=64",
)
EDIT: Sets = (
    "n_train=none", "n_test=none", "epochs=8", "n_clean=1", "defender_frac=0.3",
    "n_tool_data=128", "tools=neural-cleanse,adversarial-patch", "tool_steps=0.1",
    "n_patches=2", "finetune.steps=15", "lat_steps=1", "n_robust=32", "robust_steps=3",
    "robust_eps_l2=0.5", "n_ablate=1", "selectors=activation-difference,random",
    "ablation_k_conv=4",
)
REPLACE: Sets = (
    "n_fit=500", "n_val=250", "n_test=200", "program_terms=1,2", "model_program_terms=2,4",
    "model_epochs=2", "c1_epochs=2", "c2_steps=150", "n_templates=16",
)
AUDIT: Sets = (
    "eps=0.1", "n_robust=60", "scan_steps=100", "n_scan=200", "references=mlp",
    "reference_train.epochs=10", "n_transfer=120", "distillers=sparse-linear,tree", "n_fit=600",
    "n_val=300", "tools=neural-cleanse", "n_images=2",
)


@dataclass(frozen=True)
class Item:
    """One command line; ``{out}`` in its arguments is the run folder."""

    name: str
    args: tuple[str, ...]
    needs: tuple[str, ...] = ()  # items that must have succeeded first


def _experiment(name: str, sets: Sets) -> Item:
    return Item(name, ("run", name, "--dataset", "digits", "--seeds", "1",
                       *(f"--set={s}" for s in sets), "--out", f"{{out}}/{name}"))


def _bench(name: str, sets: Sets) -> Item:
    return Item(f"bench-{name}", ("bench", name, "--quick", "--dataset", "digits", "--seeds", "1",
                                  *(f"--set={s}" for s in sets), "--out", f"{{out}}/bench-{name}"))


ITEMS: tuple[Item, ...] = (
    _experiment("ilyas", ILYAS),
    _experiment("goh-leakage", ILYAS),
    _experiment("goh-linear", ()),
    _experiment("wallace", WALLACE),
    _experiment("nakkiran", NAKKIRAN),
    _experiment("transfer", TRANSFER),
    _experiment("frequency", FREQUENCY),
    _experiment("tsipras", TSIPRAS),
    _experiment("superposition", SUPERPOSITION),
    _experiment("ntk", NTK),
    _experiment("saliency", SALIENCY),
    _experiment("features-vs-bugs", SUITE),
    _bench("trojans", TROJANS),
    _bench("edit", EDIT),
    _bench("replace", REPLACE),
    Item("train", ("train", "--dataset", "digits", "--epochs", "2", "--out", "{out}/ckpt")),
    Item("audit", ("audit", "--checkpoint", "{out}/ckpt", "--data", "digits", "--quick",
                   *(f"--set={s}" for s in AUDIT), "--out", "{out}/audit"), needs=("train",)),
)

# fields that differ between two runs of the same code
DROP_TOP = frozenset({"created", "wall_seconds", "git", "versions"})
ROOT = "<out>"


def _write_foreign(root: Path) -> None:
    """Foreign images for ``wallace`` (no Fashion-MNIST here): the digits transposed, 3x upscaled
    and padded to 28x28, as the four uncompressed IDX files of an MNIST-style folder."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    img = np.transpose(d.images, (0, 2, 1))  # (N, 8, 8) in 0..16
    big = np.kron(img, np.ones((3, 3)))  # (N, 24, 24)
    big = np.pad(big, ((0, 0), (2, 2), (2, 2)))
    pixels = np.round(big * (255 / 16)).astype(np.uint8)
    labels = d.target.astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for split, sl in (("train", slice(0, 1437)), ("t10k", slice(1437, None))):
        for kind, arr in (("images-idx3", pixels[sl]), ("labels-idx1", labels[sl])):
            header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
                n.to_bytes(4, "big") for n in arr.shape)
            (root / f"{split}-{kind}-ubyte").write_bytes(header + arr.tobytes())


def _env(src: Path, home: Path, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(src / "src"), EISBENCH_HOME=str(home), EISBENCH_QUIET="1",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONHASHSEED="0")
    return env


def cmd_run(args: argparse.Namespace) -> int:
    src: Path = args.src.resolve()
    out: Path = args.out.resolve()
    if not (src / "src" / "eisbench" / "cli.py").exists():
        sys.exit(f"{src} is not an eisbench source tree (no src/eisbench/cli.py)")
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {i.name for i in ITEMS}
    if unknown:
        sys.exit(f"unknown items {sorted(unknown)}; known: {', '.join(i.name for i in ITEMS)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    _write_foreign(out / "foreign")
    probe = subprocess.run(
        [args.python, "-c", "import eisbench; print(eisbench.__file__)"], capture_output=True,
        text=True, env=_env(src, out / "home" / "probe", args.threads), check=False)
    found = probe.stdout.strip()
    if probe.returncode or not Path(found).resolve().is_relative_to(src / "src"):
        sys.exit(f"eisbench is not imported from {src}/src: {found or probe.stderr.strip()}")
    print(f"eisbench from {found}; {args.threads} thread(s); records under {out}", flush=True)
    results: dict[str, int] = {}
    total = time.perf_counter()
    for item in ITEMS:
        if only is not None and item.name not in only:
            continue
        if any(results.get(n, 0) != 0 for n in item.needs):
            print(f"{item.name:<18} skipped: {', '.join(item.needs)} failed", flush=True)
            results[item.name] = -1
            continue
        cmd = [args.python, "-m", "eisbench.cli", *(a.format(out=out) for a in item.args)]
        log = out / "logs" / f"{item.name}.log"
        t0 = time.perf_counter()
        with log.open("w") as f:
            f.write(" ".join(cmd) + "\n\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=out, check=False,
                                env=_env(src, out / "home" / item.name, args.threads)).returncode
        results[item.name] = rc
        print(f"{item.name:<18} {time.perf_counter() - t0:7.1f} s  exit {rc}"
              + ("" if rc == 0 else f"  (see {log})"), flush=True)
    meta = {"src": str(src), "threads": args.threads, "exit": results}
    (out / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
    failed = [n for n, rc in results.items() if rc != 0]
    print(f"total {time.perf_counter() - total:.1f} s; "
          + (f"FAILED: {', '.join(failed)}" if failed else "all items succeeded"))
    return 1 if failed else 0


def _dropped(key: str) -> bool:
    """Timings, and the process's peak memory (``ntk``'s ``peak_rss_gib``): measurements of
    the run, not results; they differ between two runs of the same code."""
    return (key == "time" or key.endswith("seconds") or key.endswith("_s")
            or key.startswith("peak_rss"))


def normalise(obj: Any, root: str, *, top: bool = False) -> Any:
    """``obj`` without the fields that differ between runs, with ``root`` in strings replaced."""
    if isinstance(obj, dict):
        return {k: normalise(v, root) for k, v in obj.items()
                if not _dropped(k) and not (top and k in DROP_TOP)}
    if isinstance(obj, list):
        return [normalise(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, ROOT)
    return obj


@dataclass
class Diff:
    paths: list[str] = field(default_factory=list)
    max_abs: float = 0.0

    def add(self, path: str) -> None:
        self.paths.append(path or "<root>")


def _floats_equal(a: float, b: float, tol: float, diff: Diff) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    d = abs(a - b)
    diff.max_abs = max(diff.max_abs, d) if not math.isnan(d) else math.inf
    return d <= tol


def compare_values(a: Any, b: Any, path: str, tol: float, diff: Diff) -> None:
    """Append to ``diff`` every path where ``a`` and ``b`` differ (floats within ``tol``)."""
    if type(a) is not type(b):  # 1 vs 1.0 or True vs 1 is a difference too
        diff.add(f"{path} ({a!r:.40} vs {b!r:.40})")
    elif isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                diff.add(f"{sub} (only in {'B' if k not in a else 'A'})")
            else:
                compare_values(a[k], b[k], sub, tol, diff)
    elif isinstance(a, list):
        if len(a) != len(b):
            diff.add(f"{path} (length {len(a)} vs {len(b)})")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            compare_values(x, y, f"{path}[{i}]", tol, diff)
    elif isinstance(a, float):
        if not _floats_equal(a, b, tol, diff):
            diff.add(f"{path} ({a!r} vs {b!r})")
    elif a != b:
        diff.add(f"{path} ({a!r:.40} vs {b!r:.40})")


SECTIONS = ("stages", "metrics", "claims", "details")


@dataclass
class Section:
    diff: Diff
    n_different: int  # entries (stages, metrics, claims) or top-level keys that differ
    n_total: int


def _entries(x: Any) -> dict[str, Any]:
    if isinstance(x, dict):
        return {str(k): v for k, v in x.items()}
    if isinstance(x, list):
        return {str(i): v for i, v in enumerate(x)}
    return {"": x}


def compare_records(a: dict[str, Any], b: dict[str, Any], tol: float) -> dict[str, Section]:
    """Per section (stages, metrics, claims, details, other) what differs."""
    out: dict[str, Section] = {}
    rest_a = {k: v for k, v in a.items() if k not in SECTIONS}
    rest_b = {k: v for k, v in b.items() if k not in SECTIONS}
    for sec in (*SECTIONS, "other"):
        xa, xb = (rest_a, rest_b) if sec == "other" else (a.get(sec), b.get(sec))
        diff = Diff()
        compare_values(xa, xb, "" if sec == "other" else sec, tol, diff)
        ea, eb = _entries(xa), _entries(xb)
        n_diff = 0
        for k in set(ea) | set(eb):
            d = Diff()
            compare_values(ea.get(k), eb.get(k), "", tol, d)
            n_diff += bool(d.paths)
        out[sec] = Section(diff, n_diff, len(set(ea) | set(eb)))
    return out


def _records(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("record.json"))
            if "home" not in p.relative_to(root).parts}


def _load(path: Path, root: Path) -> Any:
    return normalise(json.loads(path.read_text()), str(root), top=True)


def _run_meta(root: Path) -> dict[str, Any]:
    meta = root / "run.json"
    return dict(json.loads(meta.read_text())) if meta.exists() else {}


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    """Non-record artefacts compared byte for byte: the checkpoint ``train`` wrote."""
    for name in ("ckpt.safetensors", "ckpt.json"):
        yield name, root / name


def cmd_compare(args: argparse.Namespace) -> int:
    a_root, b_root = args.a.resolve(), args.b.resolve()
    ra, rb = _records(a_root), _records(b_root)
    if not ra and not rb:
        sys.exit(f"no record.json under {a_root} or {b_root}")
    threads = [_run_meta(r).get("threads") for r in (a_root, b_root)]
    if threads[0] != threads[1]:
        print(f"warning: runs made with different --threads ({threads[0]} vs {threads[1]})")
    ok = True
    for rel in sorted(set(ra) | set(rb)):
        name = str(Path(rel).parent)
        if rel not in ra or rel not in rb:
            print(f"{name}: only in {'A' if rel in ra else 'B'}")
            ok = False
            continue
        secs = compare_records(_load(ra[rel], a_root), _load(rb[rel], b_root), args.tol)
        cells = [f"{sec} " + ("same" if not x.diff.paths else
                              f"DIFFERENT ({x.n_different}/{x.n_total})")
                 for sec, x in secs.items()]
        paths = [p for x in secs.values() for p in x.diff.paths]
        largest = max(x.diff.max_abs for x in secs.values())
        print(f"{name}: " + ", ".join(cells)
              + (f"; largest |float diff| {largest:.3g}" if largest else ""))
        for p in paths[:args.show]:
            print(f"    {p}")
        if len(paths) > args.show:
            print(f"    ... {len(paths) - args.show} more")
        ok = ok and not paths
    for label, pa in _files(a_root):
        ha, hb = _sha256(pa), _sha256(b_root / label)
        if ha is None and hb is None:
            continue
        same = ha == hb
        print(f"{label}: {'same bytes' if same else 'DIFFERENT bytes'}")
        ok = ok and same
    print("all records match" if ok else "records differ")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every item against one source tree")
    r.add_argument("--src", required=True, type=Path, help="source tree (holds src/eisbench)")
    r.add_argument("--out", required=True, type=Path, help="folder for the records")
    r.add_argument("--only", help="comma-separated item names: " + ", ".join(i.name for i in ITEMS))
    r.add_argument("--threads", type=int, default=1, help="intra-op threads per item (default 1)")
    r.add_argument("--python", default=sys.executable, help="interpreter with eisbench's deps")
    c = sub.add_parser("compare", help="compare the records of two run folders")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--tol", type=float, default=0.0, help="largest accepted |float difference|")
    c.add_argument("--show", type=int, default=5, help="differing paths shown per record")
    args = p.parse_args(argv)
    return cmd_run(args) if args.cmd == "run" else cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
