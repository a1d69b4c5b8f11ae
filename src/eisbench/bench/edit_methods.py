"""The rows of the edit benchmark (``eisbench bench edit``): a registry of edit methods.

Every :class:`EditMethod` declares what it needs:

- a tool's trigger reconstruction, or none (:class:`MaskReconstruction`: Neural Cleanse and
  TABOR give a mask and a pattern; :class:`PatchReconstruction`: a patch tool's images,
  centre-cropped to patches);
- the stamper its fine-tuning pastes into ``stamp_frac`` of every batch: the tool's
  reconstruction, the true trigger (the oracle), or none;
- the fine-tuning variant (unlearning, plain fine-tuning, fine-pruning, latent adversarial
  training untargeted and targeted, input-space adversarial training) and what it adds to the
  fine-tuning budget's cache parameters;
- whether the edited model's input-space robustness is measured.

The bench's rows are :func:`rows`: the configured tools, then :data:`REFERENCES`, then
:data:`BASELINES`.

Example:
    >>> EDIT_METHODS.get("lat").robust
    True
    >>> rows(("tabor",))
    ['tabor', 'true-trigger', 'no-trigger', 'fine-pruning', 'lat', 'lat-targeted', 'input-at']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from eisbench.core.config import to_plain
from eisbench.core.registry import Registry
from eisbench.edit.baselines import fine_prune, finetune
from eisbench.edit.input_at import InputAtConfig, input_at_finetune
from eisbench.edit.lat import LatConfig, lat_finetune
from eisbench.edit.lat_compare import LAT_ROWS
from eisbench.edit.lat_targeted import TargetedLatConfig, lat_targeted_finetune
from eisbench.edit.unlearn import (
    FinetuneConfig,
    Stamper,
    centre_crop,
    mask_stamper,
    patch_stamper,
    trigger_stamper,
    unlearn,
)
from eisbench.tools import TOOLS
from eisbench.tools.adversarial_patch import default_side
from eisbench.tools.cost_schedule import EISBENCH_V1
from eisbench.tools.trigger_reconstruction import reconstruct_trigger
from eisbench.trojans.stamp import Trojan

Role = Literal["tool", "reference", "baseline"]
ToolOutput = dict[str, torch.Tensor]
"""A tool's reconstruction as cached: {"mask" (1, H, W), "pattern" (C, H, W), "stats" (2,)}
or {"patches" (n, C, s, s)}."""

# The tools whose reconstruction can be stamped, in the bench's row order (the config default):
# the trigger reconstructions (mask, pattern) and the patch tools, with the patch side (a share
# of the image side) each declares in the tools' registry.
MASK_TOOLS = tuple(TOOLS.names(family="trigger-reconstruction"))
PATCH_SIDE = {t: float(TOOLS.meta(t)["patch_side"]) for t in (
    "adversarial-patch", "snafue", "feature-adversary-generator", "feature-adversary-perturbation")}
TOOL_ROWS = (*MASK_TOOLS, *PATCH_SIDE)  # the tools whose reconstruction can be stamped
REFERENCES = ("true-trigger", "no-trigger")
BASELINES = ("fine-pruning", "lat", "lat-targeted", "input-at")


class EditSettings(Protocol):
    """What a fine-tuning variant reads from the bench's config."""

    @property
    def finetune(self) -> FinetuneConfig: ...

    @property
    def prune_max_drop(self) -> float: ...

    @property
    def input_at_eps(self) -> float: ...

    def lat(self) -> LatConfig: ...


def _needed(out: ToolOutput | None, tool: str) -> ToolOutput:
    if out is None:
        raise ValueError(f"{tool}'s stamper needs its reconstruction, got None")
    return out


@dataclass(frozen=True)
class MaskReconstruction:
    """A trigger-reconstruction scan of the target class (``method``: Neural Cleanse or
    TABOR): {"mask" (1, H, W), "pattern" (C, H, W), "stats" (2,) = (l1, success)}."""

    method: str

    def default_steps(self) -> int:
        """The steps of eisbench's recipe (``eisbench-v1``: 20 checks of 10 mini-batches), the
        one the edit bench was measured with."""
        return EISBENCH_V1.max_checks * (EISBENCH_V1.check_every or 1)

    def __call__(self, model: nn.Module, *, target: int, data: torch.Tensor, n: int,
                 steps: int, generator: torch.Generator, device: torch.device) -> ToolOutput:
        """Reconstruct from clean images data (N, C, H, W) with eisbench's recipe
        (``eisbench-v1``; the published recipes are not measured here yet); ``n`` is unused
        (one trigger)."""
        r = reconstruct_trigger(model, target=target, data=data, method=self.method, steps=steps,
                                schedule="eisbench-v1", generator=generator, device=device)
        return {"mask": r.mask, "pattern": r.pattern, "stats": torch.tensor([r.l1, r.success])}

    def stamper(self, out: ToolOutput | None, trojan: Trojan) -> Stamper:
        """Stamp the reconstructed mask and pattern."""
        out = _needed(out, self.method)
        return mask_stamper(out["mask"], out["pattern"])


@dataclass(frozen=True)
class PatchReconstruction:
    """``n`` images of a patch tool for the target class, centre-cropped to patches of side
    ``side`` x the image's side: {"patches" (n, C, s, s)}."""

    tool: str
    side: float

    def default_steps(self) -> int:
        """The tool's default steps."""
        steps: int = TOOLS.meta(self.tool)["steps"]
        return steps

    def __call__(self, model: nn.Module, *, target: int, data: torch.Tensor, n: int,
                 steps: int, generator: torch.Generator, device: torch.device) -> ToolOutput:
        """Run the tool on clean images data (N, C, H, W) and crop its patches."""
        imgs = TOOLS.get(self.tool)(model, target=target, data=data, n=n, generator=generator,
                                    device=device, steps=steps)
        side = default_side(tuple(data.shape[1:]), self.side)
        return {"patches": centre_crop(imgs, side).contiguous()}

    def stamper(self, out: ToolOutput | None, trojan: Trojan) -> Stamper:
        """Paste one of the patches at a random position."""
        return patch_stamper(_needed(out, self.tool)["patches"])


Reconstruction = MaskReconstruction | PatchReconstruction
StamperFor = Callable[[ToolOutput | None, Trojan], Stamper | None]
"""``stamper_for(tool's reconstruction or None, trojan) -> stamper or None (no stamp)``."""


class FineTune(Protocol):
    """A fine-tuning variant: a copy of ``model`` edited on the defender's clean x (N, C, H, W),
    y (N,), and what it reports beyond the scores (e.g. fine-pruning's pruned channels).
    ``target``: the trojan's target class, which the bench gives every tool (only targeted LAT
    among the fine-tuning variants reads it)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 stamper: Stamper | None, settings: EditSettings, seed: int,
                 device: torch.device, desc: str, target: int = -1
                 ) -> tuple[nn.Module, dict[str, Any]]: ...


def no_stamp(tool: ToolOutput | None, trojan: Trojan) -> None:
    """No stamp: the fine-tuning sees clean images only."""
    return None


def true_trigger(tool: ToolOutput | None, trojan: Trojan) -> Stamper:
    """The oracle: stamp the trojan's own trigger."""
    return trigger_stamper(trojan.trigger)


def unlearning(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, stamper: Stamper | None,
               settings: EditSettings, seed: int, device: torch.device,
               desc: str, target: int = -1) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune with ``stamper``'s images under their true labels
    (:func:`~eisbench.edit.unlearn.unlearn`)."""
    return unlearn(model, x, y, stamper=stamper, cfg=settings.finetune, seed=seed,
                   device=device, desc=desc), {}


def plain_finetuning(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     stamper: Stamper | None, settings: EditSettings, seed: int,
                     device: torch.device, desc: str, target: int = -1
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune on clean data (:func:`~eisbench.edit.baselines.finetune`)."""
    return finetune(model, x, y, cfg=settings.finetune, seed=seed, device=device), {}


def fine_pruning(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 stamper: Stamper | None, settings: EditSettings, seed: int,
                 device: torch.device, desc: str, target: int = -1
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """Prune dormant channels, then fine-tune (:func:`~eisbench.edit.baselines.fine_prune`);
    reports the channels pruned."""
    edited, info = fine_prune(model, x, y, cfg=settings.finetune, seed=seed,
                              max_drop=settings.prune_max_drop, device=device)
    return edited, {"pruned": len(info.pruned), "of": info.n_channels,
                    "acc_pruned": info.acc_pruned}


def latent_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       stamper: Stamper | None, settings: EditSettings, seed: int,
                       device: torch.device, desc: str, target: int = -1
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """Latent adversarial training (:func:`~eisbench.edit.lat.lat_finetune`)."""
    return lat_finetune(model, x, y, lat=settings.lat(), cfg=settings.finetune, seed=seed,
                        device=device), {}


def lat_targeted_config(settings: EditSettings) -> TargetedLatConfig:
    """Targeted LAT with LAT's bound, steps and step rule (``settings.lat()``) and the
    reference's loss weights (:mod:`eisbench.edit.lat_targeted`)."""
    return TargetedLatConfig(lat=settings.lat())


def input_at_config(settings: EditSettings) -> InputAtConfig:
    """Input-space AT with exactly LAT's inner budget (PGD steps, step rule, clean weight of
    ``settings.lat()``) and the Linf bound ``settings.input_at_eps`` (matched clean cost)."""
    lat = settings.lat()
    return InputAtConfig(eps=settings.input_at_eps, steps=lat.steps, step_frac=lat.step_frac,
                         clean_weight=lat.clean_weight, random_start=lat.random_start)


def targeted_latent_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                                stamper: Stamper | None, settings: EditSettings, seed: int,
                                device: torch.device, desc: str, target: int = -1
                                ) -> tuple[nn.Module, dict[str, Any]]:
    """Targeted LAT toward the trojan's ``target`` class, the one every tool is given
    (:func:`~eisbench.edit.lat_targeted.lat_targeted_finetune`); a missing target raises."""
    if target < 0:
        raise ValueError(f"targeted LAT needs the trojan's target class, got {target}")
    return lat_targeted_finetune(model, x, y, target=target, tlat=lat_targeted_config(settings),
                                 cfg=settings.finetune, seed=seed, device=device), {}


def input_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      stamper: Stamper | None, settings: EditSettings, seed: int,
                      device: torch.device, desc: str, target: int = -1
                      ) -> tuple[nn.Module, dict[str, Any]]:
    """Input-space adversarial training on LAT's budget
    (:func:`~eisbench.edit.input_at.input_at_finetune`)."""
    return input_at_finetune(model, x, y, at=input_at_config(settings), cfg=settings.finetune,
                             seed=seed, device=device), {}


def no_budget(settings: EditSettings) -> dict[str, Any]:
    """Nothing beyond the shared fine-tuning budget."""
    return {}


@dataclass(frozen=True)
class EditMethod:
    """One row of the edit benchmark (see the module docstring). ``budget`` gives the cache
    parameters the row adds to the shared fine-tuning budget."""

    role: Role
    summary: str
    fine_tune: FineTune
    stamper: StamperFor = no_stamp
    reconstruction: Reconstruction | None = None
    robust: bool = False
    budget: Callable[[EditSettings], dict[str, Any]] = no_budget


EDIT_METHODS: Registry[EditMethod] = Registry("edit method")

for _name in MASK_TOOLS:
    _mask = MaskReconstruction(_name)
    EDIT_METHODS.register(_name)(EditMethod(
        role="tool", summary=f"unlearning with {_name}'s reconstructed mask and pattern",
        fine_tune=unlearning, stamper=_mask.stamper, reconstruction=_mask))
for _name, _side in PATCH_SIDE.items():
    _patch = PatchReconstruction(_name, _side)
    EDIT_METHODS.register(_name)(EditMethod(
        role="tool", summary=f"unlearning with {_name}'s patches",
        fine_tune=unlearning, stamper=_patch.stamper, reconstruction=_patch))
EDIT_METHODS.register("true-trigger")(EditMethod(
    role="reference", summary="unlearning with the true trigger (oracle)",
    fine_tune=unlearning, stamper=true_trigger))
EDIT_METHODS.register("no-trigger")(EditMethod(
    role="reference", summary="plain fine-tuning on clean data", fine_tune=plain_finetuning,
    robust=True))
EDIT_METHODS.register("fine-pruning")(EditMethod(
    role="baseline", summary="fine-pruning (Liu et al. 2018)", fine_tune=fine_pruning,
    budget=lambda s: {"max_drop": s.prune_max_drop}))
EDIT_METHODS.register("lat")(EditMethod(
    role="baseline", summary="latent adversarial training", fine_tune=latent_adversarial,
    robust=True, budget=lambda s: {"lat": to_plain(s.lat())}))
EDIT_METHODS.register("lat-targeted")(EditMethod(
    role="baseline", summary="targeted latent adversarial training (toward the trojan's target)",
    fine_tune=targeted_latent_adversarial, robust=True,
    budget=lambda s: {"lat_targeted": to_plain(lat_targeted_config(s))}))
EDIT_METHODS.register("input-at")(EditMethod(
    role="baseline", summary="input-space adversarial training (LAT's budget, Linf)",
    fine_tune=input_adversarial, robust=True,
    budget=lambda s: {"input_at": to_plain(input_at_config(s))}))


def rows(tools: Sequence[str]) -> list[str]:
    """The bench's rows: ``tools`` (each a tool entry of :data:`EDIT_METHODS`), then
    :data:`REFERENCES`, then :data:`BASELINES`. An unknown tool fails with suggestions; a
    tool that gives no trigger to stamp fails with the ones that do."""
    for t in tools:
        if t not in EDIT_METHODS or EDIT_METHODS.get(t).role != "tool":
            TOOLS.get(t)  # unknown: fails with suggestions
            raise ValueError(f"tool {t!r} gives no trigger to stamp: use one of "
                             f"{', '.join(TOOL_ROWS)}")
    return [*tools, *REFERENCES, *BASELINES]


def budget_params(settings: EditSettings, method: str) -> dict[str, Any]:
    """The fine-tuning budget of ``method``'s row, as cached: {"ft": ..., plus the row's own
    parameters}."""
    return {"ft": to_plain(settings.finetune)} | EDIT_METHODS.get(method).budget(settings)


__all__ = ["BASELINES", "EDIT_METHODS", "LAT_ROWS", "MASK_TOOLS", "PATCH_SIDE", "REFERENCES",
           "TOOL_ROWS", "EditMethod", "EditSettings", "MaskReconstruction", "PatchReconstruction",
           "budget_params", "input_at_config", "lat_targeted_config", "rows"]
