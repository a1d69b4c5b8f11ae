"""Tests that kill plausible wrong versions of eisbench.tools' attribution methods (see
benchmarks/mutation.py).

Gradient and additive methods on a linear model give x times w; the captum-backed methods
equal captum called with the documented settings; feature masks, superpixels, Sobel edges and
LRP's unsupported layers are checked by hand, and so is the score of an attribution against a
trigger's footprint.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from mutants_tools_helpers import X, _g, _lin, _mlp
from torch import nn

from eisbench.models import build
from eisbench.tools import attribution as at
from eisbench.tools import attribution_scores as ats

# --- attribution ----------------------------------------------------------------------------------

def test_gradient_and_additive_methods_on_a_linear_model_give_x_times_w() -> None:
    w = torch.randn(3, 128, generator=_g(2))
    net = nn.Sequential(nn.Flatten(), nn.Identity(), _lin(w)[1])
    x = torch.rand(4, 2, 8, 8, generator=_g(3))
    t = torch.tensor([0, 2, 1, 2])
    wx = x * w[t].view(4, 2, 8, 8)
    for name in ("input-x-gradient", "integrated-gradients", "deeplift", "lrp",
                 "feature-ablation", "shapley-value-sampling"):  # the last two: per pixel
        want = wx.abs().sum(1, True) if name[0] in "idl" else 2 * wx.sum(1, True).abs()
        got = at.ATTRIBUTIONS.get(name)(net, x, t, generator=_g())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)
    sal = at.ATTRIBUTIONS.get("saliency")(net, x, t, generator=_g())
    torch.testing.assert_close(sal, w[t].view(4, 2, 8, 8).abs().sum(1, keepdim=True))
    for name in ("guided-backprop", "deconvolution"):
        got = at.ATTRIBUTIONS.get(name)(net, x, t, generator=_g())
        torch.testing.assert_close(got, sal, msg=name)
    torch.testing.assert_close(at.ATTRIBUTIONS.get("blank")(net, x, 0, generator=_g()),
                               torch.zeros(4, 1, 8, 8), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^target must be one class or 4 labels, got 2$"):
        at.ATTRIBUTIONS.get("saliency")(net, x, torch.tensor([0, 1]), generator=_g())
    flat = at.ATTRIBUTIONS.get("saliency")(nn.Flatten(), x[:, :1], 3, generator=_g())
    assert flat.sum() == 4 and flat[:, 0, 0, 3].sum() == 4  # no parameters: runs on the CPU


def test_captum_methods_use_the_documented_settings() -> None:
    from captum import attr as ca

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build("cnn-small", in_shape=(2, 8, 8), num_classes=3).eval()
    with torch.no_grad():
        for p in net.get_submodule("head").parameters():
            p.mul_(30)  # logits that move: LIME's sparse fit keeps some features
    conv = net.get_submodule("body.2")  # the second and last convolution
    x, t = torch.rand(3, 2, 8, 8, generator=_g(4)), torch.tensor([2, 0, 1])
    mask = at.feature_mask(x)
    ref: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "integrated-gradients": lambda b: ca.IntegratedGradients(net).attribute(
            x, baselines=0.0, target=t, n_steps=32),
        "gradient-shap": lambda b: ca.GradientShap(net).attribute(x, baselines=b, target=t,
                                                                  n_samples=16),
        "deeplift-shap": lambda b: ca.DeepLiftShap(net).attribute(x, baselines=b, target=t),
        "guided-gradcam": lambda b: ca.GuidedGradCam(net, conv).attribute(x, target=t),
        "occlusion": lambda b: ca.Occlusion(net).attribute(
            x, sliding_window_shapes=(2, 2, 2), strides=(2, 1, 1), baselines=0.0, target=t),
        "lime": lambda b: ca.Lime(net).attribute(x, baselines=0.0, target=t, feature_mask=mask,
                                                 n_samples=200),
        "kernel-shap": lambda b: ca.KernelShap(net).attribute(
            x, baselines=0.0, target=t, feature_mask=mask, n_samples=200),
        "shapley-value-sampling": lambda b: ca.ShapleyValueSampling(net).attribute(
            x, baselines=0.0, target=t, feature_mask=mask, n_samples=4),
        "feature-permutation": lambda b: ca.FeaturePermutation(net).attribute(
            x, target=t, feature_mask=mask),
        "edge-detector": lambda b: at.sobel(x),
    }
    assert isinstance(conv, nn.Conv2d) and at.last_conv(net, x) is conv
    for name, fn in ref.items():
        gen = _g(9)
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=gen))
        base = torch.cat([torch.zeros(1, 2, 8, 8), torch.rand(3, 2, 8, 8, generator=gen)])
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            np.random.seed(seed)
            want = fn(base).abs().sum(1, keepdim=True)
        got = at.ATTRIBUTIONS.get(name)(net, x, t, generator=_g(9))
        assert want.abs().max() > 1e-3, name  # not a vacuous comparison
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(at._shap_baselines(x, _g(9)), torch.cat(
        [torch.zeros(1, 2, 8, 8), torch.rand(3, 2, 8, 8, generator=_g(9))]))
    x28, lin28 = torch.rand(2, 1, 28, 28, generator=_g(5)), _lin(torch.randn(3, 784,
                                                                         generator=_g()))
    torch.testing.assert_close(at.ATTRIBUTIONS.get("occlusion")(lin28, x28, 1, generator=_g()),
                               ca.Occlusion(lin28).attribute(x28, sliding_window_shapes=(1, 4, 4),
                                                             strides=(1, 2, 2), baselines=0.0,
                                                             target=1).abs(),
                               rtol=1e-4, atol=1e-4)  # batching differs: last-bit sums
    with pytest.raises(at.AttributionUnsupported, match="^FeaturePermutation permutes features "
                                                        "across the batch: it needs at least 2 "
                                                        "images$"):
        at.ATTRIBUTIONS.get("feature-permutation")(net, x[:1], 0, generator=_g())


def test_feature_mask_superpixels_and_sobel_by_hand() -> None:
    assert [at.superpixel_side(s) for s in [(1, 8, 8), (2, 1, 28, 70), (1, 29, 5), (1, 13),
                                            (1, 42, 1), (1, 43, 70)]] == [1, 2, 2, 1, 3, 3]
    m = at.feature_mask(torch.zeros(2, 3, 28, 31))
    rows, cols = torch.arange(28)[:, None] // 2, torch.arange(31)[None] // 2
    assert m.shape == (1, 3, 28, 31) and torch.equal(m[0, 2], rows * 16 + cols)
    assert torch.equal(m[0, 0], m[0, 2])
    ramp = 0.1 * torch.arange(4.0)[None] + 0.2 * torch.arange(4.0)[:, None]  # (4, 4)
    x = torch.stack([2 * ramp, torch.zeros(4, 4)])[None]  # channel mean: the ramp
    gx = torch.tensor([0.4, 0.8, 0.8, 0.4]).expand(4, 4)  # replicate padding at the border
    torch.testing.assert_close(at.sobel(x)[0, 0], (gx ** 2 + (2 * gx.T) ** 2).sqrt())


def test_lrp_problems_and_errors_name_the_layer() -> None:
    class Sine(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)) + 1

    assert at.lrp_problem(nn.Sequential(nn.Flatten(), Sine())) == "layer '1' (Sine) has no LRP rule"
    assert at.lrp_problem(Res()) == (
        "module 'model' (Res) has its own forward (a residual connection or other functional "
        "step), which LRP's layer-by-layer rules do not see")
    ruled = Sine()
    vars(ruled)["rule"] = None
    assert at.lrp_problem(nn.Sequential(nn.Flatten(), nn.Linear(64, 3), ruled)) is None
    with pytest.raises(at.AttributionUnsupported, match="^LRP: layer '1' .Sine. has no LRP rule$"):
        at.ATTRIBUTIONS.get("lrp")(nn.Sequential(nn.Flatten(), Sine()), X[:2], 0, generator=_g())
    from captum.attr._utils.lrp_rules import EpsilonRule

    own = nn.Sequential(nn.Flatten(), _lin(torch.randn(3, 64, generator=_g()))[1])
    plain = at.ATTRIBUTIONS.get("lrp")(own, X[:2], 0, generator=_g())
    vars(own[0])["rule"] = EpsilonRule(epsilon=1e3)  # a rule of the caller's: used
    assert not torch.allclose(at.ATTRIBUTIONS.get("lrp")(own, X[:2], 0, generator=_g()), plain)
    lin = nn.Linear(64, 64)
    twice = nn.Sequential(nn.Flatten(), lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(64, 3))
    with pytest.raises(at.AttributionUnsupported, match="^LRP: Module .* more than once"):
        at.ATTRIBUTIONS.get("lrp")(twice, X[:2], 0, generator=_g())
    with pytest.raises(at.AttributionUnsupported, match="^DeepLift: the model runs .* more than "
                                                        "once per forward pass"):
        at.ATTRIBUTIONS.get("deeplift")(twice, X[:2], 0, generator=_g())
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as err:
        at.ATTRIBUTIONS.get("lrp")(nn.Sequential(nn.Flatten(), nn.Linear(5, 3)), X[:2], 0,
                                   generator=_g())
    assert not isinstance(err.value, at.AttributionUnsupported)
    with pytest.raises(at.AttributionUnsupported, match="^GuidedGradCam needs a convolutional "
                                                        "layer; the model has no nn.Conv2d$"):
        at.last_conv(_lin(torch.ones(2, 64)), X[:2])
    assert at.last_conv(_RunsLastConvFirst(), X[:2]).out_channels == 2  # run last, made first


class _RunsLastConvFirst(nn.Module):
    """Registers its last-run conv first: the module order is not the execution order."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(3, 2, 1)
        self.early = nn.Conv2d(1, 3, 1)
        self.fc = nn.Linear(2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.late(self.early(x)).mean((2, 3)))
        return out


def test_score_attribution_and_methods_by_hand() -> None:
    foot = torch.zeros(3, 1, 2, 2)
    foot[0, 0, 1, :], foot[1, 0, :, 1], foot[2, 0, 0, 0] = 1.0, 1.0, 1.0  # bottom, right, corner
    attr = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [7.0] * 4]).view(3, 1, 2, 2)
    attr = torch.cat([attr, -attr], 1) / 2  # |.| summed over channels: the same maps
    r = ats.score_attribution(attr, foot * 5)  # the last map is constant: no correlation
    assert r.dtype == torch.float32 and torch.allclose(r, torch.tensor([2, -1, 0]) / 5 ** 0.5)
    near_flat = torch.full((1, 1, 2, 2), 1e6, dtype=torch.float64)
    near_flat[0, 0, 0, 0] += 1e-4  # below 1e-9 of the scale: constant
    assert ats.score_attribution(near_flat, foot[:1]).item() == 0.0
    assert ats.score_attribution(attr[:1], torch.ones(1, 1, 2, 2)).item() == 0.0
    assert ats.score_attribution(attr[:1], near_flat).item() == 0.0  # relative to its scale
    assert ats.score_attribution(attr[:1], 0 * foot[:1]).item() == 0.0  # all-zero: no NaN
    assert ats.score_attribution(0 * attr[:1], foot[:1]).item() == 0.0
    for a, f in [(attr, foot[:1]), (attr, foot[..., :1]), (attr[0], foot[0]), (attr, foot[0])]:
        with pytest.raises(ValueError, match=r"^expected attr \(N, C, H, W\) and footprint"):
            ats.score_attribution(a, f)
    net, x = _mlp(), X[:3]
    foot = torch.rand(3, 1, 8, 8, generator=_g(2))
    res = ats.score_methods(net, x, 1, foot, generator=_g(3),
                            methods=["guided-gradcam", "gradient-shap", "edge-detector"])
    seeds = torch.randint(2 ** 31 - 1, (3,), generator=_g(3)).tolist()
    assert [s.name for s in res] == ["guided-gradcam", "gradient-shap", "edge-detector"]
    assert res[0].skipped and "GuidedGradCam" in res[0].skipped and res[0].mean is None
    assert res[0].ci is None and res[0].n == 0 and res[0].per_image == () and res[0].seconds >= 0
    for s, seed in zip(res[1:], seeds[1:], strict=True):
        want = ats.score_attribution(at.ATTRIBUTIONS.get(s.name)(net, x, 1, generator=_g(seed)),
                                     foot).tolist()
        m, lo, hi = ats.mean_ci(want)
        assert s.per_image == tuple(want) and s.n == 3 and s.skipped is None
        assert (s.mean, s.ci) == (m, (lo, hi)) and s.seconds >= 0
    every = ats.score_methods(net, x[:2], 0, foot[:2], generator=_g())
    assert [s.name for s in every] == [*at.CAPTUM_METHODS, *at.BASELINES]
