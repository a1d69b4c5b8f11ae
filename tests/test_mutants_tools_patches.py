"""Tests that kill plausible wrong versions of eisbench.tools' adversarial patches and SNAFUE (see
benchmarks/mutation.py).

Patch geometry and success by hand, fit_patches as Adam on the mean cross-entropy plus a
penalty, optimised patches sorted by success, patch sides on non-square images, and SNAFUE's
natural patches, embeddings and search against the pipeline written out here.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mutants_tools_helpers import Cases, Counting, X, _g, _lin, _mlp, _same
from torch import nn

from eisbench.models import features
from eisbench.tools import TOOLS
from eisbench.tools import adversarial_patch as ap
from eisbench.tools import snafue as sn

# --- patches --------------------------------------------------------------------------------------

def test_patch_geometry_by_hand() -> None:
    assert [ap.default_side(s) for s in [(1, 28, 28), (1, 8, 8), (1, 40, 12), (1, 2, 2)]] == [
        7, 3, 3, 2]
    assert ap.default_side((3, 10, 30), 0.5) == 5 and ap.default_side((1, 28, 28), 1 / 3) == 9
    rows, cols = ap.random_positions(4, 50, (1, 5, 9), 3, generator=_g(2))
    g = _g(2)
    assert torch.equal(rows, torch.randint(0, 3, (4, 50), generator=g))
    assert torch.equal(cols, torch.randint(0, 7, (4, 50), generator=g))
    assert (rows.max(), cols.max(), rows.min(), cols.min()) == (2, 6, 0, 0)
    p = torch.rand(2, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    c = ap.centred(p, (1, 8, 7))
    assert c.dtype == torch.float64 and not c.requires_grad
    assert torch.equal(c[:, :, 2:5, 2:4], p.detach()) and torch.isclose(c.sum(), p.sum())
    x64 = torch.rand(3, 1, 8, 7, dtype=torch.float64)
    q = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    assert ap.paste(x64, q, rows[:2, :3], cols[:2, :3].clamp(max=4)).dtype == torch.float64
    with pytest.raises(ValueError, match=r"^rows and cols must be \(R, B\) = \(2, 3\), got "
                                         r"\(2, 4\)"):
        ap.paste(torch.zeros(3, 1, 8, 8), p.float(), rows[:2, :4], cols[:2, :3])


def test_patch_success_by_hand() -> None:
    net = _lin(torch.eye(16)[:1].expand(2, 16) * torch.tensor([[0.0], [1.0]]),
               torch.tensor([0.5, 0.0]))  # class 1 iff pixel (0, 0) > 0.5
    patches = torch.zeros(3, 1, 3, 3)
    patches[0], patches[1, 0, 0, 0] = 1.0, 1.0
    x = torch.zeros(20, 1, 4, 4)
    rows, cols = ap.random_positions(3, 20, (1, 4, 4), 3, generator=_g(3))
    corner = ((rows == 0) & (cols == 0)).float().mean(1)
    want = corner * torch.tensor([1.0, 1.0, 0.0])
    for chunk in (2048, 2):
        torch.testing.assert_close(ap.patch_success(net, patches, x, target=1, generator=_g(3),
                                                    chunk=chunk), want)
    data = torch.rand(150, 1, 4, 4, generator=_g(1))
    for target, imgs in [(1, data), (0, data), (0, data / 2)]:  # images of the target are
        g = _g(4)  # left out, unless all are (the last: all of class 0)
        pick = imgs[torch.randperm(150, generator=g)[:128]]
        keep = net(pick).argmax(1) != target
        want = ap.patch_success(net, patches, pick[keep] if keep.any() else pick, target=target,
                                generator=g)
        torch.testing.assert_close(ap.evaluate_patches(net, patches, imgs, target=target,
                                                       generator=_g(4)), want)


def test_fit_patches_is_adam_on_the_mean_cross_entropy_plus_penalty() -> None:
    net = Counting(_mlp())
    raw0 = torch.randn(2, 1, 3, 3, generator=_g(5))

    def penalty(p: torch.Tensor) -> torch.Tensor:
        return 0.3 * p.pow(2).sum()

    raw = raw0.clone().requires_grad_(True)
    got = ap.fit_patches(net, lambda: torch.sigmoid(raw), [raw], target=2, data=X, steps=3,
                         generator=_g(6), lr=0.2, batch_size=4, penalty=penalty)
    assert net.calls == [(8, True)] * 3  # 3 steps of 2 patches x 4 images
    ref, g = raw0.clone().requires_grad_(True), _g(6)
    opt = torch.optim.Adam([ref], lr=0.2)
    for _ in range(3):
        p = torch.sigmoid(ref)
        idx = torch.randint(0, 40, (2, 4), generator=g)
        rows, cols = ap.random_positions(2, 4, (1, 8, 8), 3, generator=g)
        xs = ap.paste(X[idx], p, rows, cols).flatten(0, 1)
        loss = 2 * F.cross_entropy(net.net(xs), torch.full((8,), 2)) + penalty(p)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(got, torch.sigmoid(ref).detach())
    assert ap.fit_patches(net, lambda: torch.sigmoid(raw), [raw], target=0, data=X, steps=1,
                          batch_size=1, generator=_g()).shape == (2, 1, 3, 3)
    cases: Cases = [({"steps": 0}, "^steps and batch_size must be >= 1$"),
                    ({"batch_size": 0}, "^steps and batch_size must be >= 1$"),
                    ({"data": X[0]}, r"^data must be clean images \(N, C, H, W\), got "
                                     r"\(1, 8, 8\)")]
    base: dict[str, Any] = {"target": 0, "data": X, "generator": _g()}
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            ap.fit_patches(net, lambda: torch.sigmoid(raw), [raw], **(base | kw))


def test_adversarial_patch_is_optimised_uniform_starts_sorted_by_success() -> None:
    net = _mlp()
    kw: dict[str, Any] = {"steps": 2, "lr": 0.3, "batch_size": 3, "side": 4}
    patches, success = ap.optimise_patches(net, target=1, data=X, n=3, generator=_g(2), **kw)
    g = _g(2)
    raw = torch.logit(torch.rand(3, 1, 4, 4, generator=g) * 0.9 + 0.05).requires_grad_(True)
    ref = ap.fit_patches(net, lambda: torch.sigmoid(raw), [raw], target=1, data=X, generator=g,
                         **{k: v for k, v in kw.items() if k != "side"})
    _same((patches, success), (ref, ap.evaluate_patches(net, ref, X, target=1, generator=g)))
    still, _ = ap.optimise_patches(net, target=1, data=X, n=3, generator=_g(2), steps=1, lr=0.0)
    torch.testing.assert_close(still, torch.rand(3, 1, 3, 3, generator=_g(2)) * 0.9 + 0.05)
    order = torch.argsort(success, descending=True, stable=True)
    _same(ap.adversarial_patch(net, target=1, data=X, n=3, generator=_g(2), **kw),
          ap.centred(patches[order], (1, 8, 8)))
    assert ap.optimise_patches(net, target=1, data=X, n=1, generator=_g(), side=1, steps=1
                               )[0].shape == (1, 1, 1, 1)
    base: dict[str, Any] = {"target": 0, "data": X, "n": 2, "generator": _g()}
    cases: Cases = [({"n": 0}, "^n must be >= 1, got 0$"),
                    ({"side": 9}, r"^patch side 9 does not fit images of shape \(1, 8, 8\)$"),
                    ({"side": 0}, "^patch side 0 does not fit")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            ap.optimise_patches(net, **(base | bad))


def test_patch_side_must_fit_the_shorter_side_of_non_square_images() -> None:
    wide = torch.rand(4, 1, 4, 8, generator=_g(2))  # (N, C, H=4, W=8)
    with pytest.raises(ValueError,
                       match=r"^patch side 6 does not fit images of shape \(1, 4, 8\)$"):
        ap.optimise_patches(nn.Sequential(nn.Flatten(), nn.Linear(32, 3)), target=1, data=wide,
                            n=1, generator=_g(), side=6, steps=1)


# --- SNAFUE ---------------------------------------------------------------------------------------

def test_natural_patches_and_embedding_by_hand() -> None:
    src = torch.rand(5, 1, 6, 7, generator=_g(1))
    src[3:] = 0.05  # two images without ink
    bank = sn.natural_patches(src, m=6, side=3, generator=_g(2))
    g = _g(2)
    sizes, which = torch.randint(3, 7, (12,), generator=g), torch.randint(0, 5, (12,), generator=g)
    u, crops = torch.rand(12, 2, generator=g), []
    for i in range(12):
        sz = int(sizes[i])
        r, c = int(u[i, 0] * (7 - sz)), int(u[i, 1] * (8 - sz))
        crop = src[int(which[i]), :, r:r + sz, c:c + sz][None]
        crops.append(F.interpolate(crop, size=(3, 3), mode="bilinear", antialias=True,
                                   align_corners=False)[0].clamp(0, 1) if sz > 3 else crop[0])
    inked = [c for c in crops if c.max() >= 0.1] + [c for c in crops if c.max() < 0.1]
    assert len(inked) == 12 and inked[5].max() >= 0.1 and inked[-1].max() < 0.1
    _same(bank, torch.stack(inked[:6]))
    net = _mlp()
    hosts, patches = X[:2], torch.rand(3, 1, 3, 3, generator=_g(3))
    rows, cols = torch.tensor([[0, 5]]), torch.tensor([[2, 1]])
    feats, probs = sn.embed(net, patches, hosts, rows, cols, target=2, chunk=3)
    whole = sn.embed(net, patches, hosts, rows, cols, target=2)  # chunks change the sums' order
    torch.testing.assert_close((feats, probs), whole, rtol=1e-5, atol=1e-6)
    for i in range(3):
        xs = ap.paste(hosts, patches[i:i + 1], rows, cols)[0]
        torch.testing.assert_close(feats[i], (features(net, xs) - features(net, hosts)).mean(0))
        torch.testing.assert_close(probs[i], net(xs).softmax(1)[:, 2].mean())


def test_snafue_search_is_the_documented_pipeline() -> None:
    net, nat = _mlp(), torch.rand(3, 1, 10, 10, generator=_g(7))
    kw: dict[str, Any] = {"bank_size": 20, "adversarial": 2, "hosts": 4, "pool": 3, "steps": 2}
    res = sn.search(net, target=1, data=X, n=3, generator=_g(3), natural=nat, lr=0.2,
                    batch_size=3, side=4, **kw)
    g = _g(3)
    extra = F.interpolate(nat, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    bank = sn.natural_patches(torch.cat([X, extra.clamp(0, 1)]), m=20, side=4, generator=g)
    adv, _ = ap.optimise_patches(net, target=1, data=X, n=2, generator=g, side=4, steps=2,
                                 lr=0.2, batch_size=3)
    x = X[torch.randperm(40, generator=g)[:16]]
    keep = net(x).argmax(1) != 1
    host = (x[keep] if keep.sum() >= 4 else x)[:4]
    rows, cols = ap.random_positions(1, 4, (1, 8, 8), 4, generator=g)
    e_bank, p_bank = sn.embed(net, bank, host, rows, cols, target=1)
    e_adv, _ = sn.embed(net, adv, host, rows, cols, target=1)
    sim = F.cosine_similarity(e_adv[:, None], e_bank[None], dim=2).amax(0)
    near = torch.argsort(sim, descending=True, stable=True)[:9]
    chosen = near[torch.argsort(p_bank[near], descending=True, stable=True)][:3]
    _same(res, sn.SnafueResult(bank, adv, sim, p_bank, chosen))
    _same(TOOLS.get("snafue")(net, target=1, data=X, n=3, generator=_g(3), natural=nat, side=4,
                              **kw),
          sn.search(net, target=1, data=X, n=3, generator=_g(3), natural=nat, side=4, **kw
                    ).images((1, 8, 8)))
    few = sn.search(net, target=1, data=X, n=5, generator=_g(), bank_size=2, pool=1, steps=1)
    assert few.chosen.tolist()[2:] == few.chosen.tolist()[:3] and len(few.bank) == 2
    base: dict[str, Any] = {"target": 0, "data": X, "generator": _g()}
    cases: Cases = [({"data": X[0]}, r"^data must be clean images \(N, C, H, W\)"),
                    ({"pool": 0}, "^n, bank_size, adversarial, hosts and pool must be >= 1$"),
                    ({"hosts": 0}, "^n, bank_size, adversarial, hosts and pool must be >= 1$"),
                    ({"natural": torch.rand(2, 3, 8, 8)}, "^natural must be images with 1 "
                                                          r"channel\(s\), got \(2, 3, 8, 8\)$")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            sn.search(net, **(base | bad))


@pytest.mark.parametrize("arg", ["n", "bank_size", "adversarial", "hosts", "pool"])
def test_snafue_refuses_zero_of_any_count(arg: str) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="^n, bank_size, adversarial, hosts and pool must be"):
        counts: dict[str, Any] = {arg: 0}
        sn.search(net, target=1, data=X, generator=_g(), **counts)
