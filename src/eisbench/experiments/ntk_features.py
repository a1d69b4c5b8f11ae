"""Empirical-NTK eigen-features of a scalar network (the measured objects of
:mod:`eisbench.experiments.ntk`).

A scalar-output MLP at initialisation (:func:`scalar_mlp`), its per-sample parameter Jacobian
J (:func:`jacobian`), the eigendecomposition of K = J J^T turned into parameter-space tangents
w_i (:func:`eigen_tangents`), the eigen-features f_i(x) = J(x) . w_i evaluated as
Jacobian-vector products (:class:`EigenFeatures`), and PGD on the margin y f_i(x) of every
feature at once (:func:`attack_features`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from eisbench.attacks.projection import (
    assert_within_budget,
    check_norm,
    linf_bounds,
    project,
    random_start,
    steepest_direction,
)


def scalar_mlp(in_dim: int, *, width: int, depth: int, generator: torch.Generator) -> nn.Module:
    """Flatten + ``depth`` ReLU layers of ``width`` + a scalar output, PyTorch's default
    initialisation (U(-1/sqrt(fan_in), 1/sqrt(fan_in))) drawn from ``generator``."""
    dims = [in_dim, *([width] * depth), 1]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(dims, dims[1:], strict=False)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            for t in (lin.weight, lin.bias):
                t.uniform_(-1 / math.sqrt(a), 1 / math.sqrt(a), generator=generator)
        layers += [lin] if i == depth else [lin, nn.ReLU()]
    return nn.Sequential(*layers)


def jacobian(net: nn.Module, x: torch.Tensor, *, chunk: int = 128) -> torch.Tensor:
    """Per-sample parameter Jacobian (N, P) of the scalar ``net`` at ``x`` (N, C, H, W);
    columns in the order of ``net.named_parameters()``."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(pr: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(net, pr, (xi.unsqueeze(0),)).squeeze()

    jf = vmap(jacrev(f), in_dims=(None, 0))
    out = torch.empty(len(x), sum(v.numel() for v in params.values()), device=x.device)
    for s in range(0, len(x), chunk):
        jac = jf(params, x[s:s + chunk])  # {name: (B, *shape)}
        out[s:s + chunk] = torch.cat([jac[k].flatten(1) for k in params], 1)
    return out


class EigenFeatures:
    """F scalar features f_j(x) = J(x) . w_j of a network at its current parameters.

    ``tangents`` (P, F) holds the parameter-space vectors w_j as columns (layout of
    :func:`jacobian`). Calling on x (F, B, C, H, W) gives (F, B): f_j on the j-th block.
    """

    def __init__(self, net: nn.Module, tangents: torch.Tensor) -> None:
        self.net = net
        self.params = {k: v.detach() for k, v in net.named_parameters()}
        self.n = tangents.shape[1]
        self.tangents: dict[str, torch.Tensor] = {}
        o = 0
        for k, v in self.params.items():  # (F, *shape) per parameter
            self.tangents[k] = tangents[o:o + v.numel()].T.reshape(self.n, *v.shape)
            o += v.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        def one(xf: torch.Tensor, tf: dict[str, torch.Tensor]) -> torch.Tensor:
            def g(pr: dict[str, torch.Tensor]) -> torch.Tensor:
                return functional_call(self.net, pr, (xf,)).squeeze(-1)
            return jvp(g, (self.params,), (tf,))[1]  # (B,)
        out: torch.Tensor = vmap(one)(x, self.tangents)
        return out

    def on(self, x: torch.Tensor, *, chunk: int = 128) -> torch.Tensor:
        """Every feature on the same images x (B, C, H, W): (F, B), no gradient."""
        with torch.no_grad():
            return torch.cat([self(x[s:s + chunk].unsqueeze(0).expand(self.n, *x[s:s + chunk]
                                                                          .shape))
                              for s in range(0, len(x), chunk)], 1)


def eigen_tangents(j: torch.Tensor, y: torch.Tensor, *, m: int, rcond: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigen-decompose K = J J^T (float64) for J (N, P) and labels y (N,) in {-1, +1}.

    Returns (eigenvalues (N,) descending, label alignment (N,) = (v_i^T y)^2 / ||y||^2, and
    tangents (P, m + 2)): w_0..w_{m-1}, their sum (rank-m kernel predictor) and the full kernel
    predictor J^T K^+ y (eigenvalues below ``rcond * lambda_0`` dropped).
    """
    k = (j @ j.T).double()  # (N, N)
    lam, v = torch.linalg.eigh(k)
    lam, v = lam.flip(0), v.flip(1)  # descending
    proj = v.T @ y.double()  # (N,) v_i^T y
    keep = lam > rcond * lam[0]
    c = torch.cat([v[:, :m] * (proj[:m] / lam[:m]),  # (N, m)
                   (v[:, keep] @ (proj[keep] / lam[keep]))[:, None]], 1)
    w = j.T @ c.to(j.dtype)  # (P, m + 1)
    w = torch.cat([w[:, :m], w[:, :m].sum(1, keepdim=True), w[:, m:]], 1)
    return lam, proj**2 / float(y.double().square().sum()), w


def attack_features(feats: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor, *, n_features: int, eps: float, steps: int,
                    step_size: float, norm: str, generator: torch.Generator | None
                    ) -> torch.Tensor:
    """PGD on the margin y f_j(x), every feature at once. x (B, C, H, W), y (B,) in {-1, +1}.

    Returns (F, B) bool: True where sign(f_j) = y at the clean point and at every iterate (a
    point fooled by any iterate of the eps-ball counts as fooled). Steps, starts and budget go
    through :mod:`eisbench.attacks.projection`.
    """
    check_norm(norm)
    f_, b = n_features, len(x)
    x0 = x.unsqueeze(0).expand(f_, *x.shape).reshape(f_ * b, *x.shape[1:])  # (F*B, C, H, W)
    yy = y.to(x.dtype).unsqueeze(0)  # (1, B)
    with torch.no_grad():
        ok = yy * feats(x0.view(f_, *x.shape)) > 0  # (F, B)
    xa = random_start(x0, norm=norm, eps=eps, generator=generator)
    bounds = linf_bounds(x0, eps) if norm == "linf" else None
    for _ in range(steps):
        xa.requires_grad_(True)
        margin = yy * feats(xa.view(f_, *x.shape))  # (F, B)
        ok &= margin.detach() > 0
        (grad,) = torch.autograd.grad(margin.sum(), xa)
        with torch.no_grad():
            xa = project(x0, xa - step_size * steepest_direction(grad, norm), norm=norm, eps=eps,
                         bounds=bounds)
    with torch.no_grad():
        ok &= yy * feats(xa.view(f_, *x.shape)) > 0
    assert_within_budget(x0, xa, norm=norm, eps=eps)
    return ok
