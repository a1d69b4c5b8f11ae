"""Finding a model's layers, for any ``nn.Module``: its logits' linear head, its penultimate
features and its last convolution.

Tools (SNAFUE's embedding, feature visualisation, Grad-CAM), unit ablation and latent
adversarial training need "the penultimate features" or "the last conv block" of models
eisbench did not build. :func:`find_layers` traces one forward pass of example images with a
hook on every module and reads them off the trace, whatever the model's layout (attribute
layers, ``Sequential`` blocks, ``Flatten`` or ``x.view`` anywhere, BatchNorm, dropout, residual
blocks, global average pooling, any number of classes):

- ``head``: the last ``nn.Linear`` run whose output is the logits (else the last one with K
  outputs, for a model that returns e.g. log-probabilities);
- the features are the head's input, flattened: (B, D) (:func:`penultimate_features`);
- ``penultimate``: the module run just before the head whose output is those features (the
  leaf if one qualifies, else a block such as a residual one; a module run more than once is
  never picked: hooking it would hit its other uses); None if no module outputs them (e.g. a
  functional ``F.relu`` between the last module and the head);
- ``last_conv``: the last ``nn.Conv2d`` run (in execution order, not registration order).

When the guess is wrong, :class:`FeaturesAt` names the features' module (``--layer NAME``);
when there is no answer, :class:`LayerError` lists the candidate modules with their output
shapes. The trace runs once per model and input shape (cached while the model lives), in eval
mode and without gradients, so BatchNorm statistics are never touched.

Example:
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    >>> lm = find_layers(net, torch.rand(2, 1, 8, 8))
    >>> lm.head, lm.penultimate, lm.last_conv
    ('3', '2', '0')
    >>> penultimate_features(net, torch.rand(5, 1, 8, 8)).shape
    torch.Size([5, 144])
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eisbench.core.tensors import eval_mode


class LayerError(ValueError):
    """eisbench cannot decide which layer of a model is meant; the message lists the
    candidates and says how to name one (``--layer NAME`` or :class:`FeaturesAt`)."""


@dataclass(frozen=True)
class Traced:
    """One module of a trace: its ``named_modules`` name, class, output shape per image and how
    many times it ran in one forward pass."""

    name: str
    kind: str
    shape: tuple[int, ...]
    calls: int

    def __str__(self) -> str:
        times = f", runs {self.calls}x" if self.calls > 1 else ""
        return f"{self.name} ({self.kind} -> {tuple(self.shape)}{times})"


@dataclass(frozen=True)
class LayerMap:
    """What :func:`find_layers` found (names as in ``model.named_modules()``; None: not found).
    ``modules`` lists every module that ran, in the order they finished."""

    head: str | None
    penultimate: str | None
    last_conv: str | None
    num_classes: int
    modules: tuple[Traced, ...]

    def candidates(self, *, limit: int = 40) -> str:
        """The modules that ran, with their output shapes, for an error message."""
        shown = [str(t) for t in self.modules[-limit:]]
        more = len(self.modules) - len(shown)
        return ("; ".join(shown) + (f" (and {more} earlier)" if more > 0 else "")) or "none"


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], LayerMap]] = (
    weakref.WeakKeyDictionary())


def _still_valid(model: nn.Module, lm: LayerMap) -> bool:
    """The cached names still name modules of the same classes (a layer may be swapped)."""
    mods = dict(model.named_modules())
    return all(t.name in mods and type(mods[t.name]).__name__ == t.kind for t in lm.modules)


def find_layers(model: nn.Module, x: torch.Tensor) -> LayerMap:
    """Trace ``model`` on example images x (B, C, H, W) (the first two are used) and return its
    :class:`LayerMap` (see the module docstring); a model that fails on them raises its error.
    A :class:`FeaturesAt` anywhere in the model names the penultimate module itself."""
    key = tuple(x.shape[1:])
    cached = _CACHE.get(model, {}).get(key)
    if cached is not None and _still_valid(model, cached):
        return cached
    lm = _trace(model, x[:2])
    _CACHE.setdefault(model, {})[key] = lm
    return lm


def cached_layers(model: nn.Module) -> LayerMap | None:
    """The :class:`LayerMap` of ``model``'s latest trace (None if never traced, or if its
    layers changed since)."""
    maps = list(_CACHE.get(model, {}).values())
    return maps[-1] if maps and _still_valid(model, maps[-1]) else None


def _trace(model: nn.Module, x: torch.Tensor) -> LayerMap:
    mods = dict(model.named_modules())
    names = {id(m): n for n, m in reversed(list(mods.items()))}  # first name of a shared module
    done: list[tuple[str, Any]] = []  # (name, output) in the order modules finish
    inputs: dict[str, torch.Tensor] = {}  # a Linear's last input
    calls: dict[str, int] = {}

    def post(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        name = names[id(mod)]
        calls[name] = calls.get(name, 0) + 1
        done.append((name, out))
        if isinstance(mod, nn.Linear) and args and isinstance(args[0], torch.Tensor):
            inputs[name] = args[0]

    handles = [m.register_forward_hook(post) for n, m in mods.items() if n]
    try:
        with eval_mode(model), torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise LayerError(f"{type(model).__name__} must return logits (B, K), got {got}")
    k = int(logits.shape[1])
    traced = _summarise(done, calls, mods)
    head = _head(done, mods, logits)
    pen = _penultimate(done, calls, mods, head, inputs)
    convs = [n for n, _ in done if isinstance(mods[n], nn.Conv2d)]
    override = _override(mods)
    return LayerMap(head=head, penultimate=override or pen, last_conv=convs[-1] if convs else None,
                    num_classes=k, modules=traced)


def _summarise(done: list[tuple[str, Any]], calls: dict[str, int],
               mods: dict[str, nn.Module]) -> tuple[Traced, ...]:
    seen: dict[str, Traced] = {}
    for name, out in done:  # the last call of each module gives its shape
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
        seen.pop(name, None)
        seen[name] = Traced(name, type(mods[name]).__name__, shape, calls[name])
    return tuple(seen.values())


def _head(done: list[tuple[str, Any]], mods: dict[str, nn.Module],
          logits: torch.Tensor) -> str | None:
    k = logits.shape[1]
    linears = [(n, o) for n, o in done if isinstance(mods[n], nn.Linear)
               and isinstance(o, torch.Tensor) and o.dim() == 2 and o.shape[1] == k]
    exact = [n for n, o in linears if torch.equal(o, logits)]
    if exact:
        return exact[-1]
    return linears[-1][0] if linears else None


def _penultimate(done: list[tuple[str, Any]], calls: dict[str, int], mods: dict[str, nn.Module],
                 head: str | None, inputs: dict[str, torch.Tensor]) -> str | None:
    if head is None or head not in inputs:
        return None
    feats = inputs[head].flatten(1)  # (B, D)
    before = [n for n, _ in done][:[n for n, _ in done].index(head)]
    outs = dict(done[:len(before)])  # the last output of each module before the head
    same = [n for n in dict.fromkeys(reversed(before))  # latest first
            if calls[n] == 1 and isinstance(outs[n], torch.Tensor)
            and outs[n].shape[0] == feats.shape[0] and outs[n][0].numel() == feats.shape[1]
            and torch.equal(outs[n].flatten(1), feats)]
    leaves = [n for n in same if not any(True for _ in mods[n].children())]
    pick = leaves or same
    return pick[0] if pick else None


def _override(mods: dict[str, nn.Module]) -> str | None:
    """The layer a :class:`FeaturesAt` in the model names, as a name in the whole model."""
    for name, m in mods.items():
        if isinstance(m, FeaturesAt):
            return ".".join(p for p in (name, "model", m.layer) if p)
    return None


@contextmanager
def _head_input(model: nn.Module, head: str) -> Iterator[dict[str, torch.Tensor]]:
    got: dict[str, torch.Tensor] = {}

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> None:
        got["x"] = args[0]

    handle = dict(model.named_modules())[head].register_forward_pre_hook(pre)
    try:
        yield got
    finally:
        handle.remove()


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input (B, D) of ``model``'s logits head (:func:`find_layers`) for images x
    (B, C, H, W), flattened; differentiable, in the model's current mode. A model without a
    linear head raises :class:`LayerError` with the candidate layers."""
    lm = find_layers(model, x)
    if lm.head is None:
        raise LayerError(f"{type(model).__name__} has no nn.Linear with {lm.num_classes} outputs "
                         "to take its penultimate features from: name the layer whose output "
                         f"they are (--layer NAME, or eisbench.models.FeaturesAt(model, layer="
                         f"NAME)); the modules that ran: {lm.candidates()}")
    with _head_input(model, lm.head) as got:
        model(x)
    return got["x"].flatten(1)


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The output of module ``layer`` (a ``named_modules`` name) for images x (B, C, H, W),
    flattened to (B, D); differentiable."""
    got: dict[str, torch.Tensor] = {}

    def post(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        got["x"] = out

    handle = dict(model.named_modules())[layer].register_forward_hook(post)
    try:
        model(x)
    finally:
        handle.remove()
    if "x" not in got:
        raise LayerError(f"layer {layer!r} did not run in the forward pass: name a layer the "
                         "model uses")
    return got["x"].flatten(1)


def check_layer(model: nn.Module, layer: str) -> str:
    """``layer`` if it names a module of ``model``, else a :class:`LayerError` with the
    closest names and every name."""
    names = [n for n, _ in model.named_modules() if n]
    if layer in names:
        return layer
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise LayerError(f"{type(model).__name__} has no layer {layer!r}{hint} (its layers: "
                     f"{', '.join(names) or 'none'})")


class FeaturesAt(nn.Module):
    """``model`` unchanged, with its penultimate features named: the output of module
    ``layer`` (a ``named_modules`` name of ``model``), flattened to (B, D). For models whose
    features :func:`find_layers` guesses wrong or cannot find (``--layer NAME``).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> FeaturesAt(net, layer="1").features(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 32])
    """

    def __init__(self, model: nn.Module, *, layer: str) -> None:
        super().__init__()
        self.layer = check_layer(model, layer)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return layer_output(self.model, self.layer, x)
