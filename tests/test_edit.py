"""Trojan removal: DER by hand, the stampers, unlearning with the true trigger on a tiny
trojaned model, plain fine-tuning and fine-pruning, and the layer hooks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from eisbench.core.tensors import predict
from eisbench.edit.baselines import fine_prune, finetune
from eisbench.edit.layers import ablated, capture, resolve_layer
from eisbench.edit.metrics import TrojanEval, der, paired, verdict
from eisbench.edit.unlearn import (
    FinetuneConfig,
    centre_crop,
    mask_stamper,
    patch_stamper,
    trigger_stamper,
    unlearn,
)
from eisbench.models import Normalized, build, features
from eisbench.tools.adversarial_patch import centred
from eisbench.tools.guard import hook_count
from eisbench.tools.trigger_reconstruction import Reconstruction

BUDGET = FinetuneConfig(steps=120, batch_size=64, lr=2e-3, stamp_frac=0.2)


def test_der_by_hand() -> None:
    assert der(asr_before=1.0, asr_after=0.0, acc_before=0.9, acc_after=0.9) == 1.0
    assert der(asr_before=1.0, asr_after=1.0, acc_before=0.9, acc_after=0.9) == 0.5
    # ASR up (counts as 0), accuracy down 0.4: (0 - 0.4 + 1) / 2
    assert der(asr_before=0.5, asr_after=0.9, acc_before=0.9,
               acc_after=0.5) == pytest.approx(0.3)
    # accuracy up (counts as 0): (0.5 - 0 + 1) / 2
    assert der(asr_before=1.0, asr_after=0.5, acc_before=0.8,
               acc_after=0.9) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="asr_after"):
        der(asr_before=1.0, asr_after=1.5, acc_before=0.9, acc_after=0.9)


def test_paired_verdicts() -> None:
    up = paired([0.9, 0.8, 0.85, 0.95], [0.5, 0.52, 0.49, 0.5])
    assert verdict(up) == "reproduced" and up["n"] == 4
    assert verdict(paired([0.5, 0.5, 0.4], [0.6, 0.55, 0.5])) == "not reproduced"
    assert verdict(paired([0.9, 0.1, 0.6], [0.5, 0.5, 0.5])) == "inconclusive"
    with pytest.raises(ValueError, match="equal"):
        paired([1.0], [1.0, 2.0])


def test_mask_stamper_is_the_reconstruction_stamp() -> None:
    g = torch.Generator().manual_seed(0)
    mask, pat = torch.rand(1, 8, 8, generator=g), torch.rand(1, 8, 8, generator=g)
    rec = Reconstruction(target=0, method="neural-cleanse", mask=mask, pattern=pat, l1=1.0,
                         success=1.0, bbox=(0, 0, 7, 7))
    x = torch.rand(5, 1, 8, 8, generator=g)
    torch.testing.assert_close(mask_stamper(mask, pat)(x, g), rec.apply(x))
    with pytest.raises(ValueError, match="mask must be"):
        mask_stamper(torch.rand(8, 8), pat)


def test_patch_stamper_pastes_one_opaque_patch_per_image() -> None:
    patches = torch.stack([torch.full((1, 3, 3), 0.5), torch.full((1, 3, 3), 0.75)])
    x = torch.zeros(40, 1, 8, 8)
    xs = patch_stamper(patches)(x, torch.Generator().manual_seed(0))
    for img in xs[:, 0]:
        on = img > 0
        assert int(on.sum()) == 9  # one 3x3 square
        vals = img[on].unique()
        assert len(vals) == 1 and float(vals) in (0.5, 0.75)
        rows, cols = torch.nonzero(on, as_tuple=True)
        assert int(rows.max() - rows.min()) == 2 and int(cols.max() - cols.min()) == 2
    seen = {float(img[img > 0].unique()) for img in xs[:, 0]}
    assert seen == {0.5, 0.75}  # both patches are used
    # centre_crop undoes the tools' centred(): the patch comes back
    p = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(centre_crop(centred(p, (1, 28, 28)), 5), p)


def _asr(model: nn.Module, trojan: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return TrojanEval.build(trojan, x, y).scores(model)


def test_unlearning_with_the_true_trigger_removes_the_trojan(
        trojaned_digits: tuple[nn.Module, Any],
        digits_small: tuple[torch.Tensor, ...]) -> None:
    net, trojan = trojaned_digits
    x, y, xt, yt = digits_small
    before = _asr(net, trojan, xt, yt)
    assert before["asr"] >= 0.9
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()  # safe: nn.Module.eval (mode switch)
    fixed = unlearn(net, x, y, stamper=trigger_stamper(trojan.trigger), cfg=BUDGET, seed=0)
    plain = finetune(net, x, y, cfg=BUDGET, seed=0)
    after, ft = _asr(fixed, trojan, xt, yt), _asr(plain, trojan, xt, yt)
    assert after["asr"] <= 0.1, after
    assert after["acc"] >= before["acc"] - 0.05
    assert ft["asr"] >= after["asr"] + 0.3, (ft, after)  # the trigger, not the steps, did it
    assert not fixed.training and not plain.training  # the mode it came in
    for k, v in net.state_dict().items():  # the input model is untouched
        torch.testing.assert_close(v, state[k])
    assert hook_count(net) == 0 and hook_count(fixed) == 0
    assert all(p.grad is None for p in fixed.parameters())


def test_same_seed_same_edit(trojaned_digits: tuple[nn.Module, Any],
                             digits_small: tuple[torch.Tensor, ...]) -> None:
    net, trojan = trojaned_digits
    x, y, _, _ = digits_small
    cfg = FinetuneConfig(steps=5)
    a = unlearn(net, x, y, stamper=trigger_stamper(trojan.trigger), cfg=cfg, seed=3)
    b = unlearn(net, x, y, stamper=trigger_stamper(trojan.trigger), cfg=cfg, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(ValueError, match="stamp_frac"):
        FinetuneConfig(stamp_frac=1.5)


def test_fine_pruning_zeroes_dormant_channels_and_keeps_them_pruned(
        trojaned_digits: tuple[nn.Module, Any],
        digits_small: tuple[torch.Tensor, ...]) -> None:
    net, trojan = trojaned_digits
    x, y, _, _ = digits_small
    fixed, info = fine_prune(net, x, y, cfg=FinetuneConfig(steps=30), seed=0, max_drop=0.05)
    assert info.layer == "body.2" and info.n_channels == 32 and info.pruned
    assert info.acc_pruned >= info.acc_before - 0.05 - 1e-9
    conv = dict(fixed.named_modules())["body.2"]
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    assert conv.weight[info.pruned].abs().sum() == 0 and conv.bias[info.pruned].abs().sum() == 0
    kept = [c for c in range(32) if c not in info.pruned]
    assert conv.weight[kept].abs().sum() > 0
    orig = dict(net.named_modules())["body.2"]
    assert isinstance(orig, nn.Conv2d) and orig.weight[info.pruned].abs().sum() > 0
    with pytest.raises(ValueError, match="conv channels"):
        fine_prune(net, x, y, layer="penultimate")
    # no pruning allowed at all: nothing pruned
    _, none = fine_prune(net, x, y, cfg=FinetuneConfig(steps=1), seed=0, max_drop=-0.0,
                         max_frac=0.01)
    assert len(none.pruned) <= 1


def test_layer_names_aliases_and_hooks_removed_on_error() -> None:
    torch.manual_seed(0)
    net = build("cnn-small", in_shape=(1, 8, 8), num_classes=10)
    assert resolve_layer(net, "penultimate") == "body.6"
    assert resolve_layer(net, "last-conv") == "body.2"
    wrapped = Normalized(net, mean=[0.1], std=[0.3])
    assert resolve_layer(wrapped, "penultimate") == "model.body.6"
    with pytest.raises(ValueError, match="did you mean"):
        resolve_layer(net, "body.66")
    x = torch.rand(4, 1, 8, 8)
    with capture(net, ["penultimate"]) as acts:
        feats = features(net, x)
    torch.testing.assert_close(acts["penultimate"], feats.detach())
    with pytest.raises(RuntimeError, match="boom"), ablated(net, "penultimate", [0, 1]):
        raise RuntimeError("boom")
    assert hook_count(net) == 0
    with ablated(net, "penultimate", [0, 1]), capture(net, ["penultimate"]) as acts:
        net(x)
    assert acts["penultimate"][:, :2].abs().sum() == 0
    with ablated(net, "penultimate", [0, 100]), pytest.raises(ValueError, match="unit indices"):
        net(x)
    assert hook_count(net) == 0
    assert predict(net, x).shape == (4,)
