"""Tests that kill plausible wrong versions of eisbench.edit's unlearning, fine-tuning and
fine-pruning (see benchmarks/mutation.py): the stampers, the stamped batches, the fine-tuning
budget and loop checks, the dormancy order and fine-pruning's stopping rule.
"""

from __future__ import annotations

import copy
import re
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from mutants_edit_helpers import SQUARE, Channels, channel_data, close, same_params, tiny, ul
from torch import nn

from eisbench.edit import ablation as ab
from eisbench.edit import baselines as bl
from eisbench.training import TrainConfig, fit
from eisbench.trojans.stamp import stamp

# --- stamping and the fine-tuning budget ---------------------------------------------------

def test_stampers_stamp_exactly_what_they_are_given() -> None:
    g = torch.Generator().manual_seed(0)
    mask, pat = torch.rand(1, 5, 6, generator=g), torch.rand(2, 5, 6, generator=g) * 2 - 0.5
    x = torch.rand(3, 2, 5, 6, generator=g)
    want = ((1 - mask) * x + mask * pat).clamp(0, 1)
    close(ul.mask_stamper(mask, pat)(x, g), want)
    assert want.min() == 0 and want.max() == 1  # the clamp is exercised
    assert ul.mask_stamper(mask, pat)(x.half(), g).dtype == torch.float16
    for m, p in ((torch.rand(2, 5, 6), pat), (torch.rand(5, 6), pat), (mask, torch.rand(5, 6)),
                 (torch.rand(1, 1, 5, 6), pat), (mask, torch.rand(1, 2, 5, 6))):
        with pytest.raises(ValueError,
                           match=re.escape(f"got {tuple(m.shape)} and {tuple(p.shape)}")):
            ul.mask_stamper(m, p)
    patches = 1.5 * torch.rand(3, 2, 3, 3, generator=g)
    out = ul.patch_stamper(patches)(x, torch.Generator().manual_seed(4))
    g2 = torch.Generator().manual_seed(4)
    pick = torch.randint(0, 3, (3,), generator=g2)
    rows, cols = (torch.randint(0, 3, (3, 1), generator=g2),
                  torch.randint(0, 4, (3, 1), generator=g2))
    want = x.clone()
    for i in range(3):
        r, c = int(rows[i]), int(cols[i])
        want[i, :, r:r + 3, c:c + 3] = patches[pick[i]]
    close(out, want.clamp(0, 1))
    assert ul.patch_stamper(torch.full((1, 2, 4, 4), 0.5))(x, g).shape == x.shape
    for bad in (torch.rand(2, 3, 3), torch.rand(2, 1, 3, 2), torch.rand(0, 1, 3, 3)):
        with pytest.raises(ValueError, match=re.escape(f"with R >= 1, got {tuple(bad.shape)}")):
            ul.patch_stamper(bad)
    close(ul.trigger_stamper(SQUARE)(x, torch.Generator().manual_seed(2)),
          stamp(x, SQUARE, generator=torch.Generator().manual_seed(2))[0])
    img = torch.arange(2 * 7 * 10.0).view(1, 2, 7, 10)
    assert torch.equal(ul.centre_crop(img, 3), img[..., 2:5, 3:6])
    assert torch.equal(ul.centre_crop(img, 1), img[..., 3:4, 4:5])
    assert torch.equal(ul.centre_crop(img, 7), img[..., :, 1:8])
    assert torch.equal(ul.centre_crop(img[0], 3), img[0, :, 2:5, 3:6])  # one image (C, H, W)
    for side in (0, 8):
        with pytest.raises(ValueError, match=f"patch side {side} does not fit images 7x10"):
            ul.centre_crop(img, side)


def test_stamped_batch_stamps_the_first_fraction_under_the_true_labels() -> None:
    x, y = torch.rand(10, 1, 2, 2), torch.arange(10)
    seen: list[torch.Generator] = []

    def ones(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append(gen)
        return torch.ones_like(z)

    g = torch.Generator()
    for frac, k in ((0.3, 3), (0.25, 2), (0.1, 1), (1.0, 10)):
        xs, ys = ul.stamped_batch(x, y, ones, frac=frac, generator=g)
        assert ys is y and torch.equal(xs[:k], torch.ones(k, 1, 2, 2))
        assert torch.equal(xs[k:], x[k:])
    assert seen == [g] * 4

    def boom(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise AssertionError("stamper called")

    assert ul.stamped_batch(x, y, boom, frac=0.04, generator=g)[0] is x
    assert ul.stamped_batch(x, y, None, frac=0.5, generator=g)[0] is x
    b = ul.stamped(nn.Identity(), x, y, cfg=ul.StampTrainConfig(stamper=ones, stamp_frac=0.3),
                generator=g)
    assert torch.equal(b.x, ul.stamped_batch(x, y, ones, frac=0.3, generator=g)[0])
    for cfg in (TrainConfig(), SimpleNamespace(stamper=ones)):
        assert ul.stamped(nn.Identity(), x, y, cfg=cfg, generator=g).x is x  # type: ignore[arg-type]


def test_finetune_config_and_loop_checks() -> None:
    ul.FinetuneConfig(steps=1, batch_size=1, lr=1e-9, stamp_frac=0.0)
    ul.FinetuneConfig(stamp_frac=1.0)
    for bad in (dict(steps=0), dict(batch_size=0), dict(lr=0.0)):
        with pytest.raises(ValueError, match="^steps and batch_size must be >= 1 and lr > 0$"):
            ul.FinetuneConfig(**bad)  # type: ignore[arg-type]
    for frac in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"stamp_frac must be in \\[0, 1\\], got {frac}"):
            ul.FinetuneConfig(stamp_frac=frac)
    net, x, y = tiny()
    calls: list[nn.Module] = []
    net.train()
    assert ul.finetune_loop(net, x, y, cfg=ul.StampTrainConfig(batch_size=8), seed=0, steps=2,
                         after_step=calls.append) is net
    assert net.training and calls == [net, net] and all(p.grad is None for p in net.parameters())
    net.eval()
    ul.finetune_loop(net, x, y, cfg=ul.StampTrainConfig(batch_size=8, epochs=1), seed=0,
                  after_step=calls.append)
    assert not net.training and len(calls) == 5  # one epoch: 24 / 8 steps
    ul.finetune_loop(net, x[:1], y[:1], cfg=ul.StampTrainConfig(), seed=0, steps=1)
    with pytest.raises(ValueError, match="expected fine-tuning images in \\[0,1\\]"):
        ul.finetune_loop(net, x * 3, y, cfg=ul.StampTrainConfig(), seed=0, steps=1)
    for n_x, n_y in ((4, 3), (0, 0)):
        with pytest.raises(ValueError, match=f"as many labels as images \\(>0\\), got {n_x} and "
                                             f"{n_y}"):
            ul.finetune_loop(net, x[:n_x], y[:n_y], cfg=ul.StampTrainConfig(), seed=0, steps=1)


def test_unlearn_and_finetune_are_the_loop_on_a_copy_with_the_budget() -> None:
    net, x, y = tiny()
    s = ul.mask_stamper(torch.full((1, 4, 4), 0.5), torch.ones(1, 4, 4))
    budget = ul.FinetuneConfig(steps=3, batch_size=8, lr=3e-3, weight_decay=1e-2, stamp_frac=0.5)
    for got, stamper in ((ul.unlearn(net, x, y, stamper=s, cfg=budget), s),
                         (bl.finetune(net, x, y, cfg=budget), None)):
        ref = copy.deepcopy(net)
        fit(ref, x, y, cfg=ul.StampTrainConfig(batch_size=8, lr=3e-3, weight_decay=1e-2,
                                            stamper=stamper, stamp_frac=0.5), seed=0, steps=3)
        same_params(got, ref)
        assert got is not net and not got.training
    same_params(net, tiny()[0])


# --- fine-pruning ----------------------------------------------------------------------------

def test_dormancy_order_ranks_channels_by_mean_activation() -> None:
    net, (x, _) = Channels(), channel_data()
    kws: list[dict[str, Any]] = [{}, {"batch": 5}, {"layer": "body.1", "batch": 5},
                                 {"layer": "penultimate"}]
    for kw in kws:
        assert bl.dormancy_order(net, x, **kw).tolist() == [2, 0, 3, 1], kw
    assert bl.dormancy_order(net, x[1:]).tolist() == [0, 2, 3, 1]  # a tie: lower index first
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        seq = nn.Sequential(nn.Flatten(2), nn.Conv1d(4, 3, 1))  # a (B, U, L) layer
    with torch.no_grad():
        mean = seq(x).clamp_min(0).mean(2)  # (B, U)
    want = mean.mean(0).argsort(stable=True).tolist()
    assert bl.dormancy_order(seq, x, layer="1").tolist() == want
    close(ab.unit_activations(seq, "1", x), mean)
    wrong = channel_data()[1]
    wrong[-1] = 4  # in the last, partial batch
    assert bl._accuracy(net, x, wrong, torch.device("cpu"), batch=5) == 15 / 16
    assert bl.dormancy_order(net, 1 - x, batch=5).tolist() == [1, 3, 0, 2]


def test_fine_pruning_stops_at_the_accuracy_drop_and_keeps_channels_zero() -> None:
    net, (x, y) = Channels(), channel_data()
    # accuracy with channels 2 | 2, 0 | 2, 0, 3 pruned: 14/16, 11/16, 6/16
    cases: list[tuple[dict[str, Any], list[int], list[float]]] = [
        ({"max_drop": 0.125}, [2], [0.875, 0.6875]), ({}, [], [0.875]),
        ({"max_drop": 1.0, "max_frac": 0.5}, [2, 0], [0.875, 0.6875]),
        ({"max_drop": 1.0}, [2, 0, 3], [0.875, 0.6875, 0.375]),
        ({"max_drop": 0.0, "max_frac": 1.0}, [], [0.875])]
    for kw, pruned, trace in cases:
        cfg = ul.FinetuneConfig(steps=2, batch_size=8, lr=0.05)
        got, info = bl.fine_prune(net, x, y, cfg=cfg, **kw)
        assert info == bl.PruneInfo(layer="body.0", pruned=pruned, acc_before=1.0,
                                    acc_pruned=[1.0, *trace][len(pruned)], n_channels=4,
                                    trace=trace), kw
        ref = copy.deepcopy(net)

        def zero(m: nn.Module, idx: list[int] = pruned) -> None:
            with torch.no_grad():
                for p in m.get_submodule("body.0").parameters():  # weight and bias
                    p[idx] = 0.0

        zero(ref)
        fit(ref, x, y, cfg=ul.StampTrainConfig(batch_size=8, lr=0.05), seed=0, steps=2,
            after_step=zero)
        same_params(got, ref)
        assert dict(got.named_parameters())["body.0.weight"][pruned].abs().sum() == 0
    same_params(net, Channels())
    for drop, frac in ((-0.1, 0.9), (1.1, 0.9), (0.04, 0.0), (0.04, 1.5)):
        with pytest.raises(ValueError, match=r"max_drop must be in \[0, 1\] and max_frac in"):
            bl.fine_prune(net, x, y, max_drop=drop, max_frac=frac)
    with pytest.raises(ValueError, match="layer 'body.1' is a Flatten"):
        bl.fine_prune(net, x, y, layer="penultimate")
