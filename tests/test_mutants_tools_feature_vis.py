"""Tests that kill plausible wrong versions of eisbench.tools' parameterisations and feature
visualisation (see benchmarks/mutation.py).

The Fourier and CPPN images and the jitter transform are checked by hand; visualise's
validation, batch layout and ascent direction, and the fv-* tools as visualise with their
objectives.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from mutants_tools_helpers import Cases, X, _g, _mlp, _same
from torch import nn

from eisbench.models import features
from eisbench.tools import TOOLS
from eisbench.tools import feature_vis as fv
from eisbench.tools import parameterisations as pz

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
