"""Models eisbench did not build (tests/foreign_models.py): their layers are found, and every
registered tool, attribution method, scan and replacement runs on each of them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from foreign_models import ZOO
from torch import nn

from eisbench.edit.ablation import ablation_effects, unit_activations
from eisbench.edit.layers import resolve_layer
from eisbench.models import FeaturesAt, LayerError, Scaled, features, find_layers
from eisbench.models.layers import cached_layers
from eisbench.tools import TOOLS
from eisbench.tools.attribution import ATTRIBUTIONS, AttributionUnsupported

FOUND = {  # name: (head, penultimate, last conv), names in the model as the user wrote it
    "attribute": ("fc2", None, "conv2"),  # F.relu between fc1 and fc2: no module outputs them
    "sequential": ("head.3", "head.2", "features.3"),
    "batchnorm-dropout": ("out", "drop", "block2.0"),
    "residual": ("fc", "pool", "layer2.conv2"),
    "global-pool": ("classifier", None, "convs.4"),  # x.mean((2, 3)) between
    "two-class": ("classifier.4", "classifier.3", "features.2"),
    "raw-pixels": ("logits", None, "conv"),  # the reused ReLU is never picked
}


@pytest.fixture(scope="session")
def zoo(foreign_zoo: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Every zoo model fed [0,1] images (behind Scaled if it expects raw pixels)."""
    return {name: Scaled(m, ZOO[name].scale) if ZOO[name].scale != 1.0 else m
            for name, m in foreign_zoo.items()}


def _labels(name: str, y: torch.Tensor) -> torch.Tensor:
    lm = ZOO[name].label_map
    return y if lm is None else torch.tensor(lm)[y]


def _inner(name: str, model: nn.Module) -> tuple[nn.Module, str]:
    return (model.model, "model.") if isinstance(model, Scaled) else (model, "")


def test_the_zoo_is_trained(zoo: dict[str, nn.Module],
                            digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y = digits_small[2], digits_small[3]
    for name, model in zoo.items():
        acc = float((model(x).argmax(1) == _labels(name, y)).float().mean())
        assert acc > 0.7, f"{name}: test accuracy {acc:.3f}"
    assert len(ZOO) >= 7 and {e.num_classes for e in ZOO.values()} == {2, 10}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_find_layers_on_foreign_models(name: str, zoo: dict[str, nn.Module],
                                       digits_small: tuple[torch.Tensor, ...]) -> None:
    model, x = zoo[name], digits_small[2][:16]
    _, prefix = _inner(name, model)
    lm = find_layers(model, x)
    want = tuple(None if n is None else prefix + n for n in FOUND[name])
    assert (lm.head, lm.penultimate, lm.last_conv) == want
    mods = dict(model.named_modules())
    f = features(model, x)  # (B, D): what the head reads
    assert lm.head is not None and f.shape == (16, mods[lm.head].in_features)  # type: ignore[union-attr]
    torch.testing.assert_close(mods[lm.head](f), model(x))  # the head of the features: logits
    if lm.penultimate is not None:  # its output is the features
        out: dict[str, torch.Tensor] = {}
        h = mods[lm.penultimate].register_forward_hook(lambda m, a, o: out.update(o=o))
        try:
            model(x)
        finally:
            h.remove()
        torch.testing.assert_close(out["o"].flatten(1), f)


def test_features_flow_gradients_and_leave_no_hooks(zoo: dict[str, nn.Module],
                                                    digits_small: tuple[torch.Tensor, ...]
                                                    ) -> None:
    model = zoo["sequential"]
    x = digits_small[2][:4].clone().requires_grad_(True)
    features(model, x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_batchnorm_statistics_untouched_by_the_trace(digits_small: tuple[torch.Tensor, ...]
                                                     ) -> None:
    from foreign_models import BatchNormDropout

    net = BatchNormDropout().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    find_layers(net, digits_small[2][:8] * 0 + 1)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert net.training and net.bn.training


def test_features_at_names_the_layer_and_errors_list_candidates(
        zoo: dict[str, nn.Module], digits_small: tuple[torch.Tensor, ...]) -> None:
    x = digits_small[2][:8]
    net = zoo["attribute"]
    at = FeaturesAt(net, layer="conv2")
    assert features(at, x).shape == (8, 16 * 8 * 8)
    torch.testing.assert_close(at(x), net(x))
    assert find_layers(at, x).penultimate == "model.conv2"
    assert resolve_layer(Scaled(at, 1.0), "penultimate", example=x) == "model.model.conv2"
    with pytest.raises(LayerError, match=r"has no layer 'conv3'; did you mean conv2, conv1\?"):
        FeaturesAt(net, layer="conv3")
    with pytest.raises(LayerError, match=r"cannot find the penultimate layer of AttributeCNN: "
                       r"no module outputs .* the modules that ran: conv1 \(Conv2d -> "
                       r"\(8, 8, 8\)\); conv2 .*fc1 \(Linear -> \(32,\)\); fc2"):
        resolve_layer(net, "penultimate", example=x)
    gap = nn.Sequential(nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(LayerError, match=r"Sequential has no nn.Linear with 10 outputs .*"
                       r"\(--layer NAME.* 2 \(Flatten -> \(10,\)\)$"):
        features(gap, x)


def test_trace_is_cached_and_refreshed_when_a_layer_is_swapped(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    from foreign_models import SequentialBlocks

    net, x = SequentialBlocks(), digits_small[2][:4]
    assert cached_layers(net) is None
    lm = find_layers(net, x)
    assert find_layers(net, x) is lm and cached_layers(net) is lm
    net.head[2] = nn.Tanh()  # type: ignore[index]
    assert cached_layers(net) is None and find_layers(net, x).penultimate == "head.2"


def test_ablation_on_a_foreign_model(zoo: dict[str, nn.Module],
                                     digits_small: tuple[torch.Tensor, ...]) -> None:
    model, x, y = zoo["sequential"], digits_small[2][:200], digits_small[3][:200]
    acts = unit_activations(model, "penultimate", x)
    assert acts.shape == (200, 128)
    units = acts.mean(0).argsort(descending=True)[:20].repeat(10, 1)  # (K, 20)
    eff = ablation_effects(model, "penultimate", units, x, y)
    assert len(eff.selectivity) == 10 and max(eff.class_drop) > 0
    assert resolve_layer(model, "last-conv", example=x) == "features.3"


def _tool_kwargs(name: str) -> dict[str, Any]:
    return {"steps": 10} if name in ("neural-cleanse", "tabor") else {}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_tool_runs_on_foreign_models(name: str, zoo: dict[str, nn.Module],
                                           digits_small: tuple[torch.Tensor, ...]) -> None:
    model, data = zoo[name], digits_small[2][:64]
    for tool in TOOLS.names():
        out = TOOLS.get(tool)(model, target=1, data=data, n=2,
                              generator=torch.Generator().manual_seed(0), **_tool_kwargs(tool))
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all(), tool
        assert float(out.min()) >= 0 and float(out.max()) <= 1, tool
    x = data[:3]
    for method in ATTRIBUTIONS.names():
        try:
            a = ATTRIBUTIONS.get(method)(model, x, 1, generator=torch.Generator().manual_seed(0))
        except AttributionUnsupported as e:  # a stated limit of the method, never a crash
            assert method in ("lrp", "deeplift", "deeplift-shap", "feature-permutation"), (
                f"{method} refused {name}: {e}")
            continue
        assert a.shape == (3, 1, 8, 8) and torch.isfinite(a).all(), method


class _AuxiliaryHead(nn.Module):
    """Runs an auxiliary 10-way linear layer after the real head and discards it: the head is
    the layer whose output is the logits, not the last one with 10 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)
        self.aux = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        out: torch.Tensor = self.head(f)
        self.aux(f[:, :16])  # a probe whose output is not returned
        return out


def test_the_head_is_the_layer_that_gives_the_logits(digits_small: tuple[torch.Tensor, ...]
                                                     ) -> None:
    net, x = _AuxiliaryHead(), digits_small[2][:4]
    lm = find_layers(net, x)
    assert (lm.head, lm.penultimate) == ("head", "body.2")
    assert features(net, x).shape == (4, 32)
