"""L2-penalised logistic regression on weighted rows (a bootstrap resample given as counts),
by L-BFGS preconditioned with an approximate Hessian: fast from a warm start, and converged
tightly enough (:data:`GTOL`) that the start does not matter.

Example:
    >>> import numpy as np
    >>> x = np.array([[-2.0], [-1.0], [1.0], [2.0]]); y = np.array([-1.0, -1.0, 1.0, 1.0])
    >>> rows = Rows(x=x, y=y, c=np.array([1.0, 2.0, 2.0, 1.0]))
    >>> w, b = fit_logistic(rows, from_zero(rows))
    >>> round(float(w[0]), 3), abs(b) < 1e-9  # scikit-learn: 1.225, 0
    (1.225, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

GTOL = 1e-5  # L-BFGS stops when every preconditioned gradient coordinate is below this


@dataclass(frozen=True)
class Rows:
    """Distinct training rows and how often each is held (a resample as counts)."""

    x: np.ndarray  # (M, D)
    y: np.ndarray  # (M,) in {-1, +1}
    c: np.ndarray  # (M,) counts (weights), float64


@dataclass(frozen=True)
class Logistic:
    """How to fit: a start ``(w (D,), b)`` and a preconditioner, the eigenpairs
    ``(values (D+1,), vectors (D+1, D+1))`` of an approximate Hessian over ``(w, b)``."""

    start: tuple[np.ndarray, float]
    precond: tuple[np.ndarray, np.ndarray]


def hessian(s: Rows, w: np.ndarray, b: float, *, c_reg: float = 1.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the Hessian over ``(w, b)`` of :func:`fit_logistic`'s objective at
    ``(w, b)``: C sum_i c_i q_i (1 - q_i) (x_i, 1)(x_i, 1)^T + diag(1, ..., 1, 0)."""
    q = expit(s.y * (s.x @ w + b))  # (M,)
    a = np.hstack([s.x, np.ones((len(s.y), 1))]) * np.sqrt(c_reg * s.c * q * (1 - q))[:, None]
    h = a.T @ a  # (D+1, D+1)
    h[np.arange(len(w)), np.arange(len(w))] += 1.0
    return np.linalg.eigh(h)


def fit_logistic(s: Rows, how: Logistic, *, c_reg: float = 1.0) -> tuple[np.ndarray, float]:
    """``(w (D,), b)`` minimising C sum_i c_i log(1 + exp(-y_i (w.x_i + b))) + ||w||^2 / 2:
    scikit-learn's ``LogisticRegression(C)`` on the rows duplicated c_i times (b is
    unpenalised). L-BFGS in the coordinates u = sqrt(H) (w, b) of the approximate Hessian H
    of ``how``, from ``how.start``, until every gradient coordinate in u is below
    :data:`GTOL`; a ``RuntimeError`` if it stops short of that."""
    vals, vecs = how.precond
    scale = 1 / np.sqrt(np.maximum(vals, 1e-12))  # (D+1,)

    def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
        wb = vecs @ (scale * u)  # (D+1,)
        w = wb[:-1]
        margin = s.y * (s.x @ w + wb[-1])  # (M,)
        g = -c_reg * s.c * s.y * expit(-margin)  # (M,) derivative in x.w + b
        value = c_reg * float(s.c @ np.logaddexp(0.0, -margin)) + 0.5 * float(w @ w)
        return value, scale * (vecs.T @ np.append(s.x.T @ g + w, g.sum()))

    w0, b0 = how.start
    r = minimize(objective, (vecs.T @ np.append(w0, b0)) / scale, jac=True,
                 method="L-BFGS-B", options={"maxiter": 20000, "gtol": GTOL, "ftol": 0.0})
    worst = float(np.abs(objective(r.x)[1]).max())
    if worst > 10 * GTOL:
        raise RuntimeError(f"logistic regression did not converge: largest gradient {worst:.2e}"
                           f" > {10 * GTOL:.0e} after {r.nit} L-BFGS steps ({r.message})")
    wb = vecs @ (scale * r.x)
    return wb[:-1], float(wb[-1])


def from_zero(s: Rows, *, c_reg: float = 1.0) -> Logistic:
    """A cold start: zero, preconditioned by the Hessian there."""
    zero = (np.zeros(s.x.shape[1]), 0.0)
    return Logistic(start=zero, precond=hessian(s, *zero, c_reg=c_reg))


def warm(s: Rows, *, c_reg: float = 1.0) -> Logistic:
    """A warm start for fits on resamples of ``s``: the fit on ``s`` itself, preconditioned
    by the Hessian there."""
    w, b = fit_logistic(s, from_zero(s, c_reg=c_reg), c_reg=c_reg)
    return Logistic(start=(w, b), precond=hessian(s, w, b, c_reg=c_reg))
