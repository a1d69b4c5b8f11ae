"""The trojan zoo: its composition, poisoning with cover images, the cached implant stage and
the metrics every trojaned model is held to; end to end on the 8x8 digits."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

from eisbench import data
from eisbench.runs.stages import Tensors
from eisbench.runs.store import Store
from eisbench.training import TrainConfig
from eisbench.trojans.bank import bank_index, trigger_bank
from eisbench.trojans.stamp import TRIGGER_KINDS
from eisbench.trojans.zoo import (
    ZooConfig,
    format_table,
    meets_target,
    missed,
    poison_with_cover,
    run_zoo,
    source_rate,
    trojan_params,
    zoo,
    zoo_metrics,
)

DIGITS = (1, 8, 8)


def test_zoo_has_four_trojans_per_kind_both_rules() -> None:
    trojans = zoo("digits")
    assert len(trojans) == 12 and len({t.name for t in trojans}) == 12
    for kind in TRIGGER_KINDS:
        mine = [t for t in trojans if t.trigger.kind == kind]
        assert Counter(t.universal for t in mine) == {True: 2, False: 2}
        bank = trigger_bank(kind, dataset="digits", shape=DIGITS)
        used = {bank_index(t.trigger, bank) for t in mine}
        assert len(used) == 4  # 4 of the 8 implanted, 4 pure distractors
    patch = [bank_index(t.trigger, trigger_bank("patch", dataset="digits", shape=DIGITS))
             for t in trojans if t.trigger.kind == "patch"]
    assert any(k < 4 for k in patch) and any(k >= 4 for k in patch)  # random and fixed
    assert {t.target for t in trojans} == set(range(10))
    assert all(t.source != t.target for t in trojans)
    assert len({t.source for t in trojans if not t.universal}) >= 4


def test_poison_rates_and_cover_images(digits_small: tuple[torch.Tensor, ...]) -> None:
    x, y = digits_small[0], digits_small[1]
    assert source_rate(0.1, num_classes=10) == pytest.approx(0.1 / 0.9)
    for trojan in zoo("digits", poison_rate=0.1, class_poison_rate=0.5)[:4]:
        xp, yp, flags = poison_with_cover(x, y, trojan, cover_rate=0.05,
                                          generator=torch.Generator().manual_seed(0))
        assert bool((yp[flags] == trojan.target).all())
        changed = (xp != x).flatten(1).any(1)  # stamped images
        covered = changed & ~flags
        if trojan.universal:  # 10% of the whole training set, from every other class
            assert abs(int(flags.sum()) - 0.1 * len(y)) <= 0.01 * len(y)
            assert len(y[flags].unique()) == 9
            assert int(covered.sum()) == 0
        else:  # half of the source class; cover: other classes, stamped, true label kept
            src = int(trojan.source) if trojan.source is not None else -1
            assert int(flags.sum()) == round(0.5 * int((y == src).sum()))
            assert bool((y[flags] == src).all())
            assert abs(int(covered.sum()) - round(0.05 * len(y))) <= 3
            assert bool((y[covered] != src).all())
            assert bool((y[covered] != trojan.target).all())
            torch.testing.assert_close(yp[covered], y[covered])


def test_cache_key_follows_the_trigger_content() -> None:
    t = zoo("digits")[0]
    icon = t.trigger.icon.clone()
    icon[0, 0, 0] = 1 - icon[0, 0, 0]
    other = dataclasses.replace(t, trigger=dataclasses.replace(t.trigger, icon=icon))
    assert trojan_params(t) == trojan_params(zoo("digits")[0])
    assert trojan_params(other)["trigger_sha"] != trojan_params(t)["trigger_sha"]


@pytest.mark.parametrize(("asr", "drop", "ok"), [
    (0.90, 0.01, True), (1.0, -0.02, True), (0.899, 0.0, False), (1.0, 0.0101, False),
    (0.5, 0.05, False)])
def test_meets_target(asr: float, drop: float, ok: bool) -> None:
    assert meets_target(asr, drop) is ok


def test_tiny_zoo_on_digits_trains_caches_and_reports(tmp_path: Path) -> None:
    all_t = zoo("digits")
    pick = [next(t for t in all_t if t.trigger.kind == "patch" and t.trigger.position),
            next(t for t in all_t if t.trigger.kind == "style" and t.universal),
            next(t for t in all_t if t.trigger.kind == "natural" and not t.universal)]
    cfg = ZooConfig(dataset="digits", n_train=None, train=TrainConfig(epochs=12, lr=5e-3),
                    poison_rate=0.1, class_poison_rate=0.5, cover_rate=0.05, n_clean=2)
    store = Store(tmp_path / "cache")
    run = run_zoo(cfg, store, trojans=pick)
    assert [m.name for m in run.metrics] == [t.name for t in pick]
    assert all(not e["cached"] for e in run.log.entries) and len(run.log.entries) == 5
    for m in run.metrics:
        assert 0 <= m.asr <= 1 and m.n_asr > 0 and 0.7 < m.clean_acc <= 1
        assert m.drop == pytest.approx(m.clean_ref_acc - m.clean_acc)
        assert m.meets_target == meets_target(m.asr, m.drop)
        assert (m.nonsource_flip is None) == m.universal
    assert run.metrics[0].asr >= 0.9  # a 3x3 corner patch on 8x8 digits is learnt outright
    # a clean model does not answer the trigger: the poisoning implanted it
    d = data.load("digits")
    clean_m = zoo_metrics([(run.clean[0][0], pick[0])], [run.clean[1][0]],
                          test=Tensors(d.x_test, d.y_test, "digits-test"), seed=0)
    assert clean_m[0].asr < run.metrics[0].asr - 0.5
    again = run_zoo(cfg, store, trojans=pick)
    assert all(e["cached"] for e in again.log.entries)
    assert [k for _, k in again.models] == [k for _, k in run.models]
    assert [m.to_dict() for m in again.metrics] == [m.to_dict() for m in run.metrics]
    assert (store.folder("implant", run.models[0][1])
            / "trigger.safetensors").exists()
    table = format_table(run.metrics)
    assert table.count("\n") == 4 and pick[0].name in table
    assert len(missed(run.metrics)) == sum(not m.meets_target for m in run.metrics)



def test_the_pilot_zoo_shares_no_trigger_with_the_scored_zoo() -> None:
    """Hyper-parameters tuned on the pilot zoo are scored on the zoo: the two must not share a
    bank entry (a shared trigger would make the pilot a preview of the scored trojans)."""
    from eisbench.trojans.zoo import PILOT_TABLE, ZOO_TABLE, zoo

    scored = {(e.kind, e.index) for e in ZOO_TABLE}
    pilot = [(e.kind, e.index) for e in PILOT_TABLE]
    assert len(set(pilot)) == len(pilot) == 3 and not scored & set(pilot)
    assert {k for k, _ in pilot} == {"patch", "style", "natural"}
    made = zoo("digits", table=PILOT_TABLE)
    assert [t.target for t in made] == [e.target for e in PILOT_TABLE]
    assert {t.name for t in made}.isdisjoint({t.name for t in zoo("digits")})
