"""Attribution on patch trojans: the 16 captum methods of Casper et al. (2023), two
baselines, and their score against the true trigger footprint.

Every entry of :data:`ATTRIBUTIONS` is one function with one verb::

    method(model, x, target, *, generator, **hyper) -> magnitude (N, 1, H, W) >= 0

for images x (N, C, H, W) in [0,1] and the class ``target`` (an int or (N,) labels; on
poisoned images, the trojan's target). The magnitude is |attribution| summed over channels.
The model is run in eval mode and left in the mode it came in; captum installs and removes
its own hooks; :func:`~eisbench.tools.guard.clean_call` checks that none (and no attribute
captum sets on layers) is left. Captum draws from the global torch and numpy generators: each
call forks both, seeded from ``generator``, so the same seed gives the same map and the
caller's global state is untouched.

Cheap settings (all 16 on 32 MNIST images and a cnn-small: ~5 s on one core):
perturbation methods work on superpixels of side ``max(1, H // 14)`` (2x2 at 28x28, 1x1 at
8x8; Occlusion slides a window of two superpixels by one); IntegratedGradients takes 32
steps, GradientShap 16 samples, Lime and KernelShap 200 perturbations per image (196
superpixels at 28x28), ShapleyValueSampling 4 permutations.
Baselines (the reference input) are black, and GradientShap / DeepLiftShap average over
black plus three uniform-noise images drawn from ``generator``.

LRP needs a rule for every layer: captum has them for Conv2d, Linear, pooling, BatchNorm2d
and ReLU/Tanh/Dropout; :func:`lrp` gives ``nn.Flatten`` and ``nn.Identity`` (which only
reshape, so relevance passes through unchanged) the epsilon rule, and raises
:class:`AttributionUnsupported` with the reason for a model whose composition it cannot see
(a residual block, a custom forward, an unknown layer):
:func:`eisbench.tools.attribution_scores.score_methods` records it.

Baselines: ``edge-detector``, the Sobel gradient magnitude of the image (no model), and
``blank``, a constant map, whose correlation with any footprint is defined as 0.

Example:
    >>> maps = ATTRIBUTIONS.get("saliency")(net, x, 0, generator=torch.Generator())
    >>> score_attribution(maps, footprint).mean()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from captum import attr as ca
from torch import nn

from eisbench.core.registry import Registry
from eisbench.core.tensors import check_images
from eisbench.models.architectures import Classifier
from eisbench.models.core import Normalized
from eisbench.models.layers import find_layers
from eisbench.tools.guard import clean_call

Attribution = Callable[..., torch.Tensor]
ATTRIBUTIONS: Registry[Attribution] = Registry("attribution")
CAPTUM_METHODS = ("integrated-gradients", "deeplift", "guided-gradcam", "saliency",
                  "gradient-shap", "deeplift-shap", "guided-backprop", "deconvolution", "lrp",
                  "input-x-gradient", "feature-ablation", "feature-permutation", "lime",
                  "occlusion", "kernel-shap", "shapley-value-sampling")
BASELINES = ("edge-detector", "blank")


class AttributionUnsupported(RuntimeError):
    """A method cannot run on this model or input; the message says why."""


_EXPECTED_WARNINGS = (  # captum notes on what it does by design
    r"Setting forward, backward hooks", r"Setting backward hooks on ReLU",
    r"You are providing multiple inputs for Lime",
    r"Input Tensor \d+ did not already require gradients",
)


def _targets(target: int | torch.Tensor, n: int) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.long).flatten()
    if t.numel() == 1:
        return t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"target must be one class or {n} labels, got {t.numel()}")
    return t


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _register(name: str) -> Callable[[Callable[..., torch.Tensor]], Attribution]:
    """Register ``raw(model, x, target (N,), *, generator, **hyper) -> (N, C, H, W)`` as
    the method ``name`` returning |attribution| summed over channels (N, 1, H, W)."""

    def deco(raw: Callable[..., torch.Tensor]) -> Attribution:
        @functools.wraps(raw)
        def method(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor, *,
                   generator: torch.Generator, **hyper: Any) -> torch.Tensor:
            check_images(x, what="images to attribute")
            xd = x.detach().to(_device(model), torch.float32).clone()  # (N, C, H, W)
            t = _targets(target, len(x)).to(xd.device)  # (N,)
            with clean_call(model, name, generator=generator, quiet=_EXPECTED_WARNINGS):
                a = raw(model, xd, t, generator=generator, **hyper)
            return a.detach().abs().sum(1, keepdim=True).to(x.device)  # (N, 1, H, W)

        ATTRIBUTIONS.register(name)(method)
        return method

    return deco


def superpixel_side(shape: Sequence[int]) -> int:
    """Side of the square superpixels of the perturbation methods: ``max(1, H // 14)``."""
    return max(1, int(shape[-2]) // 14)


def feature_mask(x: torch.Tensor) -> torch.Tensor:
    """Superpixel ids (1, C, H, W) for images x (N, C, H, W): all channels of a square of
    side :func:`superpixel_side` form one feature."""
    _, c, h, w = x.shape
    s = superpixel_side(x.shape)
    rows = torch.arange(h, device=x.device) // s
    cols = torch.arange(w, device=x.device) // s
    ids = rows.view(-1, 1) * math.ceil(w / s) + cols.view(1, -1)  # (H, W)
    return ids.expand(1, c, h, w).contiguous()


def _shap_baselines(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Black and three uniform-noise images (4, C, H, W)."""
    noise = torch.rand(3, *x.shape[1:], generator=generator).to(x)
    return torch.cat([torch.zeros_like(x[:1]), noise])


@_register("integrated-gradients")
def integrated_gradients(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                         generator: torch.Generator, n_steps: int = 32) -> torch.Tensor:
    """captum's Integrated Gradients from a black baseline (Sundararajan et al. 2017)."""
    out: torch.Tensor = ca.IntegratedGradients(model).attribute(x, baselines=0.0, target=t,
                                                                n_steps=n_steps)
    return out


def refuse_reused_modules(method: str, model: nn.Module, x: torch.Tensor) -> None:
    """AttributionUnsupported if ``model`` runs a module more than once on images x: DeepLift's
    rules keep one input and output per module (captum raises deep inside otherwise)."""
    twice = [t for t in find_layers(model, x).modules if t.calls > 1]
    if twice:
        raise AttributionUnsupported(
            f"{method}: the model runs {', '.join(str(t) for t in twice)} more than once per "
            "forward pass; its rules need one module per use (give each use its own module)")


@_register("deeplift")
def deeplift(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
             generator: torch.Generator) -> torch.Tensor:
    """captum's DeepLift from a black baseline (Shrikumar et al. 2017)."""
    refuse_reused_modules("DeepLift", model, x)
    out: torch.Tensor = ca.DeepLift(model).attribute(x, baselines=0.0, target=t)
    return out


def last_conv(model: nn.Module, x: torch.Tensor) -> nn.Conv2d:
    """The last ``nn.Conv2d`` ``model`` runs on images x (N, C, H, W) (execution order, not
    registration order: :func:`eisbench.models.find_layers`); AttributionUnsupported if none."""
    name = find_layers(model, x).last_conv
    if name is None:
        raise AttributionUnsupported("GuidedGradCam needs a convolutional layer; the model "
                                     "has no nn.Conv2d")
    conv = dict(model.named_modules())[name]
    assert isinstance(conv, nn.Conv2d)
    return conv


@_register("guided-gradcam")
def guided_gradcam(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                   generator: torch.Generator) -> torch.Tensor:
    """captum's Guided Grad-CAM at the last conv layer (Selvaraju et al. 2017)."""
    out: torch.Tensor = ca.GuidedGradCam(model, last_conv(model, x)).attribute(x, target=t)
    return out


@_register("saliency")
def saliency(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
             generator: torch.Generator) -> torch.Tensor:
    """captum's Saliency: the absolute input gradient (Simonyan et al. 2014)."""
    out: torch.Tensor = ca.Saliency(model).attribute(x, target=t, abs=True)
    return out


@_register("gradient-shap")
def gradient_shap(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                  generator: torch.Generator, n_samples: int = 16) -> torch.Tensor:
    """captum's GradientShap over black and uniform-noise baselines."""
    out: torch.Tensor = ca.GradientShap(model).attribute(
        x, baselines=_shap_baselines(x, generator), target=t, n_samples=n_samples)
    return out


@_register("deeplift-shap")
def deeplift_shap(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                  generator: torch.Generator) -> torch.Tensor:
    """captum's DeepLiftShap over black and uniform-noise baselines."""
    refuse_reused_modules("DeepLiftShap", model, x)
    out: torch.Tensor = ca.DeepLiftShap(model).attribute(
        x, baselines=_shap_baselines(x, generator), target=t)
    return out


@_register("guided-backprop")
def guided_backprop(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                    generator: torch.Generator) -> torch.Tensor:
    """captum's Guided Backpropagation (Springenberg et al. 2015)."""
    out: torch.Tensor = ca.GuidedBackprop(model).attribute(x, target=t)
    return out


@_register("deconvolution")
def deconvolution(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                  generator: torch.Generator) -> torch.Tensor:
    """captum's Deconvolution (Zeiler & Fergus 2014)."""
    out: torch.Tensor = ca.Deconvolution(model).attribute(x, target=t)
    return out


_RESHAPES = (nn.Flatten, nn.Identity)


def lrp_problem(model: nn.Module) -> str | None:
    """Why captum's LRP cannot attribute ``model`` faithfully, or None if it can: every
    container must be a plain composition (nn.Sequential, an eisbench classifier, the
    normalising wrapper) and every layer must have a rule (or only reshape)."""
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

    ruled = tuple(SUPPORTED_LAYERS_WITH_RULES) + tuple(SUPPORTED_NON_LINEAR_LAYERS)
    for name, m in model.named_modules():
        if any(True for _ in m.children()):
            if not isinstance(m, (nn.Sequential, Classifier, Normalized)):
                return (f"module {name or 'model'!r} ({type(m).__name__}) has its own forward "
                        "(a residual connection or other functional step), which LRP's "
                        "layer-by-layer rules do not see")
        elif not isinstance(m, ruled + _RESHAPES) and not hasattr(m, "rule"):
            return f"layer {name!r} ({type(m).__name__}) has no LRP rule"
    return None


@_register("lrp")
def lrp(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
        generator: torch.Generator) -> torch.Tensor:
    """captum's Layer-wise Relevance Propagation, on models whose every layer has a rule."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    problem = lrp_problem(model)
    if problem is not None:
        raise AttributionUnsupported(f"LRP: {problem}")
    for m in model.modules():
        if isinstance(m, _RESHAPES) and not hasattr(m, "rule"):
            setattr(m, "rule", EpsilonRule())  # noqa: B010 - removed by captum and the guard
    try:
        out: torch.Tensor = ca.LRP(model).attribute(x, target=t)
    except RuntimeError as e:
        if "more than once" in str(e):
            raise AttributionUnsupported(f"LRP: {e}") from e
        raise
    return out


@_register("input-x-gradient")
def input_x_gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                     generator: torch.Generator) -> torch.Tensor:
    """captum's Input x Gradient."""
    out: torch.Tensor = ca.InputXGradient(model).attribute(x, target=t)
    return out


@_register("feature-ablation")
def feature_ablation(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                     generator: torch.Generator, per_eval: int = 32) -> torch.Tensor:
    """captum's Feature Ablation over square superpixels."""
    out: torch.Tensor = ca.FeatureAblation(model).attribute(
        x, baselines=0.0, target=t, feature_mask=feature_mask(x), perturbations_per_eval=per_eval)
    return out


@_register("feature-permutation")
def feature_permutation(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                        generator: torch.Generator, per_eval: int = 32) -> torch.Tensor:
    """captum's Feature Permutation over square superpixels."""
    if len(x) < 2:
        raise AttributionUnsupported("FeaturePermutation permutes features across the batch: "
                                     "it needs at least 2 images")
    out: torch.Tensor = ca.FeaturePermutation(model).attribute(
        x, target=t, feature_mask=feature_mask(x), perturbations_per_eval=per_eval)
    return out


@_register("lime")
def lime(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
         generator: torch.Generator, n_samples: int = 200) -> torch.Tensor:
    """captum's LIME over square superpixels."""
    out: torch.Tensor = ca.Lime(model).attribute(
        x, baselines=0.0, target=t, feature_mask=feature_mask(x), n_samples=n_samples,
        perturbations_per_eval=n_samples)
    return out


@_register("occlusion")
def occlusion(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
              generator: torch.Generator, per_eval: int = 32) -> torch.Tensor:
    """captum's Occlusion with a sliding square window."""
    c = x.shape[1]
    s = superpixel_side(x.shape)
    out: torch.Tensor = ca.Occlusion(model).attribute(
        x, sliding_window_shapes=(c, 2 * s, 2 * s), strides=(c, s, s), baselines=0.0,
        target=t, perturbations_per_eval=per_eval)
    return out


@_register("kernel-shap")
def kernel_shap(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                generator: torch.Generator, n_samples: int = 200) -> torch.Tensor:
    """captum's Kernel SHAP over square superpixels."""
    out: torch.Tensor = ca.KernelShap(model).attribute(
        x, baselines=0.0, target=t, feature_mask=feature_mask(x), n_samples=n_samples,
        perturbations_per_eval=n_samples)
    return out


@_register("shapley-value-sampling")
def shapley_value_sampling(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                           generator: torch.Generator, n_samples: int = 4,
                           per_eval: int = 32) -> torch.Tensor:
    """captum's Shapley Value Sampling over square superpixels."""
    out: torch.Tensor = ca.ShapleyValueSampling(model).attribute(
        x, baselines=0.0, target=t, feature_mask=feature_mask(x), n_samples=n_samples,
        perturbations_per_eval=per_eval)
    return out


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude (N, 1, H, W) of the channel mean of x (N, C, H, W)."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    k = torch.stack([gx, gx.T]).unsqueeze(1).to(x.dtype)  # (2, 1, 3, 3)
    g = F.conv2d(F.pad(x.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate"), k)  # (N, 2, H, W)
    return g.pow(2).sum(1, keepdim=True).sqrt()


@_register("edge-detector")
def edge_detector(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
                  generator: torch.Generator) -> torch.Tensor:
    """Baseline: a Sobel edge map of the image, blind to the model."""
    return sobel(x)


@_register("blank")
def blank(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
          generator: torch.Generator) -> torch.Tensor:
    """Baseline: the same value everywhere, blind to the model and the image."""
    return torch.zeros_like(x[:, :1])
