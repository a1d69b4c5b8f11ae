"""A clean call into third-party interpretability code: eval mode, private global RNGs, and
nothing left behind on the model.

Libraries such as captum install hooks and set attributes on layers during a call and draw
from the global torch and numpy generators. :func:`clean_call` runs such code with the model
in eval mode (its mode restored after), both global generators forked and seeded from an
explicit ``torch.Generator`` (so the same seed gives the same result and the caller's global
state is untouched), and afterwards removes every hook and layer attribute the call added,
raising if a hook was left (a bug worth knowing about, even once it is cleaned up).

Example:
    >>> with clean_call(net, "saliency", generator=torch.Generator().manual_seed(0)):
    ...     maps = Saliency(net).attribute(x, target=0)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from eisbench.core.tensors import eval_mode

_COUNTED = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_DICTS = (*_COUNTED, "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks_with_kwargs")


def hook_count(model: nn.Module) -> int:
    """Forward, forward-pre, backward and backward-pre hooks on ``model`` and its modules."""
    return sum(len(getattr(m, d)) for m in model.modules() for d in _COUNTED)


_MISSING = object()


@contextlib.contextmanager
def clean_call(model: nn.Module, name: str, *, generator: torch.Generator,
               quiet: Sequence[str] = ()) -> Iterator[None]:
    """Run the body with ``model`` in eval mode and the global torch (CPU) and numpy
    generators forked and seeded from ``generator``; warnings matching a regex of ``quiet``
    are silenced. Afterwards every hook and layer attribute added meanwhile is removed, and
    a RuntimeError names ``name`` if a hook had been left; a layer attribute the body deleted
    or rebound (captum's LRP sets and then deletes ``rule``) gets its value back."""
    mods = list(model.modules())
    hooks = [{d: set(getattr(m, d, {})) for d in _HOOK_DICTS} for m in mods]
    attrs = [(dict(vars(m)), m.__dict__.get("_is_full_backward_hook")) for m in mods]
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    np_state = np.random.get_state()
    leaked = 0
    with eval_mode(model), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        for message in quiet:
            warnings.filterwarnings("ignore", message=message)
        torch.default_generator.manual_seed(seed)  # CPU only: fork_rng restores it
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            for m, before, (keys, full) in zip(mods, hooks, attrs, strict=True):
                for d, ids in before.items():
                    table = getattr(m, d, {})
                    for h in [h for h in table if h not in ids]:
                        del table[h]
                        leaked += d in _COUNTED
                for k in [k for k in vars(m) if k not in keys]:
                    del m.__dict__[k]  # e.g. captum's `rule`, `activations`, `input`, `output`
                for k, v in keys.items():  # deleted or rebound meanwhile: the caller's value
                    if k != "training" and m.__dict__.get(k, _MISSING) is not v:
                        m.__dict__[k] = v
                m.__dict__["_is_full_backward_hook"] = full
    if leaked:
        raise RuntimeError(f"{name!r} left {leaked} hooks on the model (now removed)")
