"""Named attack suites: several attacks in sequence, each only on the points still unbroken.

The ``standard`` suite follows AutoAttack's standard version (Croce & Hein 2020) with eisbench's
own implementations: APGD-CE, APGD-T (targeted DLR, 9 target classes), FMN (a minimum-norm
attack in the role of FAB-T) and Square (5000 queries, gradient-free). Robust accuracy is the
per-example worst case over all attacks.

The ``adaptive`` suite spends fewer passes where they do not pay: APGD-CE (100 steps), then
``apgd-t-osd`` (:mod:`eisbench.attacks.osd`): targeted APGD towards MALT's targets (the
smallest linearised distance to a boundary first, Melamed et al. 2024) in 3 restarts of 100
steps, restart r only on the ``0.5**r`` of the unbroken points closest to the boundary (A3's
online discarding, Liu et al. 2022), and Square with 1000 queries on the survivors (gradient-free,
so the black-box-not-stronger check can still fail). ``benchmarks/adaptive_suite.py`` measures
it against ``standard`` and AutoAttack's chain.

Every suite states the fewest classes its attacks work with (metadata ``min_classes``, checked
against its attacks where it is registered). ``standard`` and ``fast`` need 4 (targeted DLR);
on fewer classes :func:`~eisbench.evaluation.evaluate_robustness` skips the attacks that cannot
run and the ``enough-classes`` check fails. ``binary`` is the suite for 2- and 3-class tasks:
only untargeted attacks (for 2 classes a targeted attack is the untargeted one), APGD-CE with
5 restarts in place of APGD-T's targets, FMN, and Square (gradient-free, so the
black-box-not-stronger check can run).

A :class:`SuiteResult` prints as a short summary (:func:`summary`): robust accuracy with its
Wilson 95% interval and n, clean accuracy, what each attack broke, and the work: forward and
backward passes of the model per attacked example and wall time, per attack and in total
(counted at the model by :func:`~eisbench.attacks.count_passes`; example: :func:`run_suite`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from eisbench.attacks import ATTACKS, Passes, assert_within_budget, check_inputs, count_passes
from eisbench.attacks.projection import BudgetViolation
from eisbench.core.progress import progress
from eisbench.core.registry import MetaKey, Registry
from eisbench.core.stats import wilson_ci
from eisbench.core.tensors import eval_mode

Step = tuple[str, dict[str, Any]]  # (registered attack, hyper-parameters)
SUITE_SCHEMA = {"min_classes": MetaKey(int, doc="the fewest classes every attack of the suite "
                                       "works with (see step_min_classes)")}
SUITES: Registry[tuple[Step, ...]] = Registry("attack suite", schema=SUITE_SCHEMA)
DLR_MIN_CLASSES = 3  # apgd's DLR loss reads the third-largest logit


def step_min_classes(step: Step) -> int:
    """The fewest classes one step of a plan runs on: its attack's ``min_classes`` (APGD-T's
    targeted DLR: 4), at least 3 for a DLR loss (``("apgd", {"loss": "dlr"})``).

    Example:
        >>> step_min_classes(("apgd", {"loss": "dlr"})), step_min_classes(("apgd-t", {}))
        (3, 4)
    """
    name, hyper = step
    need = int(ATTACKS.meta(name)["min_classes"])
    return max(need, DLR_MIN_CLASSES) if hyper.get("loss") == "dlr" else need


def runnable(plan: Sequence[Step], num_classes: int) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """The steps of ``plan`` that run on ``num_classes`` classes, and a note on each skipped
    one (``"apgd-t (needs >= 4 classes)"``)."""
    keep = tuple(s for s in plan if step_min_classes(s) <= num_classes)
    skipped = tuple(f"{s[0]} (needs >= {step_min_classes(s)} classes)" for s in plan
                    if step_min_classes(s) > num_classes)
    return keep, skipped


def register_suite(name: str, steps: tuple[Step, ...], *, min_classes: int) -> None:
    """Register ``steps`` as suite ``name``; ``min_classes`` must be the most any step needs
    (:func:`step_min_classes`), so the stated fact cannot drift from the attacks."""
    need = max((step_min_classes(s) for s in steps), default=2)
    if min_classes != need:
        raise ValueError(f"attack suite {name!r} states min_classes={min_classes}, but its "
                         f"attacks need {need} classes: state {need}")
    SUITES.register(name, min_classes=min_classes)(steps)


def suites_for(num_classes: int) -> list[str]:
    """The registered suites whose every attack runs on ``num_classes`` classes.

    Example:
        >>> "binary" in suites_for(2) and "standard" not in suites_for(2)
        True
    """
    return [n for n in SUITES.names() if SUITES.meta(n)["min_classes"] <= num_classes]


register_suite("standard", (
    ("apgd", {"loss": "ce", "steps": 100}),
    ("apgd-t", {"n_targets": 9, "steps": 100}),
    ("fmn", {"steps": 100}),
    ("square", {"n_queries": 5000}),
), min_classes=4)
register_suite("fast", (  # a cheaper screen for inner loops; not for reported numbers
    ("apgd", {"loss": "ce", "steps": 50}),
    ("apgd-t", {"n_targets": 3, "steps": 50}),
    # a short gradient-free attack, so that the black-box-not-stronger check can fail here too
    ("square", {"n_queries": 100}),
), min_classes=4)
register_suite("adaptive", (  # the standard suite's number at a fraction of its work
    ("apgd", {"loss": "ce", "steps": 100}),
    # MALT's targets, each restart on the unbroken points closest to the boundary (A3's OSD)
    ("apgd-t-osd", {"steps": 100, "restarts": 3, "n_targets": 3, "keep": 0.5,
                    "target_selection": "malt"}),
    # gradient-free, on the survivors only, so that the black-box-not-stronger check can fail
    ("square", {"n_queries": 1000}),
), min_classes=4)
register_suite("binary", (  # 2 or 3 classes: untargeted only, restarts in place of targets
    ("apgd", {"loss": "ce", "steps": 100, "restarts": 5}),
    ("fmn", {"steps": 100}),
    ("square", {"n_queries": 5000}),
), min_classes=2)


@dataclass
class SuiteResult:
    """Outcome of a suite on N examples."""

    suite: str
    norm: str
    eps: float
    clean: torch.Tensor  # (N,) bool: correctly classified without attack
    robust: torch.Tensor  # (N,) bool: correct under every attack of the suite
    x_adv: torch.Tensor  # (N, C, H, W): the first adversarial example found, else x
    broken_by: list[str]  # (N,) name of the attack that broke each example ("" if none/clean)
    # per attack: name, hyper, n_in, n_broken, seconds, and (counted) forward, backward and both
    # per example it attacked (forward_per_example, backward_per_example)
    per_attack: list[dict[str, Any]] = field(default_factory=list)
    passes: Passes | None = None  # the whole suite's passes of the model (None: not counted)
    clean_passes: Passes | None = None  # those of the clean predictions, before any attack
    seconds: float | None = None  # the whole suite's wall time

    @property
    def n_attacked(self) -> int:
        """Examples the suite attacked: the clean-correct ones."""
        return int(self.clean.sum())

    @property
    def robust_acc(self) -> float:
        # in double: a float32 mean of 1 in 20 is 0.0500000007, which a "<= 0.05" check refuses
        return float(self.robust.double().mean()) if len(self.robust) else float("nan")

    @property
    def clean_acc(self) -> float:
        return float(self.clean.double().mean()) if len(self.clean) else float("nan")

    def passes_dict(self) -> dict[str, Any] | None:
        """The whole suite's work, JSON-able: forward and backward passes of the model (in
        examples), both per attacked example, ``n_attacked``, the clean predictions' forward
        passes and the wall time; None when not counted (a result built by hand)."""
        if self.passes is None:
            return None
        clean = self.clean_passes.forward if self.clean_passes is not None else None
        return self.passes.to_dict(per=self.n_attacked) | {
            "n_attacked": self.n_attacked, "clean_forward": clean, "seconds": self.seconds}

    def __repr__(self) -> str:
        return summary(self)


class Check(Protocol):
    """What :func:`summary` reads of a sanity check's outcome (``passed`` None: not run)."""

    @property
    def name(self) -> str: ...

    @property
    def passed(self) -> bool | None: ...

    @property
    def detail(self) -> str: ...


def summary(result: SuiteResult, checks: Sequence[Check] = (), *,
            check_passes: Passes | None = None, check_seconds: float | None = None) -> str:
    """A few lines: robust accuracy with its Wilson 95% CI and n, clean accuracy, what each
    attack broke, the passes of the model per attack and in total with their wall time (where
    counted), the checks' own passes (given ``check_passes``) and (given ``checks``) how many
    sanity checks passed, with each failure."""
    n = len(result.robust)
    if n == 0:
        return f"robust accuracy: no images; suite {result.suite}"
    lo, hi = wilson_ci(int(result.robust.sum()), n)
    lines = [f"robust accuracy {result.robust_acc:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={n}); "
             f"clean accuracy {result.clean_acc:.3f}",
             "attacks: " + ", ".join(f"{a['name']} broke {a['n_broken']} of {a['n_in']}"
                                     for a in result.per_attack)
             + f"; {result.norm} eps={result.eps:g}"]
    if result.passes is not None:
        lines.append(_passes_line(result))
    if check_passes is not None:
        lines.append(f"checks' own passes forward/backward {check_passes.forward}/"
                     f"{check_passes.backward} in {check_seconds or 0.0:.2f} s")
    if checks:
        failed = [c for c in checks if c.passed is False]
        n_pass = sum(c.passed is True for c in checks)
        na = [c.name for c in checks if c.passed is None]
        lines.append(f"checks: {n_pass} passed, {len(failed)} failed"
                     + (f", {len(na)} could not run ({', '.join(na)})" if na else ""))
        lines += [f"  FAILED {c.name}: {c.detail}" for c in failed]
    return "\n".join(lines)


def _rate(a: dict[str, Any], key: str) -> str:
    v = a.get(key)
    return "-" if v is None else f"{v:.1f}"


def _passes_line(result: SuiteResult) -> str:
    """Two lines, e.g. ``passes forward/backward per attacked example: fgsm 3.0/1.0 in 0.01 s,
    ...`` and ``total passes 220/52 (4.2/1.0 per attacked example, n=52) in 0.02 s``."""
    assert result.passes is not None
    d = result.passes_dict() or {}
    steps = ", ".join(f"{a['name']} {_rate(a, 'forward_per_example')}/"
                      f"{_rate(a, 'backward_per_example')} in {a['seconds']:.2f} s"
                      for a in result.per_attack if "forward" in a)
    return (f"passes forward/backward per attacked example: {steps or 'no attack'}\n"
            f"total passes {result.passes.forward}/{result.passes.backward} "
            f"({_rate(d, 'forward_per_example')}/{_rate(d, 'backward_per_example')} per attacked "
            f"example, n={result.n_attacked}) in {result.seconds or 0.0:.2f} s")


def steps_of(suite: str) -> tuple[Step, ...]:
    return SUITES.get(suite)


def describe_suite(suite: str, norm: str, eps: float) -> str:
    """E.g. ``suite fast (apgd loss=ce steps=50; apgd-t n_targets=3 steps=50; square
    n_queries=100) linf eps=0.15``."""
    parts = "; ".join(" ".join([name, *(f"{k}={v}" for k, v in hyper.items())])
                      for name, hyper in steps_of(suite))
    return f"suite {suite} ({parts}) {norm} eps={eps:g}"


def run_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
              norm: str = "linf", suite: str = "standard", batch_size: int = 500, seed: int = 0,
              device: str | torch.device = "cpu",
              steps: tuple[Step, ...] | None = None) -> SuiteResult:
    """Run the attacks of ``suite`` (or the explicit ``steps``) on images x (N, C, H, W) in [0,1]
    with labels y (N,), each attack only on the examples that every earlier attack left
    correctly classified. Returns a :class:`SuiteResult` with per-example outcomes.

    Example (a linear model trained on the 8x8 digits; FGSM, then PGD on what FGSM left):
        >>> from eisbench import data
        >>> from eisbench.training import TrainConfig, train
        >>> d = data.load("digits")
        >>> _ = torch.manual_seed(0)
        >>> net = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), d.x_train, d.y_train,
        ...             cfg=TrainConfig(epochs=3, lr=1e-2), seed=0)
        >>> run_suite(net, d.x_test[:64], d.y_test[:64], eps=0.1,
        ...           steps=(("fgsm", {}), ("pgd", {"steps": 10})))
        robust accuracy 0.453 (95% CI 0.337-0.574, n=64); clean accuracy 0.812
        attacks: fgsm broke 23 of 52, pgd broke 0 of 29; linf eps=0.1
        passes forward/backward per attacked example: fgsm 3.0/1.0 in ... s, pgd 12.0/10.0 in ... s
        total passes 568/342 (10.9/6.6 per attacked example, n=52) in ... s

    Passes count examples through the model (:func:`~eisbench.attacks.count_passes`): FGSM is
    one gradient (1 forward, 1 backward), its own check of success (1 forward) and the suite's
    (1 forward); PGD-10 is 10 gradients, its own final check and the suite's; the total adds the
    64 clean predictions (64 + 52 * 3 + 29 * 12 = 568).
    """
    check_inputs(x, y, norm=norm, eps=eps)
    plan = steps if steps is not None else steps_of(suite)
    n = len(x)
    t_all = time.perf_counter()
    with count_passes(model) as total:
        with eval_mode(model), torch.no_grad(), count_passes(model) as clean_passes:
            clean = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu()
                               == y[i:i + batch_size] for i in range(0, n, batch_size)]) \
                if n else torch.zeros(0, dtype=torch.bool)
        robust = clean.clone()
        x_adv = x.clone()
        broken_by = [""] * n
        per_attack = [_step(model, x, y, robust, x_adv, broken_by, name, hyper, eps=eps,
                            norm=norm, batch_size=batch_size, device=device, desc=suite,
                            gen=torch.Generator().manual_seed(seed * 1000 + j))
                      for j, (name, hyper) in enumerate(plan)]
    return SuiteResult(suite=suite if steps is None else "custom", norm=norm, eps=eps,
                       clean=clean, robust=robust, x_adv=x_adv, broken_by=broken_by,
                       per_attack=per_attack, passes=total, clean_passes=clean_passes,
                       seconds=time.perf_counter() - t_all)


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor,
          x_adv: torch.Tensor, broken_by: list[str], name: str, hyper: dict[str, Any], *,
          eps: float, norm: str, batch_size: int, device: str | torch.device, desc: str,
          gen: torch.Generator) -> dict[str, Any]:
    """One attack of a suite on the examples still ``robust`` (N,), in batches: marks what it
    breaks in ``robust``, ``x_adv`` (N, C, H, W) and ``broken_by`` (in place) and returns its
    entry of ``per_attack``, with its passes of the model and wall time."""
    fn = ATTACKS.get(name)
    todo = robust.nonzero().flatten()
    t0 = time.perf_counter()
    n_broken = 0
    violations: list[str] = []
    with count_passes(model) as passes:
        for i in progress(range(0, len(todo), batch_size), desc=f"{desc}: {name}",
                          unit="batch"):
            idx = todo[i:i + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            try:
                xa = fn(model, xb, yb, eps=eps, norm=norm, generator=gen, **hyper)
                assert_within_budget(xb, xa, norm=norm, eps=eps)
            except BudgetViolation as e:  # recorded for the within-budget check, never counted
                violations.append(f"examples {int(idx[0])}..{int(idx[-1])}: {e}")
                continue
            with eval_mode(model), torch.no_grad():
                ok = (model(xa).argmax(1) == yb).cpu()
            hit = idx[~ok]
            x_adv[hit] = xa[~ok].cpu()
            robust[hit] = False
            for k in hit.tolist():
                broken_by[k] = name
            n_broken += len(hit)
    return ({"name": name, "hyper": dict(hyper), "n_in": len(todo), "n_broken": n_broken,
             "seconds": time.perf_counter() - t0} | passes.to_dict(per=len(todo))
            | ({"budget_violations": violations} if violations else {}))
