"""Pass counting: :func:`count_passes` counts each forward and backward pass of a model in
examples, exactly, for known call patterns; every attack's count is the one its algorithm
implies (PGD, FGSM, APGD, APGD-T derived by hand from their loops); the suite's total is the
sum of its parts and is what a counter around it measures; the checks are counted apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from eisbench.attacks import apgd, apgd_t, count_passes, fgsm, pgd
from eisbench.evaluation import evaluate_robustness, run_suite
from eisbench.models.core import Scaled


class OneHot(nn.Module):
    """logits_k = scale * x_k on (B, 1, 2, 2) images: class k is the image lit at pixel k.

    On one-hot images a budget of eps < 0.5 can never flip it (the true pixel stays above
    1 - eps, every other below eps): every attack runs its full course on every example."""

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(scale * torch.eye(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))  # (B, 4)


def one_hot(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 4  # (n,)
    return torch.eye(4)[y].view(n, 1, 2, 2), y


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


# --- the counter on call patterns with known answers ---------------------------------------

def test_forwards_count_batch_rows_and_no_grad_counts_no_backward() -> None:
    net, (x, _) = OneHot(), one_hot(5)
    with count_passes(net) as p:
        for _ in range(3):
            net(x)  # grad mode, never back-propagated: forward only
        with torch.no_grad():
            net(x[:2])
    assert (p.forward, p.backward) == (3 * 5 + 2, 0)


def test_one_backward_through_a_b_by_k_output_is_b_example_backwards() -> None:
    net, (x, y) = OneHot(), one_hot(6)
    xa = x.clone().requires_grad_(True)
    with count_passes(net) as p:
        out = net(xa)  # (6, 4)
        (g,) = torch.autograd.grad(out.sum(), xa)  # one backward: 6, not 24
        loss = nn.functional.cross_entropy(net(xa[:4]), y[:4])
        loss.backward()  # .backward() counts as autograd.grad does
        with torch.no_grad():
            net(xa)
    assert (p.forward, p.backward) == (6 + 4 + 6, 6 + 4)
    before = net(xa)
    with count_passes(net) as p:
        out = net(xa)
        out.sum().backward(retain_graph=True)
        out.sum().backward()  # a second backward through the same output: counted again
        before.sum().backward()  # the output of a call before the block: not counted
    assert (p.forward, p.backward) == (6, 12)


def test_a_backward_after_the_block_is_not_counted() -> None:
    net, (x, _) = OneHot(), one_hot(3)
    with count_passes(net) as p:
        out = net(x.requires_grad_(True))
    out.sum().backward()
    assert (p.forward, p.backward) == (3, 0)


def test_counters_nest_and_leave_no_hooks_also_on_errors() -> None:
    net, (x, _) = OneHot(), one_hot(4)
    before = hooks(net)
    with count_passes(net) as outer:
        net(x)
        with count_passes(net) as inner:
            net(x[:1]).sum().backward()
        net(x[:2])
    assert (outer.forward, outer.backward) == (4 + 1 + 2, 1)
    assert (inner.forward, inner.backward) == (1, 1)
    with pytest.raises(RuntimeError, match="boom"), count_passes(net) as p:
        net(x)
        raise RuntimeError("boom")
    assert hooks(net) == before
    net(x)  # after the block: no change
    assert (p.forward, p.backward) == (4, 0)


def test_any_module_counts_at_its_own_call() -> None:
    """A wrapped model (Scaled) counts once per call, however many modules it holds; a model
    with several outputs counts one backward per backward call; a model returning its input
    leaves no hook on the caller's tensor."""
    net, (x, _) = OneHot(), one_hot(3)
    wrapped = Scaled(net, 1.0)
    xa = x.clone().requires_grad_(True)
    with count_passes(wrapped) as p, count_passes(net) as q:
        torch.autograd.grad(wrapped(xa).sum(), xa)
    assert (p.forward, p.backward) == (3, 3) == (q.forward, q.backward)

    class Two(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            out = net(x)
            return out, {"double": 2 * out}

    two = Two()
    with count_passes(two) as p:
        a, b = two(xa)
        (a.sum() + b["double"].sum()).backward()
        _, b = two(xa)
        b["double"].sum().backward()
    assert (p.forward, p.backward) == (6, 6)
    ident, leaf = nn.Identity(), torch.rand(2, 3, requires_grad=True)
    with count_passes(ident) as p:
        ident(leaf).sum().backward()
    assert (p.forward, p.backward) == (2, 2) and not leaf._backward_hooks


def test_a_peer_style_attack_loop_counts_the_same_as_eisbench_pgd() -> None:
    """A foreign PGD written as torchattacks writes it (loss.backward on the images, sign step,
    clamp) does the same work as eisbench's PGD without early exit: equal counts at the model,
    apart from eisbench's final check of success (one forward per example)."""
    net, (x, y) = OneHot(), one_hot(8)
    eps, alpha, steps = 0.3, 0.05, 5
    with count_passes(net) as peer:
        adv = x.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            nn.functional.cross_entropy(net(adv), y).backward()
            assert adv.grad is not None
            adv = (x + (adv.detach() + alpha * adv.grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    with count_passes(net) as eis:
        pgd(net, x, y, eps=eps, step_size=alpha, steps=steps, random_start=False)
    assert (peer.forward, peer.backward) == (steps * 8, steps * 8)
    assert (eis.forward, eis.backward) == (peer.forward + 8, peer.backward)


# --- attacks: the counts their algorithms imply ----------------------------------------------

def pgd_passes(steps: int, runs: list[int]) -> tuple[int, int]:
    """PGD without early exit: each run on its m examples takes ``steps`` gradients (forward +
    backward) and one forward to judge its points; ``runs``: the examples of each run."""
    return sum((steps + 1) * m for m in runs), sum(steps * m for m in runs)


@pytest.mark.parametrize(("steps", "restarts"), [(1, 1), (4, 1), (3, 3)])
def test_pgd_counts_what_its_loop_implies(steps: int, restarts: int) -> None:
    net, (x, y) = OneHot(), one_hot(12)  # unbreakable at eps 0.2: every restart runs on all
    with count_passes(net) as p:
        pgd(net, x, y, eps=0.2, steps=steps, restarts=restarts, early_exit=False,
            generator=torch.Generator().manual_seed(0))
    assert (p.forward, p.backward) == pgd_passes(steps, [12] * restarts)
    with count_passes(net) as p:
        fgsm(net, x, y, eps=0.2)
    assert (p.forward, p.backward) == (2 * 12, 12)


def test_pgd_restarts_run_only_on_what_the_first_run_left_unbroken() -> None:
    net, (x, y) = OneHot(scale=1.0), one_hot(40)
    kw = {"eps": 0.55, "steps": 2, "step_size": 0.1, "early_exit": False}
    first = pgd(net, x, y, generator=torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    left = int((net(first).argmax(1) == y).sum())
    assert 0 < left < 40  # both branches of the restart are exercised
    with count_passes(net) as p:
        pgd(net, x, y, restarts=2, generator=torch.Generator().manual_seed(3),
            **kw)  # type: ignore[arg-type]
    assert (p.forward, p.backward) == pgd_passes(2, [40, left])


def test_a_count_one_step_off_fails() -> None:
    """The expected counts tell ``steps`` from ``steps`` +- 1, so an attack that ran one step
    too many or too few (or one judging forward too many) cannot match them."""
    net, (x, y) = OneHot(), one_hot(8)
    want = pgd_passes(5, [8])
    for steps in (4, 6):
        with count_passes(net) as p:
            pgd(net, x, y, eps=0.2, steps=steps, early_exit=False)
        assert (p.forward, p.backward) != want
    with count_passes(net) as p:
        pgd(net, x, y, eps=0.2, steps=5, early_exit=False)
        net(x[:1])  # one stray forward of one example
    assert (p.forward, p.backward) != want and (p.forward - 1, p.backward) == want


def test_apgd_counts_what_its_loop_implies() -> None:
    """APGD: one gradient at the start, one per step on the examples not yet fooled, no
    judging forward (the last gradient's logits judge); restarts rerun the unbroken. The DLR
    loss first reads the class count (one forward of one example). APGD-T also predicts the
    clean batch (n forwards), then runs each target on the clean-correct unbroken ones."""
    n, steps = 8, 6
    net, (x, y) = OneHot(), one_hot(n)
    with count_passes(net) as p:
        apgd(net, x, y, eps=0.2, steps=steps, restarts=2, generator=torch.Generator())
    assert (p.forward, p.backward) == (2 * (steps + 1) * n, 2 * (steps + 1) * n)
    with count_passes(net) as p:
        apgd(net, x, y, eps=0.2, steps=steps, loss="dlr", generator=torch.Generator())
    assert (p.forward, p.backward) == (1 + (steps + 1) * n, (steps + 1) * n)
    with count_passes(net) as p:
        apgd_t(net, x, y, eps=0.2, steps=steps, n_targets=2, generator=torch.Generator())
    assert (p.forward, p.backward) == (1 + n + 2 * (steps + 1) * n, 2 * (steps + 1) * n)
    with count_passes(net) as p:  # 9 targets asked, 3 other classes exist
        apgd_t(net, x, y, eps=0.2, steps=steps, n_targets=9, generator=torch.Generator())
    assert p.backward == 3 * (steps + 1) * n


# --- the suite and the evaluation ----------------------------------------------------------

def test_the_suite_counts_each_step_and_its_total_is_their_sum() -> None:
    n, s = 10, 3
    net, (x, y) = OneHot(), one_hot(n)
    with count_passes(net) as outside:
        res = run_suite(net, x, y, eps=0.2, batch_size=4,
                        steps=(("fgsm", {}), ("pgd", {"steps": s, "early_exit": False})))
    f, p = res.per_attack
    # FGSM: a gradient and its own judging forward; the suite judges each batch once more
    assert (f["forward"], f["backward"]) == (3 * n, n)
    assert (p["forward"], p["backward"]) == (n * (s + 2), n * s)
    assert (p["forward_per_example"], p["backward_per_example"]) == (s + 2, s)
    assert res.clean_passes is not None and res.passes is not None
    assert (res.clean_passes.forward, res.clean_passes.backward) == (n, 0)
    parts = (res.clean_passes.forward + f["forward"] + p["forward"], f["backward"] + p["backward"])
    assert (res.passes.forward, res.passes.backward) == parts
    assert (outside.forward, outside.backward) == parts  # nothing uncounted
    total = res.passes_dict()
    assert total is not None and total["n_attacked"] == n and total["seconds"] > 0
    assert total["forward_per_example"] == parts[0] / n
    lines = repr(res).splitlines()
    assert lines[2].startswith(f"passes forward/backward per attacked example: fgsm 3.0/1.0 in "
                               f"{f['seconds']:.2f} s, pgd {s + 2:.1f}/{s:.1f} in ")
    assert lines[3] == (f"total passes {parts[0]}/{parts[1]} ({parts[0] / n:.1f}/"
                        f"{parts[1] / n:.1f} per attacked example, n={n}) in "
                        f"{res.seconds:.2f} s")


def test_a_suite_step_on_no_example_has_no_rate() -> None:
    net, (x, y) = OneHot(), one_hot(4)
    res = run_suite(net, x, 3 - y, eps=0.2, steps=(("fgsm", {}),))  # nothing clean-correct
    assert res.per_attack[0]["forward"] == 0 and res.per_attack[0]["forward_per_example"] is None
    assert "fgsm -/- in" in repr(res)


def test_the_evaluation_counts_its_checks_apart_and_records_everything() -> None:
    n = 6
    net, (x, y) = OneHot(), one_hot(n)
    with count_passes(net) as outside:
        ev = evaluate_robustness(net, x, y, eps=0.2, steps=(("fgsm", {}),), n_checks=4)
    assert ev.result.passes is not None and ev.check_passes is not None
    # everything: the suite, the checks, and one forward of one example to read the classes
    assert outside.forward == ev.result.passes.forward + ev.check_passes.forward + 1
    assert outside.backward == ev.result.passes.backward + ev.check_passes.backward
    assert ev.check_passes.backward > 0 and ev.result.passes.backward == n
    d = json.loads(json.dumps(ev.to_dict()))
    assert d["passes"]["forward"] == ev.result.passes.forward and d["passes"]["n_attacked"] == n
    assert d["check_passes"]["backward"] == ev.check_passes.backward
    assert d["per_attack"][0]["backward_per_example"] == 1.0
    assert "checks' own passes forward/backward " in repr(ev)


def test_the_evaluate_stage_records_the_passes_of_either_path(tmp_path: Path) -> None:
    """What goes into a record: a suite's passes and its checks' apart, or a single attack's
    (PGD-3 with early exit on unbreakable images: 3 gradients, its judging forward and the
    evaluation's, per image)."""
    from eisbench.attacks import AttackConfig
    from eisbench.runs.stages import Context, Tensors, evaluate_stage
    from eisbench.runs.store import StageLog, Store

    net, (x, y) = OneHot(), one_hot(8)
    ctx = Context(store=Store(tmp_path), log=StageLog(), device=torch.device("cpu"))
    test = Tensors(x, y, "one-hot:8")
    attack = AttackConfig(name="pgd", eps=0.2, steps=3)
    single = evaluate_stage(ctx, model=net, model_key="one-hot", test=test, n_robust=8,
                            attack=attack, seed=0, desc="pgd", std=False)
    assert {k: single["passes"][k] for k in ("forward", "backward", "forward_per_example")} == {
        "forward": 8 * 5, "backward": 8 * 3, "forward_per_example": 5.0}
    suite = evaluate_stage(ctx, model=net, model_key="one-hot", test=test, n_robust=8,
                           attack=attack, seed=0, desc="suite", std=False, suite="fast",
                           n_checks=4)
    assert suite["passes"]["n_attacked"] == 8 and suite["check_passes"]["backward"] > 0
    assert suite["passes"]["backward"] == sum(a["backward"] for a in suite["per_attack"])
