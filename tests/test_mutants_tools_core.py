"""Tests that kill plausible wrong versions of eisbench.tools' defaults, guard and core (see
benchmarks/mutation.py).

Every tool, wrapper and loop runs with the defaults its signature declares (called without
them, it equals the call with them spelled out); clean_call seeds, quiets warnings, restores
the mode and counts the hooks left behind; tool outputs are checked for shape, range and
finiteness.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from mutants_tools_helpers import X, _g, _lin, _mlp, _same

from eisbench.tools import TOOLS
from eisbench.tools import adversarial_patch as ap
from eisbench.tools import decoder as dec
from eisbench.tools import feature_vis as fv
from eisbench.tools import parameterisations as pz
from eisbench.tools import scan as sc
from eisbench.tools import snafue as sn
from eisbench.tools import trigger_reconstruction as tr
from eisbench.tools.core import check_tool_output
from eisbench.tools.guard import clean_call


def _defaults(fn: Callable[..., Any], *args: Any, seeded: bool = True, **kw: Any) -> Any:
    """``fn`` called with its defaults equals ``fn`` called with its signature's defaults
    spelled out (so the defaults are the documented ones); returns the result."""
    spelled = {k: p.default for k, p in inspect.signature(fn).parameters.items()
               if p.default is not p.empty and k not in kw and k != "generator"}
    gen = (lambda: {"generator": _g(5)}) if seeded else dict
    a = fn(*args, **kw, **gen())
    _same(a, fn(*args, **kw, **spelled, **gen()))
    return a


# --- defaults: every tool, wrapper and loop runs with the defaults its signature declares -------

@pytest.mark.parametrize("name", TOOLS.names())
def test_tool_defaults_are_its_signature(name: str) -> None:
    small: dict[str, Any] = ({"autoencoder": dec.AutoencoderConfig(steps=20)}
                             if "adversary" in name else {})
    out = _defaults(TOOLS.get(name), _mlp(), target=1, data=X, **small)  # (a quick generator)
    assert out.shape == (10, 1, 8, 8)


def test_loop_defaults_are_their_signatures() -> None:
    net = _mlp()
    _defaults(tr.reconstruct_triggers, net, targets=[0, 2], data=X[:20])
    _defaults(tr.reconstruct_trigger, net, target=1, data=X[:20], steps=12)
    res = _defaults(sc.scan, net, X[:20], steps=12)
    assert res.threshold == 2.0 and len(res.reconstructions) == 3
    _defaults(sn.search, net, target=1, data=X, bank_size=64, steps=5)
    _defaults(ap.optimise_patches, net, target=2, data=X, n=3)
    _defaults(ap.evaluate_patches, net, torch.rand(3, 1, 3, 3), X, target=1)
    _defaults(fv.visualise, net, lambda x: x.mean((1, 2, 3)), n=2, shape=(1, 8, 8), param="cppn")
    raw = [torch.zeros(1, 1, 3, 3, requires_grad=True) for _ in range(2)]
    fit = inspect.signature(ap.fit_patches).parameters
    spelled: dict[str, Any] = {k: p.default for k, p in fit.items()
                               if p.default is not p.empty}

    def fitted(r: torch.Tensor, kw: dict[str, Any]) -> Any:
        return ap.fit_patches(net, lambda: torch.sigmoid(r), [r], target=1, data=X,
                              generator=_g(), **kw)

    _same(fitted(raw[0], {}), fitted(raw[1], spelled))
    _defaults(pz.FourierImage, 2, (1, 8, 8))
    _defaults(pz.CPPNImage, 2, (1, 8, 8))
    _defaults(fv.top_units, net, target=0, data=X, n=2, seeded=False)
    _defaults(ap.default_side, (1, 28, 28), seeded=False)
    _defaults(sc.mad_anomaly, [1.0, 5.0, 5.5, 6.0, 5.0], seeded=False)


# --- guard and core -------------------------------------------------------------------------------

def test_clean_call_seeds_quiets_restores_and_counts_hooks() -> None:
    net = _lin(torch.ones(3, 64))
    keep = net[0].register_full_backward_hook(lambda m, gi, go: None)  # the caller's own hook
    net.train()
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=_g(7)))
    leak = r"^'probe' left 3 hooks on the model \(now removed\)$"
    with warnings.catch_warnings(record=True) as seen, pytest.raises(RuntimeError, match=leak):
        warnings.simplefilter("always")
        with clean_call(net, "probe", generator=_g(7), quiet=["hush"]):
            assert not net.training
            got_t, got_np = torch.rand(3), np.random.rand(3)
            warnings.warn("hush now", stacklevel=1)
            warnings.warn("loud", stacklevel=1)
            net[1].register_forward_hook(lambda m, i, o: None)
            net[1].register_forward_pre_hook(lambda m, i: None)
            net[1].register_full_backward_hook(lambda m, gi, go: None)
            vars(net[1])["scratch"] = 1
    assert [str(w.message) for w in seen] == ["loud"] and net.training
    torch.testing.assert_close(got_t, torch.rand(3, generator=_g(seed)))
    assert np.array_equal(got_np, np.random.RandomState(seed).rand(3))
    assert "scratch" not in vars(net[1]) and net[1]._is_full_backward_hook is None
    assert net[0]._is_full_backward_hook is True and keep.id in net[0]._backward_hooks
    assert sum(len(getattr(m, d)) for m in net.modules() for d in
               ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")) == 1


def test_check_tool_output_shape_range_and_finite() -> None:
    x = torch.rand(2, 1, 3, 3, requires_grad=True)
    out = check_tool_output(x, n=2, shape=(1, 3, 3))
    assert not out.requires_grad and torch.equal(out, x.detach())
    with pytest.raises(ValueError, match=r"^tool returned \(2, 1, 3, 3\), expected "
                                         r"\(3, 1, 3, 3\)$"):
        check_tool_output(x, n=3, shape=(1, 3, 3))
    for bad in (x.detach() - 1.0, x.detach() + 1.0, x.detach() * math.nan):
        with pytest.raises(ValueError, match=r"^tool images must be finite and in \[0,1\]$"):
            check_tool_output(bad, n=2, shape=(1, 3, 3))
