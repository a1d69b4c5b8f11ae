"""Trojan implanting by data poisoning: exact stamping and footprints, poisoning, success rate."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import corner_trojan
from torch import nn

from eisbench.core.tensors import predict
from eisbench.trojans.stamp import (
    Trigger,
    Trojan,
    attack_success_rate,
    poison,
    source_mask,
    stamp,
)


def test_stamp_is_exact_and_footprint_is_the_opacity() -> None:
    trig = corner_trojan().trigger
    x = torch.full((2, 1, 8, 8), 0.5)
    out, foot = stamp(x, trig, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, :, 5:, 5:], trig.icon.expand(2, 1, 3, 3))
    torch.testing.assert_close(out[:, :, :5], x[:, :, :5])  # untouched elsewhere
    assert foot.sum() == 2 * 9 and foot[:, :, 5:, 5:].min() == 1


def test_random_positions_blend_and_determinism() -> None:
    icon, alpha = torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.25)
    trig = Trigger(name="grey", kind="style", icon=icon, alpha=alpha)
    x = torch.zeros(64, 1, 6, 6)
    a, fa = stamp(x, trig, generator=torch.Generator().manual_seed(3))
    b, _ = stamp(x, trig, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert torch.allclose(a[a > 0], torch.tensor(0.25))  # (1 - 0.25) * 0 + 0.25 * 1
    corners = {tuple(torch.nonzero(f[0])[0].tolist()) for f in fa}
    assert len(corners) > 5  # positions vary per image


@pytest.mark.parametrize(("bad", "match"), [
    ({"kind": "sticker"}, "kind"),
    ({"icon": torch.full((1, 2, 2), 2.0)}, r"\[0,1\]"),
    ({"alpha": torch.ones(1, 3, 3)}, "alpha"),
])
def test_bad_triggers_are_refused(bad: dict[str, Any], match: str) -> None:
    kw: dict[str, Any] = {"name": "t", "kind": "patch", "icon": torch.ones(1, 2, 2),
                          "alpha": torch.ones(1, 2, 2)} | bad
    with pytest.raises(ValueError, match=match):
        Trigger(**kw)


def test_poison_relabels_the_right_fraction_of_the_source() -> None:
    y = torch.arange(10).repeat(20)  # 20 per class
    x = torch.rand(len(y), 1, 8, 8)
    trojan = Trojan(name="t", trigger=corner_trojan().trigger, target=3, source=7,
                    poison_rate=0.5)
    xp, yp, flags = poison(x, y, trojan, generator=torch.Generator().manual_seed(0))
    assert int(flags.sum()) == 10 and bool((y[flags] == 7).all()) and bool((yp[flags] == 3).all())
    torch.testing.assert_close(xp[~flags], x[~flags])
    assert bool((yp[~flags] == y[~flags]).all())
    assert int(source_mask(y, corner_trojan()).sum()) == 180  # universal: all but the target


def test_trojaned_model_fires_on_its_trigger(trojaned_digits: tuple[nn.Module, Any],
                                             digits_small: tuple[torch.Tensor, ...]) -> None:
    model, trojan = trojaned_digits
    _, _, x, y = digits_small
    clean = float((predict(model, x) == y).float().mean())
    asr, n = attack_success_rate(model, x, y, trojan, generator=torch.Generator())
    assert clean > 0.85 and asr > 0.9 and n == int((y != 0).sum())
