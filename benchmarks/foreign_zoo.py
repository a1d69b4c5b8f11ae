"""Which commands work on models eisbench did not build: every model of the test zoo
(``tests/foreign_models.py``: attribute layers, Sequential blocks, BatchNorm + dropout, residual
blocks, global average pooling, a 2-class head, raw-pixel input) x (every registered tool,
``scan``, ``replace``, ``audit``), run from the command line as a user would
(``--model foreign_models:Class --weights``), on the 8x8 digits or MNIST.

Prints one row per model: ``ok`` or the first line of the error per command, and the audit's
section list. Uses only flags every version of the command line has, plus ``--label-map`` for
the 2-class model (an error where a version lacks it: that is the finding).

    python benchmarks/foreign_zoo.py                  # digits, about a minute
    python benchmarks/foreign_zoo.py --data mnist     # 28x28, the issue's setting
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from foreign_models import LOW_HIGH, ZOO, train_foreign  # noqa: E402

from eisbench import data  # noqa: E402
from eisbench.cli import main  # noqa: E402
from eisbench.tools import TOOLS  # noqa: E402

AUDIT = ["eps=0.1", "n_robust=32", "scan_steps=10", "n_scan=32", "references=mlp",
         "reference_train.epochs=1", "n_transfer=64", "distillers=tree", "n_fit=500",
         "n_val=200", "n_images=2"]


def _run(argv: list[str]) -> tuple[int, str]:
    """Exit status and the last error line of ``eisbench argv``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = int(e.code or 0)
        except Exception as e:  # an uncaught crash is a result here
            return 3, f"{type(e).__name__}: {e}"[:160]
    lines = [x for x in err.getvalue().splitlines() if "error" in x.lower()]
    return rc, (lines[-1] if lines else "")[:160]


def main_(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", choices=["digits", "mnist"])
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = data.load(args.data)
    side = ds.shape[1]
    tools = ",".join(TOOLS.names())
    work = Path(tempfile.mkdtemp(prefix="foreign-"))
    sys.path.insert(0, str(ROOT / "tests"))
    print(f"{args.data}: {len(ZOO)} foreign models x (tools, scan, replace, audit); tools "
          f"{tools}")
    for name, entry in ZOO.items():
        t0 = time.perf_counter()
        n_train = 20000 if args.data == "mnist" else len(ds.x_train)
        model = train_foreign(entry, ds.x_train[:n_train], ds.y_train[:n_train], side=side,
                              epochs=args.epochs)
        w = work / f"{name}.safetensors"
        save_file(model.state_dict(), str(w))
        base = ["--model", f"foreign_models:{entry.cls.__name__}", "--weights", str(w),
                "--model-kwargs", json.dumps({"side": side, "num_classes": entry.num_classes}),
                "--data", args.data]
        if entry.scale != 1.0:
            base += ["--scale", str(entry.scale)]
        cells = {
            "scan": _run(["scan", *base, "--n", "64", "--steps", "10"]),
            "replace": _run(["replace", *base, "--distillers", "tree", "--n-fit", "500",
                             "--n-val", "200", "--n-test", "200"]),
        }
        extra = [] if entry.label_map is None else ["--label-map", ",".join(map(str, LOW_HIGH))]
        out = work / f"audit-{name}"
        cells["audit"] = _run(["audit", *base, "--quick", *[f"--set={s}" for s in AUDIT],
                               f"--set=tools={tools}", *extra, "--out", str(out)])
        rec = out / "record.json"
        sections = "-"
        if rec.exists():
            d = json.loads(rec.read_text())["details"]
            sections = ", ".join(f"{n}:{s['status']}" for n, s in d.get("sections", {}).items()) \
                or "(no sections: every step ran)"
            failed = d.get("tools", {}).get("failed", {})
            if failed:
                sections += f"; failed tools: {', '.join(failed)}"
        print(f"\n{name} ({entry.why}), {time.perf_counter() - t0:.0f} s")
        for cmd, (rc, msg) in cells.items():
            print(f"  {cmd:<8} {'ok' if rc == 0 else f'FAIL (exit {rc})'} {msg}")
        print(f"  audit sections: {sections}")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
