"""Tests that kill plausible wrong versions of eisbench.edit's layers and capability ablation
(see benchmarks/mutation.py): layer names, aliases and their errors, the unit masks and hooks,
the unit selectors against captum and sklearn, and the ablation effects and unit ranking by
hand.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum import attr as ca
from captum.attr._utils.approximation_methods import approximation_parameters
from mutants_edit_helpers import Channels, channel_data, close, tiny
from sklearn.linear_model import LogisticRegression
from test_edit_ablation import TwoUnitsPerClass
from torch import nn

from eisbench.edit import ablation as ab
from eisbench.edit import layers as ly
from eisbench.models import Normalized
from eisbench.models.architectures import Classifier
from eisbench.tools.guard import hook_count

# --- layers --------------------------------------------------------------------------------

def test_layer_names_aliases_and_their_errors() -> None:
    net = Channels()
    assert ly.resolve_layer(net, "penultimate") == "body.1"
    assert ly.resolve_layer(net, "last-conv") == "body.0"
    assert ly.get_layer(net, "last-conv") is net.body[0]  # type: ignore[index]
    wrapped = Normalized(Normalized(net, mean=[0.0] * 4, std=[1.0] * 4), mean=[0.0], std=[1.0])
    assert ly.resolve_layer(wrapped, "penultimate") == "model.model.body.1"

    class Empty(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Sequential(), nn.Linear(2, 2)

    for model, name in ((Empty(), "Empty"), (nn.Linear(2, 2), "Linear")):
        with pytest.raises(ValueError, match=f"^{name} has no Sequential `body`: pass example "
                           "images to find its penultimate layer, or name it explicitly "
                           "\\(one of model.named_modules"):
            ly.resolve_layer(model, "penultimate")
    two = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.ReLU())
    assert ly.resolve_layer(two, "last-conv") == "1"
    with pytest.raises(ValueError, match="^Sequential has no nn.Conv2d: pick another layer$"):
        ly.resolve_layer(nn.Sequential(nn.Linear(2, 2)), "last-conv")
    named = nn.Sequential(OrderedDict((n, nn.Identity())
                                      for n in ("conv1", "conv2", "conv3", "conv4", "fc")))
    tail = "(layers: conv1, conv2, conv3, conv4, fc; aliases: penultimate, last-conv)"
    for name, hint in (("conv", "; did you mean conv4, conv3, conv2?"), ("zzzzzzzz", "")):
        with pytest.raises(ValueError) as err:
            ly.resolve_layer(named, name)
        assert str(err.value) == f"unknown layer {name!r}{hint} {tail}"


def test_unit_mask_ablated_capture_and_add_to_outputs() -> None:
    close(ly.unit_mask(5, [0, 4]), torch.tensor([0.0, 1, 1, 1, 0]))
    close(ly.unit_mask(3, []), torch.ones(3))
    close(ly.unit_mask(4, torch.tensor([[1, 2]])), torch.tensor([1.0, 0, 0, 1]))
    for bad in ([4], [-1], [-1, 2]):
        with pytest.raises(ValueError, match=f"must lie in \\[0, 4\\), got \\{bad}"):
            ly.unit_mask(4, bad)
    net, (x, _) = Channels(), channel_data()
    with torch.no_grad(), ly.capture(net, ["body.0", "body.1"]) as clean:
        net(x)
    for layer, units in (("body.0", torch.tensor([[0, 3]])), ("body.1", [0, 3])):
        with torch.no_grad(), ly.ablated(net, layer, units), \
                ly.capture(net, [layer]) as a:
            net(x)
        keep = torch.tensor([0.0, 1, 1, 0]).view(1, 4, *([1] * (clean[layer].dim() - 2)))
        close(a[layer], clean[layer] * keep, rtol=0, atol=0)
    tnet, tx, _ = tiny()
    d = torch.randn(24, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with ly.capture(tnet, ["body.0"]) as det, ly.capture(tnet, ["body.0"], detach=False) as live:
        tnet(tx)
    assert not det["body.0"].requires_grad and live["body.0"].requires_grad
    with torch.no_grad(), ly.add_to_outputs(tnet, {"body.0": d}), \
            ly.capture(tnet, ["body.0"]) as moved:
        tnet(tx)
    close(moved["body.0"], det["body.0"] + d)
    with pytest.raises(RuntimeError, match="boom"), ly.capture(tnet, ["body.0", "body.3"]):
        raise RuntimeError("boom")
    assert hook_count(tnet) == 0 and hook_count(net) == 0


# --- capability ablation ---------------------------------------------------------------------

def _units(x: torch.Tensor) -> torch.Tensor:
    """TwoUnitsPerClass's penultimate units by hand: units 2c and 2c+1 = input c (>= 0)."""
    return x.flatten(1)[:, [0, 0, 1, 1, 2, 2, 3, 3]]


def test_unit_selectors_by_hand() -> None:
    net = TwoUnitsPerClass().eval()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 4
    x = (0.8 * F.one_hot(y, 4).float() + 0.15 * torch.rand(300, 4, generator=g)).view(300, 1, 1, 4)
    want = torch.zeros(4, 8)
    for c in range(4):
        want[c, 2 * c] = want[c, 2 * c + 1] = x[y == c][:64, 0, 0, c].mean()  # first 64
    sel = ab._captum(ca.LayerGradientXActivation, "my-gxa")  # built here, not at import
    assert sel.__name__ == "my_gxa" and "LayerGradientXActivation" in (sel.__doc__ or "")
    alphas = approximation_parameters("gausslegendre")[1](ab.N_STEPS + 1)
    for s, scale in ((sel, 1.0), (ab._captum(ca.LayerIntegratedGradients, "ig"), 1.0),
                     (ab._captum(ca.LayerConductance, "cond"), max(alphas) - min(alphas))):
        got = s(net, "penultimate", x, y, num_classes=4, generator=torch.Generator())
        close(got, want * scale, rtol=1e-4, atol=1e-6)
    a = _units(x)
    want = torch.stack([(a[y == c].mean(0) - a[y != c].mean(0)) / a.std(0) for c in range(4)])
    close(ab.activation_difference(
        net, "penultimate", x, y, num_classes=4, generator=g), want)
    with pytest.raises(ValueError, match="needs images of class 0 and of others"):
        ab.activation_difference(net, "penultimate", x, y * 0, num_classes=2, generator=g)
    three = y < 3
    z = _units(x[three]).double().numpy()
    z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-8)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=torch.Generator().manual_seed(1)))
    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=seed).fit(z, y[three].numpy())
    got = ab.linear_probe(net, "penultimate", x[three], y[three], num_classes=4,
                          generator=torch.Generator().manual_seed(1))
    close(got, torch.cat([torch.as_tensor(clf.coef_).float(), torch.zeros(1, 8)]))
    tnet, tx, ty = tiny(n=12)
    tnet.train()
    with torch.no_grad():
        acts = tnet.body[0](tx).clamp_min(0)  # type: ignore[index]
    close(ab.unit_activations(tnet, "body.0", tx, batch=5), acts.flatten(2).mean(2))
    close(ab.unit_activations(tnet, "body.4", tx, batch=5), tnet.body(tx).detach())
    assert tnet.training
    for layer, n in (("body.0", 3), ("penultimate", 6)):
        got = ab.random_units(tnet, layer, tx, ty, num_classes=5,
                              generator=torch.Generator().manual_seed(2))
        assert torch.equal(got, torch.rand(5, n, generator=torch.Generator().manual_seed(2)))
    close(ab._per_unit(torch.arange(12.0).view(1, 3, 4)), torch.tensor([[6.0, 22.0, 38.0]]))
    close(ab._per_unit(torch.arange(8.0).view(1, 2, 2, 2)), torch.tensor([[6.0, 22.0]]))
    assert torch.equal(ab._per_unit(torch.ones(2, 3)), torch.ones(2, 3))
    assert torch.equal(ab._class_images(x, torch.tensor([2] + [0] * 299), 2), x[:1])
    with pytest.raises(ValueError, match="no selection image of class 5"):
        ab._class_images(x, y, 5)


def test_ablation_effects_and_unit_ranking_by_hand() -> None:
    net = TwoUnitsPerClass().eval()
    true = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0])
    x = (F.one_hot(true, 4) + 0.1 * F.one_hot((true + 1) % 4, 4)).float().view(13, 1, 1, 4)
    y = true.clone()
    y[12] = 1  # a class-0 image labelled 1: ablating class 0 makes it right
    units = torch.tensor([[0, 1], [0, 1], [4, 5], [6, 7]])
    eff = ab.ablation_effects(net, "penultimate", units, x, y)
    nan = float("nan")
    for got, want in ((eff.acc_before, [1.0, 0.8, 1.0, nan]), (eff.class_drop, [1, -0.2, 1, nan]),
                      (eff.other_drop, [-0.1, 0.5, 0.0, 0.0]),
                      (eff.selectivity, [1.1, -0.7, 1.0, nan])):
        close(torch.tensor(got), torch.tensor(want), equal_nan=True)
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [0.3, 0.3, 0.3, 0.9]])
    assert ab.top_ablation_units(scores, k=2).tolist() == [[1, 2], [3, 0]]
    assert ab.top_ablation_units(scores, k=4).tolist() == [[1, 2, 3, 0], [3, 0, 1, 2]]
    assert ab.top_ablation_units(scores, k=1).tolist() == [[1], [3]]
    for k in (0, 5):
        with pytest.raises(ValueError, match=f"k must be in \\[1, 4\\] \\(the layer's units\\), "
                                             f"got {k}"):
            ab.top_ablation_units(scores, k=k)
    names = ab.selector_names()
    assert names[-1] == "random" and names[:-1] == sorted(names[:-1]) and len(names) > 3
    assert ab.selector_names(["random", "conductance"]) == ["random", "conductance"]


def test_selector_names_default_is_sorted_with_random_last() -> None:
    names = ab.selector_names()
    assert names[-1] == "random" and names[:-1] == sorted(names[:-1])
    assert ab.selector_names(["random", "linear-probe"]) == ["random", "linear-probe"]
