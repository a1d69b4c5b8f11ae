"""Tests that kill plausible wrong versions of eisbench.tools (see benchmarks/mutation.py).

Tiny models (a linear layer or a 6-unit MLP on 1x8x8 images) and a few steps each. Formulas are
checked against hand-computed values; the tools' defaults against their signatures; wrappers
against the functions they wrap; the optimisation loops by counting the images the model sees.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eisbench.models import build, features
from eisbench.tools import TOOLS
from eisbench.tools import adversarial_patch as ap
from eisbench.tools import attribution as at
from eisbench.tools import attribution_scores as ats
from eisbench.tools import decoder as dec
from eisbench.tools import feature_vis as fv
from eisbench.tools import parameterisations as pz
from eisbench.tools import scan as sc
from eisbench.tools import snafue as sn
from eisbench.tools import trigger_reconstruction as tr
from eisbench.tools.core import check_tool_output
from eisbench.tools.guard import clean_call

G = torch.Generator
Cases = list[tuple[dict[str, Any], str]]  # keyword arguments, the error message they raise


def _g(seed: int = 0) -> torch.Generator:
    return G().manual_seed(seed)


def _mlp(k: int = 3, seed: int = 4) -> nn.Module:
    """A 64-6-k ReLU MLP with ``features`` (6 units): cheap, non-linear, deterministic. The
    default puts 28 of the 40 images of :data:`X` in class 0, 12 in class 1, none in class 2."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build("mlp", in_shape=(1, 8, 8), num_classes=k, width=6, depth=1)
    return net.eval()


def _lin(w: torch.Tensor, b: torch.Tensor | None = None) -> nn.Sequential:
    """logits = w . x + b on flattened images; w (K, P)."""
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.zeros(w.shape[0]) if b is None else b)
    return nn.Sequential(nn.Flatten(), lin)


_gx = _g(1)
X = torch.rand(40, 1, 8, 8, generator=_gx) * torch.rand(40, 1, 1, 1, generator=_gx)  # 40 images


class Counting(nn.Module):
    """Delegates to ``net`` and records (batch size, grad enabled) of every forward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[int, bool]] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return features(self.net, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), torch.is_grad_enabled()))
        out: torch.Tensor = self.net(x)
        return out


def _flat(v: Any) -> list[torch.Tensor]:
    """Every tensor and number inside a result, in order (for exact comparisons)."""
    if isinstance(v, torch.Tensor):
        return [v.detach().float()]
    if isinstance(v, list | tuple):
        return [t for e in v for t in _flat(e)]
    if isinstance(v, int | float):
        return [torch.tensor(float(v))]
    if isinstance(v, sc.ScanResult):
        return _flat([v.reconstructions, v.anomaly_index, v.flagged, -1 if v.suspect is None
                      else v.suspect])
    if isinstance(v, tr.Reconstruction):
        return _flat([v.mask, v.pattern, v.l1, v.success, v.bbox, v.target])
    if isinstance(v, nn.Module):
        return _flat(list(v.state_dict().values()))
    if isinstance(v, sn.SnafueResult):
        return _flat([v.bank, v.adversarial, v.similarity, v.target_prob, v.chosen])
    raise TypeError(type(v))


def _same(a: Any, b: Any) -> None:
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb)
    for u, v in zip(fa, fb, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)


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


# --- parameterisations ----------------------------------------------------------------------------

def test_fourier_image_scale_spectrum_and_decoding_by_hand() -> None:
    img = pz.FourierImage(2, (1, 4, 5), generator=_g(3), std=0.3, decay=1.5)
    fy, fx = torch.tensor([0, 0.25, -0.5, -0.25])[:, None], torch.tensor([0, 0.2, 0.4])[None]
    torch.testing.assert_close(img.scale, (fx ** 2 + fy ** 2).sqrt().clamp_min(0.2) ** -1.5)
    torch.testing.assert_close(img.spectrum.data, 0.3 * torch.randn(2, 1, 4, 3, 2, generator=_g(3)))
    with torch.no_grad():
        img.spectrum.zero_()
        img.spectrum[0, 0, 0, 0, 0] = 0.5  # DC: a constant 0.5 * 5^1.5 / sqrt(20)
        img.spectrum[1, 0, 0, 1, 0] = 0.5  # one horizontal cosine, counted twice by irfft
    out, amp = img(), 0.5 * 5 ** 1.5 / 20 ** 0.5
    assert out.shape == (2, 1, 4, 5)
    torch.testing.assert_close(out[0], torch.sigmoid(torch.tensor(amp)).expand(1, 4, 5))
    wave = 2 * amp * torch.cos(2 * math.pi * torch.arange(5.0) / 5)
    torch.testing.assert_close(out[1, 0], torch.sigmoid(wave).expand(4, 5))


def test_cppn_coordinates_weights_and_forward_by_hand() -> None:
    img = pz.CPPNImage(2, (2, 3, 5), generator=_g(4), hidden=3, layers=2)
    lim = math.sqrt(3)
    xs, ys = torch.linspace(-lim, lim, 5), torch.linspace(-lim, lim, 3)
    torch.testing.assert_close(img.coords[0, 5 * 2 + 1], torch.stack(
        [xs[1], ys[2], (xs[1] ** 2 + ys[2] ** 2).sqrt()]))
    assert img.coords.shape == (1, 15, 3)
    g = _g(4)
    for wt, b, (d, o) in zip(img.weights, img.biases, [(3, 3), (6, 3), (6, 2)], strict=True):
        torch.testing.assert_close(wt.data, torch.randn(2, d, o, generator=g) / math.sqrt(d))
        assert torch.equal(b.data, torch.zeros(2, 1, o))
    z = torch.tensor([[0.5, -2.0]])
    a = torch.atan(z)
    torch.testing.assert_close(pz._composite(z), torch.cat([a / 0.67, a * a / 0.6], 1))
    with torch.no_grad():
        for p in img.biases:
            p.fill_(0.1)
        out = img()
    for i in range(2):  # one image at a time, pixel by pixel
        h = img.coords[0]
        for k in range(3):
            h = h @ img.weights[k][i] + 0.1
            h = pz._composite(h) if k < 2 else torch.sigmoid(h)
        torch.testing.assert_close(out[i], h.T.reshape(2, 3, 5))


def test_jitter_translates_and_scales_about_the_centre_with_border_padding() -> None:
    b, h, w, shift, scale = 3, 6, 10, 1.5, 0.2
    cols = 0.2 + torch.arange(w) / 20
    rows = 0.1 + torch.arange(h) / 10
    x = torch.stack([cols.expand(h, w), rows[:, None].expand(h, w)]).expand(b, 2, h, w)
    out = pz.jitter(x, generator=_g(6), shift=shift, scale=scale)
    g = _g(6)
    s = 1 + (2 * torch.rand(b, generator=g) - 1) * scale
    t = (2 * torch.rand(b, 2, generator=g) - 1) * shift
    for i in range(b):  # the ramps sampled at the moved (and clamped) coordinates
        px = ((w - 1) / 2 + s[i] * (torch.arange(w) - (w - 1) / 2) + t[i, 0]).clamp(0, w - 1)
        py = ((h - 1) / 2 + s[i] * (torch.arange(h) - (h - 1) / 2) + t[i, 1]).clamp(0, h - 1)
        torch.testing.assert_close(out[i, 0], (0.2 + px / 20).expand(h, w), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[i, 1], (0.1 + py / 10)[:, None].expand(h, w), atol=1e-5,
                                   rtol=0)


# --- scan -----------------------------------------------------------------------------------------

def _recs(l1: list[float], success: list[float]) -> tuple[tr.Reconstruction, ...]:
    out = []
    for k, (v, s) in enumerate(zip(l1, success, strict=True)):
        m = torch.zeros(1, 4, 4)
        m[0, k, k:] = 0.9
        out.append(tr.Reconstruction(target=k, method="neural-cleanse", mask=m,
                                     pattern=torch.full((1, 4, 4), 0.1 * k), l1=v, success=s,
                                     bbox=tr.mask_bbox(m)))
    return tuple(out)


def test_mad_anomaly_strict_threshold_and_small_side() -> None:
    index, flagged = sc.mad_anomaly([1.0, 2.0, 4.0, 4.0, 9.0], threshold=1.0)
    torch.testing.assert_close(torch.tensor(index), torch.tensor([3, 2, 0, 0, 5]) / (1.4826 * 2))
    assert flagged == [0]
    assert sc.mad_anomaly([1.0, 2.0, 4.0, 4.0, 9.0], threshold=index[0])[1] == []
    assert sc.mad_anomaly([1.0, 3.0]) == ([1 / 1.4826, 1 / 1.4826], [])
    assert sc.mad_anomaly([0.1, 0.2, 0.4])[0] == pytest.approx([0.1 / 0.14826, 0, 0.2 / 0.14826])
    assert sc.mad_anomaly([2.0, 2.0, 2.0, 9.0])[0] == [0.0, 0.0, 0.0, math.inf]
    with pytest.raises(ValueError, match="^the anomaly index needs at least two values$"):
        sc.mad_anomaly([1.0])


def test_scan_result_prints_serialises_and_round_trips(tmp_path: Path) -> None:
    recs = _recs([2.0, 10.0, 12.0, 10.0], [1.0, 0.5, 0.995, 0.98])
    idx, flagged = sc.mad_anomaly([r.l1 for r in recs])
    res = sc.ScanResult("neural-cleanse", recs, tuple(idx), tuple(flagged), 0)
    assert res.l1 == (2.0, 10.0, 12.0, 10.0) and res.success == (1.0, 0.5, 0.995, 0.98)
    assert res.bbox == ((0, 0, 0, 3), (1, 1, 1, 3), (2, 2, 2, 3), (3, 3, 3, 3))
    assert res.trigger is recs[0] and flagged == [0]
    assert repr(res) == (
        "neural-cleanse scan of 4 classes: trojan suspected: class 0 (anomaly index 5.40 > 2; "
        "mask L1 2.0 vs median 10.0); trigger at rows 0-0, cols 0-3\nanomaly index per class "
        "(* flagged, threshold 2): 0 5.40*  1 0.00  2 1.35  3 0.00")
    calm = sc.ScanResult("tabor", recs[1:], (0.0, math.inf, 0.0), (), None, threshold=2.5)
    assert calm.trigger is None and repr(calm) == (
        "tabor scan of 3 classes: no trojan detected: the smallest trigger (class 0, mask L1 "
        "10.0 vs median 10.0) has anomaly index 0.00 <= 2.5\nanomaly index per class "
        "(* flagged, threshold 2.5): 0 0.00  1 inf  2 0.00")
    d = calm.to_dict()
    assert d == {"method": "tabor", "threshold": 2.5, "median_l1": 10.0, "flagged": [],
                 "suspect": None, "bbox": None, "verdict": calm.verdict(), "classes": [
                     {"class": k + 1, "l1": r.l1, "success": r.success, "bbox": list(r.bbox),
                      "anomaly_index": a, "flagged": False, "trigger_found": k == 1}
                     for k, (r, a) in enumerate(zip(recs[1:], (0.0, "inf", 0.0), strict=True))]}
    assert res.to_dict()["bbox"] == [0, 0, 0, 3] and res.to_dict()["classes"][0]["flagged"]
    sc.save_scan(res, tmp_path / "s")
    assert sc.load_scan(tmp_path / "s").suspect == 0
    path = sc.save_scan(calm, tmp_path / "s", extra={"note": 7})  # overwrites the folder
    assert path == tmp_path / "s" / "scan.json" and json.loads(path.read_text())["note"] == 7
    assert path.read_text().startswith('{\n  "method": "tabor"')  # indented for reading
    back = sc.load_scan(tmp_path / "s")
    assert (back.method, back.flagged, back.suspect, back.threshold) == ("tabor", (), None, 2.5)
    assert back.anomaly_index == calm.anomaly_index and back.l1 == calm.l1
    for a, b in zip(back.reconstructions, calm.reconstructions, strict=True):
        assert (a.target, a.method, a.success, a.bbox) == (b.target, "tabor", b.success, b.bbox)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.pattern, b.pattern)


def test_scan_is_the_mad_rule_on_reconstructions_of_every_class() -> None:
    net = _mlp(4, seed=5)
    hyper: dict[str, Any] = {"method": "tabor", "steps": 3, "lr": 0.05, "lam": 0.01,
                             "batch_size": 5, "tabor": tr.TaborWeights(0.2, 0.3, 0.4, 0.6)}
    res = sc.scan(net, X[:20], seed=4, threshold=0.5, **hyper)
    _same(res.reconstructions, tr.reconstruct_triggers(net, targets=range(4), data=X[:20],
                                                        generator=_g(4), **hyper))
    idx, flagged = sc.mad_anomaly(res.l1, threshold=0.5)
    assert res.anomaly_index == tuple(idx) and res.flagged == tuple(flagged)
    low = min(range(4), key=lambda k: res.l1[k])
    assert res.suspect == (low if low in flagged else None) and res.method == "tabor"
    assert res.threshold == 0.5
    from eisbench import data

    digits = sc.scan(_mlp(10), "digits", n=12, steps=1)
    _same(digits, sc.scan(_mlp(10), data.load("digits").x_test[:12], num_classes=10, steps=1,
                          generator=_g(0)))
    with pytest.raises(ValueError, match="the dataset has 5 classes"):
        sc.scan(net, X[:8], num_classes=5, steps=1)


# --- trigger reconstruction: helpers and contracts (not the optimisation schedule) ---------------

def test_stamp_total_variation_and_objectives_by_hand() -> None:
    g = _g(8)
    x, lab = torch.rand(3, 2, 4, 5, generator=g), torch.tensor([2, 0, 1])
    mask, pat = torch.rand(2, 1, 4, 5, generator=g), torch.rand(2, 2, 4, 5, generator=g)
    stamped = tr._stamp(x, mask, pat)
    for r in range(2):
        torch.testing.assert_close(stamped[3 * r:3 * r + 3], (1 - mask[r]) * x + mask[r] * pat[r])
    m = torch.tensor([[0.0, 1, 0], [0, 0, 2], [1, 1, 1]]).view(1, 1, 3, 3)  # rows 3 + 3, cols 4
    torch.testing.assert_close(tr._total_variation(torch.cat([m, 2 * m])), torch.tensor([10., 20]))
    net = _lin(torch.randn(3, 40, generator=g))
    t, lam, w = torch.tensor([1, 2]), torch.tensor([0.1, 0.2]), tr.TaborWeights(0.3, 0.7, 0.2, 0.9)
    ce = torch.stack([F.cross_entropy(net(stamped[3 * r:3 * r + 3]), t[r].expand(3))
                      for r in range(2)])
    l1 = mask.sum((1, 2, 3))
    nc = tr.RECONSTRUCTION_METHODS.get("neural-cleanse")(net, x, lab, mask, pat, t, lam, w)
    torch.testing.assert_close(nc, ce + lam * l1)
    size = l1 + 0.3 * mask.pow(2).sum((1, 2, 3)) + 0.7 * tr._total_variation(mask)
    block = torch.stack([F.cross_entropy(net(x * (1 - mask[r])), lab) for r in range(2)])
    over = F.cross_entropy(net(mask * pat), t, reduction="none")
    torch.testing.assert_close(tr.RECONSTRUCTION_METHODS.get("tabor")(
        net, x, lab, mask, pat, t, lam, w), ce + lam * size + 0.2 * block + 0.9 * over)


def test_success_counts_only_images_not_already_in_the_target() -> None:
    net = _lin(torch.tensor([[0.0] * 39 + [0], [0.0] * 39 + [4], [4.0] + [0] * 39]),
               torch.tensor([1.0, 0, 0]))  # clean: class 0; bright last pixel: 1; first: 2
    x = torch.rand(7, 1, 5, 8, generator=_g(1)) * 0.2
    x[:2, 0, 0, 0] = 0.9  # two images already in class 2
    mask = torch.zeros(3, 1, 5, 8)
    mask[:, 0, 4, 7] = 1.0
    pat = torch.ones(3, 1, 5, 8)
    pred = net(x).argmax(1)
    for chunk in (4096, 2):
        asr = tr._success(net, x, pred, mask, pat, torch.tensor([1, 0, 2]), device=torch.device(
            "cpu"), chunk=chunk)
        torch.testing.assert_close(asr, torch.tensor([1.0, 0.0, 0.0]))
    mask[2, 0, 4, 7], mask[2, 0, 0, 0] = 0.0, 1.0  # trigger 2 lights the first pixel instead
    assert tr._success(net, x, pred, mask, pat, torch.tensor([2, 2, 2]), device=torch.device(
        "cpu")).tolist() == [0.0, 0.0, 1.0]
    same = tr._success(net, x[2:], pred[2:], mask[:1], torch.zeros(1, 1, 5, 8),
                       torch.tensor([0]), device=torch.device("cpu"))
    assert same.tolist() == [1.0]  # every image already in the target: all of them count
    both = tr._success(net, x[2:], pred[2:], mask[:2], torch.zeros(2, 1, 5, 8),
                       torch.tensor([0, 1]), device=torch.device("cpu"))
    assert both.tolist() == [1.0, 0.0]  # decided per trigger


def test_mask_bbox_top_mass_and_trigger_images_order() -> None:
    soft = torch.full((1, 8, 8), 0.01)
    soft[0, 1, 2], soft[0, 6, 7], soft[0, 3, 3] = 0.45, 0.4, 0.3  # mass 1.76: its top 2
    assert tr.mask_bbox(soft) == (1, 2, 6, 7) and tr.mask_bbox(soft[0]) == (1, 2, 6, 7)
    assert tr.mask_bbox(torch.zeros(1, 3, 5)) == (0, 0, 2, 4)
    half = torch.zeros(1, 4, 4)
    half[0, 1, 1], half[0, 3, 3] = 0.9, 0.5  # 0.5 is not above one half
    assert tr.mask_bbox(half) == (1, 1, 1, 1)
    recs = _recs([1.0, 5.0, 3.0, 3.0], [0.5, 1.0, 1.0, 0.995])
    with torch.no_grad():
        recs[3].pattern.fill_(1.5)  # mask * pattern above 1 is clamped
    imgs = tr.trigger_images(recs)
    _same(imgs, torch.stack([recs[i].image() for i in (2, 3, 1, 0)]).clamp(0, 1))
    assert float(imgs.max()) == 1.0
    _same(tr.trigger_images(recs, threshold=0.999),
          torch.stack([recs[i].image().clamp(0, 1) for i in (2, 1, 0, 3)]))


def test_reconstruct_triggers_validates_and_honours_its_arguments() -> None:
    net = Counting(_mlp())
    cases: Cases = [({"targets": []}, "one clean image and one target"), ({"steps": 0}, "steps,"),
                    ({"batch_size": 0}, "steps,"), ({"check_every": 0}, "steps,")]
    for kw, msg in cases:
        args: dict[str, Any] = {"targets": [0], "data": X[:4], "generator": _g()} | kw
        with pytest.raises(ValueError, match=msg):
            tr.reconstruct_triggers(net, **args)
    with pytest.raises(ValueError, match="^reconstruction needs at least one clean image and one "
                                         "target$"):
        tr.reconstruct_triggers(net, targets=[0], data=X[:0], generator=_g())
    with pytest.raises(ValueError, match=r"^expected clean images \(data\) in \[0,1\], got max 2"):
        tr.reconstruct_triggers(net, targets=[0], data=X[:4] / X[:4].max() * 2, generator=_g())
    with pytest.raises(ValueError, match=r"^steps, batch_size and check_every must be >= 1$"):
        tr.reconstruct_triggers(net, targets=[0], data=X[:4], steps=0, generator=_g())
    net.calls.clear()
    recs = tr.reconstruct_triggers(net, targets=[2, 0, 2], data=X[:30], steps=7, check_every=3,
                                   batch_size=8, lr=0.0, threshold=2.0, generator=_g(3))
    assert [c for c in net.calls if c[1]] == [(24, True)] * 7  # 7 steps of 3 x 8 images
    assert net.calls.count((30, False)) == 1  # the clean predictions
    assert net.calls.count((90, False)) == 3 + 1  # 3 checks (steps 3, 6, 7), the final ASR
    pred = net(X[:30]).argmax(1)
    for r, target in zip(recs, [2, 0, 2], strict=True):
        assert (r.target, r.method, r.bbox) == (target, "neural-cleanse", tr.mask_bbox(r.mask))
        assert r.mask.shape == (1, 8, 8) and r.pattern.shape == (1, 8, 8)
        assert 0.05 <= r.mask.min() < 0.2 and 0.8 < r.mask.max() <= 0.95  # the uniform start
        assert 0.05 <= r.pattern.min() < 0.2 and 0.8 < r.pattern.max() <= 0.95  # (lr 0)
        keep = pred != target
        hit = net(r.apply(X[:30])).argmax(1) == target
        assert r.l1 == pytest.approx(float(r.mask.sum())) and r.success == pytest.approx(
            float((hit & keep).sum() / keep.sum()))
    assert not torch.equal(recs[0].mask, recs[2].mask)  # each target its own start
    again = tr.reconstruct_triggers(net, targets=[2, 0, 2], data=X[:30], steps=2, batch_size=8,
                                    lr=0.0, threshold=2.0, generator=_g(3))
    _same(again, recs)  # lr 0: no step moves the trigger
    one = tr.reconstruct_triggers(net, targets=[1], data=X[:1], steps=2, batch_size=1,
                                  generator=_g())
    assert one[0].success in (0.0, 1.0)  # a single image is a valid batch


def test_reconstruction_keeps_the_smallest_successful_mask() -> None:
    net = _mlp()

    def run(steps: int, threshold: float) -> tr.Reconstruction:
        return tr.reconstruct_trigger(net, target=1, data=X, steps=steps, check_every=3,
                                      threshold=threshold, lam=-1.0, generator=_g(2))

    grown, best, at3 = run(6, 2.0), run(6, 0.0), run(3, 2.0)  # lam < 0: the mask grows
    _same(best.mask, at3.mask)  # the first check's mask, not the last one
    assert grown.l1 > best.l1 + 1
    kw: dict[str, Any] = {"method": "tabor", "steps": 4, "lr": 0.05, "lam": -1.0,
                          "batch_size": 5, "threshold": 0.0, "check_every": 2,
                          "tabor": tr.TaborWeights(0.2, 0.3, 0.4, 0.6)}
    _same(tr.reconstruct_trigger(net, target=2, data=X, generator=_g(1), **kw),
          tr.reconstruct_triggers(net, targets=[2], data=X, generator=_g(1), **kw))
    for name in ("neural-cleanse", "tabor"):
        kw = {"steps": 3, "lr": 0.05, "lam": 0.01, "batch_size": 5}
        out = TOOLS.get(name)(net, target=1, data=X, n=3, generator=_g(1), **kw)
        _same(out, tr.restart_images(net, target=1, data=X, n=3, method=name, generator=_g(1),
                                     device="cpu", **kw))
        _same(out, tr.trigger_images(tr.reconstruct_triggers(
            net, targets=[1] * 3, data=X, method=name, generator=_g(1), **kw)))


# --- patches --------------------------------------------------------------------------------------

def test_patch_geometry_by_hand() -> None:
    assert [ap.default_side(s) for s in [(1, 28, 28), (1, 8, 8), (1, 40, 12), (1, 2, 2)]] == [
        7, 3, 3, 2]
    assert ap.default_side((3, 10, 30), 0.5) == 5 and ap.default_side((1, 28, 28), 1 / 3) == 9
    rows, cols = ap.random_positions(4, 50, (1, 5, 9), 3, generator=_g(2))
    g = _g(2)
    assert torch.equal(rows, torch.randint(0, 3, (4, 50), generator=g))
    assert torch.equal(cols, torch.randint(0, 7, (4, 50), generator=g))
    assert (rows.max(), cols.max(), rows.min(), cols.min()) == (2, 6, 0, 0)
    p = torch.rand(2, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    c = ap.centred(p, (1, 8, 7))
    assert c.dtype == torch.float64 and not c.requires_grad
    assert torch.equal(c[:, :, 2:5, 2:4], p.detach()) and torch.isclose(c.sum(), p.sum())
    x64 = torch.rand(3, 1, 8, 7, dtype=torch.float64)
    q = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    assert ap.paste(x64, q, rows[:2, :3], cols[:2, :3].clamp(max=4)).dtype == torch.float64
    with pytest.raises(ValueError, match=r"^rows and cols must be \(R, B\) = \(2, 3\), got "
                                         r"\(2, 4\)"):
        ap.paste(torch.zeros(3, 1, 8, 8), p.float(), rows[:2, :4], cols[:2, :3])


def test_patch_success_by_hand() -> None:
    net = _lin(torch.eye(16)[:1].expand(2, 16) * torch.tensor([[0.0], [1.0]]),
               torch.tensor([0.5, 0.0]))  # class 1 iff pixel (0, 0) > 0.5
    patches = torch.zeros(3, 1, 3, 3)
    patches[0], patches[1, 0, 0, 0] = 1.0, 1.0
    x = torch.zeros(20, 1, 4, 4)
    rows, cols = ap.random_positions(3, 20, (1, 4, 4), 3, generator=_g(3))
    corner = ((rows == 0) & (cols == 0)).float().mean(1)
    want = corner * torch.tensor([1.0, 1.0, 0.0])
    for chunk in (2048, 2):
        torch.testing.assert_close(ap.patch_success(net, patches, x, target=1, generator=_g(3),
                                                    chunk=chunk), want)
    data = torch.rand(150, 1, 4, 4, generator=_g(1))
    for target, imgs in [(1, data), (0, data), (0, data / 2)]:  # images of the target are
        g = _g(4)  # left out, unless all are (the last: all of class 0)
        pick = imgs[torch.randperm(150, generator=g)[:128]]
        keep = net(pick).argmax(1) != target
        want = ap.patch_success(net, patches, pick[keep] if keep.any() else pick, target=target,
                                generator=g)
        torch.testing.assert_close(ap.evaluate_patches(net, patches, imgs, target=target,
                                                       generator=_g(4)), want)


def test_fit_patches_is_adam_on_the_mean_cross_entropy_plus_penalty() -> None:
    net = Counting(_mlp())
    raw0 = torch.randn(2, 1, 3, 3, generator=_g(5))

    def penalty(p: torch.Tensor) -> torch.Tensor:
        return 0.3 * p.pow(2).sum()

    raw = raw0.clone().requires_grad_(True)
    got = ap.fit_patches(net, lambda: torch.sigmoid(raw), [raw], target=2, data=X, steps=3,
                         generator=_g(6), lr=0.2, batch_size=4, penalty=penalty)
    assert net.calls == [(8, True)] * 3  # 3 steps of 2 patches x 4 images
    ref, g = raw0.clone().requires_grad_(True), _g(6)
    opt = torch.optim.Adam([ref], lr=0.2)
    for _ in range(3):
        p = torch.sigmoid(ref)
        idx = torch.randint(0, 40, (2, 4), generator=g)
        rows, cols = ap.random_positions(2, 4, (1, 8, 8), 3, generator=g)
        xs = ap.paste(X[idx], p, rows, cols).flatten(0, 1)
        loss = 2 * F.cross_entropy(net.net(xs), torch.full((8,), 2)) + penalty(p)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(got, torch.sigmoid(ref).detach())
    assert ap.fit_patches(net, lambda: torch.sigmoid(raw), [raw], target=0, data=X, steps=1,
                          batch_size=1, generator=_g()).shape == (2, 1, 3, 3)
    cases: Cases = [({"steps": 0}, "^steps and batch_size must be >= 1$"),
                    ({"batch_size": 0}, "^steps and batch_size must be >= 1$"),
                    ({"data": X[0]}, r"^data must be clean images \(N, C, H, W\), got "
                                     r"\(1, 8, 8\)")]
    base: dict[str, Any] = {"target": 0, "data": X, "generator": _g()}
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            ap.fit_patches(net, lambda: torch.sigmoid(raw), [raw], **(base | kw))


def test_adversarial_patch_is_optimised_uniform_starts_sorted_by_success() -> None:
    net = _mlp()
    kw: dict[str, Any] = {"steps": 2, "lr": 0.3, "batch_size": 3, "side": 4}
    patches, success = ap.optimise_patches(net, target=1, data=X, n=3, generator=_g(2), **kw)
    g = _g(2)
    raw = torch.logit(torch.rand(3, 1, 4, 4, generator=g) * 0.9 + 0.05).requires_grad_(True)
    ref = ap.fit_patches(net, lambda: torch.sigmoid(raw), [raw], target=1, data=X, generator=g,
                         **{k: v for k, v in kw.items() if k != "side"})
    _same((patches, success), (ref, ap.evaluate_patches(net, ref, X, target=1, generator=g)))
    still, _ = ap.optimise_patches(net, target=1, data=X, n=3, generator=_g(2), steps=1, lr=0.0)
    torch.testing.assert_close(still, torch.rand(3, 1, 3, 3, generator=_g(2)) * 0.9 + 0.05)
    order = torch.argsort(success, descending=True, stable=True)
    _same(ap.adversarial_patch(net, target=1, data=X, n=3, generator=_g(2), **kw),
          ap.centred(patches[order], (1, 8, 8)))
    assert ap.optimise_patches(net, target=1, data=X, n=1, generator=_g(), side=1, steps=1
                               )[0].shape == (1, 1, 1, 1)
    base: dict[str, Any] = {"target": 0, "data": X, "n": 2, "generator": _g()}
    cases: Cases = [({"n": 0}, "^n must be >= 1, got 0$"),
                    ({"side": 9}, r"^patch side 9 does not fit images of shape \(1, 8, 8\)$"),
                    ({"side": 0}, "^patch side 0 does not fit")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            ap.optimise_patches(net, **(base | bad))


# --- feature visualisation ------------------------------------------------------------------------

def test_visualise_validates_lays_out_copies_and_maximises() -> None:
    net = _mlp()
    base: dict[str, Any] = {"n": 2, "shape": (1, 8, 8), "param": "fourier", "generator": _g()}
    cases: Cases = [({"param": "pixels"}, r"^unknown parameterisation 'pixels': expected one of "
                                          r"\['cppn', 'fourier'\]$"), ({"n": 0}, "^n, steps"),
                    ({"steps": 0}, "^n, steps"), ({"copies": 0}, "^n, steps and copies must be "
                                                                 ">= 1$")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fv.visualise(net, lambda x: x.sum((1, 2, 3)), **(base | bad))
    seen: list[torch.Tensor] = []

    def bright(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return x.mean((1, 2, 3))

    out = fv.visualise(net, bright, **(base | {"generator": _g(1), "steps": 4, "copies": 3,
                                               "shift": 0.0, "scale": 0.0}))
    assert len(seen) == 4 and seen[0].shape == (6, 1, 8, 8)
    start = pz.FourierImage(2, (1, 8, 8), generator=_g(1))().detach()
    torch.testing.assert_close(seen[0], start.repeat(3, 1, 1, 1))  # copy-major: row k * n + i
    assert (out.mean((1, 2, 3)) > start.mean((1, 2, 3)) + 0.01).all()  # maximised, not minimised
    for param, lr in [("fourier", 0.05), ("cppn", 0.01)]:
        for h in (28, 8):
            kw = base | {"param": param, "shape": (1, h, h), "steps": 2, "generator": _g(2)}
            a = fv.visualise(net if h == 8 else nn.Flatten(), lambda x: x[:, 0, 0, :3].sum(1), **kw)
            b = fv.visualise(net if h == 8 else nn.Flatten(), lambda x: x[:, 0, 0, :3].sum(1),
                             **(kw | {"lr": lr, "shift": max(1.0, h / 14), "generator": _g(2)}))
            _same(a, b)
        c = fv.visualise(net, lambda x: x[:, 0, 0, :3].sum(1), **(kw | {"lr": 0.5, "generator":
                                                                          _g(2)}))
        assert not torch.equal(a, c)  # lr is used
    assert fv.visualise(net, bright, **(base | {"copies": 1, "steps": 1})).shape == (2, 1, 8, 8)


def test_feature_tools_are_visualise_with_their_objectives() -> None:
    net = _mlp()
    hidden, head = [m for m in net.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        head.weight[1] = torch.tensor([0.0, 0, 0, 0, 2, 1])  # top units of class 1: 4, 5
        hidden.bias.fill_(3.0)
        hidden.bias[5] = -100.0  # unit 5 never fires: its image follows the logit
    assert fv.top_units(net, target=1, data=X, n=8).tolist() == [4, 5, 0, 1, 2, 3, 4, 5]
    assert fv._linear_head(net, X[:4]) is head and fv._linear_head(nn.Flatten(), X) is None
    kw: dict[str, Any] = {"n": 2, "steps": 2, "lr": 0.02, "copies": 3}  # not LR's

    def neuron(x: torch.Tensor) -> torch.Tensor:
        out = features(net, x)[:, 4].clone()
        out[1::2] = net(x)[1::2, 1]  # rows k * n + 1: the dead unit's image
        return out

    for param in ("fourier", "cppn"):
        for tool, obj in [("class", lambda x: net(x)[:, 1]), ("neuron", neuron)]:
            ref = fv.visualise(net, obj, shape=(1, 8, 8), param=param, generator=_g(1), **kw)
            out = TOOLS.get(f"fv-{tool}-{param}")(net, target=1, data=X, generator=_g(1), **kw)
            _same(out, ref)


# --- decoder --------------------------------------------------------------------------------------

def test_autoencoder_shapes_init_and_training_by_hand(tmp_path: Path) -> None:
    from eisbench.runs.store import Store

    plain = dec.Autoencoder((1, 8, 8))  # latent 16, width 16
    assert plain.encode(X[:2]).shape == (2, 16) and plain.width == 16
    ae = dec.Autoencoder((2, 10, 6), latent=5, width=3)
    names = ["encoder.0", "encoder.2", "encoder.5", "stem_fc", "mid_conv", "head_conv"]
    shapes = [(3, 2, 4, 4), (6, 3, 4, 4), (5, 12), (36, 5), (6, 3, 4, 4), (3, 2, 4, 4)]
    assert {k: tuple(v.shape) for k, v in ae.state_dict().items() if k.endswith("weight")} == {
        f"{n}.weight": s for n, s in zip(names, shapes, strict=True)}
    x = torch.rand(4, 2, 10, 6, generator=_g())
    z = ae.encode(x)
    a1, a2 = ae.stem(z), ae.mid(ae.stem(z))
    assert (z.shape, a1.shape, a2.shape) == ((4, 5), (4, 6, 3, 2), (4, 3, 6, 4))
    assert a1.min() >= 0 and a2.min() >= 0 and a1.max() > 0
    img = ae(x)
    assert img.shape == (4, 2, 10, 6) and img.min() > 0 and img.max() < 1
    assert ae.head_conv(a2).shape == (4, 2, 12, 8)  # then resized to 10 x 6
    _same(img, ae.decode(z))
    dec._init(ae, _g(3))
    g, mods = _g(3), dict(ae.named_modules())
    for n in names:
        w, b = mods[n].weight, mods[n].bias
        bound = 1 / math.sqrt(w[0].numel())
        torch.testing.assert_close(w.data, (2 * torch.rand(w.shape, generator=g) - 1) * bound)
        torch.testing.assert_close(b.data, (2 * torch.rand(b.shape, generator=g) - 1) * bound)
    cfg = dec.AutoencoderConfig(latent=4, width=2, steps=3, batch_size=5, lr=0.01, seed=2)
    ref, g = dec.Autoencoder((1, 8, 8), latent=4, width=2), _g(2)
    dec._init(ref, g)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for _ in range(3):
        xb = X[:4][torch.randint(0, 4, (4,), generator=g)]
        loss = F.mse_loss(ref(xb), xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = dec.train_autoencoder(X[:4], cfg)
    _same(got, ref)
    st = Store(tmp_path)
    cached = dec.trained_autoencoder(X[:4], cfg, store=st)
    again = dec.trained_autoencoder(X[:4], cfg, store=st)
    _same([got, cached], [again, again])
    assert not (got.training or cached.training or again.training)
    (stage,) = [f.parent for f in tmp_path.rglob("autoencoder.safetensors")]
    assert stage.parent.name == "autoencoder" and json.loads((stage / "config.json").read_text(
    )) == {"cfg": dataclasses.asdict(cfg), "device": "cpu", "shape": [1, 8, 8]}
    assert json.loads((stage / "done.json").read_text())["inputs"] == [dec.data_hash(X[:4])]
    dec.trained_autoencoder(X[:5], cfg, store=st)
    assert len(list(tmp_path.rglob("autoencoder.safetensors"))) == 2  # keyed on the data
    h = dec.data_hash(X)
    assert len(h) == 16 and h == dec.data_hash(X.clone()) and int(h, 16) >= 0
    assert len({h, dec.data_hash(X.view(40, 64, 1, 1)), dec.data_hash(X.double()),
                dec.data_hash(X[:39])}) == 4
    for bad in (X[0], X[:0]):
        with pytest.raises(ValueError, match=r"^expected images \(N, C, H, W\), got"):
            dec.train_autoencoder(bad, cfg)


# --- SNAFUE ---------------------------------------------------------------------------------------

def test_natural_patches_and_embedding_by_hand() -> None:
    src = torch.rand(5, 1, 6, 7, generator=_g(1))
    src[3:] = 0.05  # two images without ink
    bank = sn.natural_patches(src, m=6, side=3, generator=_g(2))
    g = _g(2)
    sizes, which = torch.randint(3, 7, (12,), generator=g), torch.randint(0, 5, (12,), generator=g)
    u, crops = torch.rand(12, 2, generator=g), []
    for i in range(12):
        sz = int(sizes[i])
        r, c = int(u[i, 0] * (7 - sz)), int(u[i, 1] * (8 - sz))
        crop = src[int(which[i]), :, r:r + sz, c:c + sz][None]
        crops.append(F.interpolate(crop, size=(3, 3), mode="bilinear", antialias=True,
                                   align_corners=False)[0].clamp(0, 1) if sz > 3 else crop[0])
    inked = [c for c in crops if c.max() >= 0.1] + [c for c in crops if c.max() < 0.1]
    assert len(inked) == 12 and inked[5].max() >= 0.1 and inked[-1].max() < 0.1
    _same(bank, torch.stack(inked[:6]))
    net = _mlp()
    hosts, patches = X[:2], torch.rand(3, 1, 3, 3, generator=_g(3))
    rows, cols = torch.tensor([[0, 5]]), torch.tensor([[2, 1]])
    feats, probs = sn.embed(net, patches, hosts, rows, cols, target=2, chunk=3)
    whole = sn.embed(net, patches, hosts, rows, cols, target=2)  # chunks change the sums' order
    torch.testing.assert_close((feats, probs), whole, rtol=1e-5, atol=1e-6)
    for i in range(3):
        xs = ap.paste(hosts, patches[i:i + 1], rows, cols)[0]
        torch.testing.assert_close(feats[i], (features(net, xs) - features(net, hosts)).mean(0))
        torch.testing.assert_close(probs[i], net(xs).softmax(1)[:, 2].mean())


def test_snafue_search_is_the_documented_pipeline() -> None:
    net, nat = _mlp(), torch.rand(3, 1, 10, 10, generator=_g(7))
    kw: dict[str, Any] = {"bank_size": 20, "adversarial": 2, "hosts": 4, "pool": 3, "steps": 2}
    res = sn.search(net, target=1, data=X, n=3, generator=_g(3), natural=nat, lr=0.2,
                    batch_size=3, side=4, **kw)
    g = _g(3)
    extra = F.interpolate(nat, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    bank = sn.natural_patches(torch.cat([X, extra.clamp(0, 1)]), m=20, side=4, generator=g)
    adv, _ = ap.optimise_patches(net, target=1, data=X, n=2, generator=g, side=4, steps=2,
                                 lr=0.2, batch_size=3)
    x = X[torch.randperm(40, generator=g)[:16]]
    keep = net(x).argmax(1) != 1
    host = (x[keep] if keep.sum() >= 4 else x)[:4]
    rows, cols = ap.random_positions(1, 4, (1, 8, 8), 4, generator=g)
    e_bank, p_bank = sn.embed(net, bank, host, rows, cols, target=1)
    e_adv, _ = sn.embed(net, adv, host, rows, cols, target=1)
    sim = F.cosine_similarity(e_adv[:, None], e_bank[None], dim=2).amax(0)
    near = torch.argsort(sim, descending=True, stable=True)[:9]
    chosen = near[torch.argsort(p_bank[near], descending=True, stable=True)][:3]
    _same(res, sn.SnafueResult(bank, adv, sim, p_bank, chosen))
    _same(TOOLS.get("snafue")(net, target=1, data=X, n=3, generator=_g(3), natural=nat, side=4,
                              **kw),
          sn.search(net, target=1, data=X, n=3, generator=_g(3), natural=nat, side=4, **kw
                    ).images((1, 8, 8)))
    few = sn.search(net, target=1, data=X, n=5, generator=_g(), bank_size=2, pool=1, steps=1)
    assert few.chosen.tolist()[2:] == few.chosen.tolist()[:3] and len(few.bank) == 2
    base: dict[str, Any] = {"target": 0, "data": X, "generator": _g()}
    cases: Cases = [({"data": X[0]}, r"^data must be clean images \(N, C, H, W\)"),
                    ({"pool": 0}, "^n, bank_size, adversarial, hosts and pool must be >= 1$"),
                    ({"hosts": 0}, "^n, bank_size, adversarial, hosts and pool must be >= 1$"),
                    ({"natural": torch.rand(2, 3, 8, 8)}, "^natural must be images with 1 "
                                                          r"channel\(s\), got \(2, 3, 8, 8\)$")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            sn.search(net, **(base | bad))


# --- feature-level adversaries --------------------------------------------------------------------

def test_feature_adversaries_are_the_documented_optimisations() -> None:
    from eisbench.tools import feature_adversary as fa

    x = torch.tensor([[0.0, 1, 1], [0, 0, 1]]).view(1, 1, 2, 3)
    torch.testing.assert_close(fa.total_variation(torch.cat([x, 2 * x])),
                               torch.tensor(3 * (1 / 3 + 2 / 4)))
    assert fa._shrink(X, 8) is X
    torch.testing.assert_close(fa._shrink(X, 3), F.interpolate(
        X, size=(3, 3), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1))
    net, cfg = _mlp(), dec.AutoencoderConfig(latent=4, width=4, steps=20)
    ae = dec.trained_autoencoder(X, cfg)
    kw: dict[str, Any] = {"target": 0, "data": X, "n": 2, "steps": 2, "lr": 0.2, "batch_size": 3,
                          "tv": 0.4, "autoencoder": cfg}
    gen = fa.feature_adversary_generator(net, generator=_g(4), prior=0.2, first_layer=0.3, **kw)
    per = fa.feature_adversary_perturbation(net, generator=_g(4), l2=0.3, **kw)
    _same(gen, _feature_adversary_reference(net, ae, generator=True))
    _same(per, _feature_adversary_reference(net, ae, generator=False))
    one = fa.feature_adversary_generator(net, **(kw | {"data": X[:1], "n": 1, "generator": _g()}))
    assert torch.isfinite(one).all()  # one clean code: unit spread, no NaN
    other = fa.feature_adversary_perturbation(net, generator=_g(4), l2=0.3, train_data=X[20:],
                                              **kw)
    assert not torch.equal(other, per)  # the generator is trained on train_data
    cases: Cases = [({"n": 0}, "^n must be >= 1, got 0$"), ({"side": 9}, "^patch side 9 does "
                    r"not fit images of shape \(1, 8, 8\)$"), ({"data": X[0]}, r"^data must be "
                    r"clean images \(N, C, H, W\), got \(1, 8, 8\)$")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fa.feature_adversary_perturbation(net, **(kw | {"generator": _g()} | bad))


def _feature_adversary_reference(net: nn.Module, ae: dec.Autoencoder, *,
                                 generator: bool) -> torch.Tensor:
    """The documented optimisation of the two feature-level adversaries, written out (2 patches
    of side 3, 2 steps of 3 images, lr 0.2; prior 0.2, first layer / l2 0.3, tv 0.4)."""
    from eisbench.tools.feature_adversary import _shrink, total_variation

    g = _g(4)
    start = torch.randint(0, 40, (2,), generator=g)
    z0, ref = ae.encode(X[start]), ae.encode(X[torch.randperm(40, generator=g)[:512]])
    with torch.no_grad():
        a2, s2 = ae.mid(ae.stem(z0)), ae.mid(ae.stem(ref)).std().clamp_min(1e-3)
        mu, sd, s1 = ref.mean(0), ref.std(0).clamp_min(1e-3), ae.stem(ref).std()
    u = ((z0 - mu) / sd).detach().requires_grad_(True)
    d = torch.zeros_like(ae.stem(z0) if generator else a2).requires_grad_(True)

    def make() -> torch.Tensor:
        if generator:
            return _shrink(ae.head(ae.mid(ae.stem(mu + sd * u) + s1 * d)), 3)
        return _shrink(ae.head(a2 + s2 * d), 3)

    def penalty(p: torch.Tensor) -> torch.Tensor:
        prior = 0.2 * u.pow(2).mean(1).sum() if generator else 0
        return prior + 0.3 * d.pow(2).flatten(1).mean(1).sum() + 0.4 * total_variation(p)

    patches = ap.fit_patches(net, make, [u, d] if generator else [d], target=0, data=X,
                             generator=g, steps=2, lr=0.2, batch_size=3, penalty=penalty)
    success = ap.evaluate_patches(net, patches, X, target=0, generator=g)
    assert success[0] != success[1]  # (so that the order is seen)
    order = torch.argsort(success, descending=True, stable=True)
    return ap.centred(patches[order], (1, 8, 8))


def test_patch_side_must_fit_the_shorter_side_of_non_square_images() -> None:
    wide = torch.rand(4, 1, 4, 8, generator=_g(2))  # (N, C, H=4, W=8)
    with pytest.raises(ValueError,
                       match=r"^patch side 6 does not fit images of shape \(1, 4, 8\)$"):
        ap.optimise_patches(nn.Sequential(nn.Flatten(), nn.Linear(32, 3)), target=1, data=wide,
                            n=1, generator=_g(), side=6, steps=1)
