"""Accuracy and robust accuracy of a model on a dataset, batched, with the attack recorded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from eisbench.attacks.core import ATTACKS
from eisbench.core.progress import progress
from eisbench.core.tensors import eval_mode


@dataclass(frozen=True)
class AttackConfig:
    """A fully specified attack: everything a reader needs to judge a robust-accuracy number."""

    name: str = "pgd"
    norm: str = "linf"
    eps: float = 0.3
    steps: int = 50
    step_size: float | None = None  # None: 2.5 * eps / steps
    restarts: int = 1
    early_exit: bool = True

    def describe(self) -> str:
        size = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        return (f"{self.name.upper()}-{self.steps} {self.norm} eps={self.eps:g} "
                f"step={size:.3g} restarts={self.restarts}")

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the attack call: eps, norm and those of the other fields
        that the attack declares as hyper-parameters."""
        params = ATTACKS.meta(self.name)["params"]
        return {k: v for k, v in asdict(self).items() if k in ("norm", "eps") or k in params}


def evaluation_hyper(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter that attack ``name`` declares, for measuring robust accuracy:
    from ``given`` where set (not None), else :class:`AttackConfig`'s default where it has that
    field (50 steps, one run, early exit), else the attack's own default.

    Example:
        >>> evaluation_hyper("pgd", {"steps": 5})["early_exit"]
        True
    """
    base = asdict(AttackConfig())
    out = {}
    for key, h in ATTACKS.meta(name)["params"].items():
        value = given.get(key)
        out[key] = value if value is not None else base.get(key, h.default)
    return out


def correct_under_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         attack: AttackConfig, *, batch_size: int = 500, seed: int = 0,
                         device: str | torch.device = "cpu", desc: str = "attack") -> torch.Tensor:
    """Per-example robustness (N,) bool: still classified correctly after ``attack``."""
    fn = ATTACKS.get(attack.name)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in progress(range(0, len(x), batch_size), desc=desc, unit="batch"):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = fn(model, xb, yb, generator=gen, **attack.kwargs())
        with eval_mode(model), torch.no_grad():
            out.append((model(x_adv).argmax(1) == yb).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.bool)
