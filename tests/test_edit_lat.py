"""Latent adversarial training: the latent adversary stays within its per-layer bound, moves
the hidden activations by exactly its perturbation, raises the loss, and leaves nothing
behind; LAT fine-tuning and training from scratch run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eisbench.core.tensors import predict
from eisbench.edit.lat import LatConfig, LatentBound, lat_finetune, lat_train, latent_pgd
from eisbench.edit.layers import add_to_outputs, capture
from eisbench.edit.unlearn import FinetuneConfig
from eisbench.models import build
from eisbench.tools.guard import hook_count


@pytest.fixture
def net(trained_digits_cnn: nn.Module) -> nn.Module:
    return trained_digits_cnn


def test_latent_adversary_changes_activations_within_its_bounds(
        net: nn.Module, digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y = digits_small[0][:64], digits_small[1][:64]
    cfg = LatConfig(bounds=(LatentBound("body.1", eps=0.3, norm="l2"),
                            LatentBound("penultimate", eps=0.2, norm="linf")), steps=4)
    net.zero_grad(set_to_none=True)
    net.train()
    deltas, radii = latent_pgd(net, x, y, cfg=cfg, generator=torch.Generator().manual_seed(0))
    assert net.training and hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad(), capture(net, ["body.1", "body.6"]) as clean:
        net(x)
    # the radii are the bounds times the clean activation scale, computed by hand
    l2_scale = clean["body.1"].flatten(1).norm(dim=1).mean()
    rms = clean["body.6"].pow(2).mean().sqrt()
    assert radii["body.1"] == pytest.approx(0.3 * float(l2_scale), rel=1e-5)
    assert radii["body.6"] == pytest.approx(0.2 * float(rms), rel=1e-5)
    d1, d6 = deltas["body.1"], deltas["body.6"]
    assert d1.shape == clean["body.1"].shape and d6.shape == clean["body.6"].shape
    n1 = d1.flatten(1).norm(dim=1)
    assert (n1 <= radii["body.1"] * (1 + 1e-5)).all() and (n1 > 0.5 * radii["body.1"]).all()
    assert d6.abs().max() <= radii["body.6"] * (1 + 1e-5) and d6.abs().max() > 0
    # with the adversary's hooks, each layer outputs its clean activation plus the delta
    # (body.6 sees body.1's change too, so compare it against its own input's forward)
    with torch.no_grad(), add_to_outputs(net, {"body.1": d1}), capture(net, ["body.1"]) as a:
        net(x)
    torch.testing.assert_close(a["body.1"], clean["body.1"] + d1)
    with torch.no_grad(), add_to_outputs(net, deltas), capture(net, ["body.6"]) as b:
        logits = net(x)
    with torch.no_grad(), add_to_outputs(net, {"body.1": d1}), capture(net, ["body.6"]) as c:
        net(x)
    torch.testing.assert_close(b["body.6"], c["body.6"] + d6)
    with torch.no_grad():
        assert F.cross_entropy(logits, y) > F.cross_entropy(net(x), y) + 0.1
    assert hook_count(net) == 0
    net.eval()  # safe: nn.Module.eval (mode switch); the fixture is shared


def test_lat_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="norm"):
        LatentBound("body.1", norm="l1")
    with pytest.raises(ValueError, match="at least one"):
        LatConfig(bounds=())
    net = build("cnn-small", in_shape=(1, 8, 8), num_classes=10)
    cfg = LatConfig(bounds=(LatentBound("body.1"), LatentBound("body.1")))
    with pytest.raises(ValueError, match="same layer"):
        latent_pgd(net, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), cfg=cfg,
                   generator=torch.Generator())
    with pytest.raises(ValueError, match="unknown layer"):
        latent_pgd(net, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long),
                   cfg=LatConfig(bounds=(LatentBound("body.9"),)), generator=torch.Generator())
    assert hook_count(net) == 0


def test_lat_finetune_copy_and_lat_train_from_scratch(
        net: nn.Module, digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y, xt, yt = digits_small
    state = {k: v.clone() for k, v in net.state_dict().items()}
    lat = LatConfig(bounds=(LatentBound("body.1", eps=0.3),), steps=2)
    edited = lat_finetune(net, x, y, lat=lat, cfg=FinetuneConfig(steps=20), seed=0)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert any(not torch.equal(a, b) for a, b in zip(edited.parameters(), net.parameters(),
                                                     strict=True))
    assert not edited.training and hook_count(edited) == 0
    torch.manual_seed(0)
    fresh = build("cnn-small", in_shape=(1, 8, 8), num_classes=10)
    trained = lat_train(fresh, x, y, lat=lat, epochs=8, batch_size=64, lr=5e-3, seed=0)
    acc = float((predict(trained, xt) == yt).float().mean())
    assert acc >= 0.7, acc
