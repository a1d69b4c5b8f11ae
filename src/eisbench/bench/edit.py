"""``eisbench bench edit``: control by editing, graded against a ground truth.

1. Trojan removal. For each of the 12 trojaned zoo models (:mod:`eisbench.trojans.zoo`)
   and seed, every trigger-reconstruction tool is given the trojan's target class (as in the
   trojan benchmark) and the defender's clean data (``defender_frac`` of the training split,
   a fixed random subset); the model is then fine-tuned on that clean data with
   ``finetune.stamp_frac`` of every batch stamped with the tool's reconstruction under the
   true labels (:mod:`eisbench.edit.unlearn`). Neural Cleanse and TABOR give a mask and a
   pattern; the patch tools give ``n_patches`` patches, pasted at random positions.
   Reference rows: the true trigger (oracle) and no trigger (plain fine-tuning); baselines:
   fine-pruning and latent adversarial training. Every row gets the same budget
   (:class:`~eisbench.edit.unlearn.FinetuneConfig`: steps, batch, learning rate, data).
   Scores on the test set: ASR after, clean accuracy after, and DER
   (:func:`eisbench.edit.metrics.der`).
2. LAT against input-space attacks it was not trained for: PGD Linf and L2 on ``n_robust``
   test images, for the model before, after plain fine-tuning and after LAT (same budget).
3. Capability ablation (:mod:`eisbench.edit.ablation`) on ``n_ablate`` clean zoo models: each
   unit selector names ``ablation_k`` penultimate units (``ablation_k_conv`` channels of the
   last conv layer) per class from the defender's data; zeroing them is scored by
   selectivity on the test set and on scikit-learn's digits drawn like MNIST
   (:func:`eisbench.data.ood.digits_like`).

Intervals: t-intervals over trojans (each the mean over seeds; n = 12) for removal and LAT,
over (model, class) pairs for ablation; comparisons are paired (same trojan, same seeds).
LAT's layer and bound (``lat_layer`` = cnn-small's first conv block, ``lat_eps``) were chosen
on a pilot of 3 zoo trojans with seed 0.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.attacks.evaluate import AttackConfig, correct_under_attack
from eisbench.core.config import resolve_device, to_plain
from eisbench.core.progress import progress
from eisbench.data.ood import digits_like
from eisbench.edit import ablation as abl
from eisbench.edit import metrics as em
from eisbench.edit.baselines import fine_prune, finetune
from eisbench.edit.lat import LatConfig, LatentBound, lat_finetune
from eisbench.edit.unlearn import (
    FinetuneConfig,
    Stamper,
    centre_crop,
    mask_stamper,
    patch_stamper,
    trigger_stamper,
    unlearn,
)
from eisbench.runs.record import SCHEMA_VERSION, Record, git_state, library_versions, now
from eisbench.runs.record import write as write_record
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store
from eisbench.tools import TOOLS
from eisbench.tools.adversarial_patch import default_side
from eisbench.tools.trigger_reconstruction import reconstruct_trigger
from eisbench.trojans.zoo import bench_zoo

MASK_TOOLS = ("neural-cleanse", "tabor")  # reconstruct (mask, pattern)
PATCH_SIDE = {"adversarial-patch": 0.25, "snafue": 0.25, "feature-adversary-generator": 1 / 3,
              "feature-adversary-perturbation": 1 / 3}  # patch side / image side
REFERENCES = ("true-trigger", "no-trigger")
BASELINES = ("fine-pruning", "lat")
ROBUST = ("no-trigger", "lat")  # rows whose input-space robustness is measured


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
    tools: tuple[str, ...] = (*MASK_TOOLS, *PATCH_SIDE)
    tool_steps: float = 1.0  # scales every tool's default optimisation steps
    n_patches: int = 5  # patches per patch tool
    finetune: FinetuneConfig = FinetuneConfig(steps=100)
    prune_max_drop: float = 0.04
    lat_layer: str = "body.1"
    lat_eps: float = 0.5
    lat_steps: int = 3
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
QUICK = EditBenchConfig(n_train=20000, epochs=4, n_clean=2, n_test=2000, tool_steps=0.5,
                        n_patches=3, finetune=FinetuneConfig(steps=60), lat_steps=2,
                        n_robust=200, robust_steps=10, n_ablate=2, n_ablation_test=1000,
                        seeds=(0,))
"""Quick: the quick zoo of ``eisbench bench trojans --quick`` (shared cache; its trojans are
weaker: mean ASR ~0.9), shorter fine-tuning, one seed."""


def _methods(cfg: EditBenchConfig) -> list[str]:
    for t in cfg.tools:
        if t not in MASK_TOOLS and t not in PATCH_SIDE:
            TOOLS.get(t)  # unknown: fails with suggestions
            raise ValueError(f"tool {t!r} gives no trigger to stamp: use one of "
                             f"{', '.join((*MASK_TOOLS, *PATCH_SIDE))}")
    return [*cfg.tools, *REFERENCES, *BASELINES]


def _steps(name: str, cfg: EditBenchConfig) -> int:
    fn = reconstruct_trigger if name in MASK_TOOLS else TOOLS.get(name)
    return max(1, round(inspect.signature(fn).parameters["steps"].default * cfg.tool_steps))


def _json_stage(store: Store, name: str, params: dict[str, Any], inputs: tuple[str, ...],
                compute: Any, log: StageLog) -> tuple[dict[str, Any], str]:
    def save(out: dict[str, Any], d: Path) -> None:
        (d / "out.json").write_text(json.dumps(out))

    def load(d: Path) -> dict[str, Any]:
        out: dict[str, Any] = json.loads((d / "out.json").read_text())
        return out

    return store.run(name, params, inputs=inputs, compute=compute, save=save, load=load,
                     log=log)


def tool_stage(store: Store, *, tool: str, model: nn.Module, model_key: str, target: int,
               data: Tensors, cfg: EditBenchConfig, seed: int, device: torch.device,
               log: StageLog) -> tuple[dict[str, torch.Tensor], str]:
    """The tool's reconstruction for ``target`` (cached): {"mask" (1, H, W), "pattern"
    (C, H, W)} for Neural Cleanse and TABOR, {"patches" (n, C, s, s)} for a patch tool."""
    steps = _steps(tool, cfg)

    def compute(work: Path) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        if tool in MASK_TOOLS:
            r = reconstruct_trigger(model, target=target, data=data.x, method=tool, steps=steps,
                                    generator=gen, device=device)
            return {"mask": r.mask, "pattern": r.pattern,
                    "stats": torch.tensor([r.l1, r.success])}
        imgs = TOOLS.get(tool)(model, target=target, data=data.x, n=cfg.n_patches,
                               generator=gen, device=device, steps=steps)
        side = default_side(tuple(data.x.shape[1:]), PATCH_SIDE[tool])
        return {"patches": centre_crop(imgs, side).contiguous()}

    def save(out: dict[str, torch.Tensor], d: Path) -> None:
        save_file({k: v.contiguous() for k, v in out.items()}, str(d / "tool.safetensors"))

    def load(d: Path) -> dict[str, torch.Tensor]:
        return load_file(str(d / "tool.safetensors"))

    params = {"tool": tool, "steps": steps, "n": cfg.n_patches, "target": target,
              "seed": seed, "device": device.type}
    return store.run("edit-tool", params, inputs=(model_key, data.key), compute=compute,
                     save=save, load=load, log=log)


def _robust(model: nn.Module, test: Tensors, cfg: EditBenchConfig, device: torch.device,
            seed: int) -> dict[str, float]:
    x, y = test.x[:cfg.n_robust], test.y[:cfg.n_robust]
    out = {}
    for key, norm, eps in (("robust_acc", "linf", cfg.robust_eps),
                           ("robust_acc_l2", "l2", cfg.robust_eps_l2)):
        att = AttackConfig(name="pgd", norm=norm, eps=eps, steps=cfg.robust_steps)
        out[key] = float(correct_under_attack(model, x, y, att, seed=seed, device=device,
                                              desc=f"PGD {norm}").float().mean())
    return out


def edit_stage(store: Store, *, method: str, model: nn.Module, model_key: str,
               stamper: Stamper | None, stamp_key: str, ev: em.TrojanEval, test: Tensors,
               defender: Tensors, cfg: EditBenchConfig, seed: int, device: torch.device,
               log: StageLog) -> dict[str, Any]:
    """Edit the model with ``method`` and score it (cached; the edited model is not kept)."""
    def compute(work: Path) -> dict[str, Any]:
        ft = cfg.finetune
        extra: dict[str, Any] = {}
        if method == "fine-pruning":
            edited, info = fine_prune(model, defender.x, defender.y, cfg=ft, seed=seed,
                                      max_drop=cfg.prune_max_drop, device=device)
            extra = {"pruned": len(info.pruned), "of": info.n_channels,
                     "acc_pruned": info.acc_pruned}
        elif method == "lat":
            edited = lat_finetune(model, defender.x, defender.y, lat=cfg.lat(), cfg=ft,
                                  seed=seed, device=device)
        elif method == "no-trigger":
            edited = finetune(model, defender.x, defender.y, cfg=ft, seed=seed, device=device)
        else:
            edited = unlearn(model, defender.x, defender.y, stamper=stamper, cfg=ft,
                             seed=seed, device=device, desc=f"unlearn {method}")
        out = ev.scores(edited, device=device) | extra
        if method in ROBUST:
            out |= _robust(edited, test, cfg, device, seed)
        return out

    params = {"method": method, "finetune": ft_params(cfg, method), "seed": seed,
              "n_test": len(ev.x), "device": device.type}
    if method in ROBUST:
        params |= {"robust": [cfg.robust_eps, cfg.robust_eps_l2, cfg.robust_steps, cfg.n_robust]}
    out, _ = _json_stage(store, "edit", params, (model_key, defender.key, stamp_key, test.key),
                         compute, log)
    return out


def ft_params(cfg: EditBenchConfig, method: str) -> dict[str, Any]:
    p: dict[str, Any] = {"ft": to_plain(cfg.finetune)}
    if method == "fine-pruning":
        p["max_drop"] = cfg.prune_max_drop
    if method == "lat":
        p["lat"] = to_plain(cfg.lat())
    return p


def stamper_for(method: str, tool: dict[str, torch.Tensor] | None,
                trojan: Any) -> Stamper | None:
    if method == "true-trigger":
        return trigger_stamper(trojan.trigger)
    if tool is None:
        return None
    if "mask" in tool:
        return mask_stamper(tool["mask"], tool["pattern"])
    return patch_stamper(tool["patches"])


def ablation_stage(store: Store, *, selector: str, layer: str, k: int, model: nn.Module,
                   model_key: str, select: Tensors, test: Tensors, ood: Tensors, seed: int,
                   device: torch.device, log: StageLog) -> dict[str, Any]:
    """Effects of ablating ``selector``'s top ``k`` units of ``layer`` per class (cached)."""
    def compute(work: Path) -> dict[str, Any]:
        s = abl.UNIT_SELECTORS.get(selector)(model, layer, select.x, select.y,
                                             num_classes=int(select.y.max()) + 1,
                                             generator=torch.Generator().manual_seed(seed))
        units = abl.top_units(s, k=k)
        return {"units": units.tolist(),
                "test": dataclasses.asdict(abl.ablation_effects(model, layer, units, test.x,
                                                                test.y, device=device)),
                "ood": dataclasses.asdict(abl.ablation_effects(model, layer, units, ood.x,
                                                               ood.y, device=device))}

    params = {"selector": selector, "layer": layer, "k": k, "seed": seed,
              "device": device.type}
    out, _ = _json_stage(store, "edit-ablation", params,
                         (model_key, select.key, test.key, ood.key), compute, log)
    return out


def run_edit_bench(cfg: EditBenchConfig, *, out: Path, store: Store) -> Record:
    """Run the benchmark and write ``out/record.json`` and ``out/tools.safetensors``."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    methods = _methods(cfg)
    selectors = abl.selector_names(cfg.selectors)
    if not cfg.seeds or not 1 <= cfg.n_ablate <= cfg.n_clean:
        raise ValueError("need at least one seed and 1 <= n_ablate <= n_clean")
    if not 0 < cfg.defender_frac <= 1:
        raise ValueError(f"defender_frac must be in (0, 1], got {cfg.defender_frac}")
    zoo, ds = bench_zoo(store, dataset=cfg.dataset, epochs=cfg.epochs, data_root=cfg.data_root,
                        natural_root=cfg.natural_root, n_train=cfg.n_train,
                        n_clean=cfg.n_clean, device=cfg.device)
    log = zoo.log
    key = f"{ds.name}:{ds.sha256}"
    n_def = max(1, round(cfg.defender_frac * len(ds.x_train)))
    pick = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(12345))[:n_def]
    defender = Tensors(ds.x_train[pick], ds.y_train[pick], f"{key}:defender:{n_def}")
    tool_data = Tensors(defender.x[:cfg.n_tool_data], defender.y[:cfg.n_tool_data],
                        f"{defender.key}:{cfg.n_tool_data}")
    n_test = len(ds.x_test) if cfg.n_test is None else cfg.n_test
    test = Tensors(ds.x_test[:n_test], ds.y_test[:n_test], f"{key}:test:{n_test}")

    # 1. trojan removal
    res: dict[str, list[list[dict[str, Any]]]] = {m: [] for m in methods}
    before: list[dict[str, float]] = []
    shown: dict[str, torch.Tensor] = {}
    for i, trojan in enumerate(progress(zoo.trojans, desc="trojans")):
        model, mkey = zoo.models[i]
        ev = em.TrojanEval.build(trojan, test.x, test.y)
        before.append(ev.scores(model, device=device) | _robust(model, test, cfg, device, 0))
        for m in methods:
            res[m].append([])
        for s in cfg.seeds:
            for m in methods:
                tool, tkey = None, ""
                if m in cfg.tools:
                    tool, tkey = tool_stage(store, tool=m, model=model, model_key=mkey,
                                            target=trojan.target, data=tool_data, cfg=cfg,
                                            seed=s, device=device, log=log)
                    if s == cfg.seeds[0]:
                        shown |= {f"{trojan.name}/{m}/{k}": v for k, v in tool.items()}
                r = edit_stage(store, method=m, model=model, model_key=mkey,
                               stamper=stamper_for(m, tool, trojan), stamp_key=tkey, ev=ev,
                               test=test, defender=defender, cfg=cfg, seed=s, device=device,
                               log=log)
                r["der"] = em.der(asr_before=before[i]["asr"], asr_after=r["asr"],
                                  acc_before=before[i]["acc"], acc_after=r["acc"])
                res[m][i].append(r)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in shown.items()}, str(out / "tools.safetensors"))

    # 3. capability ablation
    ood_x, ood_y = digits_like(ds.shape)
    ood = Tensors(ood_x, ood_y, "digits-like:" + "x".join(map(str, ds.shape)))
    abl_test = Tensors(test.x[:cfg.n_ablation_test], test.y[:cfg.n_ablation_test],
                       f"{test.key}:{cfg.n_ablation_test}")
    ablations: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for layer, k in (("penultimate", cfg.ablation_k), ("last-conv", cfg.ablation_k_conv)):
        ablations[layer] = {}
        for sel in progress(selectors, desc=f"ablation {layer}"):
            ablations[layer][sel] = [
                ablation_stage(store, selector=sel, layer=layer, k=k, model=m_, model_key=k_,
                               select=defender, test=abl_test, ood=ood, seed=j,
                               device=device, log=log)
                for j, (m_, k_) in enumerate(zoo.clean[:cfg.n_ablate])]

    metrics = em.summarise(res, before, ablations, methods=methods, selectors=selectors)
    details = {
        "zoo": [m.to_dict() for m in zoo.metrics], "trojans": [t.name for t in zoo.trojans],
        "kinds": [t.trigger.kind for t in zoo.trojans], "methods": methods,
        "tools": list(cfg.tools), "references": list(REFERENCES), "baselines": list(BASELINES),
        "before": before, "results": res, "ablation": ablations, "selectors": selectors,
        "n_defender": n_def, "n_test": n_test, "n_ood": len(ood_y),
        "ood_note": "scikit-learn digits drawn like MNIST (digits_like)",
    }
    rec: Record = {
        "schema_version": SCHEMA_VERSION, "experiment": "edit", "created": now(),
        "config": to_plain(cfg), "seeds": list(cfg.seeds), "git": git_state(),
        "versions": library_versions(), "device": str(device), "data": {ds.name: ds.sha256},
        "stages": log.entries, "wall_seconds": time.perf_counter() - t0, "metrics": metrics,
        "claims": em.edit_claims(metrics, tools=list(cfg.tools), selectors=selectors),
        "details": details,
    }
    write_record(rec, out / "record.json")
    return rec
