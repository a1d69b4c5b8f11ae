"""LAT against its real baseline: input-space adversarial training stays within its Linf bound
and spends exactly LAT's budget; targeted LAT's adversary pushes toward the target label and
its model loss is toward + away + retain with the reference's weights; the matched-clean-cost
rule and the suite's check gate decide as written."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from mutants_edit_helpers import close, tiny
from torch import nn

from eisbench.bench.edit import EditBenchConfig
from eisbench.bench.edit_methods import budget_params, input_at_config, lat_targeted_config
from eisbench.core.config import to_plain
from eisbench.edit.input_at import (
    InputAtConfig,
    InputAtTrainConfig,
    input_adversary,
    input_at_finetune,
    input_at_loss,
)
from eisbench.edit.lat import LatConfig, LatentBound, lat_finetune, latent_pgd
from eisbench.edit.lat_compare import lat_claims, lat_metrics, matched_verdict
from eisbench.edit.lat_targeted import (
    TargetedLatConfig,
    TargetedLatTrainConfig,
    away_loss,
    lat_targeted_finetune,
    targeted_adversary,
    targeted_lat_loss,
    targeted_latent_pgd,
    toward_objective,
)
from eisbench.edit.unlearn import FinetuneConfig
from eisbench.training import Batch

LAT = LatConfig(bounds=(LatentBound("body.0", eps=0.5),), steps=2, step_frac=1.25)


@contextmanager
def recorded(net: nn.Module) -> Iterator[list[tuple[bool, torch.Tensor]]]:
    """Every forward pass of ``net`` inside the block: (train mode?, its input)."""
    calls: list[tuple[bool, torch.Tensor]] = []
    h = net.register_forward_pre_hook(lambda m, a: calls.append((m.training,
                                                                 a[0].detach().clone())))
    try:
        yield calls
    finally:
        h.remove()


def _record_finetune(method: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     ft: FinetuneConfig, at: InputAtConfig) -> list[tuple[bool, torch.Tensor]]:
    """The forward passes of one fine-tune (the edited copy inherits the hook)."""
    with recorded(net) as calls:
        if method == "lat":
            lat_finetune(net, x, y, lat=LAT, cfg=ft, seed=0)
        else:
            input_at_finetune(net, x, y, at=at, cfg=ft, seed=0)
    return calls


def test_input_at_spends_exactly_lats_budget_within_its_linf_ball() -> None:
    """Counts every forward pass: the same optimiser steps, batches, training passes (adv
    and clean) and inner passes as LAT, and each adversarial batch inside the eps-ball of its
    clean batch, in [0,1], moved. Fails on extra or missing attack steps, a dropped clean
    term, a wrong step count, or a perturbation outside the ball."""
    net, x, y = tiny(n=24)
    ft = FinetuneConfig(steps=5, batch_size=8)
    at = InputAtConfig(eps=0.1, steps=LAT.steps, step_frac=LAT.step_frac)
    lat_calls = _record_finetune("lat", net, x, y, ft, at)
    at_calls = _record_finetune("input-at", net, x, y, ft, at)
    for calls in (lat_calls, at_calls):
        train = [c for c in calls if c[0]]
        assert len(train) == 2 * ft.steps  # adversarial + clean forward per optimiser step
        assert len(calls) - len(train) == ft.steps * (LAT.steps + 1)  # inner passes
        assert [len(t) for _, t in train] == [8] * (2 * ft.steps)
    lat_train = [t for tr, t in lat_calls if tr]
    at_train = [t for tr, t in at_calls if tr]
    # the first epoch's batches (3 steps of 8 of 24 images) are LAT's, in the same order
    for k in range(3):
        close(at_train[2 * k + 1], lat_train[2 * k + 1], rtol=0, atol=0)
    for k in range(ft.steps):
        adv, clean = at_train[2 * k], at_train[2 * k + 1]
        d = (adv - clean).abs().amax()
        assert float(d) <= at.eps + 1e-6 and float(d) > 0.5 * at.eps
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_input_at_loss_and_the_bench_config_are_lats() -> None:
    net, x, y = tiny()
    cfg = InputAtTrainConfig(eps=0.2, attack_steps=3, clean_weight=0.25)
    batch = input_adversary(net, x, y, cfg=cfg, generator=torch.Generator().manual_seed(0))
    assert batch.clean is x and float((batch.x - x).abs().amax()) <= 0.2 + 1e-6
    got = input_at_loss(net, batch, y, cfg=cfg)
    want = 0.25 * F.cross_entropy(net(x), y) + 0.75 * F.cross_entropy(net(batch.x), y)
    close(got, want)
    with torch.no_grad():
        assert float(F.cross_entropy(net(batch.x), y)) > float(F.cross_entropy(net(x), y))
    with pytest.raises(ValueError, match="needs the clean images"):
        input_at_loss(net, Batch(x), y, cfg=cfg)
    settings = dataclasses.replace(EditBenchConfig(), lat_steps=4, input_at_eps=0.15)
    lat = settings.lat()
    got_at = input_at_config(settings)
    assert (got_at.eps, got_at.steps, got_at.step_frac, got_at.clean_weight) == (
        0.15, lat.steps, lat.step_frac, lat.clean_weight)
    assert budget_params(settings, "input-at")["input_at"] == to_plain(got_at)
    assert lat_targeted_config(settings).lat == lat
    for bad in ({"eps": -0.1}, {"steps": 0}, {"clean_weight": 1.0}):
        with pytest.raises(ValueError):
            InputAtConfig(**bad)  # type: ignore[arg-type]


def test_away_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-9.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    p = torch.softmax(logits, 1)[:, 0]
    want = -torch.log1p(-p)
    want[2] = 0.0  # log p(0) = -9 < -5: already far, no loss
    close(away_loss(logits, labels), want)
    close(away_loss(logits, labels, floor=-50.0)[2], -torch.log1p(-p[2]))


def test_targeted_adversary_pushes_toward_the_target() -> None:
    """Fails if the adversary's sign is flipped (it would push away from the target) or its
    objective drops or swaps the toward and away terms."""
    net, x, y = tiny(n=48)
    target = 2
    tlat = TargetedLatConfig(lat=LatConfig(bounds=(LatentBound("body.4", eps=2.0, relative=False),),
                                           steps=5,
                                           step_frac=0.5))
    m = y != target
    obj = toward_objective(target, tlat)
    logits = net(x)
    t = torch.full_like(y[m], target)
    want = -(0.5 * F.cross_entropy(logits[m], t, reduction="sum")
             + 0.5 * away_loss(logits[m], y[m]).sum())
    close(obj(logits, y), want)
    uneven = toward_objective(target, dataclasses.replace(tlat, adv_toward=3.0, adv_away=1.0))
    close(uneven(logits, y), -(0.75 * F.cross_entropy(logits[m], t, reduction="sum")
                               + 0.25 * away_loss(logits[m], y[m]).sum()))
    deltas, _ = targeted_latent_pgd(net, x, y, target=target, tlat=tlat,
                                    generator=torch.Generator().manual_seed(0))
    untargeted, _ = latent_pgd(net, x, y, cfg=tlat.lat, generator=torch.Generator().manual_seed(0))
    h = net.body[4]  # type: ignore[index]

    def toward_ce(d: torch.Tensor) -> float:
        hook = h.register_forward_hook(lambda mod, a, o: o + d)
        try:
            with torch.no_grad():
                return float(F.cross_entropy(net(x)[m], t))
        finally:
            hook.remove()

    clean = toward_ce(torch.zeros_like(deltas["body.4"]))
    assert toward_ce(deltas["body.4"]) < clean - 0.2
    assert toward_ce(deltas["body.4"]) < toward_ce(untargeted["body.4"]) - 0.2
    batch = targeted_adversary(net, x, y, cfg=TargetedLatTrainConfig(tlat=tlat, target=target),
                               generator=torch.Generator().manual_seed(0))
    close(batch.hidden["body.4"], deltas["body.4"], rtol=0, atol=0)


def test_targeted_model_loss_is_toward_away_retain_with_their_weights() -> None:
    """Distinct weights (1, 2, 3 -> 1/6, 1/3, 1/2) and a written-out loss: fails if a term is
    dropped, two are swapped, the away term reads the clean logits or the true label, or the
    retain term reads the perturbed ones."""
    net, x, y = tiny(n=48)
    target = 1
    d = 0.7 * torch.randn(48, 6, generator=torch.Generator().manual_seed(3))
    tlat = TargetedLatConfig(lat=LAT, def_toward=1.0, def_away=2.0, def_retain=3.0,
                             away_floor=-50.0)
    cfg = TargetedLatTrainConfig(tlat=tlat, target=target)
    got = targeted_lat_loss(net, Batch(x, hidden={"body.4": d}), y, cfg=cfg)
    m = y != target
    h = net.body[4].register_forward_hook(lambda mod, a, o: o + d)  # type: ignore[index]
    z = net(x)[m]
    h.remove()
    toward = F.cross_entropy(z, y[m])
    away = -torch.log1p(-torch.softmax(z, 1)[:, target]).mean()
    retain = F.cross_entropy(net(x), y)
    close(got, toward / 6 + away / 3 + retain / 2)
    # the reference's weights: model 0.5 / 0.5 / 1.5 -> 0.2 / 0.2 / 0.6, adversary 0.5 / 0.5
    assert TargetedLatConfig().model_weights() == pytest.approx((0.2, 0.2, 0.6))
    assert TargetedLatConfig().adversary_weights() == (0.5, 0.5)
    with pytest.raises(ValueError, match="target class"):
        targeted_lat_loss(net, Batch(x, hidden={"body.4": d}), y,
                          cfg=TargetedLatTrainConfig(tlat=tlat))
    with pytest.raises(ValueError, match="must not all be 0"):
        TargetedLatConfig(adv_toward=0.0, adv_away=0.0)


def test_targeted_finetune_lowers_attack_on_the_target() -> None:
    """The fine-tuned copy moves the perturbed examples off the target more than the model
    before; the input model is untouched."""
    net, x, y = tiny(n=48)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tlat = TargetedLatConfig(lat=LAT)
    edited = lat_targeted_finetune(net, x, y, target=0, tlat=tlat,
                                   cfg=FinetuneConfig(steps=30, batch_size=16, lr=1e-2))
    for k, v in net.state_dict().items():
        close(v, before[k], rtol=0, atol=0)
    m = y != 0

    def p_target(model: nn.Module) -> float:
        deltas, _ = targeted_latent_pgd(model, x, y, target=0, tlat=tlat,
                                        generator=torch.Generator().manual_seed(1))
        hook = model.body[0].register_forward_hook(  # type: ignore[index,union-attr]
            lambda mod, a, o: o + deltas["body.0"])
        try:
            with torch.no_grad():
                return float(torch.softmax(model(x)[m], 1)[:, 0].mean())
        finally:
            hook.remove()

    assert p_target(edited) < p_target(net) - 0.05


def _metric(v: float, lo: float, hi: float) -> dict[str, object]:
    return {"value": v, "ci95": [lo, hi], "n": 12}


@pytest.mark.parametrize(("gain", "clean", "want"), [
    ((0.1, 0.05, 0.15), -0.005, "reproduced"),
    ((0.1, 0.05, 0.15), -0.02, "inconclusive"),  # LAT paid more clean accuracy: not matched
    ((0.1, 0.05, 0.15), 0.03, "reproduced"),  # LAT removes more AND costs less
    ((-0.05, -0.1, 0.0), 0.005, "not reproduced"),
    ((-0.05, -0.1, 0.0), 0.03, "inconclusive"),  # input-AT removes more but costs more
    ((0.02, -0.03, 0.07), 0.0, "inconclusive"),
])
def test_matched_verdict(gain: tuple[float, float, float], clean: float, want: str) -> None:
    got = matched_verdict(_metric(*gain), _metric(clean, clean - 0.01, clean + 0.01),  # type: ignore[arg-type]
                          tol=0.01)
    assert got == want


def test_lat_metrics_and_the_check_gate() -> None:
    """Paired per trojan against input-AT; the suite's robust accuracy from the first seed's
    subset cells only; a failed check on a model makes its robustness claim inconclusive."""
    def cell(asr: float, acc: float, suite: float | None = None,
             failed: tuple[str, ...] = ()) -> dict[str, object]:
        c: dict[str, object] = {"asr": asr, "acc": acc, "der": 0.5 + (1 - asr) / 2}
        if suite is not None:
            c |= {"suite_robust_acc": suite, "suite_failed_checks": list(failed),
                  "robust_acc": suite + 0.25}
        return c

    res = {"input-at": [[cell(0.5, 0.9, 0.6)], [cell(0.5, 0.9)], [cell(0.4, 0.9, 0.5)]],
           "lat": [[cell(0.1, 0.9, 0.3)], [cell(0.2, 0.9)], [cell(0.0, 0.9, 0.2)]],
           "no-trigger": [[cell(0.9, 0.9, 0.1)], [cell(0.9, 0.9)], [cell(0.9, 0.9, 0.0)]],
           "lat-targeted": [[cell(0.1, 0.9, 0.4, ("eps-curve",))], [cell(0.2, 0.9)],
                            [cell(0.1, 0.9, 0.3)]]}
    robust = ["no-trigger", "lat", "lat-targeted", "input-at"]
    m = lat_metrics(res, robust_rows=robust)  # type: ignore[arg-type]
    assert m["compare/lat/asr_gain_vs_input_at"]["value"] == pytest.approx(1.1 / 3)
    assert m["compare/lat/clean_vs_input_at"]["value"] == pytest.approx(0.0)
    assert m["suite/lat/robust_acc"]["value"] == pytest.approx(0.25)
    assert m["suite/lat/robust_acc"]["n"] == 2
    assert m["suite/lat/pgd_robust_acc"]["value"] == pytest.approx(0.5)  # same models, PGD
    assert m["suite/lat/robust_gain"]["value"] == pytest.approx(0.2)
    assert m["suite/lat-targeted/failed_checks"]["value"] == 1
    claims = {c["claim"]: c for c in lat_claims(m, robust_rows=robust, tol=0.01,
                                                details={"suite_checks": {
                                                    "lat-targeted": [["eps-curve"], []]}})}
    targeted = next(c for k, c in claims.items() if k.startswith("Targeted LAT makes"))
    assert targeted["verdict"] == "inconclusive" and "eps-curve" in targeted["measured"]
    lat = next(c for k, c in claims.items() if k.startswith("Latent adversarial training "
                                                            "removes"))
    assert lat["verdict"] == "reproduced"
