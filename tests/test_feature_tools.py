"""The feature-synthesis tools on a tiny trojaned model (8x8 digits, a 3x3 corner trigger
that sends every class to 0): shapes, determinism, the model left as it came, and what each
tool is for (the patch is adversarial, the visualisation raises its objective, SNAFUE's
patches come from its bank)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules import module as nn_module

from eisbench.core.tensors import predict
from eisbench.models import build, features
from eisbench.tools import TOOLS
from eisbench.tools.adversarial_patch import centred, paste
from eisbench.tools.decoder import AutoencoderConfig, trained_autoencoder
from eisbench.tools.feature_vis import readout_weights, top_units
from eisbench.tools.parameterisations import CPPNImage, FourierImage, jitter
from eisbench.tools.snafue import search
from eisbench.trojans.stamp import Trigger, stamp

NAMES = ("fv-class-fourier", "fv-class-cppn", "fv-neuron-fourier", "fv-neuron-cppn",
         "adversarial-patch", "feature-adversary-generator", "feature-adversary-perturbation",
         "snafue")
QUICK: dict[str, dict[str, Any]] = {name: {"steps": 15} for name in NAMES}
QUICK["snafue"] |= {"bank_size": 128}
TARGET = 0


def _hooks(model: nn.Module) -> int:
    glob = (nn_module._global_forward_hooks, nn_module._global_forward_pre_hooks,
            nn_module._global_backward_hooks, nn_module._global_backward_pre_hooks)
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules()) + sum(map(len, glob))


@pytest.fixture(scope="module")
def clean(digits_small: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_small
    return x[:256], y[:256]


def _call(name: str, model: nn.Module, data: torch.Tensor, seed: int,
          **kw: Any) -> torch.Tensor:
    out: torch.Tensor = TOOLS.get(name)(model, target=TARGET, data=data, n=10,
                                        generator=torch.Generator().manual_seed(seed), **kw)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_tool_shape_determinism_mode_and_hooks(name: str, trojaned_digits: tuple[nn.Module, Any],
                                               clean: tuple[torch.Tensor, torch.Tensor]
                                               ) -> None:
    model, x = trojaned_digits[0], clean[0]
    was, hooks = model.training, _hooks(model)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    try:
        model.train()
        a = _call(name, model, x, seed=3, **QUICK[name])
        assert model.training and all(m.training for m in model.modules())
        model.eval()  # safe: nn.Module.eval (mode switch)
        b = _call(name, model, x, seed=3, **QUICK[name])
        assert not model.training
    finally:
        model.train(was)
    assert a.shape == (10, 1, 8, 8) and float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert _hooks(model) == hooks
    c = _call(name, model, x, seed=4, **QUICK[name])
    assert not torch.equal(a, c), "another seed should give other images"


def test_paste_matches_trojan_stamp() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 2, 8, 8, generator=g)
    patches = torch.rand(3, 2, 3, 3, generator=g)
    rows = torch.randint(0, 6, (3, 5), generator=g)
    cols = torch.randint(0, 6, (3, 5), generator=g)
    out = paste(x, patches, rows, cols)  # (3, 5, 2, 8, 8)
    for r in range(3):
        for b in range(5):
            trig = Trigger(name="p", kind="patch", icon=patches[r], alpha=torch.ones(1, 3, 3),
                           position=(int(rows[r, b]), int(cols[r, b])))
            ref, _ = stamp(x[b:b + 1], trig, generator=g)
            torch.testing.assert_close(out[r, b], ref[0])
    own = paste(x[None].expand(3, -1, -1, -1, -1), patches, rows, cols)  # per-patch images
    torch.testing.assert_close(own, out)
    trig = Trigger(name="c", kind="patch", icon=patches[0], alpha=torch.ones(1, 3, 3))
    torch.testing.assert_close(centred(patches[:1], (2, 8, 8))[0], trig.image((2, 8, 8)))


@pytest.mark.parametrize("cls", [FourierImage, CPPNImage])
def test_parameterisations_are_images_with_gradients(cls: type[FourierImage] | type[CPPNImage]
                                                     ) -> None:
    img = cls(3, (2, 8, 6), generator=torch.Generator().manual_seed(0))
    x = img()
    assert x.shape == (3, 2, 8, 6) and float(x.detach().min()) >= 0 and x.detach().max() <= 1
    assert x.std() > 0
    (x * torch.linspace(-1, 1, x.numel()).view_as(x)).sum().backward()
    for name, p in img.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    other = cls(3, (2, 8, 6), generator=torch.Generator().manual_seed(1))()
    assert not torch.equal(x, other)


def test_jitter_without_shift_or_scale_is_the_identity() -> None:
    x = torch.rand(4, 1, 8, 8)
    out = jitter(x, generator=torch.Generator().manual_seed(0), shift=0.0, scale=0.0)
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("name", ["adversarial-patch", "feature-adversary-generator",
                                  "feature-adversary-perturbation"])
def test_patches_send_data_to_the_target(name: str, trojaned_digits: tuple[nn.Module, Any],
                                         clean: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, (x, y) = trojaned_digits[0], clean
    s = 6  # a patch that must work at every position of an 8x8 digit needs room
    imgs = _call(name, model, x, seed=0, side=s)
    top = (8 - s) // 2
    patch = imgs[0, :, top:top + s, top:top + s]  # the best patch, cut out of its image
    assert imgs[0].sum() == pytest.approx(patch.sum())  # nothing outside the patch
    g = torch.Generator().manual_seed(0)
    controls = [torch.rand(1, s, s, generator=g), torch.rand(1, s, s, generator=g),
                torch.ones(1, s, s), torch.zeros(1, s, s)]
    src = x[y != TARGET]
    rates = []
    for icon in [patch, *controls]:
        trig = Trigger(name="p", kind="patch", icon=icon, alpha=torch.ones(1, s, s))
        stamped, _ = stamp(src, trig, generator=torch.Generator().manual_seed(1))
        rates.append(float((predict(model, stamped) == TARGET).float().mean()))
    before = float((predict(model, src) == TARGET).float().mean())
    assert rates[0] > max(before, *rates[1:]) + 0.3, (before, rates)


@pytest.mark.parametrize("param", ["fourier", "cppn"])
def test_class_visualisation_raises_the_target_logit(param: str,
                                                     trojaned_digits: tuple[nn.Module, Any],
                                                     clean: tuple[torch.Tensor, torch.Tensor]
                                                     ) -> None:
    model, x = trojaned_digits[0], clean[0]
    imgs = _call(f"fv-class-{param}", model, x, seed=0)
    with torch.no_grad():
        assert model(imgs)[:, TARGET].mean() > model(x)[:, TARGET].mean() + 1.0


def test_neuron_visualisation_raises_its_units(trojaned_digits: tuple[nn.Module, Any],
                                               clean: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, x = trojaned_digits[0], clean[0]
    units = top_units(model, target=TARGET, data=x, n=10)
    imgs = _call("fv-neuron-fourier", model, x, seed=0)
    with torch.no_grad():
        own = features(model, imgs)[torch.arange(10), units]  # (10,)
        base = features(model, x)[:, units].mean(0)  # (10,)
    assert (own > base).float().mean() >= 0.8, (own, base)


class _ScaledHead(nn.Module):
    """Twice a classifier's logits: no linear layer gives them, so the gradient route runs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return features(self.net, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = 2 * self.net(x)
        return out


def test_readout_weights_are_the_head_or_the_feature_gradient(
        trojaned_digits: tuple[nn.Module, Any], clean: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, x = trojaned_digits[0], clean[0]
    w = readout_weights(model, target=TARGET, data=x)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    torch.testing.assert_close(w, head.weight[TARGET].detach())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlp = build("mlp", in_shape=(1, 8, 8), num_classes=10, width=32, depth=1)
    grad = readout_weights(_ScaledHead(mlp), target=TARGET, data=x)  # 32 units, 64 pixels
    with torch.no_grad():
        active = features(mlp, x.mean(0, keepdim=True))[0] > 0  # units alive at the mean
        w_mlp = 2 * [m for m in mlp.modules() if isinstance(m, nn.Linear)][-1].weight[TARGET]
    assert active.sum() > 5
    torch.testing.assert_close(grad[active], w_mlp[active], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(grad[~active], torch.zeros(int((~active).sum())), atol=1e-4,
                               rtol=0)


def test_snafue_returns_patches_of_its_bank(trojaned_digits: tuple[nn.Module, Any],
                                            clean: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, x = trojaned_digits[0], clean[0]
    kw: dict[str, Any] = {"bank_size": 256, "steps": 30}
    res = search(model, target=TARGET, data=x, n=10,
                 generator=torch.Generator().manual_seed(0), **kw)
    imgs = _call("snafue", model, x, seed=0, **kw)
    torch.testing.assert_close(imgs, res.images((1, 8, 8)), rtol=0, atol=0)
    assert len(set(res.chosen.tolist())) == 10
    bank_imgs = centred(res.bank, (1, 8, 8)).flatten(1)  # (M, 64)
    same = (imgs.flatten(1)[:, None] == bank_imgs[None]).all(2)  # (10, M)
    assert same.any(1).all()  # every image is a bank patch
    near = torch.argsort(res.similarity, descending=True)[:20]
    assert set(res.chosen.tolist()) <= set(near.tolist())  # chosen among the nearest
    assert float(res.bank.flatten(1).amax(1)[res.chosen].min()) >= 0.1  # no blank patch


def test_decoder_is_cached_and_reconstructs(clean: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = clean[0]
    cfg = AutoencoderConfig(steps=200)
    ae = trained_autoencoder(x, cfg)
    again = trained_autoencoder(x, cfg)  # loaded from the cache
    for (k, v), (_, u) in zip(ae.state_dict().items(), again.state_dict().items(), strict=True):
        torch.testing.assert_close(v, u, rtol=0, atol=0, msg=k)
    with torch.no_grad():
        err = (ae(x) - x).pow(2).mean()
    baseline = (x - x.mean(0)).pow(2).mean()  # the mean image as reconstruction
    assert err < 0.7 * baseline, (float(err), float(baseline))
