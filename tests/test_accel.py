"""Device speed-ups (eisbench.core.accel): bf16 only in the weight update's loss, never in the
attack step; channels_last only for convolutional models on CUDA; CPU runs untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eisbench.core import accel
from eisbench.models import build
from eisbench.training import TrainConfig
from eisbench.training.loop import fit


def _dtypes_seen(amp: bool | None) -> tuple[list[torch.dtype], list[torch.dtype], nn.Module]:
    """Logit dtypes of the model's forwards with and without grad-enabled inputs: a fast-AT
    step's FGSM forward needs the input's gradient (x.requires_grad), the loss's does not."""
    torch.manual_seed(0)
    net = build("cnn-small", in_shape=(1, 28, 28), num_classes=10)
    attack: list[torch.dtype] = []
    update: list[torch.dtype] = []

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        (attack if inp[0].requires_grad else update).append(out.dtype)

    handle = net.register_forward_hook(hook)
    try:
        x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
        fit(net, x, y, cfg=TrainConfig(method="fast-at", batch_size=8, overfit_guard=0.0),
            seed=0, steps=2, amp=amp)
    finally:
        handle.remove()
    return attack, update, net


def test_amp_runs_the_loss_in_bf16_and_the_attack_in_float32() -> None:
    attack, update, net = _dtypes_seen(True)
    assert attack and update
    assert set(attack) == {torch.float32}  # the FGSM step stays float32
    assert set(update) == {torch.bfloat16}  # the weight update's forward is bf16
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay fp32


@pytest.mark.parametrize("amp", [None, False])
def test_cpu_default_and_off_are_float32(amp: bool | None) -> None:
    attack, update, _ = _dtypes_seen(amp)
    assert set(attack) == set(update) == {torch.float32}


def test_policy_by_device() -> None:
    assert accel.amp_default("cuda") and accel.amp_default("cuda:1")
    assert not accel.amp_default("cpu") and not accel.amp_default(torch.device("cpu"))


def test_channels_last_only_for_conv_models_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = build("cnn-small", in_shape=(1, 28, 28), num_classes=10)
    accel.place(conv, "cpu")
    w = next(m.weight for m in conv.modules()  # (O, I, k, k), I > 1: the two layouts differ
             if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert w.is_contiguous()  # CPU: NCHW, records comparable with earlier ones
    monkeypatch.setattr(accel, "is_cuda", lambda device: True)  # the CUDA branch, on a CPU
    accel.place(conv, "cpu")
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    accel.place(mlp, "cpu")
    lin = mlp[1]
    assert isinstance(lin, nn.Linear) and lin.weight.is_contiguous()
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(conv(x), conv(x.contiguous(memory_format=torch.channels_last)))
