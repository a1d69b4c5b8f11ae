"""Tests that kill plausible wrong versions of eisbench.tools' decoder and feature-level
adversaries (see benchmarks/mutation.py).

The autoencoder's shapes, initialisation, training and cache by hand, and both feature-level
adversaries (generator and perturbation) against their optimisation written out here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mutants_tools_helpers import Cases, X, _g, _mlp, _same
from torch import nn

from eisbench.tools import adversarial_patch as ap
from eisbench.tools import decoder as dec

# --- decoder --------------------------------------------------------------------------------------

def test_autoencoder_shapes_init_and_training_by_hand(tmp_path: Path) -> None:
    from eisbench.runs.store import Store

    plain = dec.Autoencoder((1, 8, 8))  # latent 16, width 16
    assert plain.encode(X[:2]).shape == (2, 16) and plain.width == 16
    ae = dec.Autoencoder((2, 10, 6), latent=5, width=3)
    names = ["encoder.0", "encoder.2", "encoder.5", "stem_fc", "mid_conv", "head_conv"]
    shapes = [(3, 2, 4, 4), (6, 3, 4, 4), (5, 12), (36, 5), (6, 3, 4, 4), (3, 2, 4, 4)]
    assert {k: tuple(v.shape) for k, v in ae.state_dict().items() if k.endswith("weight")} == {
        f"{n}.weight": s for n, s in zip(names, shapes, strict=True)}
    x = torch.rand(4, 2, 10, 6, generator=_g())
    z = ae.encode(x)
    a1, a2 = ae.stem(z), ae.mid(ae.stem(z))
    assert (z.shape, a1.shape, a2.shape) == ((4, 5), (4, 6, 3, 2), (4, 3, 6, 4))
    assert a1.min() >= 0 and a2.min() >= 0 and a1.max() > 0
    img = ae(x)
    assert img.shape == (4, 2, 10, 6) and img.min() > 0 and img.max() < 1
    assert ae.head_conv(a2).shape == (4, 2, 12, 8)  # then resized to 10 x 6
    _same(img, ae.decode(z))
    dec._init(ae, _g(3))
    g, mods = _g(3), dict(ae.named_modules())
    for n in names:
        w, b = mods[n].weight, mods[n].bias
        bound = 1 / math.sqrt(w[0].numel())
        torch.testing.assert_close(w.data, (2 * torch.rand(w.shape, generator=g) - 1) * bound)
        torch.testing.assert_close(b.data, (2 * torch.rand(b.shape, generator=g) - 1) * bound)
    cfg = dec.AutoencoderConfig(latent=4, width=2, steps=3, batch_size=5, lr=0.01, seed=2)
    ref, g = dec.Autoencoder((1, 8, 8), latent=4, width=2), _g(2)
    dec._init(ref, g)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for _ in range(3):
        xb = X[:4][torch.randint(0, 4, (4,), generator=g)]
        loss = F.mse_loss(ref(xb), xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = dec.train_autoencoder(X[:4], cfg)
    _same(got, ref)
    st = Store(tmp_path)
    cached = dec.trained_autoencoder(X[:4], cfg, store=st)
    again = dec.trained_autoencoder(X[:4], cfg, store=st)
    _same([got, cached], [again, again])
    assert not (got.training or cached.training or again.training)
    (stage,) = [f.parent for f in tmp_path.rglob("autoencoder.safetensors")]
    assert stage.parent.name == "autoencoder" and json.loads((stage / "config.json").read_text(
    )) == {"cfg": dataclasses.asdict(cfg), "device": "cpu", "shape": [1, 8, 8]}
    assert json.loads((stage / "done.json").read_text())["inputs"] == [dec.data_hash(X[:4])]
    dec.trained_autoencoder(X[:5], cfg, store=st)
    assert len(list(tmp_path.rglob("autoencoder.safetensors"))) == 2  # keyed on the data
    h = dec.data_hash(X)
    assert len(h) == 16 and h == dec.data_hash(X.clone()) and int(h, 16) >= 0
    assert len({h, dec.data_hash(X.view(40, 64, 1, 1)), dec.data_hash(X.double()),
                dec.data_hash(X[:39])}) == 4
    for bad in (X[0], X[:0]):
        with pytest.raises(ValueError, match=r"^expected images \(N, C, H, W\), got"):
            dec.train_autoencoder(bad, cfg)


# --- feature-level adversaries --------------------------------------------------------------------

def test_feature_adversaries_are_the_documented_optimisations() -> None:
    from eisbench.tools import feature_adversary as fa

    x = torch.tensor([[0.0, 1, 1], [0, 0, 1]]).view(1, 1, 2, 3)
    torch.testing.assert_close(fa.total_variation(torch.cat([x, 2 * x])),
                               torch.tensor(3 * (1 / 3 + 2 / 4)))
    assert fa._shrink(X, 8) is X
    torch.testing.assert_close(fa._shrink(X, 3), F.interpolate(
        X, size=(3, 3), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1))
    net, cfg = _mlp(), dec.AutoencoderConfig(latent=4, width=4, steps=20)
    ae = dec.trained_autoencoder(X, cfg)
    kw: dict[str, Any] = {"target": 0, "data": X, "n": 2, "steps": 2, "lr": 0.2, "batch_size": 3,
                          "tv": 0.4, "autoencoder": cfg}
    gen = fa.feature_adversary_generator(net, generator=_g(4), prior=0.2, first_layer=0.3, **kw)
    per = fa.feature_adversary_perturbation(net, generator=_g(4), l2=0.3, **kw)
    _same(gen, _feature_adversary_reference(net, ae, generator=True))
    _same(per, _feature_adversary_reference(net, ae, generator=False))
    one = fa.feature_adversary_generator(net, **(kw | {"data": X[:1], "n": 1, "generator": _g()}))
    assert torch.isfinite(one).all()  # one clean code: unit spread, no NaN
    other = fa.feature_adversary_perturbation(net, generator=_g(4), l2=0.3, train_data=X[20:],
                                              **kw)
    assert not torch.equal(other, per)  # the generator is trained on train_data
    cases: Cases = [({"n": 0}, "^n must be >= 1, got 0$"), ({"side": 9}, "^patch side 9 does "
                    r"not fit images of shape \(1, 8, 8\)$"), ({"data": X[0]}, r"^data must be "
                    r"clean images \(N, C, H, W\), got \(1, 8, 8\)$")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fa.feature_adversary_perturbation(net, **(kw | {"generator": _g()} | bad))


def _feature_adversary_reference(net: nn.Module, ae: dec.Autoencoder, *,
                                 generator: bool) -> torch.Tensor:
    """The documented optimisation of the two feature-level adversaries, written out (2 patches
    of side 3, 2 steps of 3 images, lr 0.2; prior 0.2, first layer / l2 0.3, tv 0.4)."""
    from eisbench.tools.feature_adversary import _shrink, total_variation

    g = _g(4)
    start = torch.randint(0, 40, (2,), generator=g)
    z0, ref = ae.encode(X[start]), ae.encode(X[torch.randperm(40, generator=g)[:512]])
    with torch.no_grad():
        a2, s2 = ae.mid(ae.stem(z0)), ae.mid(ae.stem(ref)).std().clamp_min(1e-3)
        mu, sd, s1 = ref.mean(0), ref.std(0).clamp_min(1e-3), ae.stem(ref).std()
    u = ((z0 - mu) / sd).detach().requires_grad_(True)
    d = torch.zeros_like(ae.stem(z0) if generator else a2).requires_grad_(True)

    def make() -> torch.Tensor:
        if generator:
            return _shrink(ae.head(ae.mid(ae.stem(mu + sd * u) + s1 * d)), 3)
        return _shrink(ae.head(a2 + s2 * d), 3)

    def penalty(p: torch.Tensor) -> torch.Tensor:
        prior = 0.2 * u.pow(2).mean(1).sum() if generator else 0
        return prior + 0.3 * d.pow(2).flatten(1).mean(1).sum() + 0.4 * total_variation(p)

    patches = ap.fit_patches(net, make, [u, d] if generator else [d], target=0, data=X,
                             generator=g, steps=2, lr=0.2, batch_size=3, penalty=penalty)
    success = ap.evaluate_patches(net, patches, X, target=0, generator=g)
    assert success[0] != success[1]  # (so that the order is seen)
    order = torch.argsort(success, descending=True, stable=True)
    return ap.centred(patches[order], (1, 8, 8))
