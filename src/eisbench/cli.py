"""The ``eisbench`` command line: run, bench, train, attack, scan, audit, replace, data fetch,
cache verify, cache gc, list."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eisbench.cli_models import cmd_attack, cmd_audit, cmd_replace, cmd_scan
from eisbench.core.registry import UnknownNameError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="eisbench checkpoint: the folder eisbench train wrote, "
                   "or <name> of <name>.safetensors + <name>.json")
    g.add_argument("--model", help="bring your own model: package.module:Class (on PYTHONPATH)")
    p.add_argument("--weights", help="weights for --model: .safetensors or a .pt state dict")
    p.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for --model")
    p.add_argument("--scale", type=float, default=1.0,
                   help="the pixel range the model expects: images in [0,1] are multiplied by "
                   "this (e.g. 255 for a model trained on raw pixels; default 1)")
    p.add_argument("--layer", help="the module whose output is the model's penultimate "
                   "features (a name of model.named_modules(); default: found by tracing the "
                   "input of the logits' linear layer)")


def _add_preset_args(r: argparse.ArgumentParser, *, default: str) -> None:
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="quick preset" + (" (default)" if default == "quick" else ""))
    mode.add_argument("--full", action="store_true",
                      help="full preset" + (" (default)" if default == "full" else ""))
    r.set_defaults(default_mode=default)
    r.add_argument("--dataset", help="dataset name (mnist, fashion-mnist, ...)")
    r.add_argument("--data-root", help="folder of IDX / cifar-10-batches-py files")
    r.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    r.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set n_construct=500 "
                        "--set robust_train.epochs=10 (repeatable; see the record's config)")
    _add_out_args(r, required=True)


def _add_out_args(p: argparse.ArgumentParser, *, required: bool = False,
                  what: str = "the outputs") -> None:
    """``--out FOLDER`` and ``--force`` (every command that writes)."""
    p.add_argument("--out", required=required, type=Path,
                   help=f"folder to write {what} into (made if missing; written only when the "
                   "command succeeds)")
    p.add_argument("--force", action="store_true",
                   help="replace the outputs a previous run left in --out (only once this run "
                   "has succeeded)")


def _add_run_commands(sub: Any) -> None:
    """``run`` (experiments) and ``bench`` (benchmarks)."""
    from eisbench.bench.registry import BENCHMARKS
    from eisbench.experiments import EXPERIMENTS

    r = sub.add_parser("run", help="run an experiment and write record.json + report.html")
    r.add_argument("experiment", help=f"one of: {', '.join(EXPERIMENTS.names())}")
    _add_preset_args(r, default="quick")
    b = sub.add_parser("bench", help="run a benchmark with a ground truth and write "
                                     "record.json + report.html")
    b.add_argument("experiment", metavar="benchmark",
                   help=f"one of: {', '.join(BENCHMARKS.names())}")
    _add_preset_args(b, default="full")

def _add_train_command(sub: Any) -> None:
    """``train``: a model to a checkpoint."""
    from eisbench.training.config import NORMS

    t = sub.add_parser("train", help="train a model and save a checkpoint")
    t.add_argument("--arch", default="cnn-small")
    t.add_argument("--dataset", default="mnist")
    t.add_argument("--data-root")
    t.add_argument("--method", default="standard", help="standard, pgd-at or fast-at")
    t.add_argument("--epochs", type=int, default=5, help="passes over the data (>= 1)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (> 0)")
    t.add_argument("--batch-size", type=int, default=128, help="images per step (>= 1)")
    t.add_argument("--eps", type=float, default=0.3, help="adversarial budget (>= 0)")
    t.add_argument("--norm", default="linf", choices=NORMS)
    t.add_argument("--alpha", type=float, help="attack step (> 0; default: the method's)")
    t.add_argument("--attack-steps", type=int, default=40, help="PGD steps of pgd-at (>= 1)")
    t.add_argument("--eps-warmup-epochs", type=int, default=0,
                   help="epochs over which eps ramps up (>= 0)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    _add_out_args(t, required=True, what="the checkpoint (model.safetensors + model.json; "
                  "pass the folder to --checkpoint)")

def _add_attack_command(sub: Any) -> None:
    """``attack``: robust accuracy with a suite and its checks; the flags of ``--attack``
    come from the attacks' declared hyper-parameters."""
    from eisbench.attacks.core import ATTACKS, declared_hypers
    from eisbench.attacks.evaluate import evaluation_hyper

    a = sub.add_parser("attack", help="robust accuracy of a checkpoint or your own model, "
                       "with an attack suite and sanity checks")
    _add_model_args(a)
    a.add_argument("--dataset", default="mnist")
    a.add_argument("--data-root")
    a.add_argument("--suite", default="standard",
                   help="attack suite: standard (APGD-CE, APGD-T, FMN, Square; default) or fast")
    a.add_argument("--attack", help="one registered attack instead of a suite: "
                   f"{', '.join(ATTACKS.names())}")
    a.add_argument("--norm", default="linf",
                   choices=sorted({n for k in ATTACKS for n in ATTACKS.meta(k)["norms"]}))
    a.add_argument("--eps", type=float, default=0.3)
    for key, (h, takers) in declared_hypers().items():  # the hyper-parameters of --attack
        where = ", ".join(f"{k} {evaluation_hyper(k, {})[key]}" for k in takers)
        kind = ({"action": argparse.BooleanOptionalAction} if h.type is bool
                else {"type": h.type, "choices": h.choices or None})
        a.add_argument(f"--{key.replace('_', '-')}", **kind,
                       help=f"{h.help} (with --attack; default: {where})")
    a.add_argument("--n", type=int, default=1000, help="number of test images")
    a.add_argument("--n-checks", type=int, default=200,
                   help="test images used by the costlier sanity checks")
    a.add_argument("--control", type=Path,
                   help="checkpoint stem of an undefended model of the same task: it must fall "
                   "to ~0%% under the same attack (control-falls check)")
    a.add_argument("--surrogate", type=Path,
                   help="checkpoint stem of a model to transfer attacks from")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu")
    _add_out_args(a, what="attack.json")

def _add_scan_command(sub: Any) -> None:
    """``scan``: a trojan scan of every class."""
    from eisbench.tools.trigger_reconstruction import RECONSTRUCTION_METHODS

    s = sub.add_parser("scan", help="detect a trojan: reconstruct a trigger per class (Neural "
                       "Cleanse or TABOR) and flag the class whose trigger is anomalously small")
    _add_model_args(s)
    s.add_argument("--data", "--dataset", dest="data", default="mnist",
                   help="clean images: the first --n test images of mnist, fashion-mnist, "
                   "digits, ...")
    s.add_argument("--data-root", help="folder of the dataset's IDX files")
    s.add_argument("--n", type=int, default=500, help="number of clean test images")
    s.add_argument("--method", default="neural-cleanse", choices=RECONSTRUCTION_METHODS.names())
    s.add_argument("--steps", type=int, default=200, help="optimisation steps")
    s.add_argument("--lr", type=float, default=0.1)
    s.add_argument("--lam", type=float, default=1e-3,
                   help="initial weight of the mask's L1 norm (adapted during the search)")
    s.add_argument("--batch-size", type=int, default=64, help="images per step")
    s.add_argument("--threshold", type=float, default=2.0,
                   help="anomaly index above which a class is flagged")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    _add_out_args(s, what="scan.json, triggers.safetensors and scan.html")

def _add_replace_command(sub: Any) -> None:
    """``replace``: distil a model."""
    rp = sub.add_parser("replace", help="distil a model (sparse linear, tree, templates, "
                        "program search) and measure agreement against size, on test and "
                        "out-of-distribution images")
    _add_model_args(rp)
    rp.add_argument("--data", "--dataset", dest="dataset", default="mnist",
                    help="images to distil on: mnist, ...")
    rp.add_argument("--data-root", help="folder of the dataset's IDX files")
    rp.add_argument("--distillers", default="",
                    help="comma-separated distillers (default: every registered one)")
    rp.add_argument("--n-fit", type=int, default=10000,
                    help="first training images: the distillation set")
    rp.add_argument("--n-val", type=int, default=5000,
                    help="last training images: for choosing each distiller's size")
    rp.add_argument("--n-test", type=int, help="first test images (default: all)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--device", default="cpu")
    _add_out_args(rp, what="replace.json and report.html")

def _add_audit_command(sub: Any) -> None:
    """``audit``: one report on a model."""
    au = sub.add_parser("audit", help="one report on a model: clean and robust accuracy with "
                        "checks, trojan scan, transfer, replacements, the tools' images")
    _add_model_args(au)
    au.add_argument("--data", default="mnist", help="dataset the model was trained for")
    au.add_argument("--data-root", help="folder of the dataset's IDX files")
    au.add_argument("--quick", action="store_true",
                    help="fewer images and steps (a smoke test, not an audit)")
    au.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an audit setting, e.g. --set eps=0.1,0.2 --set n_robust=1000")
    au.add_argument("--label-map", metavar="C0,C1,...",
                    help="the model's class for each of the dataset's classes, for a model with "
                    "other classes (e.g. 0,0,0,0,0,1,1,1,1,1 for a 2-class model on digits "
                    "0-4 / 5-9); default: the dataset's labels if the model has as many "
                    "classes, else the model's own predictions")
    au.add_argument("--device", default="cpu")
    _add_out_args(au, required=True, what="record.json, report.html and the images")

def _add_data_command(sub: Any) -> None:
    """``data fetch``."""
    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    f = dsub.add_parser("fetch", help="download/convert/verify a dataset into the cache")
    f.add_argument("name")
    f.add_argument("--root", help="folder holding the source files instead of the default")


def _add_cache_command(sub: Any) -> None:
    """``cache verify`` and ``cache gc``."""
    c = sub.add_parser("cache", help="the stage and data caches")
    csub = c.add_subparsers(dest="cache_cmd", required=True)
    v = csub.add_parser("verify", help="check every cached stage's files against the sha256 "
                        "in its done.json (exit 1 if any is bad)")
    v.add_argument("--data", action="store_true",
                   help="check the dataset cache files against their .sha256 instead")
    v.add_argument("--root", type=Path, help="cache folder instead of the default")
    g = csub.add_parser("gc", help="remove the cached stages no run of this version can reach: "
                        "other versions' stages, broken ones, and those whose inputs are gone "
                        "(interrupted stages are kept)")
    g.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    g.add_argument("--root", type=Path, help="cache folder instead of the default")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eisbench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_run_commands, _add_train_command, _add_attack_command, _add_scan_command,
                _add_replace_command, _add_audit_command, _add_data_command,
                _add_cache_command):
        add(sub)
    sub.add_parser("list", help="list every registry")
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    from eisbench.api import run

    full = args.full or (args.default_mode == "full" and not args.quick)
    rec = run(args.experiment, "full" if full else "quick", out=args.out, dataset=args.dataset,
              data_root=args.data_root, seeds=args.seeds, device=args.device,
              overrides=args.set, force=args.force)
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
        ds = data.load(args.dataset, root=args.data_root)
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
    from eisbench.attacks import ATTACKS
    from eisbench.bench.edit_methods import EDIT_METHODS
    from eisbench.bench.registry import BENCHMARKS
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
        print(f"{reg.kind}s: {', '.join(reg.names())}")
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
    args = _parser().parse_args(argv)
    handlers = {"run": _cmd_run, "bench": _cmd_run, "train": _cmd_train, "attack": cmd_attack,
                "scan": cmd_scan, "audit": cmd_audit, "replace": cmd_replace,
                "data": _cmd_data, "cache": _cmd_cache, "list": _cmd_list}
    try:
        return handlers[args.cmd](args)
    except (UnknownNameError, ValueError, OSError, RuntimeError) as e:
        print(f"eisbench: error: {_explain(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eisbench: interrupted; finished stages are cached, run again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
