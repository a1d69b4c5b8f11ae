"""Tests that kill plausible wrong versions of eisbench.edit's latent adversarial training
(see benchmarks/mutation.py): the projections and radii by hand, latent PGD against a
reference written out here, the LAT loss and its settings' bounds, and the training loops with
their budget.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mutants_edit_helpers import close, same_params, tiny, ul
from torch import nn

from eisbench.edit import lat as lt
from eisbench.training import Batch, TrainConfig, fit

# --- latent adversarial training -----------------------------------------------------------

def test_projection_norms_and_radii_by_hand() -> None:
    d = torch.tensor([[0.3, 0.4], [0.03, 0.04], [0.0, 0.0]], dtype=torch.float64).view(3, 2, 1, 1)
    out = lt.project_latent(d, 0.3, "l2")
    assert abs(float(out[0].norm()) - 0.3) < 1e-12
    assert torch.equal(out[0].flatten() / out[0].norm(), d[0].flatten() / d[0].norm())
    assert torch.equal(out[1:], d[1:])  # inside the ball: unchanged
    lin = torch.tensor([[-0.5, 0.1, 0.3]], dtype=torch.float64)
    assert torch.equal(lt.project_latent(lin, 0.2, "linf"),
                       torch.tensor([[-0.2, 0.1, 0.2]], dtype=torch.float64))
    t = torch.tensor([[3.0, -4.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    close(lt._per_example(t, "l2"), torch.tensor([5.0, 1.0]))
    close(lt._per_example(t, "linf"), torch.tensor([4.0, 1.0]))
    close(lt._scale(t, "l2"), torch.tensor(3.0))
    close(lt._scale(t, "linf"), torch.tensor(26 / 4).sqrt())
    net, x, _ = tiny()
    rad, acts = lt.radii(net, x, (lt.LatentBound("penultimate", eps=0.7, relative=False),
                                  lt.LatentBound("body.0", eps=0.5, norm="linf")))
    with torch.no_grad():
        a0 = net.body[0](x)  # type: ignore[index]
    assert rad == {"body.4": 0.7, "body.0": pytest.approx(0.5 * float(a0.pow(2).mean().sqrt()))}
    close(acts["body.0"], a0)


def _ref_latent_pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    bounds: list[tuple[str, float, str, bool]], *, steps: int, frac: float,
                    start: bool, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Latent PGD written out: radii from the clean activations, uniform start, normalised
    (L2) or sign (Linf) ascent steps of the summed cross-entropy, per-example projection."""
    mods = dict(net.named_modules())
    acts: dict[str, torch.Tensor] = {}
    d: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o.detach()))
             for n, *_ in bounds]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()

    def proj(v: torch.Tensor, r: float, norm: str) -> torch.Tensor:
        if norm == "linf":
            return v.clamp(-r, r)
        n = v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))
        return torch.where(n > r, v * r / n, v)

    rad = {n: (eps * float(acts[n].flatten(1).norm(dim=1).mean() if nm == "l2"
                           else acts[n].pow(2).mean().sqrt()) if rel else eps)
           for n, eps, nm, rel in bounds}
    for n, _, nm, _ in bounds:
        u = torch.rand(acts[n].shape, generator=gen) * 2 - 1
        d[n] = proj(u * rad[n], rad[n], nm) if start else torch.zeros_like(acts[n])
    for _ in range(steps):
        d = {n: v.clone().requires_grad_(True) for n, v in d.items()}
        hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n, d=d: o + d[n]) for n in d]
        loss = F.cross_entropy(net(x), y, reduction="sum")
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(loss, list(d.values()))
        for (n, _, nm, _), g in zip(bounds, grads, strict=True):
            g = g.sign() if nm == "linf" else g / g.flatten(1).norm(dim=1).view(
                -1, *[1] * (g.dim() - 1))
            d[n] = proj(d[n].detach() + frac * rad[n] * g, rad[n], nm)
    return d


def test_latent_pgd_matches_the_written_out_algorithm() -> None:
    net, x, y = tiny()
    net.train()
    cfg = lt.LatConfig(bounds=(lt.LatentBound("body.0", eps=0.3),
                               lt.LatentBound("penultimate", eps=0.2, norm="linf")),
                       steps=2, step_frac=0.4)
    got, rad = lt.latent_pgd(net, x, y, cfg=cfg, generator=torch.Generator().manual_seed(3))
    net.eval()
    want = _ref_latent_pgd(net, x, y, [("body.0", 0.3, "l2", True), ("body.4", 0.2, "linf", True)],
                           steps=2, frac=0.4, start=True, gen=torch.Generator().manual_seed(3))
    assert list(got) == ["body.0", "body.4"] and not any(v.requires_grad for v in got.values())
    for n in want:
        close(got[n], want[n], rtol=1e-4, atol=1e-6)
    assert set(rad) == {"body.0", "body.4"} and all(p.grad is None for p in net.parameters())
    cfg = lt.LatConfig(bounds=(lt.LatentBound("body.3", eps=0.25, relative=False),),
                       steps=1, step_frac=0.5, random_start=False)
    got, _ = lt.latent_pgd(net, x, y, cfg=cfg, generator=torch.Generator())
    want = _ref_latent_pgd(net, x, y, [("body.3", 0.25, "l2", False)], steps=1, frac=0.5,
                           start=False, gen=torch.Generator())
    close(got["body.3"], want["body.3"], rtol=1e-4, atol=1e-6)


def test_lat_loss_adversary_and_config_lookup() -> None:
    net, x, y = tiny()
    d = 0.5 * torch.randn(24, 6, generator=torch.Generator().manual_seed(1))
    h = net.body[4].register_forward_hook(lambda m, i, o: o + d)  # type: ignore[index]
    adv = F.cross_entropy(net(x), y)
    h.remove()
    clean = F.cross_entropy(net(x), y)
    for w in (0.25, 0.0):
        cfg = lt.LatTrainConfig(lat=lt.LatConfig(bounds=(lt.LatentBound("body.4"),),
                                                 clean_weight=w))
        got = lt.lat_loss(net, Batch(x, hidden={"body.4": d}), y, cfg=cfg)
        close(got, w * clean + (1 - w) * adv)
    lat = lt.LatConfig(bounds=(lt.LatentBound("body.0", eps=0.3),), steps=2)
    b = lt.latent_adversary(net, x, y, cfg=lt.LatTrainConfig(lat=lat),
                            generator=torch.Generator().manual_seed(7))
    want, _ = lt.latent_pgd(net, x, y, cfg=lat, generator=torch.Generator().manual_seed(7))
    assert b.x is x and list(b.hidden) == ["body.0"]
    close(b.hidden["body.0"], want["body.0"], rtol=0, atol=0)
    assert lt._lat_of(TrainConfig()) is lt.DEFAULT_LAT
    assert lt._lat_of(lt.LatTrainConfig(lat=lat)) is lat
    with pytest.raises(TypeError, match="needs a LatConfig as cfg.lat, got int"):
        lt._lat_of(SimpleNamespace(lat=3))  # type: ignore[arg-type]


def test_lat_settings_are_validated_at_their_bounds() -> None:
    ok: list[dict[str, Any]] = [{"eps": 0.0}, {"eps": 0.5}, {"norm": "linf"}]
    for kw in ok:
        lt.LatentBound("body.1", **kw)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"eps": -0.1}, "finite and >= 0, got -0.1"), ({"eps": float("inf")}, "inf"),
        ({"eps": float("nan")}, "nan"), ({"norm": "L2"}, "one of")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            lt.LatentBound("body.1", **kw)
    ok = [{"steps": 1}, {"step_frac": 0.5}, {"clean_weight": 0.0}, {"clean_weight": 0.99}]
    for kw in ok:
        lt.LatConfig(**kw)
    steps = "^steps must be >= 1 and step_frac > 0$"
    bad = [({"steps": 0}, steps), ({"step_frac": 0.0}, steps),
           ({"clean_weight": 1.0}, r"clean_weight must be in \[0, 1\), got 1.0"),
           ({"bounds": ()}, "^LAT needs at least one latent bound$")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            lt.LatConfig(**kw)


def test_lat_finetune_and_lat_train_run_the_loop_with_their_budget() -> None:
    net, x, y = tiny()
    lat = lt.LatConfig(bounds=(lt.LatentBound("body.0", eps=0.3),), steps=1)
    got = lt.lat_finetune(net, x, y, lat=lat, cfg=ul.FinetuneConfig(
        steps=3, batch_size=8, lr=3e-3, weight_decay=1e-2))
    ref = copy.deepcopy(net)
    fit(ref, x, y, cfg=lt.LatTrainConfig(batch_size=8, lr=3e-3, weight_decay=1e-2,
                                         schedule="constant", lat=lat), seed=0, steps=3)
    same_params(got, ref)
    same_params(net, tiny()[0])  # the input model is untouched
    for kw in ({}, dict(epochs=1, batch_size=16, lr=5e-3, seed=2)):
        fresh, ref = tiny()[0], tiny()[0]
        assert lt.lat_train(fresh, x, y, lat=lat, **kw) is fresh  # type: ignore[arg-type]
        full = dict(epochs=5, batch_size=128, lr=1e-3, seed=0) | kw
        seed = full.pop("seed")
        fit(ref, x, y, cfg=lt.LatTrainConfig(schedule="constant", lat=lat, **full), seed=seed)  # type: ignore[arg-type]
        same_params(fresh, ref)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        lt.lat_train(net, x, y, lat=lat, epochs=0)
