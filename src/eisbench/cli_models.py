"""The commands of ``eisbench`` that take a model (an eisbench checkpoint or your own
``package.module:Class`` with weights): attack, scan, replace, audit."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from eisbench.core.accel import place
from eisbench.core.paths import check_output_folder, output_folder


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model of ``--checkpoint`` (read as a checkpoint whatever its name: it never imports
    code), or ``--model`` with ``--weights`` and ``--model-kwargs`` (the one way to import one;
    without ``--weights`` only with ``--random-init``); with its features at ``--layer`` and
    fed pixels in [0, ``--scale``]."""
    from eisbench import api
    from eisbench.models import FeaturesAt, Scaled, load_checkpoint

    check_model_flags(args)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
    else:
        try:
            model = api.load_model(args.model, weights=args.weights,
                                   kwargs=json.loads(args.model_kwargs))
        except TypeError as e:  # the class does not take --model-kwargs
            raise ValueError(f"cannot build {args.model}: {e}; check --model-kwargs") from e
    if args.layer:
        model = FeaturesAt(model, layer=args.layer)
    return Scaled(model, args.scale) if args.scale != 1.0 else model


def check_model_flags(args: argparse.Namespace) -> None:
    """Refuse ``--scale`` out of range, and ``--model`` without ``--weights`` (it would be
    measured on its random initial weights) unless ``--random-init`` says that is meant."""
    from eisbench.core.validate import finite

    finite("--scale", args.scale, lo=0.0, lo_open=True)
    if args.model and not args.weights and not args.random_init:
        raise ValueError(f"--model {args.model} without --weights would run on the class's "
                         "random initial weights: pass --weights FILE (.safetensors or a .pt "
                         "state dict), or --random-init if random weights are what you mean")
    if args.random_init and args.weights:
        raise ValueError("--random-init and --weights contradict each other: drop one")


CHANCE_MARGIN = 0.05
"""Clean accuracy at most this above chance (1/K) means the model is not doing the task."""


def chance_warning(clean_acc: float, num_classes: int, *, label_map: bool = False) -> str | None:
    """A loud warning when ``clean_acc`` is within :data:`CHANCE_MARGIN` of chance for
    ``num_classes`` classes, naming the likely causes; None otherwise.

    Example:
        >>> chance_warning(0.15, 10).split(":")[0]
        'WARNING'
        >>> chance_warning(0.9, 10) is None
        True
    """
    chance = 1 / num_classes
    if clean_acc > chance + CHANCE_MARGIN:
        return None
    causes = ["no --weights (a model on its random initial weights)",
              "a wrong --scale (a model trained on raw 0-255 pixels needs --scale 255)",
              "the wrong --data (the model was trained on another dataset)"]
    if label_map:
        causes.append("classes in another order (--label-map)")
    return (f"WARNING: clean accuracy {clean_acc:.1%} is at chance ({chance:.1%} for "
            f"{num_classes} classes, within {CHANCE_MARGIN:.0%}): the model is not doing this "
            "task on these images, so the numbers above say nothing about it. Likely causes: "
            + "; ".join(causes) + ".")


def _check_attack_flags(args: argparse.Namespace) -> None:
    """Refuse a bad number or ``--out`` of ``attack`` (a ``ValueError`` naming the flag, the
    value and the allowed range) before any model or data is loaded."""
    from eisbench.core.validate import finite, positive_int

    finite("--eps", args.eps, lo=0.0)
    check_model_flags(args)
    for flag in ("n", "n_checks", "steps", "restarts", "n_queries", "n_targets"):
        if getattr(args, flag, None) is not None:  # attack hypers: None unless given
            positive_int(f"--{flag.replace('_', '-')}", getattr(args, flag))
    if getattr(args, "step_size", None) is not None:
        finite("--step-size", args.step_size, lo=0.0, lo_open=True)
    if args.out:
        check_output_folder(args.out, force=args.force)


def cmd_attack(args: argparse.Namespace) -> int:
    """``attack``: robust accuracy of a model under a suite or one attack, with its checks. The
    model contract (:func:`~eisbench.models.contract.check_model`) is checked before any attack."""
    from eisbench import data
    from eisbench.attacks import ATTACKS
    from eisbench.attacks.evaluate import evaluation_hyper
    from eisbench.core.config import resolve_device
    from eisbench.core.stats import wilson_ci
    from eisbench.evaluation import SUITES, EvaluationBudgetViolation, evaluate_robustness
    from eisbench.models import load_checkpoint
    from eisbench.models.contract import check_model

    _check_attack_flags(args)
    device = resolve_device(args.device)
    steps = None
    if args.attack:
        meta = ATTACKS.meta(args.attack)  # unknown name: clear error with the closest match
        if args.norm not in meta["norms"]:
            raise ValueError(f"{args.attack} does not support --norm {args.norm}: use one of "
                             f"{', '.join(meta['norms'])}")
        steps = ((args.attack, evaluation_hyper(args.attack, vars(args))),)
    else:
        SUITES.get(args.suite)
    model = place(load_model(args), device)
    ds = data.load(args.data, root=args.data_root)
    x, y = ds.x_test[:args.n], ds.y_test[:args.n]
    check_model(model, x, num_classes=ds.num_classes, device=device)  # before any attack
    control, surrogate = (load_checkpoint(p, device=device) if p else None
                          for p in (args.control, args.surrogate))
    t0 = time.perf_counter()
    try:
        ev = evaluate_robustness(model, x, y, eps=args.eps, norm=args.norm, suite=args.suite,
                                 steps=steps, n_checks=args.n_checks, seed=args.seed,
                                 device=device, control=control, surrogate=surrogate)
        broken = None
    except EvaluationBudgetViolation as e:  # recorded below with its failed check, exit 1
        ev, broken = e.evaluation, e
    res = ev.to_dict()
    k = int(ev.result.robust.sum())
    chance = chance_warning(ev.result.clean_acc, ds.num_classes)
    res |= {"ci95": list(wilson_ci(k, len(x))), "seconds": time.perf_counter() - t0,
            "model": str(args.checkpoint or args.model), "weights": args.weights,
            "model_kwargs": json.loads(args.model_kwargs), "scale": args.scale,
            "dataset": args.data, "seed": args.seed, "clean_at_chance": chance is not None}
    print(json.dumps(res, indent=2))
    for w in ev.warnings:
        print(f"WARNING [{w.name}] {w.detail}. {w.advice}", file=sys.stderr)
    print(f"robust accuracy {ev.result.robust_acc:.1%} (clean {ev.result.clean_acc:.1%}) on "
          f"{len(x)} images, {args.norm} eps={args.eps:g}, {res['suite']} "
          f"({', '.join(a['name'] for a in ev.result.per_attack)}); "
          f"{len(ev.warnings)} of {len(ev.checks)} sanity checks failed", file=sys.stderr)
    if chance:
        print(chance, file=sys.stderr)
    if args.out:
        with output_folder(args.out, force=args.force) as work:
            (work / "attack.json").write_text(json.dumps(res, indent=2))
        print(f"result: {args.out / 'attack.json'}", file=sys.stderr)
    if broken is not None:
        print(f"eisbench: error: {broken}", file=sys.stderr)
        return 1
    return 0


def _check_scan_flags(args: argparse.Namespace) -> None:
    """Refuse a bad number or ``--out`` of ``scan`` (a ``ValueError`` naming the flag, the value
    and the allowed range) before any model or data is loaded."""
    from eisbench.core.validate import finite, positive_int

    for flag in ("n", "steps", "batch_size"):
        positive_int(f"--{flag.replace('_', '-')}", getattr(args, flag))
    finite("--lr", args.lr, lo=0.0, lo_open=True)
    check_model_flags(args)
    finite("--lam", args.lam, lo=0.0)
    finite("--threshold", args.threshold, lo=0.0)
    if args.out:
        check_output_folder(args.out, force=args.force)


def cmd_scan(args: argparse.Namespace) -> int:
    """``scan``: reconstruct a trigger per class and flag the anomalous ones."""
    from eisbench import data
    from eisbench.core.config import resolve_device
    from eisbench.core.tensors import predict
    from eisbench.models.contract import check_model
    from eisbench.report.scan import write_scan_report
    from eisbench.tools.scan import save_scan, scan

    _check_scan_flags(args)
    device = resolve_device(args.device)
    model = place(load_model(args), device)
    ds = data.load(args.data, root=args.data_root)
    x = ds.x_test[:args.n]
    k, _ = check_model(model, x, num_classes=None, device=device)  # before the accuracy
    clean = (float((predict(model, x, device=device) == ds.y_test[:args.n]).float().mean())
             if k == ds.num_classes else None)  # None: other classes than the dataset's
    chance = chance_warning(clean, k) if clean is not None else None
    if chance:  # before minutes of scanning, and again after its verdict
        print(chance, file=sys.stderr)
    t0 = time.perf_counter()
    res = scan(model, x, method=args.method, num_classes=None, steps=args.steps,
               lr=args.lr, lam=args.lam, batch_size=args.batch_size, threshold=args.threshold,
               seed=args.seed, device=device, schedule=args.schedule)
    seconds = time.perf_counter() - t0
    print(f"{args.method} scan of {args.checkpoint or args.model} on {len(x)} {args.data} images "
          f"({seconds:.0f} s): {res.verdict()}")
    if chance:
        print(chance, file=sys.stderr)
    if args.out:
        meta = {"model": str(args.checkpoint or args.model), "weights": args.weights,
                "scale": args.scale, "data": args.data, "n": len(x), "method": args.method,
                "steps": args.steps, "schedule": args.schedule, "lr": args.lr, "lam": args.lam,
                "clean_acc": clean,
                "batch_size": args.batch_size, "threshold": args.threshold, "seed": args.seed,
                "device": str(device), "seconds": seconds}
        with output_folder(args.out, force=args.force) as work:
            path = save_scan(res, work, extra={"settings": meta})
            report = write_scan_report(res, work, meta=meta)
        print(f"result: {args.out / path.name}\nreport: {args.out / report.name}")
    return 0


def cmd_replace(args: argparse.Namespace) -> int:
    from eisbench import data
    from eisbench.core.config import resolve_device
    from eisbench.data.ood import digits_like
    from eisbench.replace import DISTILLERS
    from eisbench.replace.fidelity import distil_model
    from eisbench.report.replace import write_model_report

    device = resolve_device(args.device)
    if args.out:
        check_output_folder(args.out, force=args.force)
    names = [n for n in args.distillers.split(",") if n]
    for n in names:
        DISTILLERS.get(n)  # unknown name: clear error with the closest match
    model = place(load_model(args), device)
    ds = data.load(args.data, root=args.data_root)
    x_test = ds.x_test[:args.n_test] if args.n_test else ds.x_test
    x_ood = digits_like(ds.shape)[0] if min(ds.shape[1:]) >= 8 else None
    t0 = time.perf_counter()
    res = distil_model(model, x_train=ds.x_train, x_test=x_test, x_ood=x_ood,
                       n_fit=args.n_fit, n_val=args.n_val, distillers=names, seed=args.seed,
                       device=device)
    res |= {"model": str(args.checkpoint or args.model), "weights": args.weights,
            "dataset": args.data, "seed": args.seed, "device": str(device),
            "seconds": time.perf_counter() - t0}
    print(f"replacements of {res['model']} on {args.data} ({res['seconds']:.0f} s); agreement"
          f" with the model on {len(x_test)} test / {res['n_ood']} OOD images:")
    for name, p in res["chosen"].items():
        ood = "-" if p["agree_ood"] is None else f"{p['agree_ood']:.3f}"
        print(f"  {name:<14} size {p['size']:>6}  test {p['agree_test']:.3f}  OOD {ood}\n"
              f"      {p['description']}")
    if args.out:
        with output_folder(args.out, force=args.force) as work:
            (work / "replace.json").write_text(json.dumps(res, indent=2))
            report = write_model_report(res, work)
        print(f"result: {args.out / 'replace.json'}\nreport: {args.out / report.name}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """``audit``: the quick preset unless ``--full``; ``--dry-run`` prints the resolved
    config as JSON without loading the model or the data."""
    from eisbench.api import audit, audit_config
    from eisbench.core.config import to_plain

    sets = [*args.set, *([f"label_map={args.label_map}"] if args.label_map else [])]
    given = {"data": args.data, "data_root": args.data_root, "quick": not args.full,
             "device": args.device, "overrides": sets}
    if args.dry_run:
        print(json.dumps({"command": "audit", "model": str(args.checkpoint or args.model),
                          "weights": args.weights, "preset": "full" if args.full else "quick",
                          "config": to_plain(audit_config(**given))}, indent=2))
        return 0
    check_output_folder(args.out, force=args.force)
    model = load_model(args)
    rec = audit(model, out=args.out, name=str(args.checkpoint or args.model),
                force=args.force, track=args.track, track_uri=args.track_uri, **given)
    print(rec)
    if not args.full:
        print("(quick preset: fewer images and attack steps, the fast suite; --full for the "
              "audit whose numbers you report)", file=sys.stderr)
    clean = rec["metrics"].get("clean_acc")
    labels = rec["details"].get("labels", {})
    chance = clean and chance_warning(clean["value"], labels.get("num_classes", 10),
                                      label_map=True)
    if chance:
        print(chance, file=sys.stderr)
    broken = [n for n, s in rec["details"]["sections"].items()
              if s["status"] in ("failed", "partial")]
    if broken:
        print(f"eisbench: audit incomplete: {', '.join(broken)} did not complete (the report "
              "says why and what to do)", file=sys.stderr)
        return 1
    return 0
