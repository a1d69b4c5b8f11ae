"""Count the work of an attack at the model: forward and backward passes, in examples.

:func:`count_passes` watches one model while it is active. A forward pass of a batch of B
images counts B forward examples; a backward pass that reaches the model's output (through
``loss.backward()`` or ``torch.autograd.grad``) counts B backward examples, once per backward
call, whatever the loss (a (B, K) output back-propagated once is B example-backwards, not B*K).
A forward pass under ``torch.no_grad()`` builds no graph and counts as a forward pass only.

Because it counts at the model, not inside eisbench's attacks, it counts any code that calls the
model, a peer library's attack included: the basis for comparing the two at equal work.

Example:
    >>> net = torch.nn.Linear(3, 2)
    >>> x = torch.rand(4, 3, requires_grad=True)
    >>> with count_passes(net) as passes:
    ...     with torch.no_grad():
    ...         _ = net(x)
    ...     (g,) = torch.autograd.grad(net(x).sum(), x)
    >>> passes
    Passes(forward=8, backward=4)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Passes:
    """Forward and backward passes of one model, counted in examples (batch rows)."""

    forward: int = 0
    backward: int = 0

    def __add__(self, other: Passes) -> Passes:
        return Passes(self.forward + other.forward, self.backward + other.backward)

    def __sub__(self, other: Passes) -> Passes:
        return Passes(self.forward - other.forward, self.backward - other.backward)

    def to_dict(self, per: int | None = None) -> dict[str, float | None]:
        """``{"forward", "backward"}``; given ``per`` (the examples attacked), also the passes
        per example (None when ``per`` is 0: no example, no rate).

        Example:
            >>> d = Passes(300, 200).to_dict(per=100)
            >>> d["forward"], d["forward_per_example"], d["backward_per_example"]
            (300, 3.0, 2.0)
        """
        out: dict[str, float | None] = {"forward": self.forward, "backward": self.backward}
        if per is not None:
            out["forward_per_example"] = self.forward / per if per else None
            out["backward_per_example"] = self.backward / per if per else None
        return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [t for o in obj for t in _tensors(o)]
    return []


def _rows(t: torch.Tensor) -> int:
    return int(t.shape[0]) if t.dim() else 1


@contextlib.contextmanager
def count_passes(model: nn.Module) -> Iterator[Passes]:
    """Count the forward and backward passes of ``model`` while the block runs.

    Args:
        model: any ``nn.Module``; the count is of calls to it (``model(x)``), whatever its
            output: a tensor (B, ...) or tuples, lists and dicts of them (the first tensor's
            leading dimension is the batch size).

    Yields:
        a :class:`Passes`, updated as the block runs and final when it ends. A backward pass
        counts when its gradient reaches the output of a call made inside the block, and only
        while the block runs. Counters nest: each counts every pass inside its own block.
        The hook is removed on exit, also when the block raises.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> with count_passes(net) as p:
        ...     net(torch.rand(5, 3)).sum().backward()
        >>> (p.forward, p.backward)
        (5, 5)
    """
    passes = Passes()
    active = [True]
    on_leaves: list[Any] = []  # hooks on tensors that outlive the block (an output that is a leaf)

    def backward_hook(grad: torch.Tensor) -> None:
        if active[0]:
            passes.backward += _rows(grad)

    def forward_hook(module: nn.Module, args: Any, output: Any) -> None:
        if not active[0]:
            return
        outs = _tensors(output)
        if not outs:
            return
        passes.forward += _rows(outs[0])
        grads = [t for t in outs if t.requires_grad]  # none under torch.no_grad()
        if not grads:
            return
        # one count per backward call, however many of the outputs it reaches
        h = grads[0].register_hook(backward_hook) if len(grads) == 1 else \
            torch.autograd.graph.register_multi_grad_hook(grads, backward_hook, mode="any")
        if any(t.grad_fn is None for t in grads):
            on_leaves.append(h)

    handle = model.register_forward_hook(forward_hook)
    try:
        yield passes
    finally:
        active[0] = False
        handle.remove()
        for h in on_leaves:
            h.remove()
