"""Cached stages shared by experiments: train a model, construct a dataset, evaluate a model.

Each stage's output is cached in a :class:`~eisbench.runs.store.Store` under the hash of its config
and its inputs' keys, so re-running reuses finished work and an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.attacks import count_passes
from eisbench.attacks.evaluate import AttackConfig, correct_under_attack
from eisbench.construct import CONSTRUCTIONS
from eisbench.core.accel import amp_default
from eisbench.core.tensors import predict
from eisbench.evaluation import describe_suite, evaluate_robustness
from eisbench.evaluation.suite import steps_of
from eisbench.models import ModelSpec, load_checkpoint, save_checkpoint
from eisbench.runs.store import StageLog, Store
from eisbench.training import TRAINING_METHODS, TrainConfig, train


@dataclass(frozen=True)
class Tensors:
    """A labelled image set plus the cache key that identifies its content."""

    x: torch.Tensor  # (N, C, H, W)
    y: torch.Tensor  # (N,)
    key: str


@dataclass
class Context:
    store: Store
    log: StageLog
    device: torch.device


def train_stage(ctx: Context, *, spec: ModelSpec, cfg: TrainConfig, data: Tensors, seed: int,
                desc: str) -> tuple[nn.Module, str]:
    """Train a fresh ``spec`` model on ``data`` with ``cfg`` (cached, resumable)."""

    def compute(work: Path) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # weight init only; restored on exit
            model = spec.build()
        return train(model, data.x, data.y, cfg=cfg, seed=seed, device=ctx.device,
                     resume_dir=work, desc=desc)

    def save(model: nn.Module, d: Path) -> None:
        save_checkpoint(model, spec, d / "model")
        (d / "train_state.pt").unlink(missing_ok=True)

    def load(d: Path) -> nn.Module:
        return load_checkpoint(d / "model", device=ctx.device)

    # version 2: the within-epoch overfitting guard (eisbench.training.guard) of the guarded
    # methods; their models trained before it are not served as if it had run
    guarded = TRAINING_METHODS.meta(cfg.method)["guarded"] and cfg.overfit_guard > 0
    # on CUDA the weight update runs in bf16 (eisbench.core.accel): keyed, so a float32 model
    # is never served for it (CPU keys are unchanged)
    amp = {"amp": "bf16"} if amp_default(ctx.device) else {}
    return ctx.store.run("train", {"spec": spec, "cfg": cfg, "seed": seed,
                                   "device": ctx.device.type, **amp},
                         inputs=(data.key,), compute=compute, save=save, load=load, log=ctx.log,
                         version=2 if guarded else 1)


def construct_stage(ctx: Context, *, name: str, model: nn.Module, model_key: str, data: Tensors,
                    num_classes: int, seed: int, hyper: dict[str, Any]) -> Tensors:
    """Run registered construction ``name`` with ``model`` on ``data`` (cached)."""
    fn = CONSTRUCTIONS.get(name)

    def compute(work: Path) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return fn(model, data.x, data.y, num_classes=num_classes, generator=gen,
                  device=ctx.device, **hyper)

    def save(out: tuple[torch.Tensor, torch.Tensor], d: Path) -> None:
        save_file({"x": out[0].contiguous(), "y": out[1].contiguous()}, str(d / "data.safetensors"))

    def load(d: Path) -> tuple[torch.Tensor, torch.Tensor]:
        t = load_file(str(d / "data.safetensors"))
        return t["x"], t["y"]

    (x, y), key = ctx.store.run("construct", {"name": name, "hyper": hyper, "seed": seed},
                                inputs=(model_key, data.key), compute=compute, save=save,
                                load=load, log=ctx.log)
    return Tensors(x, y, key)


def evaluate_stage(ctx: Context, *, model: nn.Module, model_key: str, test: Tensors,
                   n_robust: int, attack: AttackConfig, seed: int, desc: str,
                   std: bool = True, suite: str | None = None,
                   control: tuple[nn.Module, str] | None = None,
                   n_checks: int = 200) -> dict[str, Any]:
    """Robust accuracy on the first ``n_robust`` of ``test``, and (``std``) standard accuracy
    on all of it.

    With ``suite``, robust accuracy comes from that attack suite at ``attack``'s eps and norm,
    with every sanity check of :mod:`eisbench.evaluation` (``control``: an undefended model and
    its key, for the control-falls check); otherwise from ``attack`` alone, without checks.
    """

    def compute(work: Path) -> dict[str, Any]:
        x, y = test.x[:n_robust], test.y[:n_robust]
        out: dict[str, Any]
        if suite is None:
            t0 = time.perf_counter()
            with count_passes(model) as passes:
                ok = correct_under_attack(model, x, y, attack, seed=seed, device=ctx.device,
                                          desc=desc)
            out = {"robust_acc": float(ok.float().mean()), "n_robust": len(ok),
                   "attack": attack.describe(), "passes": passes.to_dict(per=len(ok)) | {
                       "seconds": time.perf_counter() - t0}}
        else:
            ev = evaluate_robustness(model, x, y, eps=attack.eps, norm=attack.norm, suite=suite,
                                     n_checks=n_checks, seed=seed, device=ctx.device,
                                     control=control[0] if control else None)
            d = ev.to_dict()
            out = {"robust_acc": d["robust_acc"], "n_robust": d["n"],
                   "attack": describe_suite(suite, attack.norm, attack.eps),
                   "per_attack": d["per_attack"], "checks": d["checks"],
                   "passes": d["passes"], "check_passes": d["check_passes"]}
        if std:
            pred = predict(model, test.x, device=ctx.device)
            out.update(std_acc=float((pred == test.y).float().mean()), n_std=len(test.y))
        return out

    def save(out: dict[str, Any], d: Path) -> None:
        (d / "metrics.json").write_text(json.dumps(out))

    def load(d: Path) -> dict[str, Any]:
        out: dict[str, Any] = json.loads((d / "metrics.json").read_text())
        return out

    params: dict[str, Any] = {"attack": attack, "n_robust": n_robust, "seed": seed, "std": std}
    if suite is not None:
        params |= {"suite": suite, "n_checks": n_checks, "plan": steps_of(suite)}
    inputs = (model_key, test.key) + ((control[1],) if suite is not None and control else ())
    out, _ = ctx.store.run("evaluate", params,
                           inputs=inputs, compute=compute, save=save, load=load,
                           log=ctx.log)
    return out
