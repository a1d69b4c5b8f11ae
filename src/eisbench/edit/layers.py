"""Naming a model's hidden layers and hooking them: capture, add to, or zero their outputs.

Every hook here lives only inside a context manager and is removed in ``finally``, so an
exception in the body leaves the model as it was.

Layers are named as in ``model.named_modules()`` (``"body.3"``), plus two aliases resolved by
:func:`resolve_layer`:

- ``"penultimate"``: the module whose output is :func:`eisbench.models.features` (the last
  module of a :class:`~eisbench.models.architectures.Classifier`'s ``body``, seen through a
  :class:`~eisbench.models.Normalized` wrapper; for any other model, the one
  :func:`eisbench.models.find_layers` finds);
- ``"last-conv"``: the last ``nn.Conv2d`` run (its output channels are the units).

Example:
    >>> with capture(net, ["body.3"]) as acts:
    ...     net(x)
    >>> acts["body.3"].shape  # (B, 32, 7, 7) for a cnn-small on MNIST
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from eisbench.models.layers import LayerError, cached_layers, find_layers

ALIASES = ("penultimate", "last-conv")
Hook = Callable[..., Any]  # hook(module, args, output) -> new output or None


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    from eisbench.models import Normalized

    prefix = ""
    while isinstance(model, Normalized):
        model, prefix = model.model, prefix + "model."
    return model, prefix


def resolve_layer(model: nn.Module, name: str, *, example: torch.Tensor | None = None) -> str:
    """The ``named_modules`` name of layer ``name`` (a module name or an alias of
    :data:`ALIASES`); an unknown name raises ValueError with the closest names.

    The aliases of a model without a Sequential ``body`` come from
    :func:`eisbench.models.find_layers`, traced on ``example`` images (B, C, H, W) (or its
    cached trace); a model it cannot decide for raises :class:`~eisbench.models.LayerError`
    listing the candidate layers."""
    if name in ALIASES:
        inner, prefix = _unwrap(model)
        body = getattr(inner, "body", None)
        lm = find_layers(model, example) if example is not None else cached_layers(model)
        if name == "penultimate" and isinstance(body, nn.Sequential) and len(body) > 0:
            return f"{prefix}body.{len(body) - 1}"
        if lm is None and name == "last-conv":
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            if not convs:
                raise ValueError(f"{type(model).__name__} has no nn.Conv2d: pick another layer")
            return convs[-1]
        if lm is None:
            raise ValueError(f"{type(inner).__name__} has no Sequential `body`: pass example "
                             "images to find its penultimate layer, or name it explicitly (one "
                             "of model.named_modules())")
        found = lm.penultimate if name == "penultimate" else lm.last_conv
        if found is None:
            what = ("no module outputs the features its logits' linear layer reads (a "
                    "functional op sits between, or the module runs more than once)"
                    if name == "penultimate" else "it runs no nn.Conv2d")
            raise LayerError(f"cannot find the {name} layer of {type(inner).__name__}: {what}. "
                             f"Name one (--layer NAME); the modules that ran: "
                             f"{lm.candidates()}")
        return found
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown layer {name!r}{hint} (layers: {', '.join(names)}; aliases: "
                         f"{', '.join(ALIASES)})")
    return name


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The module of layer ``name`` (see :func:`resolve_layer`)."""
    return dict(model.named_modules())[resolve_layer(model, name)]


@contextlib.contextmanager
def _hooks(model: nn.Module, fns: Mapping[str, Hook]) -> Iterator[None]:
    """Register forward hook ``fns[name]`` on each named layer; remove them all in finally."""
    handles = []
    try:
        for name, fn in fns.items():
            handles.append(get_layer(model, name).register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(model: nn.Module, layers: Sequence[str], *,
            detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each layer at every forward pass inside the block (the last pass
    wins): ``{name: (B, ...)}``, keyed by the names as given."""
    out: dict[str, torch.Tensor] = {}

    def make(key: str) -> Hook:
        def hook(mod: nn.Module, args: object, output: torch.Tensor) -> None:
            out[key] = output.detach() if detach else output
        return hook

    with _hooks(model, {n: make(n) for n in layers}):
        yield out


@contextlib.contextmanager
def add_to_outputs(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block, layer ``name`` outputs ``output + deltas[name]`` (the delta has the
    output's shape (B, ...), or broadcasts to it): the latent adversary's hook."""
    def make(d: torch.Tensor) -> Hook:
        def hook(mod: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            return output + d
        return hook

    with _hooks(model, {n: make(d) for n, d in deltas.items()}):
        yield


def unit_mask(n_units: int, units: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """(n_units,) float mask: 0 at ``units``, 1 elsewhere; an index out of range raises."""
    idx = torch.as_tensor(list(units) if not isinstance(units, torch.Tensor) else units,
                          dtype=torch.long).flatten()
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n_units):
        raise ValueError(f"unit indices must lie in [0, {n_units}), got {idx.tolist()}")
    m = torch.ones(n_units)
    m[idx] = 0.0
    return m


@contextlib.contextmanager
def ablated(model: nn.Module, layer: str, units: Sequence[int] | torch.Tensor) -> Iterator[None]:
    """Inside the block, the ``units`` of ``layer`` output zero: channels (dim 1) of a
    (B, U, H, W) output, features of a (B, U) one."""
    idx = torch.as_tensor(list(units) if not isinstance(units, torch.Tensor) else units,
                          dtype=torch.long)

    def hook(mod: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        m = unit_mask(output.shape[1], idx).to(output)
        return output * m.view(1, -1, *([1] * (output.dim() - 2)))

    with _hooks(model, {layer: hook}):
        yield
