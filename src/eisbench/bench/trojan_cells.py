"""The trojan benchmark's cells: one tool's images for one (model, target, seed), cached, and
what happens when a tool raises on one of them.

A cell is one run of one tool (:data:`~eisbench.tools.TOOLS`) on one model for one target and
tool seed: on a graded trojan's model (phase ``"trojan"``) or on the clean model of the
trojan's control question (phase ``"clean control"``). A tool that raises on a cell, or
returns images that break the tools' contract (:func:`~eisbench.tools.check_tool_output`),
makes that cell a *failed cell*, not a lost benchmark: :func:`tool_cell` records the tool,
trojan, model, seed and the error (type and message) and returns None; nothing is cached for
it, so a rerun tries the cell again; every other cell completes.

How a failed cell is scored (:mod:`eisbench.bench.trojan_scores`; fixed with this module,
2026-12, before any run had a failed cell): it is never dropped, and it always counts against
its tool. Its similarities are a row of NaN (:data:`~eisbench.bench.trojan_scores.MISSING`):
on a graded trojan it is a miss (the tool did not show the trigger); on the clean control it
is a hit, the worst case there (a hit is the tool's chance rate, so failing on a clean model
can never raise its lift). The "all tools" and pair rows pool the images that were made (a
failed tool adds none), and a question every pooled tool failed is answered as the tool rows
are. The metrics' units and ``n`` (graded trojans' models) do not change;
``bench/failed_cells`` counts the failed cells and the claims that rest on the tools say how
many there were.

Example:
    >>> failures: list[dict[str, Any]] = []
    >>> imgs = tool_cell(store, name="snafue", model=m, model_key=k, trojan=t, data=d,
    ...                  cfg=cfg, seed=0, device=dev, log=log, phase="trojan",
    ...                  failures=failures)
    >>> imgs is None, failures[0]["error"], failures[0]["message"]  # a tool that raised
    (True, 'RuntimeError', 'no images for target 3')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.core.progress import say
from eisbench.runs.claims import ci_metric
from eisbench.runs.executor import gpus_for, prefetch
from eisbench.runs.record import Metric
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store
from eisbench.tools import TOOLS, check_tool_output
from eisbench.trojans.stamp import Trojan

if TYPE_CHECKING:
    from eisbench.bench.trojans import TrojanBenchConfig

PHASES = ("trojan", "clean control")
MAX_MESSAGE = 500  # characters of an error message kept in the record


class ToolFailed(Exception):
    """A tool raised (or broke its output contract) on one cell; ``cause`` is what it raised."""

    def __init__(self, tool: str, cause: BaseException) -> None:
        super().__init__(f"{tool}: {type(cause).__name__}: {cause}")
        self.tool, self.cause = tool, cause


def tool_kwargs(name: str, cfg: TrojanBenchConfig) -> dict[str, Any]:
    """The tool's default ``steps`` scaled by ``cfg.tool_steps`` (at least 1)."""
    default: int = TOOLS.meta(name)["steps"]
    return {"steps": max(1, round(default * cfg.tool_steps))}


def trojan_tool_stage(store: Store, *, name: str, model: nn.Module, model_key: str,
                      trojan: Trojan, data: Tensors, cfg: TrojanBenchConfig, seed: int,
                      device: torch.device, log: StageLog) -> torch.Tensor:
    """A tool's ``cfg.n_images`` images (n, C, H, W) for the trojan's target (cached). What
    the tool raises, or an output off its contract, is raised as :class:`ToolFailed` before
    anything is cached."""
    kwargs = tool_kwargs(name, cfg)

    def compute(work: Path) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        try:
            x = TOOLS.get(name)(model, target=trojan.target, data=data.x, n=cfg.n_images,
                                generator=gen, device=device, **kwargs)
            return check_tool_output(x, n=cfg.n_images, shape=tuple(data.x.shape[1:]))
        except Exception as e:  # any error of the tool's own is one failed cell
            raise ToolFailed(name, e) from e

    def save(x: torch.Tensor, d: Path) -> None:
        save_file({"images": x.contiguous()}, str(d / "images.safetensors"))

    def load(d: Path) -> torch.Tensor:
        return load_file(str(d / "images.safetensors"))["images"]

    params = {"tool": name, "kwargs": kwargs, "target": trojan.target, "n": cfg.n_images,
              "seed": seed, "device": device.type}
    out, _ = store.run("tool-images", params, inputs=(model_key, data.key), compute=compute,
                       save=save, load=load, log=log)
    return out


def _cell_unit(unit: tuple[Path, dict[str, Any]]) -> None:
    """One cell computed into the shared stage cache (an executor's task). A tool that fails
    leaves nothing there: the caller's loop runs the cell again and records the failure."""
    root, kwargs = unit
    trojan_tool_stage(Store(root), log=StageLog(), **kwargs)


def prefetch_cells(store: Store, cells: Sequence[Mapping[str, Any]], *,
                   device: torch.device) -> None:
    """Under a parallel executor, ``cells`` (each the keyword arguments of
    :func:`trojan_tool_stage` but ``store`` and ``log``) as tasks into the shared stage cache
    (:func:`eisbench.runs.executor.prefetch`); the caller's loop then loads them."""
    prefetch(_cell_unit, [(store.root, dict(c)) for c in cells], what="tool cells",
             num_gpus=gpus_for(device.type))


def failed_cell(err: ToolFailed, *, trojan: Trojan, model_key: str, seed: int,
                phase: str) -> dict[str, Any]:
    """The record of one failed cell (JSON-able)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    message = str(err.cause)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return {"tool": err.tool, "trojan": trojan.name, "target": trojan.target,
            "model": model_key, "seed": seed, "phase": phase,
            "error": type(err.cause).__name__, "message": message}


def tool_cell(store: Store, *, name: str, model: nn.Module, model_key: str, trojan: Trojan,
              data: Tensors, cfg: TrojanBenchConfig, seed: int, device: torch.device,
              log: StageLog, phase: str, failures: list[dict[str, Any]]
              ) -> torch.Tensor | None:
    """The cell's images (n, C, H, W) (:func:`trojan_tool_stage`), or None when the tool
    failed on it; the failure is appended to ``failures`` (:func:`failed_cell`)."""
    try:
        return trojan_tool_stage(store, name=name, model=model, model_key=model_key,
                                 trojan=trojan, data=data, cfg=cfg, seed=seed, device=device,
                                 log=log)
    except ToolFailed as e:
        cell = failed_cell(e, trojan=trojan, model_key=model_key, seed=seed, phase=phase)
        say(f"FAILED CELL: {name} on {trojan.name} ({phase}, seed {seed}): "
            f"{cell['error']}: {cell['message']}")
        failures.append(cell)
        return None


def failure_summary(failures: Sequence[Mapping[str, Any]], *, tools: Sequence[str],
                    cells_per_tool: int) -> dict[str, Any]:
    """Per tool, how many of its ``cells_per_tool`` cells (trojans and clean control, every
    seed) failed, the tools that failed on every cell, and the totals."""
    per_tool = {t: {"failed": sum(f["tool"] == t for f in failures), "cells": cells_per_tool}
                for t in tools}
    return {"n": len(failures), "cells": cells_per_tool * len(tools), "per_tool": per_tool,
            "every_cell": [t for t, c in per_tool.items()
                           if cells_per_tool and c["failed"] == cells_per_tool]}


def failure_metric(summary: Mapping[str, Any]) -> Metric:
    """``bench/failed_cells``: the count of failed cells (0 for a complete run), n = cells."""
    k = float(summary["n"])
    return ci_metric(k, k, k, int(summary["cells"]), higher=False,
                     unit="tool cells (tool x model x target x seed, trojans and clean "
                          "control); a count, no interval")


def failure_sentence(summary: Mapping[str, Any] | None) -> str:
    """What a reader must know about the failed cells, or "" when there were none: e.g.
    ``"DEGRADED: 2 failed cells of 40 (snafue 2 of 20), each scored against its tool"``."""
    if not summary or not summary["n"]:
        return ""
    n = summary["n"]
    tools = ", ".join(f"{t} {c['failed']} of {c['cells']}"
                      for t, c in summary["per_tool"].items() if c["failed"])
    text = (f"DEGRADED: {n} failed cell{'s' if n != 1 else ''} of {summary['cells']} "
            f"({tools}), each scored against its tool (a miss on a trojan, a hit on the clean "
            "control)")
    if summary["every_cell"]:
        text += (f"; {', '.join(summary['every_cell'])} failed on EVERY cell: "
                 "no measurement of that tool")
    return text


def failures(failed: list[dict[str, Any]], *, tools: Sequence[str], cells_per_tool: int
             ) -> tuple[dict[str, Metric], dict[str, Any]]:
    """``bench/failed_cells`` and the details ``failed_cells`` (every failed cell) and
    ``failures`` (:func:`failure_summary`). In the trojan benchmark each tool has
    ``cells_per_tool`` = 2 x graded trojans x seeds cells (the trojan's model and its clean
    control). With no cell at all (no trojan graded) there is no rate to give: no metric."""
    summary = failure_summary(failed, tools=tools, cells_per_tool=cells_per_tool)
    if summary["n"]:
        say(failure_sentence(summary))
    metrics = ({"bench/failed_cells": failure_metric(summary)}
               if cells_per_tool * len(tools) else {})
    return metrics, {"failed_cells": failed, "failures": summary}
