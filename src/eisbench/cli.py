"""The ``eisbench`` command line: run, bench, train, attack, scan, audit, replace, data fetch,
cache verify, cache gc, list. The flags are in :mod:`eisbench.cli_args`, the help layout and
the typo suggestions in :mod:`eisbench.cli_help`; each command here parses, calls the Python
API and prints."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence

import torch

from eisbench.cli_args import parse_command_line
from eisbench.cli_models import cmd_attack, cmd_audit, cmd_replace, cmd_scan
from eisbench.core.registry import UnknownNameError


def _cmd_run(args: argparse.Namespace) -> int:
    """``run`` and ``bench``: the quick preset unless ``--full`` or ``--preset NAME``;
    ``--dry-run`` prints the resolved config as JSON and runs nothing."""
    from eisbench.api import dry_run, run

    preset = args.preset or ("full" if args.full else "quick")
    given = {"dataset": args.data, "data_root": args.data_root, "seeds": args.seeds,
             "device": args.device, "overrides": args.set}
    if args.dry_run:
        print(json.dumps({"command": args.cmd, **dry_run(args.experiment, preset, **given)},
                         indent=2))
        return 0
    rec = run(args.experiment, preset, out=args.out, force=args.force, track=args.track,
              track_uri=args.track_uri, executor=args.executor, address=args.address,
              threads=args.threads, **given)
    print(rec.summary(max_metrics=None if args.cmd == "bench" else 6))
    for r in rec["details"].get("runs", []):  # the evidence suite: experiments that failed
        if not r["ok"]:
            print(f"  {r['status']}: {r['experiment']}: {r['error']}", file=sys.stderr)
    return 1 if rec["details"].get("failed") else 0


def _cmd_train(args: argparse.Namespace) -> int:
    """``train``: the flags, the method and the output folder are checked before the data is
    loaded; then one training run, and its checkpoint ``<out>/model.safetensors`` +
    ``<out>/model.json``."""
    from eisbench import data
    from eisbench.core.config import resolve_device
    from eisbench.core.paths import output_folder
    from eisbench.core.validate import finite, integer, positive_int
    from eisbench.models import MODELS, ModelSpec, save_checkpoint
    from eisbench.training import TRAINING_METHODS, TrainConfig, train

    for flag in ("epochs", "batch_size", "attack_steps"):
        positive_int(f"--{flag.replace('_', '-')}", getattr(args, flag))
    integer("--eps-warmup-epochs", args.eps_warmup_epochs, lo=0)
    finite("--lr", args.lr, lo=0.0, lo_open=True)
    finite("--eps", args.eps, lo=0.0)
    if args.alpha is not None:
        finite("--alpha", args.alpha, lo=0.0, lo_open=True)
    cfg = TrainConfig(method=args.method, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, eps=args.eps, norm=args.norm, alpha=args.alpha,
                      attack_steps=args.attack_steps, eps_warmup_epochs=args.eps_warmup_epochs)
    TRAINING_METHODS.get(args.method)  # unknown name: clear error with the closest match
    MODELS.get(args.arch)
    device = resolve_device(args.device)
    with output_folder(args.out, force=args.force) as work:
        ds = data.load(args.data, root=args.data_root)
        spec = ModelSpec(arch=args.arch, in_shape=ds.shape, num_classes=ds.num_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model = spec.build()
        t0 = time.perf_counter()
        model = train(model, ds.x_train, ds.y_train, cfg=cfg, seed=args.seed, device=device,
                      desc=f"{args.arch} {args.method}")
        save_checkpoint(model, spec, work / "model")
    print(f"trained in {time.perf_counter() - t0:.0f} s -> {args.out / 'model.safetensors'} "
          f"(pass --checkpoint {args.out})")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from eisbench import data

    path = data.fetch(args.name, root=args.root)
    d = data.load(args.name, root=args.root)
    print(f"{args.name}: {len(d.x_train)} train / {len(d.x_test)} test, shape {d.shape}, "
          f"{d.num_classes} classes, sha256 {d.sha256[:16]}... -> {path}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    """``cache verify``: one line per bad entry, then the counts; exit 1 if any is bad.
    ``cache gc``: one line per removed stage with its reason, then the counts."""
    from eisbench.core.paths import cache_dir, data_dir
    from eisbench.runs.store import collect_garbage, verify_cache, verify_data_cache

    root = args.root or (data_dir() if getattr(args, "data", False) else cache_dir())
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    if args.cache_cmd == "gc":
        gc = collect_garbage(root, dry_run=args.dry_run)
        for entry, why in gc.removed.items():
            print(f"{entry}: {why}")
        print(gc.summary(dry_run=args.dry_run))
        return 0
    report = verify_data_cache(root) if args.data else verify_cache(root)
    for entry, problems in report.bad.items():
        print(f"{entry}: {'; '.join(problems)}")
    print(report.summary())
    return 1 if report.bad else 0


def _cmd_list(args: argparse.Namespace) -> int:
    """Every registry: its names, each with a one-line description."""
    from eisbench.attacks import ATTACKS
    from eisbench.bench.edit_methods import EDIT_METHODS
    from eisbench.bench.registry import BENCHMARKS
    from eisbench.cli_help import describe
    from eisbench.construct import CONSTRUCTIONS
    from eisbench.data import DATASETS
    from eisbench.edit import UNIT_SELECTORS
    from eisbench.evaluation import CHECKS, SUITES
    from eisbench.experiments import EXPERIMENTS
    from eisbench.models import MODELS
    from eisbench.replace import DISTILLERS
    from eisbench.tools import TOOLS
    from eisbench.tools.attribution import ATTRIBUTIONS
    from eisbench.training import TRAINING_METHODS

    for reg in (DATASETS, MODELS, ATTACKS, SUITES, CHECKS, TRAINING_METHODS, CONSTRUCTIONS,
                EXPERIMENTS, BENCHMARKS, TOOLS, ATTRIBUTIONS, EDIT_METHODS, UNIT_SELECTORS,
                DISTILLERS):
        print(f"{reg.kind}s:")
        width = max(map(len, reg.names()), default=0)
        for name in reg.names():
            print(f"  {name:<{width}}  {describe(reg.get(name), reg.meta(name))}".rstrip())
    return 0


def _explain(e: BaseException, args: argparse.Namespace) -> str:
    """The error's message, with what happened where a full disk caused it (libraries that
    write through C++ report a full disk as e.g. "enforce fail" or "basic_ios::clear")."""
    import errno

    from eisbench.core.paths import disk_full_hint, home

    text = str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {e.filename}" if e.filename else ""
        text = f"no space left on the device{where} ({e.strerror})"
    folders = [p for p in (getattr(args, "out", None), getattr(args, "root", None)) if p]
    with contextlib.suppress(OSError):
        folders.append(home())
    hint = disk_full_hint(*folders)
    return f"{text}: {hint}" if hint else text


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(argv)
    handlers = {"run": _cmd_run, "bench": _cmd_run, "train": _cmd_train, "attack": cmd_attack,
                "scan": cmd_scan, "audit": cmd_audit, "replace": cmd_replace,
                "data": _cmd_data, "cache": _cmd_cache, "list": _cmd_list}
    try:
        code = handlers[args.cmd](args)
        sys.stdout.flush()  # a closed pipe is met here, not at exit
        return code
    except BrokenPipeError:  # the reader stopped early (eisbench list | head): not an error
        with contextlib.suppress(OSError, ValueError):  # no more writes to the closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UnknownNameError, ValueError, OSError, RuntimeError) as e:
        print(f"eisbench: error: {_explain(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eisbench: interrupted; finished stages are cached, run again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
