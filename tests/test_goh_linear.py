"""goh-linear: closed-form (robust) usefulness of linear features, checked against sampling
and a gradient search, and the experiment end to end on the 8x8 digits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from eisbench.experiments import EXPERIMENTS
from eisbench.experiments.goh_linear import (
    robust_usefulness,
    standardise,
    usefulness,
    worst_case,
)
from eisbench.runs import record
from eisbench.runs.store import Store


def _data(n: int = 500, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = np.where(g.random(n) < 0.5, -1.0, 1.0)
    x = g.normal(size=(n, d)) * np.linspace(1.0, 0.05, d) + 0.3 * y[:, None]
    return x, y


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_closed_form_robust_usefulness_is_the_infimum(norm: str) -> None:
    x, y = _data()
    f = standardise(np.array([1.0, -0.5, 0.2, 2.0, 0.0, 1.0]), x)
    eps = 0.3
    gamma = robust_usefulness(f, x, y, eps=eps, norm=norm)
    assert gamma < usefulness(f, x, y)
    # (1) the minimising perturbation attains it exactly
    attained = usefulness(f, x + worst_case(f, x, y, eps=eps, norm=norm), y)
    assert abs(attained - gamma) < 1e-9
    # (2) Monte Carlo: random points of the ball never go below it
    g = np.random.default_rng(1)
    for _ in range(200):
        d = g.normal(size=x.shape) if norm == "l2" else g.uniform(-1, 1, size=x.shape)
        scale = np.linalg.norm(d, axis=1, keepdims=True) if norm == "l2" else 1.0
        d = eps * d / scale
        assert usefulness(f, x + d, y) >= gamma - 1e-9
    # (3) a projected-gradient search from a random start does not go below it either
    xt, yt = torch.tensor(x), torch.tensor(y)
    w, mu = torch.tensor(f.w), torch.tensor(f.mu)
    delta = (torch.rand_like(xt) - 0.5) * eps
    for _ in range(100):
        delta.requires_grad_(True)
        obj = (yt * ((xt + delta - mu) @ w) / f.sd).sum()
        (grad,) = torch.autograd.grad(obj, delta)
        with torch.no_grad():
            if norm == "l2":
                delta = delta - 0.1 * grad / grad.norm(dim=1, keepdim=True)
                delta = delta * (eps / delta.norm(dim=1, keepdim=True)).clamp(max=1.0)
            else:
                delta = (delta - 0.1 * grad.sign()).clamp(-eps, eps)
    found = float((yt * ((xt + delta - mu) @ w) / f.sd).mean())
    assert found >= gamma - 1e-6 and found - gamma < 1e-3


def test_goh_linear_end_to_end_on_digits(tmp_path: Path) -> None:
    exp = EXPERIMENTS.get("goh-linear")
    cfg = dataclasses.replace(exp.quick, dataset="digits", eps=0.5, seeds=(0, 1))
    rec = exp.run(cfg, out=tmp_path, store=Store(tmp_path / "cache"))
    record.validate(dict(rec))
    assert len(rec["claims"]) == 3
    m = rec["metrics"]
    assert m["goh_linear/logreg/usefulness"]["value"] > 0.5  # 3 vs 8 is linearly separable
    for r in rec["details"]["per_seed"]:
        rho, gamma = np.array(r["singular"]).T
        assert (gamma <= rho + 1e-12).all()  # the adversary can only hurt
    contaminated = [m[f"goh_linear/contaminated_{a:g}/robust_usefulness"]["value"]
                    for a in cfg.contamination]
    assert all(b < a for a, b in zip(contaminated, contaminated[1:], strict=False))
    html = exp.report(rec, tmp_path).read_text()
    assert "Contamination" in html and "data:image/png;base64" in html
