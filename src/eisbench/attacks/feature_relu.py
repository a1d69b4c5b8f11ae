"""How the ReLU just before a model's features passes gradients, for representation inversion.

Ilyas et al. 2019 built D_R with the robustness library. Its inversion loss reads the
representation with ``model(inp, with_latent=True, fake_relu=True)``: the robustness docs'
representation-inversion example (``docs/example_usage/input_space_manipulation.rst:165-170``)
and ``image_inversion.ipynb`` cell 4 of MadryLab/robust_representations, the notebook that
MadryLab/constructed-datasets issue #5 names as "the core of the code for making robust CIFAR".
``fake_relu`` turns the ReLU that produces the representation into ``FakeReLU``
(``robustness/tools/custom_modules.py:5-12``): a ReLU forwards, the identity backwards; the
ResNets apply it to the last block only (``robustness/cifar_models/resnet.py:35-37, 103``). A
unit that is off in the current image then still receives the gradient that would turn it on;
under a true ReLU it receives none, so descent cannot switch it on to match a target in which it
is on. ``no_relu=True`` (``robustness/attacker.py:301-304``) reads the pre-ReLU values instead.

:func:`feature_relu` installs either behaviour on the last ``nn.ReLU`` module that runs before
the features (:func:`last_relu`), through a forward hook removed in ``finally``:

- ``"true"``: nothing changes;
- ``"fake"``: the ReLU returns ``inp + (relu(inp) - inp).detach()``: the same values (exactly),
  gradient 1 everywhere;
- ``"pre"``: the ReLU returns its input, so the features are the layer's pre-activations (after
  any pooling or flattening that follows it).

Only an ``nn.ReLU`` module can be hooked: a model whose last ReLU before the features is
functional (``torch.relu`` in a block's ``forward``) or shared between layers gets a
:class:`~eisbench.models.layers.LayerError` that says so.

Example:
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> x = torch.rand(2, 1, 2, 2)
    >>> with feature_relu(net, "pre", x) as name:
    ...     name, features(net, x).shape
    ('2', torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from eisbench.core.tensors import eval_mode
from eisbench.models import features
from eisbench.models.layers import LayerError, cached_layers

RELU_MODES = ("true", "fake", "pre")
"""``true``: a plain ReLU; ``fake``: the robustness library's ``fake_relu``; ``pre``: its
``no_relu`` (pre-activations)."""


def last_relu(model: nn.Module, x: torch.Tensor) -> str:
    """The ``named_modules`` name of the last ``nn.ReLU`` that runs while ``features(model,
    x)`` is computed for images x (B, C, H, W) (the first two are used), if only layers without
    parameters (pooling, flattening) run between it and the features; else a LayerError."""
    mods = dict(model.named_modules())
    names = {id(m): n for n, m in reversed(list(mods.items()))}
    order: list[str] = []  # leaf modules in the order they finish

    def post(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        order.append(names[id(mod)])

    leaves = [m for n, m in mods.items() if n and not any(True for _ in m.children())]
    handles = [m.register_forward_hook(post) for m in leaves]
    try:
        with eval_mode(model), torch.no_grad():
            features(model, x[:2])
    finally:
        for h in handles:
            h.remove()
    relus = [i for i, n in enumerate(order) if isinstance(mods[n], nn.ReLU)]
    kind = type(model).__name__
    if not relus:
        raise LayerError(f"{kind} runs no nn.ReLU module before its features: relu='fake' or "
                         "'pre' needs one (use relu='true')")
    i = relus[-1]
    name = order[i]
    lm = cached_layers(model)  # a model without features(): its head runs after the features
    head = lm.head if lm is not None and not callable(getattr(model, "features", None)) else None
    after = [n for n in order[i + 1:] if n != head and any(True for _ in mods[n].parameters())]
    if after:
        raise LayerError(f"the last nn.ReLU module of {kind} ({name!r}) is followed by layers "
                         f"with parameters before the features ({', '.join(dict.fromkeys(after))}):"
                         " its last ReLU is functional (torch.relu), which no hook can reach; "
                         "use relu='true'")
    if order.count(name) > order.count(order[0]):
        raise LayerError(f"nn.ReLU {name!r} of {kind} runs more than once per forward pass: "
                         "hooking it would change its other uses; give the features' ReLU its "
                         "own module, or use relu='true'")
    return name


def _fake(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    inp = args[0]
    return inp + (out - inp).detach()  # forward: relu(inp) exactly; backward: identity


def _pre(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    return args[0]


_HOOKS = {"fake": _fake, "pre": _pre}


@contextmanager
def feature_relu(model: nn.Module, mode: str, x: torch.Tensor) -> Iterator[str | None]:
    """Within the block, the ReLU before ``model``'s features behaves as ``mode`` (one of
    :data:`RELU_MODES`; see the module docstring); x (B, C, H, W): example images to find it
    (:func:`last_relu`). Yields the hooked module's name (None for ``"true"``). The hook is
    removed and an in-place ReLU's flag restored on exit, also on an exception.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> with feature_relu(net, "fake", torch.rand(2, 1, 2, 2)) as name:
        ...     name
        '2'
    """
    if mode not in RELU_MODES:
        raise ValueError(f"relu must be one of {RELU_MODES}, got {mode!r}")
    if mode == "true":
        yield None
        return
    name = last_relu(model, x)
    relu = dict(model.named_modules())[name]
    assert isinstance(relu, nn.ReLU)
    inplace = relu.inplace
    relu.inplace = False  # the hook needs the input as it was
    handle = relu.register_forward_hook(_HOOKS[mode])
    try:
        yield name
    finally:
        handle.remove()
        relu.inplace = inplace


__all__ = ["RELU_MODES", "feature_relu", "last_relu"]
