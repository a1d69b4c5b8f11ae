"""``eisbench bench trojans``: the trojan-rediscovery benchmark (Casper et al. 2023) end to end.

1. The trojan zoo (:mod:`eisbench.trojans.zoo`): 12 trojaned and ``n_clean`` clean
   models, cached. Only the trojans that meet the implant targets (ASR, clean-accuracy drop)
   grade the tools, attribution and detection; the others are reported apart, and with fewer
   than :data:`~eisbench.bench.trojan_scores.MIN_GRADED` graded the tool-success and
   detection claims are inconclusive (:mod:`eisbench.bench.trojan_control`).
2. The judge (:mod:`eisbench.trojans.judge`), trained on trigger views only (never on a model
   under test) and validated before it is trusted: accuracy on views of the true trigger
   (target >= 0.95) and no favourite option on noise.
3. Every tool of :data:`~eisbench.tools.TOOLS` makes ``n_images`` images per graded trojan and
   seed from clean test images (cached per tool, model, target and seed: adding a tool runs
   only it).
4. 8-way questions: the judge compares the tool's images with the 8 triggers of the trojan's
   kind (the true one and 7 distractors). Success per tool, for all tools together and the
   best pair (:mod:`eisbench.bench.trojan_scores`), with two reference rows: noise images (a
   tool that shows nothing) and views of the true trigger (a tool that shows it).
5. The clean-model control: every tool on a clean zoo model with each graded trojan's target,
   asked the same question; its success there is the tool's chance rate, and the lift is the
   trojan success minus it.
6. The 16 captum attribution methods and two baselines on poisoned images of the graded patch
   trojans, scored by correlation with the trigger's footprint
   (:mod:`eisbench.bench.trojan_probes`).
7. Detection: Neural Cleanse and TABOR scans of every graded trojaned and every clean model;
   AUROC of the anomaly index of the smallest-trigger class, with a bootstrap CI.

A tool that raises on one cell (one model, target and seed) makes a failed cell, not a lost
benchmark (:mod:`eisbench.bench.trojan_cells`): it is recorded with its error in
``details["failed_cells"]``, scored against its tool, counted by ``bench/failed_cells``, and
retried by the next run (nothing is cached for it).

Success rates: the mean over graded trojans of each trojan's success over tool seeds; the 95%
interval is a percentile bootstrap over trojans, clustered by model (a tool's questions on one
trojan are not independent, so the trojans are the sample); ``details["units"]`` states the
unit of every metric.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eisbench import data as datasets
from eisbench.bench import trojan_cells as cells
from eisbench.bench import trojan_control as control
from eisbench.bench import trojan_judges as tj
from eisbench.bench import trojan_scores as scores
from eisbench.bench.trojan_control import Grid
from eisbench.bench.trojan_probes import attribution, detection
from eisbench.bench.trojan_quiz import Banks, answer_index, reference_images, write_quiz
from eisbench.core.config import resolve_device
from eisbench.core.progress import progress, say
from eisbench.runs.record import Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store
from eisbench.tools import TOOLS
from eisbench.trojans.bank import trigger_bank
from eisbench.trojans.judge import JudgeConfig, judge_stage
from eisbench.trojans.stamp import TRIGGER_KINDS as KINDS
from eisbench.trojans.stamp import Trigger, Trojan
from eisbench.trojans.views import layers
from eisbench.trojans.zoo import ZooRun, bench_zoo

CASPER = {"best_single": 0.47, "all": 0.49}  # human success, Casper et al. (2023), ImageNet
REFERENCES = ("noise", "trigger-views")  # rows that are not tools
Sims = dict[str, dict[int, torch.Tensor]]  # row -> seed -> (graded trojans, 8) similarities


@dataclass(frozen=True)
class TrojanBenchConfig:
    """The benchmark's settings; :data:`QUICK` and :data:`FULL` are the presets."""

    dataset: str = "mnist"
    data_root: str | None = None
    natural_root: str | None = None  # folder of the dataset natural triggers come from
    arch: str | None = None  # the zoo models' architecture (None: the zoo preset's)
    arch_width: int | None = None  # its ``width`` argument (None: the zoo preset's)
    n_train: int | None = None  # zoo models train on the first n images (None: all)
    epochs: int | None = None  # None: the zoo preset's
    n_clean: int = 8
    tools: tuple[str, ...] = ()  # () = every registered tool
    tool_steps: float = 1.0  # scales every tool's default number of optimisation steps
    n_images: int = 10  # per tool, trojan and seed
    n_data: int = 512  # clean test images the tools may use
    judge_steps: int = 2000
    judge_trials: int = 10  # validation questions per trigger
    n_attr: int = 32  # poisoned images per patch trojan for attribution
    scan_methods: tuple[str, ...] = ("neural-cleanse", "tabor")
    scan_steps: int = 200
    n_scan: int = 256  # clean test images per scan
    seeds: tuple[int, ...] = (0, 1, 2)  # tool seeds
    device: str = "cpu"


FULL = TrojanBenchConfig()
QUICK = TrojanBenchConfig(n_clean=4, tool_steps=0.5, judge_trials=5, n_attr=16,
                          scan_methods=("neural-cleanse",), scan_steps=100, n_scan=128,
                          seeds=(0,))
"""Quick: the full zoo recipe with 4 clean models instead of 8 (the zoo is cached and shared with
full mode), half the tool steps, one tool seed, Neural Cleanse scans only.
No cheaper zoo met the implant targets on both datasets: on MNIST, 20k images x 4 epochs missed
4 of the 12 trojans and 30k x 6 still missed the universal natural trojan 3 (ASR 0.875); on
Fashion-MNIST 20k x 4 missed 6 and 60k x 4 missed patch 3 (``benchmarks/trojan_zoo.py``).
The judge is the full one (1000 steps left patch views at 0.48 accuracy); it is cached and
shared with full mode."""

CIFAR10 = dataclasses.replace(FULL, dataset="cifar10", arch="preact-resnet18")
"""CIFAR-10 (``eisbench.run("trojans", "cifar10", data_root=DIR)``): the full benchmark on the
zoo's CIFAR-10 recipe (:data:`~eisbench.trojans.zoo.PRESETS`: PreAct ResNet-18, 30 epochs,
untuned) with Casper et al. 2023's three trigger kinds scaled to 32x32 colour images
(:mod:`eisbench.trojans.bank`: 6-px patches, full-size style textures, 13-px natural objects,
the natural ones Fashion-MNIST items tinted one colour each, from ``natural_root``). Casper
et al. work on ImageNet; every size here is the bank's rule for the image shape, not theirs."""


def tool_names(cfg: TrojanBenchConfig) -> list[str]:
    """The tools benchmarked (default: every registered one); an unknown name fails here."""
    names = list(cfg.tools) or sorted(TOOLS.names())
    for n in names:
        TOOLS.get(n)  # an unknown name fails here, with suggestions
    return names


@dataclass(frozen=True)
class Setting:
    """What every phase shares: the zoo, which of its trojans are graded, the data each part
    may use, the judge's options."""

    device: torch.device
    names: list[str]  # the tools benchmarked
    zoo: ZooRun
    graded: list[int]  # indices of the zoo's trojans that meet the implant targets
    ds: datasets.ImageData
    tool_data: Tensors  # the first n_data test images
    scan_data: Tensors  # the first n_scan test images
    test: Tensors
    train: Tensors
    banks: Banks
    answers: list[int]  # per graded trojan, the true option's index in its kind's bank

    @property
    def log(self) -> StageLog:
        return self.zoo.log

    @property
    def rows(self) -> list[str]:
        return [*self.names, *REFERENCES]

    @property
    def trojans(self) -> list[Trojan]:
        """The graded trojans."""
        return [self.zoo.trojans[i] for i in self.graded]

    @property
    def models(self) -> list[tuple[nn.Module, str]]:
        """The graded trojans' models and their cache keys."""
        return [self.zoo.models[i] for i in self.graded]


def setting(cfg: TrojanBenchConfig, store: Store) -> Setting:
    """Check the config, load the zoo (cached), pick the trojans that meet the implant targets,
    slice the data and build the trigger banks."""
    device = resolve_device(cfg.device)
    names = tool_names(cfg)
    if not cfg.seeds or cfg.n_clean < 2:
        raise ValueError("need at least one seed and n_clean >= 2 (detection AUROC)")
    zoo, ds = bench_zoo(store, dataset=cfg.dataset, epochs=cfg.epochs, data_root=cfg.data_root,
                        natural_root=cfg.natural_root, n_train=cfg.n_train,
                        n_clean=cfg.n_clean, device=cfg.device, arch=cfg.arch,
                        arch_width=cfg.arch_width)
    graded = control.graded_indices(zoo.metrics)
    say(f"grading on {len(graded)} of {len(zoo.trojans)} implanted trojans (the others miss "
        "the implant targets)")
    key = f"{ds.name}:{ds.sha256}"
    banks = {k: trigger_bank(k, dataset=cfg.dataset, shape=ds.shape, data_root=cfg.natural_root)
             for k in KINDS}
    return Setting(
        device=device, names=names, zoo=zoo, graded=graded, ds=ds,
        tool_data=Tensors(ds.x_test[:cfg.n_data], ds.y_test[:cfg.n_data],
                          f"{key}:test:{cfg.n_data}"),
        scan_data=Tensors(ds.x_test[:cfg.n_scan], ds.y_test[:cfg.n_scan],
                          f"{key}:test:{cfg.n_scan}"),
        test=Tensors(ds.x_test, ds.y_test, f"{key}:test:{len(ds.x_test)}"),
        train=Tensors(ds.x_train, ds.y_train, f"{key}:train:{len(ds.x_train)}"),
        banks=banks, answers=[answer_index(banks[zoo.trojans[i].trigger.kind], zoo.trojans[i])
                              for i in graded])


def train_judge(st: Setting, cfg: TrojanBenchConfig,
                store: Store) -> tuple[tj.Judges, dict[str, Any]]:
    """The judge, trained on trigger views and clean training images only (cached), and the
    validation of it and of the second judge (:func:`~eisbench.bench.trojan_judges.check_judges`)
    on questions whose answer is known, on clean test images the tools never see."""
    say("judge: training on trigger views")
    enc, _ = judge_stage(store, banks=st.banks, shape=st.ds.shape, data=st.train,
                         cfg=JudgeConfig(steps=cfg.judge_steps), device=st.device, log=st.log)
    say("judges: validating (true-trigger views, noise, held-out view families)")
    judges = tj.judge_scorers(enc, shape=st.ds.shape)
    return judges, tj.check_judges(judges, banks=st.banks, shape=st.ds.shape,
                                   n_trials=cfg.judge_trials, data=st.ds.x_test[-2000:])


def judged(judge: tj.Scorer, imgs: torch.Tensor | None, opts: list[Trigger]) -> torch.Tensor:
    """The judge's similarities (8,) of ``imgs`` to the options; a failed cell's (no images)
    are :data:`~eisbench.bench.trojan_scores.MISSING`. A judge that gives a non-finite
    similarity about real images is a bug, raised here, never a failed cell."""
    if imgs is None:
        return torch.full((len(opts),), scores.MISSING)
    s = judge(imgs, opts)
    if not torch.isfinite(s).all():
        raise ValueError(f"the judge gave non-finite similarities {s.tolist()}")
    return s


def ask_models(st: Setting, cfg: TrojanBenchConfig, store: Store, judges: tj.Judges, *,
               models: list[tuple[nn.Module, str]], rows: list[str], desc: str,
               phase: str = "trojan") -> tuple[Sims, Sims, dict[str, torch.Tensor],
                                              list[dict[str, Any]]]:
    """Each row's images of ``models[j]`` (aligned with the graded trojans; tools cached) for
    graded trojan j's target, asked of the judge and of the second judge with that trojan's
    options: ``sims[row][seed]`` and ``sims2[row][seed]`` (graded trojans, 8), the images of
    the first seed (``shown``) and the failed cells (:func:`~eisbench.bench.trojan_cells.
    tool_cell`: their similarities are rows of NaN, their images absent)."""
    lays = {k: {"layers": layers(st.banks[k], st.ds.shape)} for k in KINDS}
    sims = {r: {s: torch.zeros(len(st.graded), 8) for s in cfg.seeds} for r in rows}
    sims2 = {r: {s: torch.zeros(len(st.graded), 8) for s in cfg.seeds} for r in rows}
    shown: dict[str, torch.Tensor] = {}
    failures: list[dict[str, Any]] = []
    jobs = [(j, s, r) for j in range(len(st.graded)) for s in cfg.seeds for r in rows]
    cells.prefetch_cells(store, [
        {"name": r, "model": models[j][0], "model_key": models[j][1], "seed": s, "cfg": cfg,
         "trojan": st.zoo.trojans[st.graded[j]], "data": st.tool_data, "device": st.device}
        for j, s, r in jobs if r not in REFERENCES], device=st.device)
    for j, s, r in progress(jobs, desc=f"{desc} (trojan x seed x tool)", unit="cell"):
        i, trojan, (model, mkey) = st.graded[j], st.zoo.trojans[st.graded[j]], models[j]
        imgs: torch.Tensor | None
        if r in REFERENCES:
            imgs = reference_images(r, i, lay=lays[trojan.trigger.kind], answer=st.answers[j],
                                    data=st.tool_data.x, n=cfg.n_images, seed=s)
        else:
            imgs = cells.tool_cell(store, name=r, model=model, model_key=mkey, trojan=trojan,
                                   data=st.tool_data, cfg=cfg, seed=s, device=st.device,
                                   log=st.log, phase=phase, failures=failures)
        opts = st.banks[trojan.trigger.kind]
        sims[r][s][j] = judged(judges[tj.FIRST_JUDGE], imgs, opts)
        sims2[r][s][j] = judged(judges[tj.SECOND_JUDGE], imgs, opts)
        if s == cfg.seeds[0] and imgs is not None:
            shown[f"{trojan.name}/{r}"] = imgs.contiguous()
    return sims, sims2, shown, failures


def ask_tools(st: Setting, cfg: TrojanBenchConfig, store: Store, judges: tj.Judges
              ) -> tuple[Sims, Sims, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Every row's images for every graded trojan and seed, from its trojaned model, asked of
    both judges (:func:`ask_models`); ``shown`` also holds each kind's options."""
    sims, sims2, shown, failures = ask_models(st, cfg, store, judges, models=st.models,
                                              rows=st.rows, desc="tools")
    for k in KINDS:
        shown[f"options/{k}"] = torch.stack([t.image(st.ds.shape)
                                             for t in st.banks[k]]).contiguous()
    return sims, sims2, shown, failures


def grids(st: Setting, cfg: TrojanBenchConfig, sims: Sims, rows: list[str], *,
          with_pairs: bool = True, missing: bool = False
          ) -> tuple[dict[str, Grid], list[list[str]]]:
    """Per row, for all tools together (``all``) and (``with_pairs``) the best pair with its
    leave-one-trojan-out estimate (``best_pair_cv``): whether the judge picks the true option,
    per graded trojan and seed; and the best pair of each seed. A failed cell (and an ``all``
    question every tool failed) counts as ``missing``: a miss on the trojans, a hit on the
    clean control."""
    def per_seed(row_sims: dict[int, torch.Tensor]) -> list[list[bool]]:  # (seeds, trojans)
        return [scores.success_grid({"r": row_sims[s]}, answers=st.answers,
                                    missing=missing)["r"] for s in cfg.seeds]

    by_seed = {r: per_seed(sims[r]) for r in rows}
    by_seed["all"] = per_seed({s: scores.combine({n: sims[n][s] for n in st.names}, st.names)
                               for s in cfg.seeds})
    pairs = []
    if with_pairs and len(st.names) >= 2 and st.graded:
        bps = [scores.best_pair({n: sims[n][s] for n in st.names}, answers=st.answers)
               for s in cfg.seeds]
        by_seed["best_pair"] = [bp.correct for bp in bps]
        by_seed["best_pair_cv"] = [bp.cv_correct for bp in bps]
        pairs = [list(bp.pair) for bp in bps]
    return {r: [list(t) for t in zip(*g, strict=True)] for r, g in by_seed.items()}, pairs


def success(st: Setting, grid: dict[str, Grid]) -> dict[str, Metric]:
    """``tool/{row}/success_rate`` for every row of ``grid``: the mean over graded trojans of
    the success fraction over seeds, with a bootstrap interval over trojans clustered by model
    (none when no trojan is graded)."""
    if not st.graded:
        return {}
    keys = [k for _, k in st.models]
    return {f"tool/{r}/success_rate": scores.mean_metric(control.rates(g), keys,
                                                         unit=scores.GRADED)
            for r, g in grid.items()}


def clean_control(st: Setting, cfg: TrojanBenchConfig, store: Store, judges: tj.Judges,
                  grid: dict[str, Grid]) -> tuple[dict[str, Metric], dict[str, Any]]:
    """Every tool on the zoo's clean models, asked each graded trojan's question
    (:mod:`~eisbench.bench.trojan_control`): ``tool/{tool|all}/clean_success_rate`` and
    ``.../lift``, and the details ``control`` (its failed cells under ``failed_cells``)."""
    which = control.control_models([t.target for t in st.trojans], n_clean=len(st.zoo.clean))
    models = [st.zoo.clean[k] for k in which]
    sims, _, _, failures = ask_models(st, cfg, store, judges, models=models, rows=st.names,
                                      desc="clean control", phase="clean control")
    cgrid, _ = grids(st, cfg, sims, st.names, with_pairs=False, missing=True)
    details = {"clean_models": which, "grid": cgrid, "failed_cells": failures,
               "choices": {r: {str(s): tj.choices(sims[r][s]).tolist() for s in cfg.seeds}
                           for r in st.names}}
    if not st.graded:
        return {}, details
    return control.control_metrics(grid, cgrid, trojan_keys=[k for _, k in st.models],
                                   clean_keys=[k for _, k in models]), details


def measure(cfg: TrojanBenchConfig, *, out: Path, store: Store) -> Result:
    """Load the zoo, train the judge, ask it about every tool's images on the graded trojans
    and on the clean control, score attribution and detection, judge the claims; the images
    go to ``tool_images.safetensors`` and the questions to ``quiz.html`` (answers in
    ``quiz.key.json``). A tool's failed cells are recorded and scored, never fatal."""
    st = setting(cfg, store)
    judges, val = train_judge(st, cfg, store)
    sims, sims2, shown, failed = ask_tools(st, cfg, store, judges)
    out.mkdir(parents=True, exist_ok=True)
    quiz_page, _ = write_quiz(shown, st.trojans, st.names, banks=st.banks,
                              answers=st.answers, out=out / "quiz.html")
    grid, pairs = grids(st, cfg, sims, st.rows)
    keys = [k for _, k in st.models]
    second_metrics, second = tj.second_opinion(sims, sims2, rows=st.names, seeds=cfg.seeds,
                                               answers=st.answers, keys=keys)
    comb_metrics, comb = tj.combination(sims, tools=st.names, seeds=cfg.seeds,
                                        answers=st.answers, keys=keys)
    metrics = success(st, grid) | tj.judge_metrics(val) | second_metrics | comb_metrics
    ctl_metrics, ctl = clean_control(st, cfg, store, judges, grid)
    fail_metrics, fail = cells.failures(failed + ctl.pop("failed_cells"), tools=st.names,
                                        cells_per_tool=2 * len(st.graded) * len(cfg.seeds))
    attr_metrics, attr = attribution(st.zoo, st.test, graded=st.graded, n=cfg.n_attr,
                                     device=st.device)
    det_metrics, det = detection(store, st.zoo, st.scan_data, graded=st.graded,
                                 methods=cfg.scan_methods, steps=cfg.scan_steps,
                                 device=st.device, log=st.log)
    metrics |= ctl_metrics | fail_metrics | attr_metrics | det_metrics
    details = {
        "zoo": [m.to_dict() for m in st.zoo.metrics],
        "graded": control.graded_details(st.zoo.metrics, st.graded),
        "trojans": [t.name for t in st.trojans],
        "kinds": [t.trigger.kind for t in st.trojans], "answers": st.answers,
        "options": {k: [t.name for t in st.banks[k]] for k in KINDS}, "tools": st.names,
        "references": list(REFERENCES), "grid": grid, "best_pairs": pairs,
        "choices": {r: {str(s): tj.choices(sims[r][s]).tolist() for s in cfg.seeds}
                    for r in st.rows},
        "control": ctl, "units": scores.UNITS, "judge": val, "second_judge": second,
        "combination": comb, **attr, "detection": det, **fail,
        "casper": CASPER, "quiz": quiz_page.name,
    }
    return Result(metrics=metrics, claims=scores.decide(metrics, details, st.names),
                  details=details, artifacts={"tool_images.safetensors": shown},
                  data={st.ds.name: st.ds.sha256}, stages=st.log.entries,
                  device=str(st.device))
