"""``eisbench bench edit``: control by editing, graded against a ground truth.

1. Trojan removal. For each of the 12 trojaned zoo models (:mod:`eisbench.trojans.zoo`)
   and seed, every trigger-reconstruction tool is given the trojan's target class (as in the
   trojan benchmark) and the defender's clean data (``defender_frac`` of the training split,
   a fixed random subset); the model is then fine-tuned on that clean data with
   ``finetune.stamp_frac`` of every batch stamped with the tool's reconstruction under the
   true labels (:mod:`eisbench.edit.unlearn`). Neural Cleanse and TABOR give a mask and a
   pattern; the patch tools give ``n_patches`` patches, pasted at random positions.
   Reference rows: the true trigger (oracle) and no trigger (plain fine-tuning); baselines:
   fine-pruning, latent adversarial training (untargeted and targeted toward the trojan's
   target) and input-space adversarial training on LAT's budget at the Linf bound that
   matches LAT's clean cost on the pilot (:mod:`eisbench.edit.lat_compare`). Every row gets
   the same budget
   (:class:`~eisbench.edit.unlearn.FinetuneConfig`: steps, batch, learning rate, data); each
   row is an entry of :data:`~eisbench.bench.edit_methods.EDIT_METHODS`.
   Scores on the test set: ASR after, clean accuracy after, and DER
   (:func:`eisbench.edit.metrics.der`).
2. LAT against input-space attacks it was not trained for: PGD Linf and L2 on ``n_robust``
   test images, for the model before, after plain fine-tuning and after LAT (same budget);
   for the first seed's edits of the trojans ``suite_trojans`` (one per trigger kind) every
   robust row also gets the standard suite with every sanity check on ``n_suite`` images.
3. Capability ablation (:mod:`eisbench.edit.ablation`) on ``n_ablate`` clean zoo models: each
   unit selector names ``ablation_k`` penultimate units (``ablation_k_conv`` channels of the
   last conv layer) per class from the defender's data; zeroing them is scored by
   selectivity on the test set and on scikit-learn's digits drawn like MNIST
   (:func:`eisbench.data.ood.digits_like`).

An edit method that raises on one trojan and seed (in its tool's reconstruction, its stamper or
its fine-tuning) makes a failed cell, not a lost benchmark: the cell is recorded with its error
in ``details["failed_cells"]``, nothing is cached for it (a rerun retries it), every other cell
completes, and it is scored as a failure to defend: the model left as it was (ASR, clean and
robust accuracy as before; DER 0.5, BackdoorBench's "changes nothing"), never dropped, so every
metric keeps its n. ``bench/failed_cells`` counts them and the claims on a method with failed
cells say so.

Intervals are over the unit of replication (:mod:`eisbench.edit.metrics`; every metric's
``unit`` says which). Removal and LAT: t-intervals over trojans, each trojan its own model and
its value the mean over seeds (n = 12); comparisons are paired (same trojan, same seeds).
Ablation: the (model, class) values are nested in ``n_ablate`` clean models, so the interval is
a 95% cluster bootstrap over models (n = models) and the comparison with random units
bootstraps each model's (model, class) differences together; with fewer than 3 models it is
the metric's whole range (the quick preset's 2 models give no interval), and with 4 (the full
preset) a percentile bootstrap is too narrow (about 0.80 coverage,
:func:`~eisbench.core.stats.cluster_bootstrap_ci`): read it as a lower bound on the width.
LAT's layer and bound (``lat_layer`` = cnn-small's first conv block, ``lat_eps``) were chosen
on the pilot zoo (:data:`~eisbench.trojans.zoo.PILOT_TABLE`: 3 trojans that share no trigger
with the scored zoo) by ``benchmarks/lat_pilot.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eisbench import data as datasets
from eisbench.bench.edit_methods import BASELINES, EDIT_METHODS, REFERENCES, TOOL_ROWS, rows
from eisbench.bench.edit_stages import (
    MethodFailed,
    ablation_stage,
    before_scores,
    edit_stage,
    edit_tool_stage,
)
from eisbench.core.config import resolve_device
from eisbench.core.progress import progress, say
from eisbench.data.ood import digits_like
from eisbench.edit import ablation as abl
from eisbench.edit import lat_compare as lc
from eisbench.edit import metrics as em
from eisbench.edit.lat import LatConfig, LatentBound
from eisbench.edit.unlearn import FinetuneConfig
from eisbench.runs.claims import ci_metric
from eisbench.runs.executor import gpus_for, prefetch
from eisbench.runs.preregistered import choice, threshold
from eisbench.runs.record import Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store
from eisbench.trojans.stamp import Trojan
from eisbench.trojans.zoo import ZooRun, bench_zoo

Rows = list[list[dict[str, Any]]]  # per trojan, per seed: one edit's scores


@dataclass(frozen=True)
class EditBenchConfig:
    """The benchmark's settings; :data:`QUICK` and :data:`FULL` are the presets."""

    dataset: str = "mnist"
    data_root: str | None = None
    natural_root: str | None = None
    n_train: int | None = None  # zoo models train on the first n images (None: all)
    epochs: int | None = None  # None: the zoo preset's
    n_clean: int = 4  # clean zoo models (the ablation's models)
    defender_frac: float = 0.05  # the defender's clean data: this fraction of the train split
    n_tool_data: int = 512  # defender images the tools may use
    n_test: int | None = None  # test images for accuracy and ASR (None: all)
    tools: tuple[str, ...] = TOOL_ROWS
    tool_steps: float = 1.0  # scales every tool's default optimisation steps
    n_patches: int = 5  # patches per patch tool
    finetune: FinetuneConfig = FinetuneConfig(steps=100)
    prune_max_drop: float = 0.04
    lat_layer: str = choice("edit.lat.layer")  # chosen on a pilot: runs/preregistered.py
    lat_eps: float = threshold("edit.lat.eps")
    lat_steps: int = 3
    input_at_eps: float = threshold("edit.input_at.eps")  # Linf, matched clean cost (pilot)
    suite_trojans: tuple[int, ...] = (0, 4, 8)  # the first trojan of each trigger kind
    n_suite: int = 100  # test images of the standard suite (and its checks)
    robust_eps: float = 0.1  # PGD Linf
    robust_eps_l2: float = 1.5  # PGD L2
    robust_steps: int = 20
    n_robust: int = 500
    n_ablate: int = 4  # clean models used for ablation (<= n_clean)
    selectors: tuple[str, ...] = ()  # () = every unit selector
    ablation_k: int = 10  # penultimate units ablated per class
    ablation_k_conv: int = 8  # last-conv channels ablated per class
    n_ablation_test: int = 2000
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "cpu"

    def lat(self) -> LatConfig:
        return LatConfig(bounds=(LatentBound(self.lat_layer, self.lat_eps),),
                         steps=self.lat_steps, step_frac=2.5 / self.lat_steps)


FULL = EditBenchConfig()
QUICK = EditBenchConfig(n_clean=2, n_test=2000, tool_steps=0.5,
                        n_patches=3, finetune=FinetuneConfig(steps=60), lat_steps=2,
                        n_robust=200, robust_steps=10, n_ablate=2, n_ablation_test=1000,
                        n_suite=50, seeds=(0,))
"""Quick: the zoo of ``eisbench bench trojans`` (its full recipe, shared cache) with 2 clean
models, shorter fine-tuning, one seed."""


@dataclass(frozen=True)
class Setting:
    """What every phase shares: the zoo, the defender's data, the test set."""

    device: torch.device
    methods: list[str]  # the rows: tools, references, baselines
    selectors: list[str]
    zoo: ZooRun
    ds: datasets.ImageData
    defender: Tensors  # the defender's clean data: a fixed random subset of the train split
    tool_data: Tensors  # the first n_tool_data defender images
    test: Tensors
    n_test: int  # cfg.n_test, or every test image

    @property
    def log(self) -> StageLog:
        return self.zoo.log


def setting(cfg: EditBenchConfig, store: Store) -> Setting:
    """Check the config, load the zoo (cached) and split the data."""
    device = resolve_device(cfg.device)
    methods = rows(cfg.tools)
    selectors = abl.selector_names(cfg.selectors)
    if not cfg.seeds or not 1 <= cfg.n_ablate <= cfg.n_clean:
        raise ValueError("need at least one seed and 1 <= n_ablate <= n_clean")
    if not 0 < cfg.defender_frac <= 1:
        raise ValueError(f"defender_frac must be in (0, 1], got {cfg.defender_frac}")
    zoo, ds = bench_zoo(store, dataset=cfg.dataset, epochs=cfg.epochs, data_root=cfg.data_root,
                        natural_root=cfg.natural_root, n_train=cfg.n_train,
                        n_clean=cfg.n_clean, device=cfg.device)
    key = f"{ds.name}:{ds.sha256}"
    n_def = max(1, round(cfg.defender_frac * len(ds.x_train)))
    pick = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(12345))[:n_def]
    defender = Tensors(ds.x_train[pick], ds.y_train[pick], f"{key}:defender:{n_def}")
    n_test = len(ds.x_test) if cfg.n_test is None else cfg.n_test
    return Setting(
        device=device, methods=methods, selectors=selectors, zoo=zoo, ds=ds,
        defender=defender,
        tool_data=Tensors(defender.x[:cfg.n_tool_data], defender.y[:cfg.n_tool_data],
                          f"{defender.key}:{cfg.n_tool_data}"),
        test=Tensors(ds.x_test[:n_test], ds.y_test[:n_test], f"{key}:test:{n_test}"),
        n_test=n_test)


def edit_cell(st: Setting, cfg: EditBenchConfig, store: Store, *, method: str, i: int,
              trojan: Trojan, ev: em.TrojanEval, seed: int
              ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """One row's edit of trojan ``i``'s model for one seed (cached): its scores and the tool's
    reconstruction (None for a row without one). Raises
    :class:`~eisbench.bench.edit_stages.MethodFailed` when the method raises."""
    entry = EDIT_METHODS.get(method)
    model, mkey = st.zoo.models[i]
    tool, tkey = None, ""
    if entry.reconstruction is not None:
        tool, tkey = edit_tool_stage(store, tool=method, model=model, model_key=mkey,
                                     target=trojan.target, data=st.tool_data, cfg=cfg,
                                     seed=seed, device=st.device, log=st.log)
    try:
        stamper = entry.stamper(tool, trojan)
    except Exception as e:  # the method's stamper refused its own reconstruction
        raise MethodFailed(method, "stamper", e) from e
    r = edit_stage(store, method=method, model=model, model_key=mkey, stamper=stamper,
                   stamp_key=tkey, ev=ev, test=st.test, defender=st.defender, cfg=cfg,
                   seed=seed, device=st.device, log=st.log,
                   suite=seed == cfg.seeds[0] and i in cfg.suite_trojans)
    return r, tool


def failed_cell(err: MethodFailed, *, trojan: Trojan, model_key: str, seed: int
                ) -> dict[str, Any]:
    """The record of one failed cell (JSON-able)."""
    return {"method": err.method, "trojan": trojan.name, "model": model_key, "seed": seed,
            "step": err.step, "error": type(err.cause).__name__,
            "message": str(err.cause)[:500]}


def unedited(before: dict[str, float], cell: dict[str, Any]) -> dict[str, Any]:
    """A failed cell's scores: the model as it was before (ASR, clean and robust accuracy),
    and what failed."""
    return {**before, "failed": f"{cell['step']}: {cell['error']}: {cell['message']}"}


def remove_one(st: Setting, cfg: EditBenchConfig, store: Store, i: int, trojan: Trojan,
               ) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]],
                          dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Every row's edit of trojan ``i``'s model, per seed (cached): the model's scores before,
    each row's scores after (with DER), the tools' reconstructions of the first seed and the
    failed cells (:func:`unedited` in ``after``)."""
    model, mkey = st.zoo.models[i]
    ev = em.TrojanEval.build(trojan, st.test.x, st.test.y)
    before = before_scores(model, ev, st.test, cfg, st.device)
    after: dict[str, list[dict[str, Any]]] = {m: [] for m in st.methods}
    shown: dict[str, torch.Tensor] = {}
    failures: list[dict[str, Any]] = []
    for s in cfg.seeds:
        for m in st.methods:
            try:
                r, tool = edit_cell(st, cfg, store, method=m, i=i, trojan=trojan, ev=ev, seed=s)
            except MethodFailed as e:
                failures.append(failed_cell(e, trojan=trojan, model_key=mkey, seed=s))
                say(f"FAILED CELL: {e} on {trojan.name} (seed {s})")
                r, tool = unedited(before, failures[-1]), None
            if tool is not None and s == cfg.seeds[0]:
                shown |= {f"{trojan.name}/{m}/{k}": v for k, v in tool.items()}
            r["der"] = em.der(asr_before=before["asr"], asr_after=r["asr"],
                              acc_before=before["acc"], acc_after=r["acc"])
            after[m].append(r)
    return before, after, shown, failures


@functools.lru_cache(maxsize=1)
def _worker_setting(cfg: EditBenchConfig, root: Path) -> Setting:
    """A task's :func:`setting`, loaded once per worker process (the zoo from the cache)."""
    return setting(cfg, Store(root))


def _cell_unit(unit: tuple[EditBenchConfig, Path, str, int, int]) -> None:
    """One (method, trojan, seed) edit computed into the shared stage cache (an executor's
    task). A method that fails leaves nothing there: the caller's loop runs the cell again
    and records the failure."""
    cfg, root, method, i, seed = unit
    st = _worker_setting(cfg, root)
    trojan = st.zoo.trojans[i]
    edit_cell(st, cfg, Store(root), method=method, i=i, trojan=trojan, seed=seed,
              ev=em.TrojanEval.build(trojan, st.test.x, st.test.y))


def removal(st: Setting, cfg: EditBenchConfig, store: Store
            ) -> tuple[dict[str, Rows], list[dict[str, float]], dict[str, torch.Tensor],
                       list[dict[str, Any]]]:
    """Part 1: ``res[method][trojan][seed]``, the models' scores ``before`` editing, the
    tools' reconstructions shown in the report and the failed cells. Under a parallel
    executor every (method, trojan, seed) edit is a task first; the loop loads them."""
    prefetch(_cell_unit, [(cfg, store.root, m, i, s) for i in range(len(st.zoo.trojans))
                          for s in cfg.seeds for m in st.methods],
             what="edit cells", num_gpus=gpus_for(st.device.type))
    res: dict[str, Rows] = {m: [] for m in st.methods}
    before: list[dict[str, float]] = []
    shown: dict[str, torch.Tensor] = {}
    failures: list[dict[str, Any]] = []
    trojans = progress(st.zoo.trojans, desc="edit the trojaned models", unit="trojan")
    for i, trojan in enumerate(trojans):
        b, after, seen, failed = remove_one(st, cfg, store, i, trojan)
        before.append(b)
        shown |= seen
        failures += failed
        for m in st.methods:
            res[m].append(after[m])
    return res, before, shown, failures


def failure_summary(failed: list[dict[str, Any]], *, methods: list[str], cells: int
                    ) -> tuple[dict[str, Metric], dict[str, Any]]:
    """``bench/failed_cells`` (a count; n = cells) and the details ``failures``: per method
    how many of its ``cells`` (trojans x seeds) failed, and the methods that failed on all."""
    per = {m: {"failed": sum(c["method"] == m for c in failed), "cells": cells}
           for m in methods}
    summary = {"n": len(failed), "cells": cells * len(methods), "per_method": per,
               "every_cell": [m for m, c in per.items() if cells and c["failed"] == cells]}
    if failed:
        say(em.failure_sentence(summary))
    k = float(len(failed))
    unit = "edit cells (method x trojan x seed); a count, no interval"
    return ({"bench/failed_cells": ci_metric(k, k, k, cells * len(methods), higher=False,
                                             unit=unit)}, summary)


def ablation_data(st: Setting, cfg: EditBenchConfig) -> tuple[Tensors, Tensors]:
    """The ablation's out-of-distribution images and its first ``n_ablation_test`` test
    images."""
    ood_x, ood_y = digits_like(st.ds.shape)
    return (Tensors(ood_x, ood_y, "digits-like:" + "x".join(map(str, st.ds.shape))),
            Tensors(st.test.x[:cfg.n_ablation_test], st.test.y[:cfg.n_ablation_test],
                    f"{st.test.key}:{cfg.n_ablation_test}"))


def _ablation_unit(unit: tuple[EditBenchConfig, Path, str, int, str, int]) -> None:
    """One (layer, selector, clean model) ablation into the shared stage cache (an executor's
    task); one that raises is left to the caller's loop."""
    cfg, root, layer, k, sel, j = unit
    st = _worker_setting(cfg, root)
    ood, test = ablation_data(st, cfg)
    m_, k_ = st.zoo.clean[j]
    ablation_stage(Store(root), selector=sel, layer=layer, k=k, model=m_, model_key=k_,
                   select=st.defender, test=test, ood=ood, seed=j, device=st.device,
                   log=st.log)


def ablation_layers(cfg: EditBenchConfig) -> tuple[tuple[str, int], ...]:
    """The ablated layers, each with its units per class."""
    return ("penultimate", cfg.ablation_k), ("last-conv", cfg.ablation_k_conv)


def prefetch_ablations(st: Setting, cfg: EditBenchConfig, store: Store) -> None:
    """Under a parallel executor, every (layer, selector, clean model) ablation as a task
    into the shared stage cache; :func:`ablation` then loads them."""
    prefetch(_ablation_unit, [(cfg, store.root, layer, k, sel, j)
                              for layer, k in ablation_layers(cfg)
                              for sel in st.selectors for j in range(cfg.n_ablate)],
             what="ablation cells", num_gpus=gpus_for(st.device.type))


def ablation(st: Setting, cfg: EditBenchConfig, store: Store
             ) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], int]:
    """Part 3: ``ablations[layer][selector]`` (one effect dict per clean model) and the number
    of out-of-distribution images."""
    ood, test = ablation_data(st, cfg)
    ablations: dict[str, dict[str, list[dict[str, Any]]]] = {}
    num_classes = int(st.defender.y.max()) + 1
    for layer, k in ablation_layers(cfg):
        ablations[layer] = {}
        for sel in progress(st.selectors, desc=f"ablation {layer}", unit="selector"):
            ablations[layer][sel] = []
            for j, (m_, k_) in enumerate(st.zoo.clean[:cfg.n_ablate]):
                try:
                    eff = ablation_stage(store, selector=sel, layer=layer, k=k, model=m_,
                                         model_key=k_, select=st.defender, test=test, ood=ood,
                                         seed=j, device=st.device, log=st.log)
                except Exception as e:  # one selector on one model: a failed cell
                    say(f"FAILED CELL: selector {sel} on {layer} of clean model {j}: "
                        f"{type(e).__name__}: {e}")
                    eff = no_effect(num_classes, f"{type(e).__name__}: {e}")
                ablations[layer][sel].append(eff)
    return ablations, len(ood.y)


def no_effect(num_classes: int, error: str) -> dict[str, Any]:
    """A selector's failed cell, scored as an ablation that changed nothing: every class's
    drop and selectivity 0 on the test and OOD images (what random units give, on average),
    with the error; the metrics keep their n (models)."""
    zeros = [0.0] * num_classes
    eff = {"class_drop": zeros, "other_drop": zeros, "selectivity": zeros}
    return {"units": [], "test": eff, "ood": eff, "failed": error}


def measure(cfg: EditBenchConfig, *, out: Path, store: Store) -> Result:
    """Remove every trojan with every row (part 1, with LAT's robustness: part 2), ablate
    capabilities (part 3), summarise and judge; the tools' reconstructions go to
    ``tools.safetensors``. A method's failed cells are recorded and scored, never fatal."""
    st = setting(cfg, store)
    res, before, shown, failed = removal(st, cfg, store)
    prefetch_ablations(st, cfg, store)
    ablations, n_ood = ablation(st, cfg, store)
    metrics = em.summarise(res, before, ablations, methods=st.methods, selectors=st.selectors)
    fail_metrics, failures = failure_summary(failed, methods=st.methods,
                                             cells=len(st.zoo.trojans) * len(cfg.seeds))
    metrics |= fail_metrics
    robust_rows = [m for m in st.methods if EDIT_METHODS.get(m).robust]
    metrics |= lc.lat_metrics(res, robust_rows=robust_rows)
    details = {
        "zoo": [m.to_dict() for m in st.zoo.metrics],
        "trojans": [t.name for t in st.zoo.trojans],
        "kinds": [t.trigger.kind for t in st.zoo.trojans], "methods": st.methods,
        "tools": list(cfg.tools), "references": list(REFERENCES), "baselines": list(BASELINES),
        "before": before, "results": res, "ablation": ablations, "selectors": st.selectors,
        "n_defender": len(st.defender.x), "n_test": st.n_test, "n_ood": n_ood,
        "ood_note": "scikit-learn digits drawn like MNIST (digits_like)",
        "failed_cells": failed, "failures": failures,
        "suite_trojans": list(cfg.suite_trojans),
        "suite_checks": lc.suite_check_names(res, robust_rows),
        "failed_ablations": [{"layer": layer, "selector": sel, "model": j, "error": e["failed"]}
                             for layer, sels in ablations.items() for sel, effs in sels.items()
                             for j, e in enumerate(effs) if "failed" in e],
    }
    return Result(
        metrics=metrics,
        claims=em.edit_claims(metrics, tools=list(cfg.tools), selectors=st.selectors,
                              failures=failures)
        + lc.lat_claims(metrics, robust_rows=robust_rows, details=details,
                        tol=threshold("edit.lat_vs_input_at.clean_tolerance")),
        details=details,
        artifacts={"tools.safetensors": {k: v.contiguous() for k, v in shown.items()}},
        data={st.ds.name: st.ds.sha256}, stages=st.log.entries, device=str(st.device))
