"""The contract of every registered tool (parametrised over the TOOLS registry): ``n`` images
of the data's shape in [0,1], the same under the same seed, the model left as it came (mode,
weights, gradients) with no hook behind; its registration metadata true to the tool (default
steps, family, and for a patch tool, black outside its centred patch).

Tools are called with their default hyper-parameters, except for the small overrides in
:data:`FAST` (keyword-only hyper-parameters of the tool) that keep this file quick.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules import module as nn_module

from eisbench.tools import TOOLS
from eisbench.tools.adversarial_patch import default_side
from eisbench.tools.core import FAMILIES

FAST: dict[str, dict[str, Any]] = {
    "neural-cleanse": {"steps": 20},
    "tabor": {"steps": 20},
}
N = 10
TARGET = 0


def _hooks(model: nn.Module) -> int:
    """Hooks on the model's submodules plus the global module hooks."""
    per_module = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     + len(m._backward_pre_hooks) for m in model.modules())
    glob = (nn_module._global_forward_hooks, nn_module._global_forward_pre_hooks,
            nn_module._global_backward_hooks, nn_module._global_backward_pre_hooks)
    return per_module + sum(len(h) for h in glob)


def _run(name: str, model: nn.Module, data: torch.Tensor, seed: int) -> torch.Tensor:
    tool = TOOLS.get(name)
    out: torch.Tensor = tool(model, target=TARGET, data=data, n=N,
                             generator=torch.Generator().manual_seed(seed), device="cpu",
                             **FAST.get(name, {}))
    return out


@pytest.fixture(scope="module")
def small_data(digits_small: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return digits_small[2][:64]  # (64, 1, 8, 8) clean test images


def test_registry_holds_the_trigger_reconstruction_tools() -> None:
    assert {"neural-cleanse", "tabor"} <= set(TOOLS.names())
    assert set(FAST) <= set(TOOLS.names())


@pytest.mark.parametrize("name", TOOLS.names())
def test_tool_declares_its_metadata(name: str) -> None:
    meta = TOOLS.meta(name)
    assert set(meta) == {"family", "patch_side", "steps"} and meta["family"] in FAMILIES
    steps = inspect.signature(TOOLS.get(name)).parameters["steps"].default
    assert meta["steps"] == steps, f"{name}: declared steps {meta['steps']}, default {steps}"
    assert (meta["patch_side"] is not None) == (meta["family"] == "patch")
    if meta["patch_side"] is not None:
        assert 0 < meta["patch_side"] <= 1


def _outside_centre(images: torch.Tensor, side: int) -> torch.Tensor:
    """The pixels of images (n, C, H, W) outside their centred ``side`` x ``side`` square."""
    h, w = images.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    keep = torch.ones(h, w, dtype=torch.bool)
    keep[top:top + side, left:left + side] = False
    return images[..., keep]


def test_tool_families() -> None:
    assert TOOLS.names(family="trigger-reconstruction") == ["neural-cleanse", "tabor"]
    assert {"adversarial-patch", "snafue"} <= set(TOOLS.names(family="patch"))
    assert all(n.startswith("fv-") for n in TOOLS.names(family="feature-synthesis"))


@pytest.mark.parametrize("name", TOOLS.names())
def test_tool_contract(name: str, trojaned_digits: tuple[nn.Module, Any],
                       small_data: torch.Tensor) -> None:
    model = trojaned_digits[0]
    was = model.training
    hooks = _hooks(model)
    model.train()  # a tool must use its own mode and give the model back in this one
    try:
        a = _run(name, model, small_data, seed=0)
        assert model.training, f"{name} changed the model's mode"
        model.eval()  # safe: nn.Module.eval (mode switch)
        b = _run(name, model, small_data, seed=0)
        assert not model.training, f"{name} changed the model's mode"
    finally:
        model.train(was)
    assert isinstance(a, torch.Tensor) and a.shape == (N, *small_data.shape[1:])
    assert a.dtype == small_data.dtype and a.device.type == "cpu"
    assert torch.isfinite(a).all() and float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} is not deterministic")
    assert _hooks(model) == hooks, f"{name} left hooks behind"
    side = TOOLS.meta(name)["patch_side"]
    if side is not None:  # a patch tool: its patch of the declared side, centred on black
        outside = _outside_centre(a, default_side(tuple(small_data.shape[1:]), side))
        assert float(outside.abs().max()) == 0, f"{name}: image outside its declared patch"


@pytest.mark.parametrize("name", TOOLS.names())
def test_tool_leaves_weights_and_gradients(name: str, trojaned_digits: tuple[nn.Module, Any],
                                           small_data: torch.Tensor) -> None:
    model = trojaned_digits[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    _run(name, model, small_data, seed=1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=f"{name} changed {k}")
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) == (g is None), f"{name} left gradients on the model"
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
