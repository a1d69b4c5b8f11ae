"""The weight of the mask's L1 norm during a trigger reconstruction, and when to stop.

Neural Cleanse (Wang et al. 2019) minimises ``CE(f(x'), t) + cost * |m|_1`` and moves ``cost``
by the attack success rate (ASR) of the trigger, checked once per "step" of ``mini_batch``
mini-batches. The published schedule, as in the authors' code (github.com/bolunwang/backdoor,
commit e8577747, ``visualizer.py``), is :data:`WANG2019`:

- ``cost`` starts at 0 (``RESET_COST_TO_ZERO = True``, lines 41 and 274-275); once the ASR has
  been >= 0.99 (``ATTACK_SUCC_THRESHOLD``, line 34) at ``patience`` consecutive checks, it is set
  to ``init_cost`` = 1e-3 (``gtsrb_visualize_example.py`` line 56) and the up/down counters and
  flags are reset (lines 413-424);
- at every check a success adds one to the up counter and zeroes the down counter, a failure the
  reverse (lines 426-431); ``patience`` = 10 consecutive successes multiply ``cost`` by 1.5,
  ``patience`` consecutive failures divide it by 1.5 ** 1.5, and the counter restarts
  (lines 433-450; ``PATIENCE = 10`` line 36, ``COST_MULTIPLIER = 1.5`` line 38, the down
  multiplier ``cost_multiplier ** 1.5`` line 108);
- the best trigger is the one of smallest mean mask L1 among the checks whose mean ASR reached
  the threshold, both averaged over the check's mini-batches (lines 370-382);
- early stop (lines 396-410): once a trigger has been found, a check whose best L1 is not below
  0.99 (``EARLY_STOP_THRESHOLD``, line 65) times the best of the checks before it adds one to a
  counter (any improvement resets it); the run stops when the counter reaches
  ``2 * patience`` = 20 (line 67) and the cost has gone both up and down since it was set;
- one check per pass over the images: ``MINI_BATCH = NB_SAMPLE // BATCH_SIZE`` mini-batches of
  32 (``gtsrb_visualize_example.py`` lines 51-55), at most 1000 checks (``STEPS``, line 53).

TrojanZoo's port (github.com/ain-soph/trojanzoo, ``trojanvision/defenses/backdoor/
model_inspection/neural_cleanse.py`` lines 68-81 and 96-142) has the same defaults (multiplier
1.5, patience 10, threshold 0.99, early-stop threshold 0.99, early-stop patience 2 * patience).
The GTSRB example script passes other values (patience 5, multiplier 2, early-stop threshold 1.0
and patience 25, lines 61-67); :data:`WANG2019` keeps the class defaults that both agree on.

:data:`EISBENCH_V1` is the schedule eisbench used before (kept for comparison): the cost
starts at ``init_cost``, every 10 mini-batches of 64 the ASR is measured on a fixed batch of
128 images (those not already in the target), and the cost is multiplied by 1.5 after a single
success or divided by 1.5 ** 1.5 after a single failure; no early stop. It is :data:`WANG2019`
with ``patience=1``, no reset to 0, no early stop and the check on the fixed batch.

:data:`TROJANZOO_TABOR` is the schedule of TrojanZoo's TABOR (``tabor.py`` does not override
``check_early_stop``, so ``abstract.py`` lines 498 and 529-535 apply): a fixed cost of 1e-3
on the mask's L1 norm (``cost``, ``abstract.py`` line 313), no early stop.

:class:`CostState` is the schedule's state for R triggers at once (one cost and one set of
counters each); its :meth:`CostState.check` is the published update, by hand-checkable rules.

Example:
    >>> st = CostState(WANG2019, r=1)
    >>> for _ in range(10):
    ...     st.check(torch.tensor([True]), torch.tensor([5.0]))
    >>> float(st.cost[0])  # set after 10 successful checks
    0.001
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class CostSchedule:
    """How the L1 weight moves and when a reconstruction stops (see the module docstring).

    ``check_every``: mini-batches per check (None: one pass over the images, at least 1);
    ``check_on``: ``"steps"`` (the mean ASR and mask L1 over the check's mini-batches, as Wang
    et al.) or ``"fixed-batch"`` (the ASR on a fixed batch, eisbench v1); ``max_checks``: the
    cap on checks when the caller gives no ``steps``.
    """

    name: str
    init_cost: float = 1e-3
    adaptive: bool = True
    reset_to_zero: bool = True
    patience: int = 10
    up: float = 1.5
    down: float = 1.5 ** 1.5
    threshold: float = 0.99
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 20
    check_on: str = "steps"
    check_every: int | None = None
    batch_size: int = 32
    max_checks: int = 1000

    def __post_init__(self) -> None:
        if self.check_on not in ("steps", "fixed-batch"):
            raise ValueError(f"check_on must be 'steps' or 'fixed-batch', got {self.check_on!r}")
        if self.patience < 1 or self.batch_size < 1 or self.max_checks < 1:
            raise ValueError("patience, batch_size and max_checks must be >= 1")

    def mini_batches(self, n: int, batch_size: int) -> int:
        """Mini-batches per check for ``n`` images in batches of ``batch_size``."""
        if self.check_every is not None:
            return self.check_every
        return max(1, n // batch_size)


WANG2019 = CostSchedule(name="wang2019")
EISBENCH_V1 = CostSchedule(name="eisbench-v1", reset_to_zero=False, patience=1,
                           early_stop=False, check_on="fixed-batch", check_every=10,
                           batch_size=64, max_checks=20)
TROJANZOO_TABOR = CostSchedule(name="trojanzoo-tabor", adaptive=False, reset_to_zero=False,
                               early_stop=False, max_checks=100)
SCHEDULES = {s.name: s for s in (WANG2019, EISBENCH_V1, TROJANZOO_TABOR)}
DEFAULT_SCHEDULE = {"neural-cleanse": "wang2019", "tabor": "trojanzoo-tabor",
                    "tabor-v1": "eisbench-v1"}
"""The schedule each reconstruction method runs under unless told otherwise."""


def get_schedule(schedule: str | CostSchedule | None, method: str) -> CostSchedule:
    """``schedule`` by name or as given; None: the method's default (:data:`DEFAULT_SCHEDULE`)."""
    if isinstance(schedule, CostSchedule):
        return schedule
    name = schedule or DEFAULT_SCHEDULE.get(method, WANG2019.name)
    if name not in SCHEDULES:
        raise ValueError(f"unknown cost schedule {name!r}: expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]


def with_init_cost(s: CostSchedule, lam: float | None) -> CostSchedule:
    """``s`` with ``init_cost = lam`` (None: unchanged)."""
    return s if lam is None else replace(s, init_cost=float(lam))


class CostState:
    """The schedule's state for R triggers: ``cost`` (R,), the counters of Wang et al.
    (``set_count``, ``up_count``, ``down_count``, ``up_flag``, ``down_flag``; the cost in
    float64, so that its multiples are exact to print), the early-stop
    counter and best L1 seen (``stop_count``, ``stop_best``), the best L1 of a successful check
    (``best``) and which triggers have stopped (``stopped``). All tensors (R,)."""

    def __init__(self, s: CostSchedule, r: int, device: torch.device | str = "cpu") -> None:
        self.s = s
        start = 0.0 if (s.reset_to_zero and s.adaptive) else s.init_cost
        self.cost = torch.full((r,), start, dtype=torch.float64, device=device)
        z = torch.zeros(r, dtype=torch.long, device=device)
        f = torch.zeros(r, dtype=torch.bool, device=device)
        self.set_count, self.up_count = z.clone(), z.clone()
        self.down_count, self.stop_count = z.clone(), z.clone()
        self.up_flag, self.down_flag, self.stopped = f.clone(), f.clone(), f.clone()
        self.best = torch.full((r,), math.inf, device=device)
        self.stop_best = torch.full((r,), math.inf, device=device)

    def check(self, ok: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
        """One check of the triggers still running: ``ok`` (R,) bool, the ASR reached the
        threshold; ``l1`` (R,) their mask L1. Updates the best L1, the early-stop state and the
        cost in Wang et al.'s order; returns ``better`` (R,): the triggers whose current state
        is the new best. Stopped triggers are left as they are."""
        s, run = self.s, ~self.stopped
        better = run & ok & (l1 < self.best)
        self.best = torch.where(better, l1, self.best)
        if s.early_stop:
            found = run & torch.isfinite(self.best)
            flat = self.best >= s.early_stop_threshold * self.stop_best
            self.stop_count = torch.where(found, torch.where(flat, self.stop_count + 1, 0),
                                          self.stop_count)
            self.stop_best = torch.where(run, torch.minimum(self.best, self.stop_best),
                                         self.stop_best)
            self.stopped |= (run & self.up_flag & self.down_flag
                             & (self.stop_count >= s.early_stop_patience))
        if not s.adaptive:
            return better
        live = run & ~self.stopped
        zero = live & (self.cost == 0) & ok
        self.set_count = torch.where(zero, self.set_count + 1,
                                     torch.where(live, 0, self.set_count))
        init = zero & (self.set_count >= s.patience)
        self.cost = torch.where(init, s.init_cost, self.cost)
        for name in ("up_count", "down_count"):
            setattr(self, name, torch.where(init, 0, getattr(self, name)))
        self.up_flag &= ~init
        self.down_flag &= ~init
        self.up_count = torch.where(live, torch.where(ok, self.up_count + 1, 0), self.up_count)
        self.down_count = torch.where(live, torch.where(ok, 0, self.down_count + 1),
                                      self.down_count)
        up = live & (self.up_count >= s.patience)
        down = live & ~up & (self.down_count >= s.patience)
        self.cost = torch.where(up, self.cost * s.up, torch.where(down, self.cost / s.down,
                                                                   self.cost))
        self.up_count = torch.where(up, 0, self.up_count)
        self.down_count = torch.where(down, 0, self.down_count)
        self.up_flag |= up
        self.down_flag |= down
        return better


def converged_check(best_l1: list[float], *, tol: float = 0.01) -> int:
    """The first check after which the best mask L1 never drops by more than ``tol``
    (relative) again: the index into ``best_l1`` (the best L1 after each check, inf before a
    trigger is found) from which the detector's number no longer moves; ``len(best_l1)``
    when no trigger was found or the last check still improved it by more than ``tol``.

    Example:
        >>> converged_check([math.inf, 40.0, 20.0, 19.9, 19.9])
        2
    """
    last = len(best_l1)
    for i in range(len(best_l1) - 1, -1, -1):
        if not math.isfinite(best_l1[i]):
            break
        if any(v < (1 - tol) * best_l1[i] for v in best_l1[i + 1:]):
            break
        last = i
    if last == len(best_l1) - 1 and last > 0 and best_l1[-1] < (1 - tol) * best_l1[-2]:
        return len(best_l1)
    return last
