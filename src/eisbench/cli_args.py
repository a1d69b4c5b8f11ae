"""The flags of every ``eisbench`` command, in one vocabulary: ``--data`` (alias
``--dataset``) and ``--data-root`` for the data, ``--out`` for the folder a command writes,
``--quick`` (the default) / ``--full`` and ``--dry-run`` for the presets of ``run``, ``bench``
and ``audit``, ``--checkpoint`` or ``--model`` + ``--weights`` for a model."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eisbench.cli_help import Parser, VersionAction, add_command, chosen, epilog, parse

DATASETS_HINT = "mnist, fashion-mnist, digits, cifar10, tsipras"



def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def add_data_args(p: argparse.ArgumentParser, *, default: str | None, what: str) -> None:
    """``--data NAME`` (alias ``--dataset``: both set ``args.data``) and ``--data-root DIR``."""
    p.add_argument("--data", "--dataset", dest="data", default=default, metavar="NAME",
                   help=f"{what}: {DATASETS_HINT}"
                   + ("" if default else " (default: the preset's)"))
    p.add_argument("--data-root", metavar="DIR",
                   help="folder holding the dataset's files (IDX files, cifar-10-batches-py) "
                   "instead of the default place")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--checkpoint`` or ``--model`` (+ ``--weights``/``--random-init``), and how to feed it."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", metavar="PATH",
                   help="eisbench checkpoint: the folder eisbench train wrote, or <name> of "
                   "<name>.safetensors + <name>.json")
    g.add_argument("--model", metavar="MODULE:CLASS",
                   help="bring your own model: package.module:Class (on PYTHONPATH); needs "
                   "--weights (or --random-init)")
    p.add_argument("--weights", metavar="FILE",
                   help="weights for --model: .safetensors or a .pt state dict")
    p.add_argument("--random-init", action="store_true",
                   help="run --model on its initial (random) weights on purpose, without "
                   "--weights (a smoke test: its accuracy is chance)")
    p.add_argument("--model-kwargs", default="{}", metavar="JSON",
                   help="JSON keyword arguments for --model's class")
    p.add_argument("--scale", type=float, default=1.0,
                   help="the pixel range the model expects: images in [0,1] are multiplied by "
                   "this (e.g. 255 for a model trained on raw pixels)")
    p.add_argument("--layer", metavar="NAME",
                   help="the module whose output is the model's penultimate features (a name "
                   "of model.named_modules(); by default found by tracing the input of the "
                   "logits' linear layer)")


def add_out_args(p: argparse.ArgumentParser, *, required: bool = False,
                 what: str = "the outputs", note: str = "") -> None:
    """``--out FOLDER`` and ``--force`` (every command that writes)."""
    p.add_argument("--out", required=required, type=Path, metavar="DIR",
                   help=f"folder to write {what} into (made if missing; written only when the "
                   f"command succeeds){note}")
    p.add_argument("--force", action="store_true",
                   help="replace the outputs a previous run left in --out (only once this run "
                   "has succeeded)")


def add_preset_args(p: argparse.ArgumentParser, *, what: str, example: str,
                    named: bool = False) -> None:
    """``--quick`` (the default) / ``--full`` (/ ``--preset NAME`` where ``named``: presets an
    experiment declares itself, e.g. cifar10), ``--dry-run``, ``--set``, ``--device`` and
    ``--out`` (required unless ``--dry-run``) of ``run``, ``bench`` and ``audit``."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="the quick preset (the default: minutes on a 2-core CPU)")
    mode.add_argument("--full", action="store_true",
                      help="the full preset (the published numbers; much longer)")
    if named:
        mode.add_argument("--preset", metavar="NAME",
                          help="a preset the experiment declares itself, e.g. cifar10 for "
                          "ilyas and trojans (--dry-run shows it)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config as JSON and exit without running")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a field of the {what}'s config, e.g. --set {example} "
                   "(repeatable; --dry-run lists the fields)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--track", metavar="NAME",
                   help="log the finished run to an experiment tracker: mlflow (needs the "
                   "[track] extra)")
    p.add_argument("--track-uri", metavar="URI",
                   help="the tracker's store or server (by default $MLFLOW_TRACKING_URI, else "
                   "a local store under $EISBENCH_HOME/mlruns)")
    add_out_args(p, what="record.json, report.html and the rest")
    p.set_defaults(out_required=True)


def _add_run_commands(sub: Any) -> None:
    """``run`` (experiments) and ``bench`` (benchmarks)."""
    from eisbench.bench.registry import BENCHMARKS
    from eisbench.experiments import EXPERIMENTS

    for name, reg, help_ in (
            ("run", EXPERIMENTS, "run an experiment and write record.json + report.html"),
            ("bench", BENCHMARKS, "run a benchmark with a ground truth and write record.json "
                                  "+ report.html")):
        r = add_command(sub, name, help=help_)
        r.add_argument("experiment", metavar="benchmark" if name == "bench" else "experiment",
                       help=f"one of: {', '.join(reg.names())} (eisbench list describes them)")
        add_preset_args(r, what="benchmark" if name == "bench" else "experiment",
                        example="seeds=0,1", named=True)
        add_data_args(r, default=None, what="dataset")
        r.add_argument("--seeds", type=int, help="number of seeds: 0..N-1 (default: the "
                       "preset's)")
        r.add_argument("--executor", choices=("serial", "ray"), default="serial",
                       help="where independent units run: serial (the default, in this "
                       "process) or ray (Ray tasks; needs the [ray] extra): the evidence suite's "
                       "experiments and the trojan zoo's models")
        r.add_argument("--address", metavar="auto|HOST:PORT",
                       help="the Ray cluster to join with --executor ray (default: start a "
                       "local one)")
        r.add_argument("--threads", type=positive_int, metavar="N",
                       help="torch threads for the run and each Ray task (default: torch's). "
                       "A Ray run's record equals the serial run's at equal --threads; on a "
                       "2-core machine --threads 1 runs two Ray tasks at once")


def _add_train_command(sub: Any) -> None:
    """``train``: a model to a checkpoint."""
    from eisbench.models import MODELS
    from eisbench.training import TRAINING_METHODS
    from eisbench.training.config import NORMS

    t = add_command(sub, "train", help="train a model and save a checkpoint")
    t.add_argument("--arch", default="cnn-small", help=f"architecture: {', '.join(MODELS)}")
    add_data_args(t, default="mnist", what="dataset to train on")
    t.add_argument("--method", default="standard",
                   help=f"training method: {', '.join(TRAINING_METHODS.names())}")
    t.add_argument("--epochs", type=int, default=5, help="passes over the data (>= 1)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (> 0)")
    t.add_argument("--batch-size", type=int, default=128, help="images per step (>= 1)")
    t.add_argument("--eps", type=float, default=0.3,
                   help="adversarial training budget in --norm, for images in [0,1] (>= 0; "
                   "ignored by standard training)")
    t.add_argument("--norm", default="linf", choices=NORMS,
                   help="threat model of adversarial training")
    t.add_argument("--alpha", type=float, help="attack step (> 0; default: the method's)")
    t.add_argument("--attack-steps", type=int, default=40, help="PGD steps of pgd-at (>= 1)")
    t.add_argument("--eps-warmup-epochs", type=int, default=0,
                   help="epochs over which eps ramps up (>= 0)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the "
                   "batch order")
    t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_out_args(t, required=True, what="the checkpoint (model.safetensors + model.json; "
                 "pass the folder to --checkpoint)")


def _add_attack_command(sub: Any) -> None:
    """``attack``: robust accuracy with a suite and its checks; the flags of ``--attack``
    come from the attacks' declared hyper-parameters."""
    from eisbench.attacks.core import ATTACKS, declared_hypers
    from eisbench.attacks.evaluate import evaluation_hyper

    a = add_command(sub, "attack", help="robust accuracy of a checkpoint or your own model, "
                    "with an attack suite and sanity checks")
    add_model_args(a)
    add_data_args(a, default="mnist", what="test images: the first --n of the dataset")
    a.add_argument("--suite", default="standard",
                   help="attack suite: standard (APGD-CE, APGD-T, FMN, Square), adaptive "
                   "(APGD-CE, APGD-T on MALT targets with online discarding, Square) or fast")
    a.add_argument("--attack", help="one registered attack instead of a suite: "
                   f"{', '.join(ATTACKS.names())}")
    a.add_argument("--norm", default="linf",
                   choices=sorted({n for k in ATTACKS for n in ATTACKS.meta(k)["norms"]}),
                   help="threat model: the norm --eps is measured in")
    a.add_argument("--eps", type=float, default=0.3,
                   help="perturbation budget in --norm, for images in [0,1] (0.3 is MNIST's "
                   "usual Linf budget, 8/255 CIFAR-10's)")
    for key, (h, takers) in declared_hypers().items():  # the hyper-parameters of --attack
        where = ", ".join(f"{k} {evaluation_hyper(k, {})[key]}" for k in takers)
        kind = ({"action": argparse.BooleanOptionalAction} if h.type is bool
                else {"type": h.type, "choices": h.choices or None})
        a.add_argument(f"--{key.replace('_', '-')}", **kind,
                       help=f"{h.help} (with --attack; default: {where})")
    a.add_argument("--n", type=int, default=1000, help="number of test images")
    a.add_argument("--n-checks", type=int, default=200,
                   help="test images used by the costlier sanity checks")
    a.add_argument("--control", type=Path, metavar="PATH",
                   help="checkpoint of an undefended model of the same task: it must fall "
                   "to ~0%% under the same attack (control-falls check)")
    a.add_argument("--surrogate", type=Path, metavar="PATH",
                   help="checkpoint of a model to transfer attacks from")
    a.add_argument("--seed", type=int, default=0, help="seed of the attacks' randomness")
    a.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_out_args(a, what="attack.json", note="; without --out the result is only printed")


def _add_scan_command(sub: Any) -> None:
    """``scan``: a trojan scan of every class."""
    from eisbench.tools.cost_schedule import SCHEDULES
    from eisbench.tools.trigger_reconstruction import RECONSTRUCTION_METHODS

    s = add_command(sub, "scan", help="detect a trojan: reconstruct a trigger per class "
                    "(Neural Cleanse or TABOR) and flag the class whose trigger is anomalously "
                    "small")
    add_model_args(s)
    add_data_args(s, default="mnist", what="clean images: the first --n test images of")
    s.add_argument("--n", type=int, default=500, help="number of clean test images")
    s.add_argument("--method", default="neural-cleanse", choices=RECONSTRUCTION_METHODS.names(),
                   help="trigger reconstruction method")
    s.add_argument("--schedule", default="eisbench-v1", choices=sorted(SCHEDULES),
                   help="the L1 weight's schedule: eisbench-v1 (moves at every check, the "
                   "benchmark's), wang2019 (Neural Cleanse as published: patience, early "
                   "stop; slow) or trojanzoo-tabor (TABOR's fixed weight)")
    s.add_argument("--steps", type=int, default=200, help="optimisation steps per class")
    s.add_argument("--lr", type=float, default=0.1, help="learning rate of the reconstruction")
    s.add_argument("--lam", type=float, default=1e-3,
                   help="initial weight of the mask's L1 norm (adapted during the search)")
    s.add_argument("--batch-size", type=int, default=64, help="images per step")
    s.add_argument("--threshold", type=float, default=2.0,
                   help="anomaly index above which a class is flagged")
    s.add_argument("--seed", type=int, default=0, help="seed of the reconstruction")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_out_args(s, what="scan.json, triggers.safetensors and scan.html")


def _add_replace_command(sub: Any) -> None:
    """``replace``: distil a model."""
    rp = add_command(sub, "replace", help="distil a model (sparse linear, tree, templates, "
                     "program search) and measure agreement against size, on test and "
                     "out-of-distribution images")
    add_model_args(rp)
    add_data_args(rp, default="mnist", what="images to distil on")
    rp.add_argument("--distillers", default="",
                    help="comma-separated distillers (default: every registered one)")
    rp.add_argument("--n-fit", type=int, default=10000,
                    help="first training images: the distillation set")
    rp.add_argument("--n-val", type=int, default=5000,
                    help="last training images: for choosing each distiller's size")
    rp.add_argument("--n-test", type=int, help="first test images (default: all)")
    rp.add_argument("--seed", type=int, default=0, help="seed of the distillers")
    rp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_out_args(rp, what="replace.json and report.html")


def _add_audit_command(sub: Any) -> None:
    """``audit``: one report on a model."""
    au = add_command(sub, "audit", help="one report on a model: clean and robust accuracy "
                     "with checks, trojan scan, transfer, replacements, the tools' images")
    add_model_args(au)
    add_data_args(au, default="mnist", what="dataset the model was trained for")
    add_preset_args(au, what="audit", example="n_robust=1000")
    au.add_argument("--label-map", metavar="C0,C1,...",
                    help="the model's class for each of the dataset's classes, for a model with "
                    "other classes (e.g. 0,0,0,0,0,1,1,1,1,1 for a 2-class model on digits "
                    "0-4 / 5-9); by default the dataset's labels if the model has as many "
                    "classes, else the model's own predictions")


def _add_data_command(sub: Any) -> None:
    """``data fetch``."""
    d = add_command(sub, "data", help="datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    f = add_command(dsub, "fetch", help="download/convert/verify a dataset into the cache")
    f.add_argument("name", help=f"dataset: {DATASETS_HINT}")
    f.add_argument("--data-root", "--root", dest="root", metavar="DIR",
                   help="folder holding the source files instead of the default place")


def _add_cache_command(sub: Any) -> None:
    """``cache verify`` and ``cache gc``."""
    c = add_command(sub, "cache", help="the stage and data caches")
    csub = c.add_subparsers(dest="cache_cmd", required=True)
    v = add_command(csub, "verify", help="check every cached stage's files against the "
                    "sha256 in its done.json (exit 1 if any is bad)")
    v.add_argument("--data", action="store_true",
                   help="check the dataset cache files against their .sha256 instead")
    v.add_argument("--root", type=Path, metavar="DIR", help="cache folder instead of the "
                   "default")
    g = add_command(csub, "gc", help="remove the cached stages no run of this version can "
                    "reach: other versions' stages, broken ones, and those whose inputs are "
                    "gone (interrupted stages are kept)")
    g.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    g.add_argument("--root", type=Path, metavar="DIR", help="cache folder instead of the "
                   "default")


def parser() -> argparse.ArgumentParser:
    """The parser of every ``eisbench`` command."""
    p = Parser(prog="eisbench", description=textwrap.fill(
        "eisbench: interpretability and adversarial robustness, measured (every result with "
        "its seeds, attack, checks and confidence interval).", width=88),
        epilog=epilog("eisbench"))
    p.add_argument("--version", action=VersionAction,
                   help="print the version (and git commit) and exit")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_run_commands, _add_train_command, _add_attack_command, _add_scan_command,
                _add_replace_command, _add_audit_command, _add_data_command,
                _add_cache_command):
        add(sub)
    add_command(sub, "list", help="every registry's names, each with a one-line description")
    return p


def parse_command_line(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags of ``argv``; a mistake exits 2 with the subcommand's usage and the closest
    flag or command, and ``run``/``bench``/``audit`` need ``--out`` unless ``--dry-run``."""
    p = parser()
    args = parse(p, argv)
    if getattr(args, "out_required", False) and args.out is None and not args.dry_run:
        chosen(p, args).error("the following arguments are required: --out (or --dry-run "
                               "to print the config without running)")
    return args


__all__ = ["add_data_args", "add_model_args", "add_out_args", "add_preset_args",
           "parse_command_line", "parser"]
