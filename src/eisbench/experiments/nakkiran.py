"""Nakkiran 2019 (Distill response to Ilyas et al.): adversarial examples that are bugs.

(a) Non-transferable targeted attack. Per seed: a target model f, an ensemble f_1..f_k and
    held-out models g, all independently trained copies of one architecture on the same data.
    Plain targeted L2 PGD minimises L(f, x', t); the non-transferable attack minimises
    ``L(f, x', t) + w * mean_i L(f_i, x', y)`` (fool f, keep every f_i right), with the same
    budget and steps. Targets are t = y + 1 mod K (D_det). Success: f predicts t. Transfer:
    the fraction of successful examples that a g (never seen by the attack) also labels t,
    averaged over the held-out models.
    Each attack's outputs, labelled t, form a D_det; a fresh model trained on it is tested on
    the original test set. Nakkiran (CIFAR-10): transfer 52% vs 0.8%, D_det 23.7% vs 2.5%.
(b) Adversarial squares: a two-class distribution of ``side x side`` images, every pixel at
    level ``low`` (class 0) or ``high`` (class 1) plus uniform noise of half-width ``noise``.
    Every pixel alone separates the classes with margin ``(high - low) / 2 - noise`` and the
    mean-pixel threshold (the robust classifier) with a larger one, so every useful feature is
    robust; a network fit to (near) zero loss on a few samples is attacked at an Linf eps far
    below those margins, and the robust classifier's robust accuracy at that eps is computed
    exactly (:mod:`eisbench.experiments.nakkiran_squares`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench import data as datasets
from eisbench.attacks.core import check_inputs
from eisbench.attacks.evaluate import AttackConfig
from eisbench.attacks.projection import assert_within_budget, project, steepest_direction
from eisbench.core.config import resolve_device, to_plain
from eisbench.core.progress import progress
from eisbench.core.tensors import eval_mode, predict
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.nakkiran_squares import SquaresConfig, squares_seed
from eisbench.models import ModelSpec
from eisbench.runs.claims import make_claim, metric_over_seeds, verdict
from eisbench.runs.record import (
    SCHEMA_VERSION,
    Claim,
    Metric,
    Record,
    git_state,
    library_versions,
    now,
)
from eisbench.runs.record import write as write_record
from eisbench.runs.stages import Context, Tensors, construct_stage, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig

LITERATURE = {"pgd/transfer_rate": 0.52, "non_transferable/transfer_rate": 0.008,
              "pgd/D_det_std_acc": 0.237, "non_transferable/D_det_std_acc": 0.025}
LITERATURE_SOURCE = "Nakkiran 2019, Distill: CIFAR-10 (transfer rates; D_det test accuracy)"
ATTACKS_RUN = ("pgd", "non_transferable")
HELD_OUT = 900  # model index of the first held-out copy g (the ensemble uses 1..k)
BARELY, CLEARLY = 0.05, 0.20  # transfer rates that count as "barely" and "clearly" transferring


@dataclass(frozen=True)
class NakkiranConfig:
    """Every hyper-parameter of the experiment (all of them are written to the record)."""

    dataset: str = "mnist"
    data_root: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    arch: str = "mlp"
    n_train: int | None = 6000  # images of D the models train on (None: all; capped at |D|)
    n_test: int | None = None  # test images (None: all)
    n_construct: int = 1000  # images attacked, the seeds of each D_det (capped at n_train)
    ensemble: int = 3  # k independently trained copies in the non-transferable loss
    heldout: int = 2  # independently trained copies g that only measure transfer (averaged)
    train: TrainConfig = TrainConfig(epochs=3, lr=3e-3, batch_size=256)  # f, f_i and g
    fresh_train: TrainConfig = TrainConfig(epochs=10, lr=2e-3)  # the models trained on D_det
    eps: float = 3.0  # L2 budget of both targeted attacks
    steps: int = 40
    step_size: float = 0.1875  # 2.5 eps / steps
    ensemble_weight: float = 1.0  # w in front of the ensemble's mean loss (Nakkiran: 1)
    squares: SquaresConfig = SquaresConfig()
    device: str = "cpu"


QUICK = NakkiranConfig()
FULL = NakkiranConfig(n_train=10000, n_construct=3000, ensemble=5, heldout=3,
                      fresh_train=TrainConfig(epochs=15, lr=2e-3), steps=50, step_size=0.15,
                      squares=SquaresConfig(n_test=2000, attack=AttackConfig(
                          name="pgd", norm="linf", eps=0.05, steps=50, restarts=3,
                          early_exit=True)))


def non_transferable_pgd(model: nn.Module, ensemble: Sequence[nn.Module], x: torch.Tensor,
                         y: torch.Tensor, target: torch.Tensor, *, eps: float, steps: int,
                         step_size: float, norm: str = "l2",
                         ensemble_weight: float = 1.0) -> torch.Tensor:
    """Targeted PGD that fools ``model`` but not ``ensemble`` (Nakkiran 2019).

    Minimises ``CE(model(x'), target) + ensemble_weight * mean_i CE(ensemble[i](x'), y)`` over
    the ``norm`` ball of radius ``eps`` around x (and the [0,1] box), from x itself, with
    ``steps`` normalised steepest-descent steps of ``step_size``; with an empty ensemble it is
    plain targeted PGD.

    Args:
        model: the target model, (B, C, H, W) images in [0,1] -> logits (B, K).
        ensemble: independently trained copies, same signature.
        x: clean images (B, C, H, W).  y: their true labels (B,).  target: targets (B,).

    Returns:
        x_adv (B, C, H, W) within the budget (asserted) and in [0,1].

    Example:
        >>> x_adv = non_transferable_pgd(f, [f1, f2, f3], x, y, (y + 1) % 10, eps=3.0,
        ...                              steps=60, step_size=0.125)
    """
    check_inputs(x, target, norm=norm, eps=eps)
    if y.shape != target.shape:
        raise ValueError(f"labels {tuple(y.shape)} and targets {tuple(target.shape)} differ")
    with contextlib.ExitStack() as stack:
        for m in (model, *ensemble):
            stack.enter_context(eval_mode(m))
        x_adv = x.clone()  # (B, C, H, W)
        for _ in range(steps):
            xa = x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(xa), target, reduction="sum")
            if ensemble:
                keep = sum(F.cross_entropy(m(xa), y, reduction="sum") for m in ensemble)
                loss = loss + ensemble_weight * keep / len(ensemble)
            (grad,) = torch.autograd.grad(loss, xa)  # (B, C, H, W)
            with torch.no_grad():
                x_adv = project(x, xa - step_size * steepest_direction(grad, norm), norm=norm,
                                eps=eps)
    x_adv = x_adv.detach()
    assert_within_budget(x, x_adv, norm=norm, eps=eps)
    return x_adv


def _non_transferable_stage(ctx: Context, *, model: tuple[nn.Module, str],
                            ensemble: Sequence[tuple[nn.Module, str]], data: Tensors,
                            num_classes: int, seed: int, hyper: dict[str, Any],
                            batch_size: int = 500) -> Tensors:
    """D_det of the non-transferable attack on ``data`` (cached): (x_adv, y + 1 mod K)."""
    target = (data.y + 1) % num_classes  # (N,)

    def compute(work: Path) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty_like(data.x)  # (N, C, H, W)
        dev = ctx.device
        for i in progress(range(0, len(data.x), batch_size), desc="non-transferable PGD"):
            sl = slice(i, i + batch_size)
            out[sl] = non_transferable_pgd(model[0], [m for m, _ in ensemble],
                                           data.x[sl].to(dev), data.y[sl].to(dev),
                                           target[sl].to(dev), **hyper).cpu()
        return out, target

    def save(out: tuple[torch.Tensor, torch.Tensor], d: Path) -> None:
        save_file({"x": out[0].contiguous(), "y": out[1].contiguous()}, str(d / "data.safetensors"))

    def load(d: Path) -> tuple[torch.Tensor, torch.Tensor]:
        t = load_file(str(d / "data.safetensors"))
        return t["x"], t["y"]

    (x, y), key = ctx.store.run(
        "construct", {"name": "nakkiran-non-transferable", "hyper": hyper, "seed": seed},
        inputs=(model[1], *(k for _, k in ensemble), data.key), compute=compute, save=save,
        load=load, log=ctx.log)
    return Tensors(x, y, key)


def _transfer(pred_target: torch.Tensor, pred_other: torch.Tensor, t: torch.Tensor) -> float:
    """Of the examples on which the target model predicts t, the fraction another model also
    labels t (0 when there is none)."""
    hit = pred_target == t
    return float((pred_other[hit] == t[hit]).float().sum() / max(int(hit.sum()), 1))


def run(cfg: NakkiranConfig, *, out: Path, store: Store) -> Record:
    """Both parts of Nakkiran's response for every seed; write ``out/record.json``."""
    t0, c0 = time.perf_counter(), time.process_time()
    dev = resolve_device(cfg.device)
    ctx = Context(store=store, log=StageLog(), device=dev)
    full = datasets.load(cfg.dataset, root=cfg.data_root)
    n_train = len(full.x_train) if cfg.n_train is None else min(cfg.n_train, len(full.x_train))
    n_test = len(full.x_test) if cfg.n_test is None else min(cfg.n_test, len(full.x_test))
    ds = full.subset(n_train=n_train, n_test=n_test)
    n_con, k_cls = min(cfg.n_construct, n_train), ds.num_classes
    dkey = f"{ds.name}:{ds.sha256}"
    train_d = Tensors(ds.x_train, ds.y_train, f"{dkey}:train:{n_train}")
    base = Tensors(ds.x_train[:n_con], ds.y_train[:n_con], f"{train_d.key}:first{n_con}")
    spec = ModelSpec(arch=cfg.arch, in_shape=ds.shape, num_classes=k_cls)
    hyper = {"eps": cfg.eps, "steps": cfg.steps, "step_size": cfg.step_size, "norm": "l2"}
    per_seed: list[dict[str, Any]] = []
    samples: dict[str, torch.Tensor] = {}
    t_mnist = 0.0
    for seed in cfg.seeds:
        ts = time.perf_counter()

        def model(j: int, role: str, seed: int = seed) -> tuple[nn.Module, str]:
            return train_stage(ctx, spec=spec, cfg=cfg.train, data=train_d, seed=seed * 1000 + j,
                               desc=f"[seed {seed}] {role}")

        f = model(0, "target model f")
        ens = [model(j, f"ensemble model f_{j}") for j in range(1, cfg.ensemble + 1)]
        gs = [model(HELD_OUT + j, f"held-out model g_{j + 1}") for j in range(cfg.heldout)]
        built = {
            "pgd": construct_stage(ctx, name="wrong-label", model=f[0], model_key=f[1],
                                   data=base, num_classes=k_cls, seed=seed,
                                   hyper={**hyper, "mode": "det"}),
            "non_transferable": _non_transferable_stage(
                ctx, model=f, ensemble=ens, data=base, num_classes=k_cls, seed=seed,
                hyper={**hyper, "ensemble_weight": cfg.ensemble_weight}),
        }
        row: dict[str, Any] = {
            "target_model_std_acc": float((predict(f[0], ds.x_test, device=dev)
                                           == ds.y_test).float().mean()),
            "heldout_model_std_acc": sum(float((predict(g, ds.x_test, device=dev)
                                                == ds.y_test).float().mean())
                                         for g, _ in gs) / len(gs)}
        for name, d in built.items():
            p_f = predict(f[0], d.x, device=dev)
            row[f"{name}/success_rate"] = float((p_f == d.y).float().mean())
            per_g = [_transfer(p_f, predict(g, d.x, device=dev), d.y) for g, _ in gs]
            row[f"{name}/transfer_rate"] = sum(per_g) / len(per_g)
            row[f"{name}/transfer_rate_per_heldout"] = per_g
            row[f"{name}/ensemble_transfer_rate"] = sum(
                _transfer(p_f, predict(m, d.x, device=dev), d.y) for m, _ in ens) / len(ens)
            row[f"{name}/l2_distance"] = float((d.x - base.x).flatten(1).norm(dim=1).mean())
            fresh, _ = train_stage(ctx, spec=spec, cfg=cfg.fresh_train, data=d, seed=seed,
                                   desc=f"[seed {seed}] fresh model on D_det ({name})")
            pred = predict(fresh, ds.x_test, device=dev)
            row[f"{name}/D_det_std_acc"] = float((pred == ds.y_test).float().mean())
            row[f"{name}/D_det_shifted_acc"] = float((pred == (ds.y_test + 1) % k_cls)
                                                     .float().mean())
        t_mnist += time.perf_counter() - ts
        sq_row, sq_samples = squares_seed(ctx, cfg.squares, seed)
        row.update({f"squares/{k}": v for k, v in sq_row.items()})
        per_seed.append(row)
        if seed == cfg.seeds[0]:
            samples = {"clean": base.x[:8], "labels": base.y[:8], **sq_samples,
                       **{name: d.x[:8] for name, d in built.items()},
                       **{f"{name}_pred_f": predict(f[0], d.x[:8], device=dev)
                          for name, d in built.items()},
                       **{f"{name}_pred_g": predict(gs[0][0], d.x[:8], device=dev)
                          for name, d in built.items()}}
    metrics = _aggregate(per_seed)
    wall = time.perf_counter() - t0
    rec: Record = {
        "schema_version": SCHEMA_VERSION, "experiment": "nakkiran", "created": now(),
        "config": to_plain(cfg), "seeds": list(cfg.seeds), "git": git_state(),
        "versions": library_versions(), "device": str(dev), "data": {ds.name: ds.sha256},
        "stages": ctx.log.entries, "wall_seconds": wall, "metrics": metrics,
        "claims": judge(metrics, num_classes=k_cls),
        "details": {"per_seed": per_seed, "literature": LITERATURE,
                    "literature_source": LITERATURE_SOURCE, "num_classes": k_cls,
                    "n_train": n_train, "n_test": n_test, "n_construct": n_con,
                    "seconds": {"models_attacks_D_det": t_mnist, "squares": wall - t_mnist,
                                "cpu_total": time.process_time() - c0},
                    "model_seeds": "seed*1000 + j: j=0 target f, j=1..k ensemble, "
                                   f"j={HELD_OUT}+i held-out g_i; D_det models: seed",
                    "transfer": "of the examples f labels with the target, the fraction a "
                                "held-out copy g (or an ensemble member) also labels with the "
                                "target, averaged over the held-out copies (or the members)",
                    "squares_attack": cfg.squares.attack.describe()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_record(rec, out / "record.json")
    save_file({k: v.contiguous() for k, v in samples.items()}, str(out / "samples.safetensors"))
    return rec


def _aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for key in per_seed[0]:
        if isinstance(per_seed[0][key], list):
            continue
        vals = [float(r[key]) for r in per_seed]
        if key.endswith(("loss", "distance")):
            out[f"nakkiran/{key}"] = metric_over_seeds(vals, higher_is_better=False,
                                                       upper=float("inf"))
        elif "margin" in key:
            out[f"nakkiran/{key}"] = metric_over_seeds(vals, upper=float("inf"))
        else:
            out[f"nakkiran/{key}"] = metric_over_seeds(vals)
    return out


def judge(metrics: dict[str, Metric], *, num_classes: int) -> list[Claim]:
    """Verdicts by rules fixed in advance, on 95% CIs over seeds (BARELY = 0.05, CLEARLY =
    0.20, K classes):

    - Plain targeted PGD transfers: reproduced if its transfer rate CI lower > CLEARLY; not
      reproduced if its CI upper <= BARELY (features / bugs).
    - Non-transferable examples reach the target but barely transfer: reproduced if their
      success rate CI lower >= 0.5 and transfer rate CI upper <= BARELY; not reproduced if the
      success CI upper < 0.5 or the transfer CI lower > BARELY (bugs / inconclusive).
    - D_det of plain PGD is well above chance on the test set: reproduced if its accuracy CI
      lower > 2/K; not reproduced if its CI upper <= 2/K (features / bugs).
    - D_det of the non-transferable attack is not: reproduced if its accuracy CI upper <= 2/K;
      not reproduced if its CI lower > 2/K (bugs / features).
    - Adversarial squares: reproduced if the network's clean accuracy (mean) >= 0.9, the robust
      classifier's exact robust accuracy CI lower >= 0.99 and the network's robust accuracy CI
      upper <= 0.5; not reproduced if the network's robust accuracy CI lower > 0.9 (bugs /
      inconclusive).
    Anything in between is inconclusive.
    """
    def ci(k: str) -> tuple[float, float, float]:
        m = metrics[f"nakkiran/{k}"]
        return m["value"], m["ci95"][0], m["ci95"][1]

    def fmt(k: str) -> str:
        v, lo, hi = ci(k)
        return f"{k} = {v:.3f} [{lo:.3f}, {hi:.3f}]"

    bar = 2.0 / num_classes
    _, p_lo, p_hi = ci("pgd/transfer_rate")
    _, s_lo, s_hi = ci("non_transferable/success_rate")
    _, n_lo, n_hi = ci("non_transferable/transfer_rate")
    _, dp_lo, dp_hi = ci("pgd/D_det_std_acc")
    _, dn_lo, dn_hi = ci("non_transferable/D_det_std_acc")
    q_acc, _, _ = ci("squares/net_std_acc")
    _, q_lo, q_hi = ci("squares/net_robust_acc")
    _, rc_lo, _ = ci("squares/robust_classifier_robust_acc")
    return [
        make_claim(claim="Plain targeted PGD examples transfer to an independently trained "
                         "copy", rule=f"transfer CI lower > {CLEARLY:.2f}",
                   measured=f"{fmt('pgd/transfer_rate')}; {fmt('pgd/success_rate')}",
                   verdict=verdict(p_lo > CLEARLY, p_hi <= BARELY), exhibit="E",
                   if_reproduced="features", if_not="bugs",
                   literature="52% transfer (Nakkiran 2019, CIFAR-10)"),
        make_claim(claim="Non-transferable examples reach the target on f but barely transfer",
                   rule=f"success CI lower >= 0.50 and transfer CI upper <= {BARELY:.2f}",
                   measured=f"{fmt('non_transferable/success_rate')}; "
                            f"{fmt('non_transferable/transfer_rate')}",
                   verdict=verdict(s_lo >= 0.5 and n_hi <= BARELY,
                                   s_hi < 0.5 or n_lo > BARELY),
                   exhibit="E", if_reproduced="bugs", if_not="inconclusive",
                   literature="0.8% transfer (Nakkiran 2019, CIFAR-10)"),
        make_claim(claim="D_det built with plain PGD is well above chance on the test set",
                   rule=f"std acc CI lower > {bar:.2f} (twice chance)",
                   measured=fmt("pgd/D_det_std_acc"), verdict=verdict(dp_lo > bar, dp_hi <= bar),
                   exhibit="E", if_reproduced="features", if_not="bugs",
                   literature="23.7% (Nakkiran 2019, CIFAR-10)"),
        make_claim(claim="D_det built with the non-transferable attack is not",
                   rule=f"std acc CI upper <= {bar:.2f} (twice chance)",
                   measured=f"{fmt('non_transferable/D_det_std_acc')}; "
                            f"{fmt('non_transferable/D_det_shifted_acc')} (against y+1)",
                   verdict=verdict(dn_hi <= bar, dn_lo > bar), exhibit="E",
                   if_reproduced="bugs", if_not="features",
                   literature="2.5% (Nakkiran 2019, CIFAR-10)"),
        make_claim(claim="Adversarial squares: an overfit network is fragile although every "
                         "useful feature is robust",
                   rule="net clean acc >= 0.90, robust classifier's exact robust acc CI lower "
                        ">= 0.99, net robust acc CI upper <= 0.50",
                   measured=f"{fmt('squares/net_std_acc')}; {fmt('squares/net_robust_acc')}; "
                            f"{fmt('squares/robust_classifier_robust_acc')}",
                   verdict=verdict(q_acc >= 0.9 and rc_lo >= 0.99 and q_hi <= 0.5, q_lo > 0.9),
                   exhibit="E", if_reproduced="bugs", if_not="inconclusive",
                   literature="qualitative (Nakkiran 2019)"),
    ]


register(Experiment(name="nakkiran",
                    summary="Nakkiran 2019: non-transferable adversarial examples (bugs), their "
                            "D_det, and adversarial squares",
                    quick=QUICK, full=FULL, run=run,
                    report=report_from("eisbench.report.nakkiran")))
