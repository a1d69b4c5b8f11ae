"""The trojan benchmark's other two families of tools (:mod:`eisbench.bench.trojans`, parts 6
and 7), on the trojans that meet the implant targets (``graded``): attribution methods scored
on poisoned images of the patch trojans, and detection of trojaned models by
trigger-reconstruction scans.

- Attribution: the captum methods and two baselines
  (:func:`~eisbench.tools.attribution_scores.score_methods`) on up to ``n`` source test images
  stamped with the trigger that the model sends to the target; score: correlation with the
  trigger's footprint, averaged over the images pooled from every graded patch trojan, with a
  bootstrap interval over those trojans (the images of one model move together).
- Detection: a scan of every class of every graded trojaned and every clean model (cached); a
  model's score is the anomaly index of its smallest-trigger class (:func:`suspicion`); AUROC
  with a bootstrap CI (:func:`~eisbench.bench.trojan_scores.detection_auroc`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eisbench.bench import trojan_scores as scores
from eisbench.core.progress import say
from eisbench.core.tensors import predict
from eisbench.runs.executor import gpus_for, prefetch
from eisbench.runs.record import Metric
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store
from eisbench.tools.attribution_scores import score_methods
from eisbench.tools.scan import ScanResult, load_scan, save_scan, scan
from eisbench.trojans.stamp import Trojan, source_mask, stamp
from eisbench.trojans.zoo import ZooRun


def poisoned_images(model: nn.Module, trojan: Trojan, test: Tensors, *, n: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` source test images stamped with the trigger that the model sends to the
    target, and their footprints: (n, C, H, W), (n, 1, H, W)."""
    keep = source_mask(test.y, trojan)
    x = test.x[keep][: 4 * n]
    xs, foot = stamp(x, trojan.trigger, generator=torch.Generator().manual_seed(0))
    hit = predict(model, xs, device=device) == trojan.target
    return xs[hit][:n], foot[hit][:n]


def attribution(zoo: ZooRun, test: Tensors, *, graded: Sequence[int], n: int,
                device: torch.device) -> tuple[dict[str, Metric], dict[str, Any]]:
    """Every attribution method on the graded patch trojans: metrics
    ``attribution/{method}/correlation`` (the mean over the pooled images, with a bootstrap
    interval over trojans: images of one model are not independent) and the details
    ``attribution`` (per trojan), ``attribution_images`` (per image), ``attribution_skipped``."""
    rows: dict[str, list[float]] = {}
    models: dict[str, list[str]] = {}  # per method, the model of each image
    per_trojan: dict[str, dict[str, float | None]] = {}
    skipped: dict[str, str] = {}
    for i in graded:
        trojan, (model, key) = zoo.trojans[i], zoo.models[i]
        if trojan.trigger.kind != "patch":
            continue
        x, foot = poisoned_images(model, trojan, test, n=n, device=device)
        res = score_methods(model, x.to(device), trojan.target, foot.to(device),
                            generator=torch.Generator().manual_seed(i))
        per_trojan[trojan.name] = {m.name: m.mean for m in res}
        for m in res:
            if m.skipped:
                skipped[m.name] = m.skipped
            rows.setdefault(m.name, []).extend(m.per_image)
            models.setdefault(m.name, []).extend([key] * len(m.per_image))
    metrics = {f"attribution/{name}/correlation":
               scores.mean_metric(vals, models[name], lower=-1.0, upper=1.0,
                                  unit="graded patch trojans' models")
               for name, vals in rows.items() if vals}
    return metrics, {"attribution": per_trojan, "attribution_images": rows,
                     "attribution_skipped": skipped}


BENCH_SCAN_SCHEDULE = "eisbench-v1"
"""The cost schedule of the benchmark's scans: still the earlier one, whose figures the README
reports; Wang et al.'s published schedule (the scan's default) runs to convergence at a cost
not yet measured inside this benchmark (``benchmarks/scan_recipes.py`` compares them)."""


def scan_stage(store: Store, *, method: str, model: nn.Module, model_key: str, data: Tensors,
               steps: int, device: torch.device, log: StageLog) -> ScanResult:
    """A trigger-reconstruction scan of every class (cached)."""
    def compute(work: Path) -> ScanResult:
        return scan(model, data.x, method=method, steps=steps, schedule=BENCH_SCAN_SCHEDULE,
                    generator=torch.Generator().manual_seed(0), device=device)

    def save(res: ScanResult, d: Path) -> None:
        save_scan(res, d)

    params = {"method": method, "steps": steps, "n": len(data.x), "device": device.type,
              "schedule": BENCH_SCAN_SCHEDULE}
    out, _ = store.run("scan", params, inputs=(model_key, data.key), compute=compute,
                       save=save, load=load_scan, log=log)
    return out


def _scan_unit(unit: tuple[Path, dict[str, Any]]) -> None:
    """One scan computed into the shared stage cache (an executor's task); a scan that fails
    leaves nothing there, and the caller's loop records the failure."""
    root, kwargs = unit
    scan_stage(Store(root), log=StageLog(), **kwargs)


def try_scan(key: str, method: str, run: Callable[[], ScanResult]) -> ScanResult | str:
    """``run()``, or the error it raised as ``"Type: message"``: a scan that fails on one model
    is a failed cell of detection, scored against the method (:func:`detect`)."""
    try:
        return run()
    except Exception as e:  # one model's failure must not lose the benchmark
        say(f"FAILED CELL: {method} scan of {key}: {type(e).__name__}: {e}")
        return f"{type(e).__name__}: {e}"


def suspicion(res: ScanResult) -> float:
    """A model's detection score: the anomaly index of its smallest-trigger class."""
    return res.anomaly_index[min(range(len(res.l1)), key=lambda k: res.l1[k])]


def _scores(res_t: list[ScanResult | str], res_c: list[ScanResult | str]
            ) -> tuple[list[float], list[float]]:
    """Detection scores; a failed scan gets the worst score for the method: below every
    finite score on a trojaned model (missed), above every one on a clean model (alarm)."""
    ok = [suspicion(r) for r in (*res_t, *res_c) if not isinstance(r, str)]
    finite = [v for v in ok if math.isfinite(v)] or [0.0]
    low, high = min(finite) - 1.0, max(finite) + 1.0
    return ([low if isinstance(r, str) else suspicion(r) for r in res_t],
            [high if isinstance(r, str) else suspicion(r) for r in res_c])


def _curves(res: ScanResult) -> list[dict[str, Any] | None]:
    """Each class's loss curve and the step its best mask L1 stopped dropping."""
    return [None if c is None else c.to_dict() | {"converged_step": c.converged_step}
            for c in res.curves]


def detect(trojans: list[Trojan], res_t: list[ScanResult | str],
           res_c: list[ScanResult | str],
           method: str) -> tuple[dict[str, Metric], dict[str, Any]]:
    """One scan method's metrics (AUROC, target found, false alarms) and details from the
    scans of the trojaned (``res_t``, aligned with ``trojans``) and clean (``res_c``) models.
    A failed scan (its error string) counts against the method: a trojaned model missed, a
    clean model flagged; n is unchanged and the details list each failure."""
    st, sc = _scores(res_t, res_c)
    det = scores.detection_auroc(st, sc, generator=torch.Generator().manual_seed(2))
    hits = [not isinstance(r, str) and r.suspect == t.target
            for r, t in zip(res_t, trojans, strict=True)]
    fp = [isinstance(r, str) or r.suspect is not None for r in res_c]
    failed = ([{"model": t.name, "error": r} for r, t in zip(res_t, trojans, strict=True)
               if isinstance(r, str)]
              + [{"model": f"clean {j}", "error": r} for j, r in enumerate(res_c)
                 if isinstance(r, str)])
    metrics = {
        f"detection/{method}/auroc": scores.ci_metric(
            det.auroc, *det.ci95, det.n_trojaned + det.n_clean,
            unit="graded trojaned + clean models (95% stratified bootstrap)"),
        f"detection/{method}/target_found": scores.rate(hits, unit="graded trojaned models"),
        f"detection/{method}/false_alarm": scores.rate(fp, higher_is_better=False,
                                                       unit=scores.CLEAN)}
    details = det.to_dict() | {
        "trojaned": [{"trojan": t.name, "score": s_, "target": t.target, "failed": r}
                     if isinstance(r, str) else
                     {"trojan": t.name, "score": s_, "suspect": r.suspect, "target": t.target,
                      "bbox": list(r.trigger.bbox) if r.trigger else None,
                      "tabor_suspect": r.tabor_suspect, "curves": _curves(r)}
                     for t, r, s_ in zip(trojans, res_t, st, strict=True)],
        "clean": [{"score": s_, "failed": r} if isinstance(r, str) else
                  {"score": s_, "suspect": r.suspect, "tabor_suspect": r.tabor_suspect,
                   "curves": _curves(r)} for r, s_ in zip(res_c, sc, strict=True)],
        "failed_scans": failed}
    return metrics, details


def detection(store: Store, zoo: ZooRun, data: Tensors, *, graded: Sequence[int],
              methods: tuple[str, ...], steps: int, device: torch.device, log: StageLog
              ) -> tuple[dict[str, Metric], dict[str, Any]]:
    """Scan every graded trojaned and every clean model with each method (cached): the
    metrics ``detection/{method}/...`` and ``detection/auroc`` (the first method's), and the
    details per method. With fewer than 2 graded trojans no AUROC can be computed: nothing is
    scanned and each method's details say why (``skipped``)."""
    if len(graded) < 2:
        why = f"{len(graded)} trojan(s) meet the implant targets; AUROC needs 2"
        return {}, {method: {"skipped": why} for method in methods}
    metrics: dict[str, Metric] = {}
    details: dict[str, Any] = {}
    trojans = [zoo.trojans[i] for i in graded]
    prefetch(_scan_unit, [(store.root, {"method": method, "model": m, "model_key": k,
                                        "data": data, "steps": steps, "device": device})
                          for method in methods
                          for m, k in [*(zoo.models[i] for i in graded), *zoo.clean]],
             what="scans", num_gpus=gpus_for(device.type))  # tasks first; the loop loads them
    for method in methods:
        def one(m: nn.Module, k: str, method: str = method) -> ScanResult | str:
            return try_scan(k, method, lambda: scan_stage(
                store, method=method, model=m, model_key=k, data=data, steps=steps,
                device=device, log=log))

        res_t = [one(m, k) for m, k in (zoo.models[i] for i in graded)]
        res_c = [one(m, k) for m, k in zoo.clean]
        m_, details[method] = detect(trojans, res_t, res_c, method)
        metrics |= m_
    if methods:
        metrics["detection/auroc"] = metrics[f"detection/{methods[0]}/auroc"]
    return metrics, details
