"""Tests that kill plausible wrong versions of eisbench.tools' trigger reconstruction and the scan
built on it (see benchmarks/mutation.py).

The MAD anomaly rule, the scan result's text and round trip through disk, the stamp, the
objectives and the attack success by hand, and the reconstruction loop's validation, batches
and best-mask bookkeeping (not its optimisation schedule).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mutants_tools_helpers import Cases, Counting, X, _g, _lin, _mlp, _same

from eisbench.tools import TOOLS
from eisbench.tools import scan as sc
from eisbench.tools import tabor_terms as tt
from eisbench.tools import trigger_reconstruction as tr

# --- scan -----------------------------------------------------------------------------------------

def _recs(l1: list[float], success: list[float]) -> tuple[tr.Reconstruction, ...]:
    out = []
    for k, (v, s) in enumerate(zip(l1, success, strict=True)):
        m = torch.zeros(1, 4, 4)
        m[0, k, k:] = 0.9
        out.append(tr.Reconstruction(target=k, method="neural-cleanse", mask=m,
                                     pattern=torch.full((1, 4, 4), 0.1 * k), l1=v, success=s,
                                     bbox=tr.mask_bbox(m)))
    return tuple(out)


def test_mad_anomaly_strict_threshold_and_small_side() -> None:
    index, flagged = sc.mad_anomaly([1.0, 2.0, 4.0, 4.0, 9.0], threshold=1.0)
    torch.testing.assert_close(torch.tensor(index), torch.tensor([3, 2, 0, 0, 5]) / (1.4826 * 2))
    assert flagged == [0]
    assert sc.mad_anomaly([1.0, 2.0, 4.0, 4.0, 9.0], threshold=index[0])[1] == []
    assert sc.mad_anomaly([1.0, 3.0]) == ([1 / 1.4826, 1 / 1.4826], [])
    assert sc.mad_anomaly([0.1, 0.2, 0.4])[0] == pytest.approx([0.1 / 0.14826, 0, 0.2 / 0.14826])
    assert sc.mad_anomaly([2.0, 2.0, 2.0, 9.0])[0] == [0.0, 0.0, 0.0, math.inf]
    with pytest.raises(ValueError, match="^the anomaly index needs at least two values$"):
        sc.mad_anomaly([1.0])


def test_scan_result_prints_serialises_and_round_trips(tmp_path: Path) -> None:
    recs = _recs([2.0, 10.0, 12.0, 10.0], [1.0, 0.5, 0.995, 0.98])
    idx, flagged = sc.mad_anomaly([r.l1 for r in recs])
    res = sc.ScanResult("neural-cleanse", recs, tuple(idx), tuple(flagged), 0)
    assert res.l1 == (2.0, 10.0, 12.0, 10.0) and res.success == (1.0, 0.5, 0.995, 0.98)
    assert res.bbox == ((0, 0, 0, 3), (1, 1, 1, 3), (2, 2, 2, 3), (3, 3, 3, 3))
    assert res.trigger is recs[0] and flagged == [0]
    assert repr(res) == (
        "neural-cleanse scan of 4 classes: trojan suspected: class 0 (anomaly index 5.40 > 2; "
        "mask L1 2.0 vs median 10.0); trigger at rows 0-0, cols 0-3\nanomaly index per class "
        "(* flagged, threshold 2): 0 5.40*  1 0.00  2 1.35  3 0.00")
    calm = sc.ScanResult("tabor", recs[1:], (0.0, math.inf, 0.0), (), None, threshold=2.5)
    assert calm.trigger is None and repr(calm) == (
        "tabor scan of 3 classes: no trojan detected: the smallest trigger (class 0, mask L1 "
        "10.0 vs median 10.0) has anomaly index 0.00 <= 2.5\nanomaly index per class "
        "(* flagged, threshold 2.5): 0 0.00  1 inf  2 0.00")
    d = calm.to_dict()
    assert d == {"method": "tabor", "threshold": 2.5, "median_l1": 10.0, "flagged": [],
                 "suspect": None, "bbox": None, "verdict": calm.verdict(), "format": 2,
                 "schedule": "", "tabor_flagged": [], "tabor_suspect": None, "classes": [
                     {"class": k + 1, "l1": r.l1, "success": r.success, "bbox": list(r.bbox),
                      "anomaly_index": a, "flagged": False, "trigger_found": k == 1,
                      "curve": None, "converged_step": None}
                     for k, (r, a) in enumerate(zip(recs[1:], (0.0, "inf", 0.0), strict=True))]}
    assert res.to_dict()["bbox"] == [0, 0, 0, 3] and res.to_dict()["classes"][0]["flagged"]
    sc.save_scan(res, tmp_path / "s")
    assert sc.load_scan(tmp_path / "s").suspect == 0
    path = sc.save_scan(calm, tmp_path / "s", extra={"note": 7})  # overwrites the folder
    assert path == tmp_path / "s" / "scan.json" and json.loads(path.read_text())["note"] == 7
    assert path.read_text().startswith('{\n  "method": "tabor"')  # indented for reading
    back = sc.load_scan(tmp_path / "s")
    assert (back.method, back.flagged, back.suspect, back.threshold) == ("tabor", (), None, 2.5)
    assert back.anomaly_index == calm.anomaly_index and back.l1 == calm.l1
    for a, b in zip(back.reconstructions, calm.reconstructions, strict=True):
        assert (a.target, a.method, a.success, a.bbox) == (b.target, "tabor", b.success, b.bbox)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.pattern, b.pattern)


def test_scan_is_the_mad_rule_on_reconstructions_of_every_class() -> None:
    net = _mlp(4, seed=5)
    hyper: dict[str, Any] = {"method": "tabor-v1", "steps": 3, "lr": 0.05, "lam": 0.01,
                             "batch_size": 5, "tabor": tt.TaborV1Weights(0.2, 0.3, 0.4, 0.6)}
    res = sc.scan(net, X[:20], seed=4, threshold=0.5, **hyper)
    _same(res.reconstructions, tr.reconstruct_triggers(net, targets=range(4), data=X[:20],
                                                        generator=_g(4), **hyper))
    idx, flagged = sc.mad_anomaly(res.l1, threshold=0.5)
    assert res.anomaly_index == tuple(idx) and res.flagged == tuple(flagged)
    low = min(range(4), key=lambda k: res.l1[k])
    assert res.suspect == (low if low in flagged else None) and res.method == "tabor-v1"
    assert res.threshold == 0.5
    from eisbench import data

    digits = sc.scan(_mlp(10), "digits", n=12, steps=1)
    _same(digits, sc.scan(_mlp(10), data.load("digits").x_test[:12], num_classes=10, steps=1,
                          generator=_g(0)))
    with pytest.raises(ValueError, match="the dataset has 5 classes"):
        sc.scan(net, X[:8], num_classes=5, steps=1)


# --- trigger reconstruction: helpers and contracts (not the optimisation schedule) ---------------

def test_stamp_total_variation_and_objectives_by_hand() -> None:
    g = _g(8)
    x, lab = torch.rand(3, 2, 4, 5, generator=g), torch.tensor([2, 0, 1])
    mask, pat = torch.rand(2, 1, 4, 5, generator=g), torch.rand(2, 2, 4, 5, generator=g)
    stamped = tr._stamp(x, mask, pat)
    for r in range(2):
        torch.testing.assert_close(stamped[3 * r:3 * r + 3], (1 - mask[r]) * x + mask[r] * pat[r])
    m = torch.tensor([[0.0, 1, 0], [0, 0, 2], [1, 1, 1]]).view(1, 1, 3, 3)  # rows 3 + 3, cols 4
    torch.testing.assert_close(tt.total_variation(torch.cat([m, 2 * m])), torch.tensor([10., 20]))
    net = _lin(torch.randn(3, 40, generator=g))
    t, lam = torch.tensor([1, 2]), torch.tensor([0.1, 0.2])
    w = tt.TaborV1Weights(0.3, 0.7, 0.2, 0.9)
    ce = torch.stack([F.cross_entropy(net(stamped[3 * r:3 * r + 3]), t[r].expand(3))
                      for r in range(2)])
    l1 = mask.sum((1, 2, 3))
    nc = tr.RECONSTRUCTION_METHODS.get("neural-cleanse")(net, x, lab, mask, pat, t, lam, w)[0]
    torch.testing.assert_close(nc, ce + lam * l1)
    size = l1 + 0.3 * mask.pow(2).sum((1, 2, 3)) + 0.7 * tt.total_variation(mask)
    block = torch.stack([F.cross_entropy(net(x * (1 - mask[r])), lab) for r in range(2)])
    over = F.cross_entropy(net(mask * pat), t, reduction="none")
    torch.testing.assert_close(tr.RECONSTRUCTION_METHODS.get("tabor-v1")(
        net, x, lab, mask, pat, t, lam, w)[0], ce + lam * size + 0.2 * block + 0.9 * over)


def test_success_counts_only_images_not_already_in_the_target() -> None:
    net = _lin(torch.tensor([[0.0] * 39 + [0], [0.0] * 39 + [4], [4.0] + [0] * 39]),
               torch.tensor([1.0, 0, 0]))  # clean: class 0; bright last pixel: 1; first: 2
    x = torch.rand(7, 1, 5, 8, generator=_g(1)) * 0.2
    x[:2, 0, 0, 0] = 0.9  # two images already in class 2
    mask = torch.zeros(3, 1, 5, 8)
    mask[:, 0, 4, 7] = 1.0
    pat = torch.ones(3, 1, 5, 8)
    pred = net(x).argmax(1)
    for chunk in (4096, 2):
        asr = tr._success(net, x, pred, mask, pat, torch.tensor([1, 0, 2]), device=torch.device(
            "cpu"), chunk=chunk)
        torch.testing.assert_close(asr, torch.tensor([1.0, 0.0, 0.0]))
    mask[2, 0, 4, 7], mask[2, 0, 0, 0] = 0.0, 1.0  # trigger 2 lights the first pixel instead
    assert tr._success(net, x, pred, mask, pat, torch.tensor([2, 2, 2]), device=torch.device(
        "cpu")).tolist() == [0.0, 0.0, 1.0]
    same = tr._success(net, x[2:], pred[2:], mask[:1], torch.zeros(1, 1, 5, 8),
                       torch.tensor([0]), device=torch.device("cpu"))
    assert same.tolist() == [1.0]  # every image already in the target: all of them count
    both = tr._success(net, x[2:], pred[2:], mask[:2], torch.zeros(2, 1, 5, 8),
                       torch.tensor([0, 1]), device=torch.device("cpu"))
    assert both.tolist() == [1.0, 0.0]  # decided per trigger


def test_mask_bbox_top_mass_and_trigger_images_order() -> None:
    soft = torch.full((1, 8, 8), 0.01)
    soft[0, 1, 2], soft[0, 6, 7], soft[0, 3, 3] = 0.45, 0.4, 0.3  # mass 1.76: its top 2
    assert tr.mask_bbox(soft) == (1, 2, 6, 7) and tr.mask_bbox(soft[0]) == (1, 2, 6, 7)
    assert tr.mask_bbox(torch.zeros(1, 3, 5)) == (0, 0, 2, 4)
    half = torch.zeros(1, 4, 4)
    half[0, 1, 1], half[0, 3, 3] = 0.9, 0.5  # 0.5 is not above one half
    assert tr.mask_bbox(half) == (1, 1, 1, 1)
    recs = _recs([1.0, 5.0, 3.0, 3.0], [0.5, 1.0, 1.0, 0.995])
    with torch.no_grad():
        recs[3].pattern.fill_(1.5)  # mask * pattern above 1 is clamped
    imgs = tr.trigger_images(recs)
    _same(imgs, torch.stack([recs[i].image() for i in (2, 3, 1, 0)]).clamp(0, 1))
    assert float(imgs.max()) == 1.0
    _same(tr.trigger_images(recs, threshold=0.999),
          torch.stack([recs[i].image().clamp(0, 1) for i in (2, 1, 0, 3)]))


def test_reconstruct_triggers_validates_and_honours_its_arguments() -> None:
    net = Counting(_mlp())
    cases: Cases = [({"targets": []}, "one clean image and one target"), ({"steps": 0}, "steps,"),
                    ({"batch_size": 0}, "steps,"), ({"check_every": 0}, "steps,")]
    for kw, msg in cases:
        args: dict[str, Any] = {"targets": [0], "data": X[:4], "generator": _g()} | kw
        with pytest.raises(ValueError, match=msg):
            tr.reconstruct_triggers(net, **args)
    with pytest.raises(ValueError, match="^reconstruction needs at least one clean image and one "
                                         "target$"):
        tr.reconstruct_triggers(net, targets=[0], data=X[:0], generator=_g())
    with pytest.raises(ValueError, match=r"^expected clean images \(data\) in \[0,1\], got max 2"):
        tr.reconstruct_triggers(net, targets=[0], data=X[:4] / X[:4].max() * 2, generator=_g())
    with pytest.raises(ValueError, match=r"^steps, batch_size and check_every must be >= 1$"):
        tr.reconstruct_triggers(net, targets=[0], data=X[:4], steps=0, generator=_g())
    net.calls.clear()
    recs = tr.reconstruct_triggers(net, targets=[2, 0, 2], data=X[:30], steps=7, check_every=3,
                                   batch_size=8, lr=0.0, threshold=2.0, generator=_g(3))
    assert [c for c in net.calls if c[1]] == [(24, True)] * 7  # 7 steps of 3 x 8 images
    assert net.calls.count((30, False)) == 1  # the clean predictions
    assert net.calls.count((90, False)) == 3 + 1  # 3 checks (steps 3, 6, 7), the final ASR
    pred = net(X[:30]).argmax(1)
    for r, target in zip(recs, [2, 0, 2], strict=True):
        assert (r.target, r.method, r.bbox) == (target, "neural-cleanse", tr.mask_bbox(r.mask))
        assert r.mask.shape == (1, 8, 8) and r.pattern.shape == (1, 8, 8)
        assert 0.05 <= r.mask.min() < 0.2 and 0.8 < r.mask.max() <= 0.95  # the uniform start
        assert 0.05 <= r.pattern.min() < 0.2 and 0.8 < r.pattern.max() <= 0.95  # (lr 0)
        keep = pred != target
        hit = net(r.apply(X[:30])).argmax(1) == target
        assert r.l1 == pytest.approx(float(r.mask.sum())) and r.success == pytest.approx(
            float((hit & keep).sum() / keep.sum()))
    assert not torch.equal(recs[0].mask, recs[2].mask)  # each target its own start
    again = tr.reconstruct_triggers(net, targets=[2, 0, 2], data=X[:30], steps=2, batch_size=8,
                                    lr=0.0, threshold=2.0, generator=_g(3))
    _same(again, recs)  # lr 0: no step moves the trigger
    one = tr.reconstruct_triggers(net, targets=[1], data=X[:1], steps=2, batch_size=1,
                                  generator=_g())
    assert one[0].success in (0.0, 1.0)  # a single image is a valid batch


def test_reconstruction_keeps_the_smallest_successful_mask() -> None:
    net = _mlp()

    def run(steps: int, threshold: float) -> tr.Reconstruction:
        return tr.reconstruct_trigger(net, target=1, data=X, steps=steps, check_every=3,
                                      threshold=threshold, lam=-1.0, generator=_g(2))

    grown, best, at3 = run(6, 2.0), run(6, 0.0), run(3, 2.0)  # lam < 0: the mask grows
    _same(best.mask, at3.mask)  # the first check's mask, not the last one
    assert grown.l1 > best.l1 + 1
    kw: dict[str, Any] = {"method": "tabor-v1", "steps": 4, "lr": 0.05, "lam": -1.0,
                          "batch_size": 5, "threshold": 0.0, "check_every": 2,
                          "tabor": tt.TaborV1Weights(0.2, 0.3, 0.4, 0.6)}
    _same(tr.reconstruct_trigger(net, target=2, data=X, generator=_g(1), **kw),
          tr.reconstruct_triggers(net, targets=[2], data=X, generator=_g(1), **kw))
    for name, method in (("neural-cleanse", "neural-cleanse"), ("tabor", "tabor-v1")):
        # the tools' defaults: eisbench's recipe, the one the benchmark was measured with
        kw = {"steps": 3, "lr": 0.05, "lam": 0.01, "batch_size": 5}
        out = TOOLS.get(name)(net, target=1, data=X, n=3, generator=_g(1), **kw)
        _same(out, tr.restart_images(net, target=1, data=X, n=3, method=method, generator=_g(1),
                                     device="cpu", schedule="eisbench-v1", **kw))
        _same(out, tr.trigger_images(tr.reconstruct_triggers(
            net, targets=[1] * 3, data=X, method=method, generator=_g(1),
            schedule="eisbench-v1", **kw)))
        published = {"method": "tabor"} if name == "tabor" else {}
        out = TOOLS.get(name)(net, target=1, data=X, n=3, generator=_g(1), schedule=None,
                              **published, **kw)
        _same(out, tr.restart_images(net, target=1, data=X, n=3, method=name, generator=_g(1),
                                     device="cpu", schedule=None, **kw))
