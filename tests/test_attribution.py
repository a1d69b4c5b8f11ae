"""Attribution on a patch trojan: every registered method's contract, and the footprint score."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from eisbench.models import build
from eisbench.tools.attribution import ATTRIBUTIONS, BASELINES, CAPTUM_METHODS, lrp_problem
from eisbench.tools.attribution_scores import score_attribution, score_methods
from eisbench.tools.guard import hook_count
from eisbench.trojans.stamp import stamp


@pytest.fixture(scope="module")
def poisoned(trojaned_digits: tuple[nn.Module, Any], digits_small: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """16 non-target test digits with the corner trigger stamped, and their footprints."""
    _, trojan = trojaned_digits
    x, y = digits_small[2], digits_small[3]
    keep = x[y != trojan.target][:16]
    return stamp(keep, trojan.trigger, generator=torch.Generator().manual_seed(0))


def test_registry_holds_the_16_captum_methods_and_two_baselines() -> None:
    assert len(CAPTUM_METHODS) == 16 and set(ATTRIBUTIONS.names()) == {*CAPTUM_METHODS,
                                                                      *BASELINES}


@pytest.mark.parametrize("name", ATTRIBUTIONS.names())
def test_every_method_returns_finite_maps_deterministically_and_cleans_up(
        name: str, trojaned_digits: tuple[nn.Module, Any],
        poisoned: tuple[torch.Tensor, torch.Tensor]) -> None:
    net, trojan = trojaned_digits
    x, _ = poisoned
    before = [set(vars(m)) for m in net.modules()]
    hooks = hook_count(net)
    net.train()
    try:
        fn = ATTRIBUTIONS.get(name)
        a = fn(net, x, trojan.target, generator=torch.Generator().manual_seed(1))
        b = fn(net, x, torch.full((len(x),), trojan.target),
               generator=torch.Generator().manual_seed(1))
        assert net.training  # mode restored
    finally:
        net.eval()
    assert a.shape == (len(x), 1, 8, 8) and torch.isfinite(a).all() and a.min() >= 0
    torch.testing.assert_close(a, b)
    assert hook_count(net) == hooks
    assert [set(vars(m)) for m in net.modules()] == before  # no attribute left on layers


def test_gradient_maps_find_the_trigger_better_than_blank(
        trojaned_digits: tuple[nn.Module, Any],
        poisoned: tuple[torch.Tensor, torch.Tensor]) -> None:
    net, trojan = trojaned_digits
    x, foot = poisoned
    scores = {s.name: s for s in score_methods(
        net, x, trojan.target, foot, generator=torch.Generator().manual_seed(0),
        methods=["saliency", "integrated-gradients", "blank", "edge-detector"])}
    assert scores["blank"].mean == 0.0
    for name in ("saliency", "integrated-gradients"):
        s = scores[name]
        assert s.mean is not None and s.ci is not None and s.n == 16 and s.skipped is None
        assert s.mean > 0.3 and s.ci[0] > 0, s


def test_score_attribution_by_hand() -> None:
    foot = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 2, 2)
    attr = torch.tensor([1.0, 2.0, -3.0, 4.0]).view(1, 1, 2, 2)  # |.| = 1, 2, 3, 4
    # centred |attr| = -1.5, -.5, .5, 1.5; centred foot = -.5, -.5, .5, .5: r = 2 / sqrt(5)
    torch.testing.assert_close(score_attribution(attr, foot), torch.tensor([2 / 5 ** 0.5]))
    two_channels = torch.cat([attr, attr], 1)  # summed over channels: same correlation
    torch.testing.assert_close(score_attribution(two_channels, foot), torch.tensor([2 / 5 ** 0.5]))
    torch.testing.assert_close(score_attribution(1 - foot, foot), torch.tensor([-1.0]))
    torch.testing.assert_close(score_attribution(torch.full_like(foot, 3.0), foot),
                               torch.tensor([0.0]))  # constant map: defined as 0
    with pytest.raises(ValueError, match="expected attr"):
        score_attribution(attr[0], foot)


def test_lrp_is_skipped_with_a_reason_on_a_residual_network() -> None:
    net = build("resnet-small", in_shape=(1, 8, 8), num_classes=10)
    assert lrp_problem(build("cnn-small", in_shape=(1, 8, 8), num_classes=10)) is None
    reason = lrp_problem(net)
    assert reason is not None and "BasicBlock" in reason
    x = torch.rand(4, 1, 8, 8)
    (s,) = score_methods(net, x, 0, torch.zeros(4, 1, 8, 8), methods=["lrp"],
                         generator=torch.Generator().manual_seed(0))
    assert s.mean is None and s.skipped is not None and "BasicBlock" in s.skipped
    assert hook_count(net) == 0


def test_clean_call_removes_what_a_leaky_method_leaves_and_keeps_global_rngs() -> None:
    import numpy as np

    from eisbench.tools.guard import clean_call

    net = build("cnn-small", in_shape=(1, 8, 8), num_classes=10)
    torch_state = torch.get_rng_state()
    np_next = np.random.RandomState()
    np_next.set_state(np.random.get_state())  # a copy of the global numpy generator
    head = net.get_submodule("head")
    with pytest.raises(RuntimeError, match="left 1 hooks"), \
            clean_call(net, "leaky", generator=torch.Generator().manual_seed(0)):
        head.register_forward_hook(lambda m, i, o: None)
        head.scratch = torch.zeros(1)  # an attribute left on a layer
        torch.rand(3)
        np.random.rand(3)
    assert hook_count(net) == 0 and "scratch" not in vars(head)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.rand() == np_next.rand()


def test_clean_call_gives_back_a_layer_attribute_the_body_deleted_or_rebound() -> None:
    from eisbench.tools.guard import clean_call

    net = build("cnn-small", in_shape=(1, 8, 8), num_classes=10)
    head = net.get_submodule("head")
    mine, other = object(), object()
    attrs = vars(head)  # plain attributes, as captum's LRP sets `rule` (then deletes it)
    attrs["rule"] = attrs["tag"] = mine  # the caller's own
    with clean_call(net, "lrp-like", generator=torch.Generator().manual_seed(0)):
        del attrs["rule"]
        attrs["tag"] = other
    assert vars(head)["rule"] is mine and vars(head)["tag"] is mine
