"""Wang et al.'s cost schedule, TABOR's published terms and score, and the scan's new fields,
by hand on stubs and tiny tensors.

Each test names the plausible wrong version it kills: a cost set after the first success, a
counter that is not reset by a failure, the down multiplier equal to the up one, an early stop
without the up/down flags, TABOR's pattern penalties taken inside the mask instead of outside,
the squared differences taken as absolute ones, a weight in the wrong slot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eisbench.tools import cost_schedule as cs
from eisbench.tools import scan as sc
from eisbench.tools import tabor_terms as tt
from eisbench.tools import trigger_reconstruction as tr

T, F_ = torch.tensor([True]), torch.tensor([False])


def _run(state: cs.CostState, oks: str, l1: float = 5.0) -> list[float]:
    """Feed checks ("1": success, "0": failure); the cost after each."""
    out = []
    for c in oks:
        state.check(T if c == "1" else F_, torch.tensor([l1]))
        out.append(float(state.cost[0]))
    return out


def test_cost_is_zero_until_patience_successes_in_a_row() -> None:
    s = cs.CostSchedule("t", patience=3, init_cost=0.5, early_stop=False)
    assert _run(cs.CostState(s, 1), "11011") == [0.0] * 5  # a failure restarts the count
    st = cs.CostState(s, 1)
    assert _run(st, "111") == [0.0, 0.0, 0.5]  # set at the 3rd, not the 1st
    assert int(st.up_count[0]) == 1 and not bool(st.up_flag[0])  # the setting check counts
    assert _run(cs.CostState(cs.WANG2019, 1), "1" * 10)[-2:] == [0.0, 1e-3]


def test_cost_moves_only_after_patience_consecutive_checks_by_its_multipliers() -> None:
    s = cs.CostSchedule("t", patience=3, init_cost=1.0, up=2.0, down=8.0, early_stop=False)
    st = cs.CostState(s, 1)
    _run(st, "111")  # cost set to 1, up counter 1
    assert _run(st, "11") == [1.0, 2.0]  # 3 successes in a row since the counter restarted
    assert _run(st, "110111") == [2.0, 2.0, 2.0, 2.0, 2.0, 4.0]  # the failure resets it
    assert _run(st, "00") == [4.0, 4.0]
    assert _run(st, "0") == [0.5]  # 3 failures in a row: divided by the down multiplier
    assert bool(st.up_flag[0]) and bool(st.down_flag[0])
    assert cs.WANG2019.up == 1.5 and cs.WANG2019.down == pytest.approx(1.5 ** 1.5)
    assert (cs.WANG2019.patience, cs.WANG2019.threshold, cs.WANG2019.init_cost) == (10, 0.99, 1e-3)
    assert cs.WANG2019.early_stop_patience == 20 and cs.WANG2019.early_stop_threshold == 0.99


def test_v1_schedule_moves_at_every_check_and_fixed_schedule_never() -> None:
    st = cs.CostState(cs.EISBENCH_V1, 1)
    assert _run(st, "1")[0] == pytest.approx(1.5e-3)  # starts at init_cost, moves at once
    assert _run(st, "0")[0] == pytest.approx(1.5e-3 / 1.5 ** 1.5)
    fixed = cs.CostState(cs.TROJANZOO_TABOR, 1)
    assert _run(fixed, "1" * 30 + "0" * 30) == [1e-3] * 60


def test_early_stop_needs_both_flags_and_patience_flat_checks() -> None:
    s = cs.CostSchedule("t", patience=2, init_cost=1.0, early_stop_patience=3)
    st = cs.CostState(s, 1)
    for ok, l1 in [(1, 10.0), (1, 10.0), (1, 10.0), (1, 10.0)]:  # set, then up: up_flag
        st.check(torch.tensor([bool(ok)]), torch.tensor([l1]))
    assert bool(st.up_flag[0]) and not bool(st.stopped[0])
    for _ in range(6):  # flat, but never down: keeps running
        st.check(T, torch.tensor([10.0]))
    assert not bool(st.stopped[0]) and int(st.stop_count[0]) >= 3
    _run(st, "00")  # down flag
    assert bool(st.down_flag[0]) and not bool(st.stopped[0])
    st.check(F_, torch.tensor([1.0]))  # the counter was >= 3 and both flags are up now
    assert bool(st.stopped[0])
    cost = float(st.cost[0])
    assert _run(st, "1111") == [cost] * 4  # a stopped trigger is left alone
    st2 = cs.CostState(s, 1)
    st2.check(T, torch.tensor([10.0]))
    st2.check(T, torch.tensor([9.95]))  # < 1% better counts as flat
    st2.check(T, torch.tensor([8.0]))  # a 20% improvement resets the counter
    assert int(st2.stop_count[0]) == 0 and float(st2.best[0]) == 8.0


def test_converged_check_and_schedule_lookup() -> None:
    assert cs.converged_check([math.inf, 40.0, 20.0, 19.9, 19.9]) == 2
    assert cs.converged_check([math.inf, 40.0, 30.0]) == 3  # still dropping at the end
    assert cs.converged_check([math.inf, math.inf]) == 2  # never found
    assert cs.get_schedule(None, "neural-cleanse") is cs.WANG2019
    assert cs.get_schedule(None, "tabor") is cs.TROJANZOO_TABOR
    assert cs.get_schedule("eisbench-v1", "tabor") is cs.EISBENCH_V1
    with pytest.raises(ValueError, match="unknown cost schedule 'x'"):
        cs.get_schedule("x", "tabor")


def test_tabor_terms_by_hand() -> None:
    m = torch.tensor([[0.0, 1.0], [0.5, 0.0]]).view(1, 1, 2, 2)
    p = torch.tensor([[1.0, 1.0], [0.5, 0.2]]).view(1, 1, 2, 2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, lab, t = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(0)), \
        torch.tensor([0, 2]), torch.tensor([1])
    terms = tt.tabor_terms(net, x, lab, m, p, t)[0]
    # outside the mask q = (1 - m) * p = [[1, 0], [0.25, 0.2]]
    expect = [1.5 + 1.25,  # |m|_1 + |m|_2^2
              1.45 + (1 + 0.0625 + 0.04),  # |q|_1 + |q|_2^2
              (0.25 + 1.0) + (1.0 + 0.25),  # vertical (0.5-0)^2, (0-1)^2; horizontal 1, 0.25
              (0.5625 + 0.04) + (1.0 + 0.0025)]  # q's squared neighbour differences
    torch.testing.assert_close(terms[:4], torch.tensor(expect))
    block = F.cross_entropy(net((1 - m[0]) * x), lab)
    over = F.cross_entropy(net(m * p), t)
    torch.testing.assert_close(terms[4:], torch.stack([block, over]).detach(), rtol=0,
                               atol=1e-6)
    assert tt.TaborWeights().vector().tolist() == pytest.approx([1e-6, 1e-5, 1e-7, 1e-8, 0, 1e-2])
    assert float(tt.tabor_terms(net, x, lab, m, p, t, with_block=False)[0, 4].detach()) == 0


def test_tabor_objective_adds_the_weighted_terms_to_neural_cleanse() -> None:
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    x, lab = torch.rand(3, 2, 2, 2, generator=g), torch.tensor([0, 1, 2])
    m, p = torch.rand(2, 1, 2, 2, generator=g), torch.rand(2, 2, 2, 2, generator=g)
    t, lam = torch.tensor([1, 2]), torch.tensor([0.1, 0.3])
    w = tt.TaborWeights(0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    nc, asr = tr.RECONSTRUCTION_METHODS.get("neural-cleanse")(net, x, lab, m, p, t, lam, None)
    loss, asr2 = tr.RECONSTRUCTION_METHODS.get("tabor")(net, x, lab, m, p, t, lam, w)
    torch.testing.assert_close(loss, nc + tt.tabor_terms(net, x, lab, m, p, t) @ w.vector())
    stamped = tr._stamp(x, m, p)
    hit = (net(stamped).argmax(1) == t.repeat_interleave(3)).float().view(2, 3).mean(1)
    torch.testing.assert_close(asr, hit)
    torch.testing.assert_close(asr2, hit)


def test_tabor_score_by_hand() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    lin = net[1]
    assert isinstance(lin, nn.Linear)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
        lin.bias.zero_()
    x = torch.tensor([[1.0, 0, 0, 0.2], [0.3, 0, 0, 1.0]]).view(2, 1, 2, 2)
    pred = net(x).argmax(1)  # [0, 1]
    m = torch.tensor([[0.0, 0], [0, 1.0]]).view(1, 1, 2, 2)  # removes pixel 3: image 1 -> 0
    p = torch.ones(1, 1, 2, 2)
    a = tt.tabor_score(net, x, pred, m, p, torch.tensor([0.5]))
    # size 1/4, TV of m*p: 1 + 1 over d^2 = 4, acc_att 0.5, acc_ori 1/2
    expect = math.log(0.25 + 1e-6) + math.log(0.5 + 1e-6) - 2 * math.log(0.5 + 1e-6)
    assert float(a[0]) == pytest.approx(expect, rel=1e-5)


def _scan_res() -> sc.ScanResult:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    return sc.scan(net, x, steps=6, batch_size=4, check_every=2, seed=1, threshold=0.5,
                   schedule=None)  # the method's published schedule


def test_scan_keeps_curves_and_tabor_score_and_round_trips(tmp_path: Path) -> None:
    res = _scan_res()
    assert res.schedule == "wang2019" and len(res.tabor_score) == 3
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))  # the default: the benchmark's recipe
    assert sc.scan(net, torch.rand(8, 1, 4, 4), steps=2).schedule == "eisbench-v1"
    assert (list(res.tabor_index), list(res.tabor_flagged)) == sc.mad_anomaly(
        list(res.tabor_score), threshold=0.5)
    for c in res.curves:
        assert c is not None and c.step == (2, 4, 6) and c.cost == (0.0, 0.0, 0.0)
    sc.save_scan(res, tmp_path)
    back = sc.load_scan(tmp_path)
    assert back.curves == res.curves and back.tabor_score == res.tabor_score
    assert back.tabor_index == res.tabor_index and back.tabor_flagged == res.tabor_flagged
    assert back.schedule == "wang2019" and back.tabor_suspect == res.tabor_suspect
    meta = json.loads((tmp_path / "scan.json").read_text())
    assert meta["format"] == 2 and meta["classes"][0]["curve"]["step"] == [2, 4, 6]
    for row in meta["classes"]:  # an old scan: no format, schedule, curves or TABOR score
        for k in ("curve", "converged_step", "tabor_score", "tabor_index", "tabor_flagged"):
            row.pop(k)
    for k in ("format", "schedule", "tabor_flagged", "tabor_suspect"):
        meta.pop(k)
    (tmp_path / "scan.json").write_text(json.dumps(meta))
    old = sc.load_scan(tmp_path)
    assert old.schedule == "eisbench-v1" and old.tabor_score == () and old.curves == (None,) * 3
    assert old.tabor_suspect is None and old.l1 == res.l1
    (tmp_path / "scan.json").write_text(json.dumps(meta | {"format": 3}))
    with pytest.raises(ValueError, match="scan format 3; this eisbench reads up to 2"):
        sc.load_scan(tmp_path)


def test_tabor_under_eisbench_v1_is_the_earlier_measured_tabor() -> None:
    """``"tabor"`` with eisbench's schedule runs the terms that schedule was measured with
    (``"tabor-v1"``): the scan's, the edit bench's and the tool's defaults agree."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(3))

    def run(method: str) -> torch.Tensor:
        rec = tr.reconstruct_triggers(net, targets=[1, 2], data=x, method=method, steps=4,
                                      batch_size=4, schedule="eisbench-v1",
                                      generator=torch.Generator().manual_seed(0))
        return torch.stack([r.mask for r in rec])

    torch.testing.assert_close(run("tabor"), run("tabor-v1"), rtol=0, atol=0)
    published = tr.reconstruct_triggers(net, targets=[1, 2], data=x, method="tabor", steps=4,
                                        batch_size=4, schedule="trojanzoo-tabor",
                                        generator=torch.Generator().manual_seed(0))
    assert not torch.equal(torch.stack([r.mask for r in published]), run("tabor-v1"))
