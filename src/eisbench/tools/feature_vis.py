"""Feature visualisation (Olah et al. 2017) of the target class and of inner neurons, with a
Fourier or a CPPN image parameterisation (:mod:`eisbench.tools.parameterisations`).

Four tools of the trojan benchmark, one verb each (``tool(model, *, target, data, n=10,
generator, device)``):

- ``fv-class-fourier`` / ``fv-class-cppn``: maximise the target class's logit;
- ``fv-neuron-fourier`` / ``fv-neuron-cppn``: maximise an inner neuron: the penultimate-layer
  units (:func:`eisbench.models.features`) that weigh most on the target logit
  (:func:`readout_weights`); image i maximises the mean activation of the i-th of them.
  A unit that is inactive on every copy of its image has no gradient (its ReLU is shut); such
  an image follows the target logit, which the unit feeds, until the unit wakes up.

The ``n`` images are optimised together (one Adam step for all of them per iteration), each
from its own draw of ``generator``; every step sees ``copies`` randomly jittered and rescaled
versions of every image (transformation robustness, :func:`~eisbench.tools.parameterisations.
jitter`), and the objective is the mean over them. The returned images are the final images,
unjittered.

Example:
    >>> imgs = TOOLS.get("fv-class-fourier")(model, target=0, data=x[:256],  # doctest: +SKIP
    ...                                      generator=torch.Generator().manual_seed(0))
    >>> imgs.shape  # doctest: +SKIP
    torch.Size([10, 1, 28, 28])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from eisbench.core.tensors import eval_mode
from eisbench.models import features
from eisbench.tools.core import TOOLS, check_tool_output
from eisbench.tools.parameterisations import PARAMETERISATIONS, jitter

LR = {"fourier": 0.05, "cppn": 0.01}  # Adam learning rates of each parameterisation
Objective = Callable[[torch.Tensor], torch.Tensor]  # (copies * n, C, H, W) -> (copies * n,)


def visualise(model: nn.Module, objective: Objective, *, n: int, shape: tuple[int, int, int],
              param: str, generator: torch.Generator, device: str | torch.device = "cpu",
              steps: int = 150, lr: float | None = None, copies: int = 2,
              shift: float | None = None, scale: float = 0.05) -> torch.Tensor:
    """``n`` images (n, C, H, W) in [0,1] that maximise ``objective`` under ``model``.

    ``objective(x)`` scores images x (copies * n, C, H, W), laid out copy-major (row
    ``k * n + i`` is copy k of image i), one score each; image i maximises the mean of its
    copies' scores. ``param``: "fourier" or "cppn"; ``lr`` None takes :data:`LR`; ``shift``
    (pixels, None: H / 14, at least 1) and ``scale`` bound the jitter. The model is used in
    eval mode and returned in its mode; no gradient is left on its parameters.
    """
    if param not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation {param!r}: expected one of "
                         f"{sorted(PARAMETERISATIONS)}")
    if steps < 1 or copies < 1 or n < 1:
        raise ValueError("n, steps and copies must be >= 1")
    dev = torch.device(device)
    image = PARAMETERISATIONS[param](n, shape, generator=generator).to(dev)
    params = list(image.parameters())
    opt = torch.optim.Adam(params, lr=LR[param] if lr is None else lr)
    shift_px = max(1.0, shape[1] / 14) if shift is None else shift
    with eval_mode(model):
        for _ in range(steps):
            x = image().repeat(copies, 1, 1, 1)  # (copies * n, C, H, W)
            x = jitter(x, generator=generator, shift=shift_px, scale=scale)
            loss = -objective(x).sum() / copies
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
    with torch.no_grad():
        return image().cpu()


def _linear_head(model: nn.Module, x: torch.Tensor) -> nn.Linear | None:
    """The model's last ``nn.Linear`` if it maps features(x) to the logits exactly, else None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    head = linears[-1]
    with torch.no_grad():
        f, logits = features(model, x), model(x)  # (B, D), (B, K)
        if f.shape[1] != head.in_features or logits.shape[1] != head.out_features:
            return None
        ok = torch.allclose(head(f), logits, rtol=1e-4, atol=1e-4)
    return head if ok else None


def readout_weights(model: nn.Module, *, target: int, data: torch.Tensor,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """How much each penultimate unit pushes the ``target`` logit: (D,).

    For a model whose last linear layer maps :func:`~eisbench.models.features` to the logits
    (checked on a few images of ``data`` (N, C, H, W)), its row of weights for ``target``.
    Otherwise the gradient of the target logit with respect to the features at the data
    mean, found by the chain rule: the input gradient g (P,) equals J^T w with J (D, P) the
    features' Jacobian, solved for w by least squares (minimum norm, SVD): exact on the units
    active at the mean when their rows of J are independent; inactive units get 0.
    """
    dev = torch.device(device)
    with eval_mode(model):
        probe = data[:8].to(dev)
        head = _linear_head(model, probe)
        if head is not None:
            return head.weight[target].detach().cpu().clone()
        x0 = data.mean(0, keepdim=True).to(dev).requires_grad_(True)  # (1, C, H, W)
        (gx,) = torch.autograd.grad(model(x0)[0, target], x0)  # (1, C, H, W)
        jac = torch.autograd.functional.jacobian(lambda x: features(model, x)[0], x0.detach(),
                                                 vectorize=True)  # (D, 1, C, H, W)
        jac = jac.flatten(1)  # (D, P)
        w = torch.linalg.lstsq(jac.T.cpu(), gx.flatten()[:, None].cpu(),
                               driver="gelsd").solution  # (D, 1), minimum norm
    return w[:, 0]


def _class_images(model: nn.Module, *, target: int, data: torch.Tensor, n: int,
                  generator: torch.Generator, device: str | torch.device, param: str,
                  steps: int, lr: float | None, copies: int) -> torch.Tensor:
    def objective(x: torch.Tensor) -> torch.Tensor:
        return model(x)[:, target]  # (B,)

    out = visualise(model, objective, n=n, shape=tuple(data.shape[1:]),  # type: ignore[arg-type]
                    param=param, generator=generator, device=device, steps=steps, lr=lr,
                    copies=copies)
    return check_tool_output(out, n=n, shape=tuple(data.shape[1:]))


def top_units(model: nn.Module, *, target: int, data: torch.Tensor, n: int,
              device: str | torch.device = "cpu") -> torch.Tensor:
    """The ``n`` penultimate units of largest :func:`readout_weights` for ``target``, largest
    first, repeated cyclically when the layer has fewer than ``n`` units: (n,) long."""
    w = readout_weights(model, target=target, data=data, device=device)  # (D,)
    order = torch.argsort(w, descending=True, stable=True)[:n]
    return order[torch.arange(n) % len(order)]


def _neuron_images(model: nn.Module, *, target: int, data: torch.Tensor, n: int,
                   generator: torch.Generator, device: str | torch.device, param: str,
                   steps: int, lr: float | None, copies: int) -> torch.Tensor:
    units = top_units(model, target=target, data=data, n=n, device=device)  # (n,)
    idx = units.repeat(copies).to(torch.device(device))[:, None]  # (copies * n, 1)

    def objective(x: torch.Tensor) -> torch.Tensor:
        act = features(model, x).gather(1, idx)[:, 0]  # (copies * n,)
        alive = (act.detach().view(copies, n) > 0).any(0).repeat(copies)  # (copies * n,)
        if bool(alive.all()):
            return act
        return torch.where(alive, act, model(x)[:, target])  # dead units: zero gradient

    out = visualise(model, objective, n=n, shape=tuple(data.shape[1:]),  # type: ignore[arg-type]
                    param=param, generator=generator, device=device, steps=steps, lr=lr,
                    copies=copies)
    return check_tool_output(out, n=n, shape=tuple(data.shape[1:]))


@TOOLS.register("fv-class-fourier", family="feature-synthesis", steps=150)
def fv_class_fourier(model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
                     generator: torch.Generator, device: str | torch.device = "cpu",
                     steps: int = 150, lr: float | None = None, copies: int = 2) -> torch.Tensor:
    """``n`` Fourier-parameterised images (n, C, H, W) in [0,1] maximising the ``target``
    logit, one per draw of ``generator``; ``data`` (N, C, H, W) gives the image shape."""
    return _class_images(model, target=target, data=data, n=n, generator=generator,
                         device=device, param="fourier", steps=steps, lr=lr, copies=copies)


@TOOLS.register("fv-class-cppn", family="feature-synthesis", steps=150)
def fv_class_cppn(model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
                  generator: torch.Generator, device: str | torch.device = "cpu",
                  steps: int = 150, lr: float | None = None, copies: int = 2) -> torch.Tensor:
    """``n`` CPPN images (n, C, H, W) in [0,1] maximising the ``target`` logit, one per draw
    of ``generator``; ``data`` (N, C, H, W) gives the image shape."""
    return _class_images(model, target=target, data=data, n=n, generator=generator,
                         device=device, param="cppn", steps=steps, lr=lr, copies=copies)


@TOOLS.register("fv-neuron-fourier", family="feature-synthesis", steps=150)
def fv_neuron_fourier(model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
                      generator: torch.Generator, device: str | torch.device = "cpu",
                      steps: int = 150, lr: float | None = None, copies: int = 2
                      ) -> torch.Tensor:
    """``n`` Fourier-parameterised images (n, C, H, W) in [0,1]: image i maximises the i-th
    penultimate unit of :func:`top_units` for ``target`` (found on ``data`` (N, C, H, W))."""
    return _neuron_images(model, target=target, data=data, n=n, generator=generator,
                          device=device, param="fourier", steps=steps, lr=lr, copies=copies)


@TOOLS.register("fv-neuron-cppn", family="feature-synthesis", steps=150)
def fv_neuron_cppn(model: nn.Module, *, target: int, data: torch.Tensor, n: int = 10,
                   generator: torch.Generator, device: str | torch.device = "cpu",
                   steps: int = 150, lr: float | None = None, copies: int = 2) -> torch.Tensor:
    """``n`` CPPN images (n, C, H, W) in [0,1]: image i maximises the i-th penultimate unit of
    :func:`top_units` for ``target`` (found on ``data`` (N, C, H, W))."""
    return _neuron_images(model, target=target, data=data, n=n, generator=generator,
                          device=device, param="cppn", steps=steps, lr=lr, copies=copies)
