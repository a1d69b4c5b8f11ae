"""The within-epoch guard against catastrophic overfitting of the training loop.

Single-step adversarial training can overfit catastrophically (Wong et al. 2020): within a few
dozen steps the model learns to mask its gradient, so that the one-step attack it trains on
stops working while a multi-step attack still breaks it. Its signature is a gap between the
accuracy under FGSM and under PGD at the same eps: a robust model loses a few points more to
PGD than to FGSM, a collapsed one keeps FGSM accuracy and falls to ~0 under PGD.

For the methods that declare ``guarded``, with ``cfg.overfit_guard > 0``, the loop probes every
:data:`PROBE_EVERY` optimiser steps (:func:`probe`: FGSM and PGD-5 accuracy at the eps of the
step just taken, which is below the full eps during a warm-up or a back-off, on the first
:data:`PROBE_N` training images, fixed starts) and keeps a snapshot of the weights and
the optimiser at the last healthy probe. When the gap exceeds ``cfg.overfit_guard`` it restores
that snapshot and backs off: eps (and the step with it) restart from :data:`BACKOFF_FROM` of
its value, halved again at each further collapse, and ramp linearly back to full over one
epoch (:func:`backoff_factor`). After :data:`MAX_BACKOFFS` collapses it restores the snapshot
and stops. The per-epoch guard of :mod:`eisbench.training.loop` (best epoch under PGD-10) runs
as well.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from eisbench.attacks.pgd import fgsm, pgd
from eisbench.core.tensors import eval_mode

PROBE_N = 256  # training images probed within an epoch
PROBE_EVERY = 100  # optimiser steps between probes (about 8% of a fast-AT epoch's time)
BACKOFF_FROM = 0.5  # eps fraction right after the first collapse (then 0.25, ...)
MAX_BACKOFFS = 3  # collapses after which the run stops on the last healthy snapshot


def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
          device: str | torch.device) -> tuple[float, float]:
    """(FGSM accuracy, PGD-5 accuracy) at ``eps`` on x[:PROBE_N] (N, C, H, W), y (N,); the
    same every call for the same weights (FGSM has no randomness, PGD a fixed start)."""
    xb, yb = x[:PROBE_N].to(device), y[:PROBE_N].to(device)
    x_f = fgsm(model, xb, yb, eps=eps, norm=norm)
    x_p = pgd(model, xb, yb, eps=eps, steps=5, norm=norm, random_start=True,
              generator=torch.Generator().manual_seed(0))
    with eval_mode(model), torch.no_grad():
        return (float((model(x_f).argmax(1) == yb).float().mean()),
                float((model(x_p).argmax(1) == yb).float().mean()))


def backoff_factor(state: dict[str, Any], step: int, per_epoch: int) -> float:
    """The eps factor at optimiser step ``step``: 1 without a collapse; after the n-th collapse
    (at step s) ``BACKOFF_FROM ** n``, ramped linearly to 1 over ``per_epoch`` steps from s."""
    n, start = int(state.get("backoffs", 0)), int(state.get("backoff_step", 0))
    if n == 0:
        return 1.0
    lo = BACKOFF_FROM ** n
    return min(1.0, lo + (1.0 - lo) * (step - start) / max(per_epoch, 1))


def watch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
          eps: float, norm: str, margin: float, device: str | torch.device, step: int,
          state: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """Probe after optimiser step ``step`` (0-based); healthy: snapshot model and optimiser
    into ``state``; collapsed (FGSM minus PGD-5 accuracy above ``margin``): restore the last
    snapshot, count a back-off from step + 1, and return a message saying so (it also says
    when the run must stop). ``entry`` (the epoch's history entry) receives the probes."""
    acc_f, acc_p = probe(model, x, y, eps=eps, norm=norm, device=device)
    entry.setdefault("probes", []).append([step + 1, round(acc_f, 4), round(acc_p, 4)])
    if acc_f - acc_p <= margin:
        state["healthy"] = {"model": copy.deepcopy(model.state_dict()),
                            "opt": copy.deepcopy(opt.state_dict())}
        return None
    if state.get("healthy") is not None:
        model.load_state_dict(state["healthy"]["model"])
        opt.load_state_dict(state["healthy"]["opt"])
    state["backoffs"] = int(state.get("backoffs", 0)) + 1
    state["backoff_step"] = step + 1
    entry.setdefault("backoffs_at", []).append(step + 1)
    what = (f"FGSM accuracy {acc_f:.2f} but PGD-5 {acc_p:.2f} at eps {eps:g} after step "
            f"{step + 1} (catastrophic overfitting); restored the last healthy weights")
    if state["backoffs"] > MAX_BACKOFFS:
        state["stopped"] = True
        entry["stopped"] = True
        return f"{what} and stopped after {MAX_BACKOFFS} back-offs"
    return f"{what}; eps restarts from {BACKOFF_FROM ** state['backoffs']:g} of its value"
