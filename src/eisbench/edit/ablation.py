"""Capability ablation, the "dog neuron" test (EIS III): a tool names the units of a layer that
serve one class; zero them and the class should fall while every other class holds, on the
test set and on out-of-distribution images of the same classes.

Every entry of :data:`UNIT_SELECTORS` is one function with one verb::

    selector(model, layer, x, y, *, num_classes, generator) -> scores (K, U)

for the ``named_modules`` layer ``layer`` (see :func:`eisbench.edit.layers.resolve_layer`)
with U units (channels of a (B, U, H, W) output, features of a (B, U) one) and the selection
images x (N, C, H, W), y (N,): the higher ``scores[c, u]``, the more unit u serves class c.
The tools:

- ``conductance``, ``integrated-gradients``, ``gradient-x-activation``: captum's
  LayerConductance, LayerIntegratedGradients and LayerGradientXActivation of class c's logit
  on the images of class c (black baseline, ``n_steps`` = :data:`N_STEPS`), summed over a
  channel's positions and averaged over the images;
- ``activation-difference``: the mean activation on class c minus that on the other classes,
  over their pooled standard deviation (Cohen's d; activations after a ReLU: max(0, a));
- ``linear-probe``: the weights of a multinomial logistic regression (scikit-learn) on the
  standardised unit activations (a channel: its mean over positions);
- ``random``: uniform scores, the baseline every tool must beat.

:func:`ablation_effects` zeroes the top ``k`` units of each class in turn
(:func:`eisbench.edit.layers.ablated`) and returns each class's accuracy drop and the mean
drop of the other classes; selectivity = their difference (1: only the class falls).

Example:
    >>> scores = UNIT_SELECTORS.get("conductance")(net, "body.6", x, y, num_classes=10,
    ...                                            generator=torch.Generator())
    >>> eff = ablation_effects(net, "body.6", top_ablation_units(scores, k=10), x_test, y_test)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from captum import attr as ca
from torch import nn

from eisbench.core.registry import Registry
from eisbench.core.tensors import eval_mode, predict
from eisbench.edit.layers import ablated, capture, get_layer, resolve_layer
from eisbench.tools.guard import clean_call

Selector = Callable[..., torch.Tensor]
UNIT_SELECTORS: Registry[Selector] = Registry("unit selector")
N_STEPS = 16  # integration steps of conductance and integrated gradients
PER_CLASS = 64  # selection images per class given to the captum methods


def _per_unit(a: torch.Tensor) -> torch.Tensor:
    """Attributions or activations (B, U, ...) -> one value per unit (B, U): summed over a
    channel's positions."""
    return a.flatten(2).sum(2) if a.dim() > 2 else a


@torch.no_grad()
def unit_activations(model: nn.Module, layer: str, x: torch.Tensor, *,
                     batch: int = 1000) -> torch.Tensor:
    """Activations (N, U) of the units of ``layer`` on x (N, C, H, W): max(0, output), a
    channel averaged over its positions."""
    dev = next(iter(model.parameters())).device
    name = resolve_layer(model, layer, example=x[:2].to(dev))
    out = []
    with eval_mode(model), capture(model, [name]) as acts:
        for i in range(0, len(x), batch):
            model(x[i:i + batch].to(dev))
            a = acts[name].clamp_min(0)
            out.append((a.flatten(2).mean(2) if a.dim() > 2 else a).cpu())
    return torch.cat(out)


def _class_images(x: torch.Tensor, y: torch.Tensor, c: int) -> torch.Tensor:
    xc = x[y == c][:PER_CLASS]
    if len(xc) == 0:
        raise ValueError(f"no selection image of class {c}: give images of every class")
    return xc


def _captum(method: type, name: str) -> Selector:
    def selector(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, *,
                 num_classes: int, generator: torch.Generator) -> torch.Tensor:
        dev = next(iter(model.parameters())).device
        mod = get_layer(model, resolve_layer(model, layer, example=x[:2].to(dev)))
        rows = []
        with clean_call(model, name, generator=generator):
            algo = method(model, mod)
            for c in range(num_classes):
                xc = _class_images(x, y, c).to(dev)
                kw = {"baselines": torch.zeros_like(xc), "n_steps": N_STEPS} if method in (
                    ca.LayerConductance, ca.LayerIntegratedGradients) else {}
                a = algo.attribute(xc, target=c, **kw)
                rows.append(_per_unit(a.detach()).mean(0).cpu())  # (U,)
        return torch.stack(rows)  # (K, U)

    selector.__name__ = name.replace("-", "_")
    selector.__doc__ = f"captum's {method.__name__} per unit, class by class (K, U)."
    return selector


UNIT_SELECTORS.register("conductance")(_captum(ca.LayerConductance, "conductance"))
UNIT_SELECTORS.register("integrated-gradients")(
    _captum(ca.LayerIntegratedGradients, "integrated-gradients"))
UNIT_SELECTORS.register("gradient-x-activation")(
    _captum(ca.LayerGradientXActivation, "gradient-x-activation"))


@UNIT_SELECTORS.register("activation-difference")
def activation_difference(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, *,
                          num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """(mean activation on class c - mean on the rest) / the unit's std over all N images (one
    scale per unit, shared by every class: not Cohen's d, whose pooled std is per class pair),
    per unit: (K, U)."""
    a = unit_activations(model, layer, x)  # (N, U)
    sd = a.std(0).clamp_min(1e-8)  # (U,)
    rows = []
    for c in range(num_classes):
        on = y == c
        if not on.any() or on.all():
            raise ValueError(f"activation-difference needs images of class {c} and of others")
        rows.append((a[on].mean(0) - a[~on].mean(0)) / sd)
    return torch.stack(rows)


@UNIT_SELECTORS.register("linear-probe")
def linear_probe(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, *,
                 num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Weights (K, U) of a multinomial logistic regression on the standardised activations."""
    from sklearn.linear_model import LogisticRegression

    a = unit_activations(model, layer, x).double().numpy()  # (N, U)
    a = (a - a.mean(0)) / np.maximum(a.std(0), 1e-8)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=seed).fit(a, y.numpy())
    coef = torch.as_tensor(clf.coef_, dtype=torch.float32)  # (K', U); (1, U) for two classes
    if len(clf.classes_) == 2:  # scikit-learn's one row scores the second class against the first
        coef = torch.cat([-coef, coef])
    w = torch.zeros(num_classes, a.shape[1])
    w[torch.as_tensor(clf.classes_)] = coef
    return w


@UNIT_SELECTORS.register("random")
def random_units(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, *,
                 num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores (K, U): the baseline."""
    with torch.no_grad(), capture(model, [layer]) as acts, eval_mode(model):
        model(x[:1].to(next(iter(model.parameters())).device))
    return torch.rand(num_classes, acts[layer].shape[1], generator=generator)


def top_ablation_units(scores: torch.Tensor, *, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring units of each class: (K, k) indices (ties: lower index)."""
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}] (the layer's units), got {k}")
    return torch.argsort(-scores, dim=1, stable=True)[:, :k]


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy (K,) of predictions (N,) on each class of labels y (N,) (NaN if absent)."""
    hit = (pred == y).float()
    out = torch.full((num_classes,), float("nan"))
    for c in range(num_classes):
        on = y == c
        if on.any():
            out[c] = hit[on].mean()
    return out


@dataclass(frozen=True)
class AblationEffect:
    """Per class c (K,): accuracy before, the drop of class c when its units are ablated,
    the mean drop of the other classes then, and selectivity = class_drop - other_drop."""

    acc_before: list[float]
    class_drop: list[float]
    other_drop: list[float]
    selectivity: list[float]


def ablation_effects(model: nn.Module, layer: str, units: torch.Tensor, x: torch.Tensor,
                     y: torch.Tensor, *, device: str | torch.device = "cpu") -> AblationEffect:
    """Zero ``units[c]`` (K, k) of ``layer`` for each class c in turn and measure the
    accuracy drop (before - after) of every class on x (N, C, H, W), y (N,).

    Example:
        >>> eff = ablation_effects(net, "penultimate", top_ablation_units(s, k=10), x_test, y_test)
        >>> eff.selectivity  # one value per class
    """
    name = resolve_layer(model, layer, example=x)
    k = units.shape[0]
    before = per_class_accuracy(predict(model, x, device=device), y, k)
    cls, oth = [], []
    for c in range(k):
        with ablated(model, name, units[c]):
            after = per_class_accuracy(predict(model, x, device=device), y, k)
        drop = before - after  # (K,)
        rest = torch.cat([drop[:c], drop[c + 1:]])
        cls.append(float(drop[c]))
        oth.append(float(rest[~rest.isnan()].mean()))
    return AblationEffect(acc_before=before.tolist(), class_drop=cls, other_drop=oth,
                          selectivity=[a - b for a, b in zip(cls, oth, strict=True)])


def selector_names(names: Sequence[str] = ()) -> list[str]:
    """``names`` checked against the registry (unknown ones raise with suggestions); () means
    every selector, ``random`` last."""
    out = list(names) or sorted(UNIT_SELECTORS.names(), key=lambda n: (n == "random", n))
    for n in out:
        UNIT_SELECTORS.get(n)
    return out


