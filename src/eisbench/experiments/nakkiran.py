"""Nakkiran 2019 (Distill response to Ilyas et al.): adversarial examples that are bugs.

(a) Non-transferable targeted attack. Per seed: a target model f, an ensemble f_1..f_k and
    held-out models g, all independently trained copies of one architecture on the same data.
    Plain targeted L2 PGD minimises L(f, x', t); the non-transferable attack minimises
    Nakkiran's "decorrelated loss" ``L(f, x', t) + E_i[L(f_i, x', y)]`` (fool f, keep every f_i
    right: the MEAN over the ensemble, weight w = 1, cross-entropy), with the same budget and
    steps. Targets are t = y + 1 mod K (D_det). Success: f predicts t. Transfer: the fraction of
    successful examples that a g (never seen by the attack) also labels t, averaged over the
    held-out models.
    Each attack's outputs, labelled t, form a D_det; a fresh model trained on it is tested on
    the original test set. Nakkiran (CIFAR-10, 10 ResNet-18s in the ensemble), L2 attacks (ours
    are L2): transfer 82.5% vs 1.7%, D_det 33.2% vs 2.8%; Linf: 52.1% vs 0.8%, 23.7% vs 2.5%.
    The attack is in :mod:`eisbench.experiments.nakkiran_attack`.
    The loss was already Nakkiran's; the full preset's ensemble went from 5 to his 10 models.
    Ensemble of 3 (the quick preset) against 10, MNIST quick preset otherwise, 3 seeds, mean
    [95% CI]: non-transferable success 78.9% [71.5, 86.4] vs 78.1% [69.9, 86.4], transfer to
    held-out copies 14.7% [10.7, 18.7] vs 6.1% [3.4, 8.9], D_det test accuracy 7.2% [4.8, 9.7]
    vs 7.1% [6.5, 7.6] (plain PGD: transfer 95.8%, D_det 25.9%); the transfer claim stays
    inconclusive (its CI upper is above 5%).
(b) Adversarial squares: a two-class distribution of ``side x side`` images, every pixel at
    level ``low`` (class 0) or ``high`` (class 1) plus uniform noise of half-width ``noise``.
    Every pixel alone separates the classes with margin ``(high - low) / 2 - noise`` and the
    mean-pixel threshold (the robust classifier) with a larger one, so every useful feature is
    robust; a network fit to (near) zero loss on a few samples is attacked at an Linf eps far
    below those margins, and the robust classifier's robust accuracy at that eps is computed
    exactly (:mod:`eisbench.experiments.nakkiran_squares`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eisbench import data as datasets
from eisbench.attacks.evaluate import AttackConfig
from eisbench.core.config import resolve_device
from eisbench.core.tensors import predict
from eisbench.evaluation import SUITES, describe_suite
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.nakkiran_attack import non_transferable_stage, transfer_rate
from eisbench.experiments.nakkiran_claims import decide
from eisbench.experiments.nakkiran_squares import SquaresConfig, squares_seed
from eisbench.models import ModelSpec
from eisbench.runs.claims import (
    merge_checks,
    metric_over_seeds,
)
from eisbench.runs.executor import prefetch_seeds
from eisbench.runs.record import Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import Context, Tensors, construct_stage, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig

LITERATURE = {"pgd/transfer_rate": 0.825, "non_transferable/transfer_rate": 0.017,
              "pgd/D_det_std_acc": 0.332, "non_transferable/D_det_std_acc": 0.028}
LITERATURE_SOURCE = ("Nakkiran 2019, Distill: CIFAR-10, L2 attacks as here (transfer rates; D_det "
                     "test accuracy); Linf: transfer 52.1% vs 0.8%, D_det 23.7% vs 2.5%")
HELD_OUT = 900  # model index of the first held-out copy g (the ensemble uses 1..k)


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
    # k independently trained copies in the non-transferable loss: Nakkiran's 10 in the full
    # preset; 3 in the quick one, which is a smoke run of the whole pipeline in minutes (7 more
    # trainings per seed, and every attack step pays a forward and backward pass per member)
    ensemble: int = 3
    heldout: int = 2  # independently trained copies g that only measure transfer (averaged)
    train: TrainConfig = TrainConfig(epochs=3, lr=3e-3, batch_size=256)  # f, f_i and g
    fresh_train: TrainConfig = TrainConfig(epochs=10, lr=2e-3)  # the models trained on D_det
    eps: float = 3.0  # L2 budget of both targeted attacks
    steps: int = 40
    step_size: float = 0.1875  # 2.5 eps / steps
    ensemble_weight: float = 1.0  # w in front of the ensemble's mean loss (Nakkiran: 1, E_i)
    squares: SquaresConfig = SquaresConfig()
    device: str = "cpu"


QUICK = NakkiranConfig()
FULL = NakkiranConfig(n_train=10000, n_construct=3000, ensemble=10, heldout=3,
                      fresh_train=TrainConfig(epochs=15, lr=2e-3), steps=50, step_size=0.15,
                      squares=SquaresConfig(n_test=2000, attack=AttackConfig(
                          name="pgd", norm="linf", eps=0.05, steps=50, restarts=3,
                          early_exit=True)))


@dataclass(frozen=True)
class Setting:
    """What every seed shares: D (capped at ``n_train`` / ``n_test``), the attacked images."""

    ds: datasets.ImageData
    ctx: Context
    train: Tensors  # the n_train images every copy trains on
    base: Tensors  # the first n_construct of them: attacked, the seeds of each D_det
    spec: ModelSpec


@dataclass(frozen=True)
class Copies:
    """Independently trained copies of one architecture on D, each (model, cache key)."""

    f: tuple[nn.Module, str]  # the target model
    ensemble: list[tuple[nn.Module, str]]  # f_1..f_k, kept right by the non-transferable loss
    heldout: list[tuple[nn.Module, str]]  # g_1..g_m, never seen by the attacks


def load(cfg: NakkiranConfig, store: Store) -> Setting:
    """Load D (hash-checked), capped at ``cfg.n_train`` / ``cfg.n_test``."""
    if cfg.squares.suite is not None:
        SUITES.get(cfg.squares.suite)  # a typo fails now, not after the MNIST part
    full = datasets.load(cfg.dataset, root=cfg.data_root)
    n_train = len(full.x_train) if cfg.n_train is None else min(cfg.n_train, len(full.x_train))
    n_test = len(full.x_test) if cfg.n_test is None else min(cfg.n_test, len(full.x_test))
    ds = full.subset(n_train=n_train, n_test=n_test)
    n_con = min(cfg.n_construct, n_train)
    train_d = Tensors(ds.x_train, ds.y_train, f"{ds.name}:{ds.sha256}:train:{n_train}")
    return Setting(
        ds=ds, ctx=Context(store=store, log=StageLog(), device=resolve_device(cfg.device)),
        train=train_d, base=Tensors(ds.x_train[:n_con], ds.y_train[:n_con],
                                    f"{train_d.key}:first{n_con}"),
        spec=ModelSpec(arch=cfg.arch, in_shape=ds.shape, num_classes=ds.num_classes))


def train_copies(st: Setting, cfg: NakkiranConfig, seed: int) -> Copies:
    """f, the ensemble and the held-out copies of one seed (cached); model seeds
    ``seed * 1000 + j``."""
    def model(j: int, role: str) -> tuple[nn.Module, str]:
        return train_stage(st.ctx, spec=st.spec, cfg=cfg.train, data=st.train,
                           seed=seed * 1000 + j, desc=f"[seed {seed}] {role}")

    f = model(0, "target model f")
    ens = [model(j, f"ensemble model f_{j}") for j in range(1, cfg.ensemble + 1)]
    gs = [model(HELD_OUT + j, f"held-out model g_{j + 1}") for j in range(cfg.heldout)]
    return Copies(f=f, ensemble=ens, heldout=gs)


def attack(st: Setting, cfg: NakkiranConfig, m: Copies, seed: int) -> dict[str, Tensors]:
    """The D_det of each attack (targets y + 1 mod K) on ``st.base`` (cached)."""
    hyper = {"eps": cfg.eps, "steps": cfg.steps, "step_size": cfg.step_size, "norm": "l2"}
    k = st.ds.num_classes
    return {
        "pgd": construct_stage(st.ctx, name="wrong-label", model=m.f[0], model_key=m.f[1],
                               data=st.base, num_classes=k, seed=seed,
                               hyper={**hyper, "mode": "det"}),
        "non_transferable": non_transferable_stage(
            st.ctx, model=m.f, ensemble=m.ensemble, data=st.base, num_classes=k, seed=seed,
            hyper={**hyper, "ensemble_weight": cfg.ensemble_weight}),
    }


def _acc(model: nn.Module, st: Setting, *, shift: int = 0) -> float:
    """Test accuracy against the labels y + shift mod K."""
    y = (st.ds.y_test + shift) % st.ds.num_classes if shift else st.ds.y_test
    return float((predict(model, st.ds.x_test, device=st.ctx.device) == y).float().mean())


def measure_attacks(st: Setting, cfg: NakkiranConfig, m: Copies, built: dict[str, Tensors],
                    seed: int) -> dict[str, Any]:
    """Per attack: success on f, transfer to the held-out copies and the ensemble, the mean
    L2 distance, and the test accuracy of a fresh model trained on its D_det (cached)."""
    dev = st.ctx.device
    row: dict[str, Any] = {
        "target_model_std_acc": _acc(m.f[0], st),
        "heldout_model_std_acc": sum(_acc(g, st) for g, _ in m.heldout) / len(m.heldout)}
    for name, d in built.items():
        p_f = predict(m.f[0], d.x, device=dev)  # (N,)
        row[f"{name}/success_rate"] = float((p_f == d.y).float().mean())
        per_g = [transfer_rate(p_f, predict(g, d.x, device=dev), d.y) for g, _ in m.heldout]
        row[f"{name}/transfer_rate"] = sum(per_g) / len(per_g)
        row[f"{name}/transfer_rate_per_heldout"] = per_g
        row[f"{name}/ensemble_transfer_rate"] = sum(
            transfer_rate(p_f, predict(e, d.x, device=dev), d.y)
            for e, _ in m.ensemble) / len(m.ensemble)
        row[f"{name}/l2_distance"] = float((d.x - st.base.x).flatten(1).norm(dim=1).mean())
        fresh, _ = train_stage(st.ctx, spec=st.spec, cfg=cfg.fresh_train, data=d, seed=seed,
                               desc=f"[seed {seed}] fresh model on D_det ({name})")
        row[f"{name}/D_det_std_acc"] = _acc(fresh, st)
        row[f"{name}/D_det_shifted_acc"] = _acc(fresh, st, shift=1)
    return row


def samples_of(st: Setting, m: Copies, built: dict[str, Tensors],
               squares: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Eight clean and attacked images with the predictions of f and g_1, and the squares'."""
    dev = st.ctx.device
    return {"clean": st.base.x[:8], "labels": st.base.y[:8], **squares,
            **{name: d.x[:8] for name, d in built.items()},
            **{f"{name}_pred_f": predict(m.f[0], d.x[:8], device=dev)
               for name, d in built.items()},
            **{f"{name}_pred_g": predict(m.heldout[0][0], d.x[:8], device=dev)
               for name, d in built.items()}}


def _seed_unit(cfg: NakkiranConfig, store: Store, seed: int) -> None:
    """One seed's cached stages: the copies, both attacks' D_det, the fresh models on them
    and the squares' network (an executor's task: :func:`prefetch_seeds`)."""
    st = load(cfg, store)
    copies = train_copies(st, cfg, seed)
    measure_attacks(st, cfg, copies, attack(st, cfg, copies, seed), seed)
    squares_seed(st.ctx, cfg.squares, seed)


def measure(cfg: NakkiranConfig, *, out: Path, store: Store) -> Result:
    """Per seed: train the copies, run both attacks, measure them, then the squares; aggregate
    over seeds and decide."""
    del out  # the record and the samples are written by the caller
    prefetch_seeds(_seed_unit, cfg, store, cfg.seeds,  # as tasks first; the loop loads them
                   device=resolve_device(cfg.device))
    t0, c0 = time.perf_counter(), time.process_time()
    st = load(cfg, store)
    per_seed: list[dict[str, Any]] = []
    samples: dict[str, torch.Tensor] = {}
    t_mnist = 0.0
    for seed in cfg.seeds:
        ts = time.perf_counter()
        copies = train_copies(st, cfg, seed)
        built = attack(st, cfg, copies, seed)
        row = measure_attacks(st, cfg, copies, built, seed)
        t_mnist += time.perf_counter() - ts
        sq_row, sq_samples = squares_seed(st.ctx, cfg.squares, seed)
        row.update({f"squares/{k}": v for k, v in sq_row.items()})
        per_seed.append(row)
        if seed == cfg.seeds[0]:
            samples = samples_of(st, copies, built, sq_samples)
    metrics = _aggregate(per_seed)
    wall = time.perf_counter() - t0
    seconds = {"models_attacks_D_det": t_mnist, "squares": wall - t_mnist,
               "cpu_total": time.process_time() - c0}
    return Result(metrics=metrics, claims=decide(metrics, num_classes=st.ds.num_classes),
                  details=_details(cfg, st, per_seed, seconds),
                  artifacts={"samples.safetensors": samples},
                  data={st.ds.name: st.ds.sha256}, stages=st.ctx.log.entries,
                  device=str(st.ctx.device))


def _details(cfg: NakkiranConfig, st: Setting, per_seed: list[dict[str, Any]],
             seconds: dict[str, float]) -> dict[str, Any]:
    return {"per_seed": per_seed, "literature": LITERATURE,
            "literature_source": LITERATURE_SOURCE, "num_classes": st.ds.num_classes,
            "n_train": len(st.train.x), "n_test": len(st.ds.x_test), "n_construct": len(st.base.x),
            "seconds": seconds,
            "model_seeds": "seed*1000 + j: j=0 target f, j=1..k ensemble, "
                           f"j={HELD_OUT}+i held-out g_i; D_det models: seed",
            "transfer": "of the examples f labels with the target, the fraction a "
                        "held-out copy g (or an ensemble member) also labels with the "
                        "target, averaged over the held-out copies (or the members)",
            "squares_attack": _squares_attack(cfg.squares)}


def _squares_attack(sq: SquaresConfig) -> str:
    """What produced the squares network's robust accuracy: the suite, else the attack."""
    if sq.suite is None:
        return sq.attack.describe()
    return describe_suite(sq.suite, sq.attack.norm, sq.attack.eps)


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
    if any("squares/checks" in r for r in per_seed):  # the squares were attacked by a suite
        out["nakkiran/squares/net_robust_acc"]["checks"] = merge_checks(
            r.get("squares/checks", []) for r in per_seed)
    return out


register(Experiment(name="nakkiran",
                    summary="Nakkiran 2019: non-transferable adversarial examples (bugs), their "
                            "D_det, and adversarial squares",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.nakkiran")))
