"""The distiller contract and registry.

A *distiller* replaces a model by something simpler and readable. It is a plain function

    ``distil(model, x, *, generator, device, **hyper) -> Replacement``

where ``x`` (N, C, H, W) are unlabelled images in [0,1] and the targets are the *model's*
predictions on them (never ground-truth labels). One keyword-only hyper-parameter (the
distiller's ``size_param``) sweeps the replacement's size for the Pareto plot of agreement
against size. A :class:`Replacement` has

- ``predict(x) -> (N,)`` int64 labels in the model's label space,
- ``size``: an int in the family's own unit (nonzero weights, tree nodes, templates, program
  terms; see each family),
- ``describe() -> str``: one readable line.

Randomness comes only from ``generator``; the model is left in the mode it came in.

Example:
    >>> rep = DISTILLERS.get("tree")(net, x, generator=torch.Generator().manual_seed(0),
    ...                             device="cpu", depth=3)
    >>> float((rep.predict(x_test) == model_predictions(net, x_test)).float().mean())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from eisbench.core.registry import Registry
from eisbench.core.tensors import check_images, predict


@runtime_checkable
class Replacement(Protocol):
    """A distilled stand-in for a model: ``predict``, ``size``, ``describe``."""

    @property
    def size(self) -> int: ...

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (N,) int64 for images (N, C, H, W)."""
        ...

    def describe(self) -> str:
        """The replacement in one readable line."""
        ...


@dataclass(frozen=True)
class Distiller:
    """A registered distiller: the function, the hyper-parameter that sets the size, its sweep
    (from large to small replacements is not required) and the unit of ``size``."""

    name: str
    fit: Callable[..., Replacement]
    size_param: str
    grid: tuple[Any, ...]
    unit: str
    summary: str

    def __call__(self, model: nn.Module, x: torch.Tensor, *, generator: torch.Generator,
                 device: str | torch.device = "cpu", **hyper: Any) -> Replacement:
        return self.fit(model, x, generator=generator, device=device, **hyper)


DISTILLERS: Registry[Distiller] = Registry("distiller")


def register(name: str, *, size_param: str, grid: tuple[Any, ...], unit: str,
             summary: str) -> Callable[[Callable[..., Replacement]],
                                       Callable[..., Replacement]]:
    """Decorator: register ``fit`` as distiller ``name`` (a duplicate name raises)."""

    def deco(fit: Callable[..., Replacement]) -> Callable[..., Replacement]:
        DISTILLERS.register(name)(Distiller(name=name, fit=fit, size_param=size_param,
                                            grid=grid, unit=unit, summary=summary))
        return fit

    return deco


def model_predictions(model: nn.Module, x: torch.Tensor, *,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """The model's labels (N,) on images x (N, C, H, W): the distillers' targets (eval mode,
    the model's mode restored)."""
    return predict(model, x, device=device)


def num_outputs(model: nn.Module, x: torch.Tensor, *,
                device: str | torch.device = "cpu") -> int:
    """The number of logits the model returns (its number of classes), from one image."""
    with torch.no_grad():
        was = model.training
        model.eval()  # safe: nn.Module.eval (mode switch)
        try:
            out = model(x[:1].to(device))
        finally:
            model.train(was)
    if out.dim() != 2:
        raise ValueError(f"the model returned shape {tuple(out.shape)}; a classifier must "
                         "return logits (B, K)")
    return int(out.shape[1])


def targets(model: nn.Module, x: torch.Tensor, *, device: str | torch.device,
            what: str = "images to distil on") -> tuple[torch.Tensor, int]:
    """Check ``x`` and return the model's labels on it (N,) and its number of classes."""
    check_images(x, what=what)
    if len(x) < 2:
        raise ValueError(f"need at least 2 {what}, got {len(x)}")
    return model_predictions(model, x, device=device), num_outputs(model, x, device=device)


def pixel_name(index: int, shape: tuple[int, int, int]) -> str:
    """``p[h,w]`` (one channel) or ``p[c,h,w]`` for a flat pixel index of an image (C, H, W)."""
    c, h, w = shape
    ci, rest = divmod(index, h * w)
    hi, wi = divmod(rest, w)
    return f"p[{hi},{wi}]" if c == 1 else f"p[{ci},{hi},{wi}]"


def as_shape(x: torch.Tensor) -> tuple[int, int, int]:
    return (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))


def check_input(x: torch.Tensor, shape: tuple[int, int, int]) -> None:
    """Raise ValueError unless x is (N, *shape)."""
    if x.dim() != 4 or as_shape(x) != shape:
        raise ValueError(f"expected images (N, {shape[0]}, {shape[1]}, {shape[2]}), got "
                         f"{tuple(x.shape)}: use images of the shape the replacement was "
                         "distilled on")
