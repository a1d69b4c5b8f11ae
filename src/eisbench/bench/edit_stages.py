"""The cached stages of the edit benchmark (:mod:`eisbench.bench.edit`): a tool's
reconstruction, one row's edit and its scores, one selector's capability ablation.

Each is a pure function of its parameters and input keys (:meth:`~eisbench.runs.store.Store.run`):
the edited models are not kept, only their scores (JSON).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.attacks.evaluate import AttackConfig, correct_under_attack
from eisbench.bench.edit_methods import EDIT_METHODS, ToolOutput, budget_params
from eisbench.edit import ablation as abl
from eisbench.edit import metrics as em
from eisbench.edit.unlearn import Stamper
from eisbench.evaluation import EvaluationBudgetViolation, evaluate_robustness
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store

if TYPE_CHECKING:
    from eisbench.bench.edit import EditBenchConfig


class MethodFailed(Exception):
    """An edit method raised on one cell (trojan, seed): in its tool's reconstruction, its
    stamper or its fine-tuning (``step``); ``cause`` is what it raised. Nothing is cached."""

    def __init__(self, method: str, step: str, cause: BaseException) -> None:
        super().__init__(f"{method} ({step}): {type(cause).__name__}: {cause}")
        self.method, self.step, self.cause = method, step, cause


def _json_stage(store: Store, name: str, params: dict[str, Any], inputs: tuple[str, ...],
                compute: Callable[[Path], dict[str, Any]],
                log: StageLog) -> tuple[dict[str, Any], str]:
    """A stage whose output is a JSON object."""
    def save(out: dict[str, Any], d: Path) -> None:
        (d / "out.json").write_text(json.dumps(out))

    def load(d: Path) -> dict[str, Any]:
        out: dict[str, Any] = json.loads((d / "out.json").read_text())
        return out

    return store.run(name, params, inputs=inputs, compute=compute, save=save, load=load,
                     log=log)


def tool_steps(name: str, cfg: EditBenchConfig) -> int:
    """The tool's default steps scaled by ``cfg.tool_steps`` (at least 1)."""
    recon = EDIT_METHODS.get(name).reconstruction
    if recon is None:
        raise ValueError(f"edit method {name!r} reconstructs no trigger")
    return max(1, round(recon.default_steps() * cfg.tool_steps))


def edit_tool_stage(store: Store, *, tool: str, model: nn.Module, model_key: str, target: int,
                    data: Tensors, cfg: EditBenchConfig, seed: int, device: torch.device,
                    log: StageLog) -> tuple[ToolOutput, str]:
    """The tool's reconstruction for ``target`` (cached): {"mask" (1, H, W), "pattern"
    (C, H, W)} for Neural Cleanse and TABOR, {"patches" (n, C, s, s)} for a patch tool. What
    the tool raises is raised as :class:`MethodFailed`, and nothing is cached."""
    recon = EDIT_METHODS.get(tool).reconstruction
    assert recon is not None
    steps = tool_steps(tool, cfg)

    def compute(work: Path) -> ToolOutput:
        try:
            return recon(model, target=target, data=data.x, n=cfg.n_patches, steps=steps,
                         generator=torch.Generator().manual_seed(seed), device=device)
        except Exception as e:  # the tool's own error: one failed cell
            raise MethodFailed(tool, "reconstruction", e) from e

    def save(out: ToolOutput, d: Path) -> None:
        save_file({k: v.contiguous() for k, v in out.items()}, str(d / "tool.safetensors"))

    def load(d: Path) -> ToolOutput:
        return load_file(str(d / "tool.safetensors"))

    params = {"tool": tool, "steps": steps, "n": cfg.n_patches, "target": target,
              "seed": seed, "device": device.type}
    return store.run("edit-tool", params, inputs=(model_key, data.key), compute=compute,
                     save=save, load=load, log=log)


def robust_scores(model: nn.Module, test: Tensors, cfg: EditBenchConfig, device: torch.device,
                  seed: int) -> dict[str, float]:
    """Accuracy under PGD Linf and L2 on the first ``cfg.n_robust`` test images."""
    x, y = test.x[:cfg.n_robust], test.y[:cfg.n_robust]
    out = {}
    for key, norm, eps in (("robust_acc", "linf", cfg.robust_eps),
                           ("robust_acc_l2", "l2", cfg.robust_eps_l2)):
        att = AttackConfig(name="pgd", norm=norm, eps=eps, steps=cfg.robust_steps)
        out[key] = float(correct_under_attack(model, x, y, att, seed=seed, device=device,
                                              desc=f"PGD {norm}").float().mean())
    return out


def suite_scores(model: nn.Module, control: nn.Module, test: Tensors, cfg: EditBenchConfig,
                 device: torch.device, seed: int) -> dict[str, Any]:
    """Robust accuracy under the ``standard`` attack suite (Linf ``cfg.robust_eps``) on the
    first ``cfg.n_suite`` test images, with every sanity check (``control``: the model before
    the edit, undefended): {"suite_robust_acc", "suite_clean_acc", "suite_n",
    "suite_failed_checks" (names), "suite_checks" (each check's outcome)}. An attack that
    leaves the threat model is a failed ``within-budget`` check, not a failed cell."""
    x, y = test.x[:cfg.n_suite], test.y[:cfg.n_suite]
    try:
        ev = evaluate_robustness(model, x, y, eps=cfg.robust_eps, norm="linf", suite="standard",
                                 n_checks=cfg.n_suite, control=control, seed=seed,
                                 device=device)
    except EvaluationBudgetViolation as e:
        ev = e.evaluation
    return {"suite_robust_acc": ev.result.robust_acc, "suite_clean_acc": ev.result.clean_acc,
            "suite_n": len(x), "suite_failed_checks": [c.name for c in ev.warnings],
            "suite_checks": [c.to_dict() for c in ev.checks]}


def before_scores(model: nn.Module, ev: em.TrojanEval, test: Tensors, cfg: EditBenchConfig,
                  device: torch.device) -> dict[str, float]:
    """The trojaned model's ASR, clean accuracy and robust accuracies before any edit."""
    return ev.scores(model, device=device) | robust_scores(model, test, cfg, device, 0)


def edit_stage(store: Store, *, method: str, model: nn.Module, model_key: str,
               stamper: Stamper | None, stamp_key: str, ev: em.TrojanEval, test: Tensors,
               defender: Tensors, cfg: EditBenchConfig, seed: int, device: torch.device,
               log: StageLog, suite: bool = False) -> dict[str, Any]:
    """Edit the model with ``method`` (an entry of
    :data:`~eisbench.bench.edit_methods.EDIT_METHODS`) and score it (cached; the edited model
    is not kept); ``suite``: a robust row's cell also gets :func:`suite_scores`. What the
    method raises is raised as :class:`MethodFailed`, uncached."""
    entry = EDIT_METHODS.get(method)

    def compute(work: Path) -> dict[str, Any]:
        try:
            edited, extra = entry.fine_tune(model, defender.x, defender.y, stamper=stamper,
                                            settings=cfg, seed=seed, device=device,
                                            desc=f"unlearn {method}", target=ev.target)
        except Exception as e:  # the method's own error: one failed cell
            raise MethodFailed(method, "edit", e) from e
        out = ev.scores(edited, device=device) | extra
        if entry.robust:
            out |= robust_scores(edited, test, cfg, device, seed)
        if suite and entry.robust:
            out |= suite_scores(edited, model, test, cfg, device, seed)
        return out

    params = {"method": method, "finetune": budget_params(cfg, method), "seed": seed,
              "n_test": len(ev.x), "device": device.type}
    if entry.robust:
        params |= {"robust": [cfg.robust_eps, cfg.robust_eps_l2, cfg.robust_steps, cfg.n_robust]}
        if suite:
            params |= {"suite": ["standard", cfg.robust_eps, cfg.n_suite]}
    out, _ = _json_stage(store, "edit", params, (model_key, defender.key, stamp_key, test.key),
                         compute, log)
    return out


def ablation_stage(store: Store, *, selector: str, layer: str, k: int, model: nn.Module,
                   model_key: str, select: Tensors, test: Tensors, ood: Tensors, seed: int,
                   device: torch.device, log: StageLog) -> dict[str, Any]:
    """Effects of ablating ``selector``'s top ``k`` units of ``layer`` per class (cached)."""
    def compute(work: Path) -> dict[str, Any]:
        s = abl.UNIT_SELECTORS.get(selector)(model, layer, select.x, select.y,
                                             num_classes=int(select.y.max()) + 1,
                                             generator=torch.Generator().manual_seed(seed))
        units = abl.top_ablation_units(s, k=k)
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
