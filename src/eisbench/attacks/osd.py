"""Targeted APGD restarts that spend their steps where a probe says they can pay: A3's online
statistics-based discarding (Liu et al., CVPR 2022) over MALT's ranking of targets (Melamed,
Yehudai & Shamir 2024). Registered as ``apgd-t-osd``.

* Restart 0 (the probe) runs targeted APGD (targeted DLR, ``steps`` steps) towards each
  example's first target on every example it is given: no example is dropped before it has been
  looked at.
* Restart r >= 1 runs again from a new random start, towards the example's target of rank
  ``r mod n_targets`` (A3 cycles its target class over restarts), and only on the unbroken
  examples whose best margin so far is among the ``ceil(keep**r * n_unbroken)`` closest to 0 (at
  least one): those far from the boundary are discarded for the rest of the run.
* An example's best margin is ``min over restarts of z_y - max_{j != y} z_j`` at the point each
  run returns (negative iff misclassified); one forward pass per example and restart.

What is taken from the references (``github:liuye6666/adaptive_auto_attack``, file
``Adaptive_Auto_Attack_main.py``; ``github:fra31/auto-attack``, ``autoattack/autopgd_base.py``):

* OSD: before each restart, A3 ranks the unbroken points by the largest margin loss seen so far
  (``max_loss``, kept at :239-240) and attacks only the top fraction ``alpha`` of them, at least
  100 points (:435-448, ``need_atk_num_place1``/``max_K``/``loss_need_atk_index``), ``alpha``
  falling over the restarts from 1 to 0.03 (:366-432). Here the fraction is ``keep**r`` (a
  geometric schedule in place of A3's table, for a run of a few restarts), the floor is one
  example, and the statistic is the margin at each run's returned point (its best iterate),
  where A3 takes the maximum over every iterate (:236-240): that would reach into APGD's loop.
* Cycling targets over restarts: A3 biases restart r's initial direction towards the class of
  logit rank ``r mod threshold_class`` (:137-138, ``sorted_logits[:, -2 - No_class %
  threshold_class]``); here restart r attacks that rank's target with the targeted DLR loss.
* Each run is eisbench's targeted APGD (:func:`~eisbench.attacks.apgd.apgd_t`'s loop, after
  ``autopgd_base.py:606-683``), its targets ranked by :func:`~eisbench.attacks.apgd.target_order`
  (``target_selection="malt"``: MALT's linearised distance, smallest first).

* MALT (arXiv 2407.02240): no reference code was reachable from this project's sources; the
  score follows the paper's linear-model argument (the distance to the boundary between y and
  t of the linearised model, in the threat model's norm, through the dual norm of the
  gradient). How many targets the paper attacks could not be checked here: this attack cycles
  ``n_targets`` (3 in the ``adaptive`` suite; AutoAttack's APGD-T takes 9).

Not taken: A3's adaptive direction initialisation (ADI, :101-180, 192-194: steps that ascend a
random logit direction biased by statistics of the directions that succeeded on other points).
Its statistics need many restarts to form; a run of 3 restarts has none to adapt to.

Example:
    >>> x_adv = apgd_t_osd(model, x, y, eps=0.3, restarts=3, n_targets=3, keep=0.5)
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from eisbench.attacks import apgd as _apgd
from eisbench.attacks.apgd import _APGD_STEP, TARGET_SELECTION, target_order
from eisbench.attacks.core import ATTACKS, STEPS, Hyper, check_inputs
from eisbench.attacks.projection import NORMS, assert_within_budget
from eisbench.attacks.square import margin_loss
from eisbench.core.tensors import eval_mode


def keep_count(n_unbroken: int, keep: float, restart: int) -> int:
    """How many of ``n_unbroken`` examples restart ``restart`` attacks: all at restart 0, then
    ``ceil(keep**restart * n_unbroken)``, at least one (none if there are none).

    Example:
        >>> [keep_count(10, 0.5, r) for r in range(4)]
        [10, 5, 3, 2]
    """
    if n_unbroken == 0:
        return 0
    return max(1, min(n_unbroken, math.ceil(keep ** restart * n_unbroken - 1e-9)))


@ATTACKS.register("apgd-t-osd", norms=NORMS, white_box=True, min_classes=4, params={
    "steps": STEPS,
    "restarts": Hyper(3, int, "runs in all (apgd-t-osd): the first on every example, each "
                      "further one on the unbroken examples closest to the boundary", lo=1),
    "n_targets": Hyper(3, int, "targets cycled over the restarts, first ranked first "
                       "(apgd-t-osd)", lo=1),
    "keep": Hyper(0.5, float, "restart r attacks the fraction keep**r of the unbroken "
                  "examples, those of smallest margin (apgd-t-osd)", lo=0.0, hi=1.0,
                  lo_open=True),
    "target_selection": replace(TARGET_SELECTION, default="malt"),
    **_APGD_STEP,
})
def apgd_t_osd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               norm: str = "linf", steps: int = 100, restarts: int = 3, n_targets: int = 3,
               keep: float = 0.5, target_selection: str = "malt", momentum: float = 0.75,
               rho: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """Targeted APGD restarts with online discarding (see the module docstring).

    Args:
        model: maps (B, C, H, W) images in [0,1] to logits (B, K >= 4).
        x: clean images (B, C, H, W) in [0,1].  y: labels (B,).
        eps, norm: the threat model (``"linf"`` or ``"l2"``).
        steps: APGD iterations per run.  restarts: runs in all, the first on every example.
        n_targets: restart r attacks each example's target of rank ``r mod n_targets``.
        keep: restart r >= 1 attacks the ``ceil(keep**r * n)`` of the n unbroken examples with
            the smallest best margin.
        target_selection: ``"malt"`` (default) or ``"logits"``, as in
            :func:`~eisbench.attacks.apgd.apgd_t`.
        generator: seeds the random starts.

    Returns:
        x_adv (B, C, H, W) within the budget and in [0,1]: misclassified where a run succeeded,
        else the last run's point of highest loss (x where no run attacked the example: the
        clean-misclassified ones).

    Example:
        >>> x_adv = apgd_t_osd(model, x, y, eps=0.3)
    """
    check_inputs(x, y, norm=norm, eps=eps, attack="apgd-t-osd", steps=steps,
                 restarts=restarts, n_targets=n_targets, keep=keep,
                 target_selection=target_selection, momentum=momentum, rho=rho)
    with eval_mode(model):
        out = x.clone()
        if not len(x):
            return out
        k = _apgd._check_classes(model, x, 4, "the targeted DLR loss")
        with torch.no_grad():
            logits = model(x)  # (B, K)
        alive = (logits.argmax(1) == y).nonzero().flatten()  # (A,) unbroken, in x's indices
        order = torch.zeros(len(x), k - 1, dtype=torch.long, device=x.device)  # (B, K-1)
        if len(alive):
            order[alive] = target_order(model, x[alive], y[alive], norm=norm,
                                        selection=target_selection, logits=logits[alive])
        best = margin_loss(logits, y)  # (B,) smallest margin seen; the probe replaces it
        for r in range(restarts):
            m = keep_count(len(alive), keep, r)
            if m == 0:
                break
            rank = best[alive].argsort(stable=True)  # closest to the boundary first
            todo = alive[rank[:m]] if r else alive  # the probe looks at every example
            t = order[todo, r % min(n_targets, k - 1)]
            xa, fooled = _apgd._run(model, x[todo], y[todo], t, eps=eps, norm=norm,
                                    steps=steps, loss="dlr", momentum=momentum, rho=rho,
                                    generator=generator)
            out[todo] = xa
            with torch.no_grad():
                margin = margin_loss(model(xa), y[todo])  # (T,)
            best[todo] = margin if r == 0 else torch.minimum(best[todo], margin)
            broken = todo[fooled | (margin < 0)]
            alive = alive[~torch.isin(alive, broken)]
    assert_within_budget(x, out, norm=norm, eps=eps)
    return out
