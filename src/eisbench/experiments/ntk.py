"""Tsilivis & Kempe 2022 ("What Can the Neural Tangent Kernel Tell Us About Adversarial
Robustness?"): robust and non-robust features of the neural tangent kernel.

Two classes of D (labels y in {-1, +1}) and a small scalar-output MLP at initialisation. On a
training subset X (n images) the empirical NTK is K = J J^T, with J (n, p) the per-sample
parameter Jacobian. With K = sum_i lambda_i v_i v_i^T (lambda_0 >= lambda_1 >= ...), the
kernel predictor K(x, X) K^-1 y splits into eigen-features

    f_i(x) = K(x, X) v_i (v_i^T y) / lambda_i = J(x) . w_i,   w_i = J^T v_i (v_i^T y) / lambda_i,

so each f_i is a Jacobian-vector product with a parameter-space vector w_i: cheap to evaluate
and differentiable in x. For the first M features we measure, on held-out test images of the
two classes, the clean accuracy of sign(f_i) and its accuracy under a PGD attack on the margin
y f_i(x) (every iterate counts: a point is robust only if no iterate flips its sign). Tsilivis
& Kempe find that robust features sit at the top of the spectrum and that robustness falls as
the eigen-index grows, with useful yet non-robust features further down.

The network, its Jacobian, the eigen-features and the attack on them are in
:mod:`eisbench.experiments.ntk_features`. The subset size n is the largest that fits
``memory_gib`` (estimate of J, K, the eigendecomposition and the attack, :func:`memory_bytes`),
capped by ``n_max`` (CPU time) and by the images available. Each seed draws its own subset and
initialisation.

The first claim's rule reads the survival ratio (robust / clean accuracy per eigen-feature)
against the index since rules 7; before, robust accuracy alone, which also falls where only
usefulness does. MNIST quick preset (classes 0 and 1, 32 features, 3 seeds), Spearman with the
index, mean [95% CI]: survival -0.600 [-0.820, -0.380] (now; reproduced), robust accuracy
-0.592 [-0.815, -0.368] (before; reproduced), clean accuracy -0.143 [-0.245, -0.041].
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from eisbench import data as datasets
from eisbench.attacks.projection import check_norm
from eisbench.core.config import resolve_device, to_plain
from eisbench.core.paths import atomic_write_bytes
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.ntk_features import (
    EigenFeatures,
    attack_features,
    eigen_tangents,
    jacobian,
    scalar_mlp,
)
from eisbench.runs.claims import conjunction, decide_metric, fmt, make_claim, metric_over_seeds
from eisbench.runs.executor import prefetch_seeds
from eisbench.runs.preregistered import bar_margin, threshold
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.store import StageLog, Store

GIB = 2**30
LITERATURE = {  # Tsilivis & Kempe 2022, NTK-features notebook (adv-ntk repository)
    "kernel": (0.81, 0.02),  # full kernel predictor: clean, robust (FGSM)
    "feature_0": (0.50, 0.50),  # top eigenvector: one class everywhere
    "feature_1": (0.68, 0.49),
}
LITERATURE_SOURCE = ("Tsilivis & Kempe 2022 (NeurIPS), Sec. 4 and their NTK-features notebook: "
                     "CIFAR-10 classes 0 vs 1 (airplane vs automobile), 2000 training images, "
                     "infinite-width fully connected NTK, FGSM Linf eps=8/255 on 100 test "
                     "images; qualitatively, robust features sit at the largest eigenvalues")


@dataclass(frozen=True)
class NTKConfig:
    """Every hyper-parameter of the experiment (all of them are written to the record)."""

    dataset: str = "mnist"
    data_root: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)  # each: its own training subset and initialisation
    classes: tuple[int, int] = (0, 1)  # labels -1, +1 (Tsilivis & Kempe's pair of classes)
    width: int = 64  # hidden units per layer
    depth: int = 2  # hidden layers (0: a linear model)
    memory_gib: float = 8.0  # n is the largest subset whose estimated footprint fits
    n_max: int | None = 1000  # cap on n for CPU time (None: memory and data only)
    n_features: int = 32  # M: eigen-features measured (indices 0..M-1)
    n_test: int | None = None  # test images for clean accuracy (None: all of the two classes)
    n_test_robust: int = 200  # test images attacked
    norm: str = "linf"
    eps: float = 0.1
    steps: int = 10
    step_size: float | None = None  # None: 2.5 eps / steps
    rcond: float = 1e-5  # full kernel predictor: eigenvalues below rcond * lambda_0 dropped
    chunk: int = 128  # images per Jacobian / attack batch
    n_show: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 31)  # features drawn in the report
    device: str = "cpu"


QUICK = NTKConfig()
FULL = NTKConfig(n_max=2000, n_features=64, n_test_robust=500, steps=20,
                 n_show=(0, 1, 2, 4, 8, 16, 32, 63))


def memory_bytes(n: int, *, p: int, d: int, hidden: int, m: int, chunk: int) -> int:
    """Estimated peak bytes for a subset of n images, p parameters, d input pixels, ``hidden``
    hidden units in all, m features: J (float32) and a Jacobian chunk twice over; K in float32
    and float64, its eigenvectors and the eigh workspace (2 n^2 doubles); the tangents; the
    attack's batch (every feature on ``chunk`` images: inputs, activations, tangents, grads)."""
    f_ = m + 2
    return int(4 * n * p + 8 * chunk * p + 4 * n * n + 8 * 4 * n * n + 8 * p * f_
               + 4 * f_ * chunk * (6 * d + 8 * hidden) + 64 * 2**20)


def choose_n(available: int, *, cfg: NTKConfig, p: int, d: int) -> tuple[int, int, str]:
    """(n, estimated bytes, what bounds n: "memory" | "n_max" | "available")."""
    def est(n: int) -> int:
        return memory_bytes(n, p=p, d=d, hidden=cfg.width * cfg.depth, m=cfg.n_features,
                            chunk=cfg.chunk)
    cap, bound = available, "available"
    if cfg.n_max is not None and cfg.n_max < cap:
        cap, bound = cfg.n_max, "n_max"
    budget = cfg.memory_gib * GIB
    if est(cap) > budget:
        lo, hi = 0, cap  # est(lo) fits (or lo = 0), est(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if est(mid) <= budget else (lo, mid)
        cap, bound = lo, "memory"
    if cap <= cfg.n_features:
        raise ValueError(f"memory_gib={cfg.memory_gib} (or n_max / the data) allows only "
                         f"n={cap} training images, not more than n_features={cfg.n_features}: "
                         "raise memory_gib or n_max, or lower n_features or width")
    return cap, est(cap), bound


def _pair(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, int]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    keep = (y == classes[0]) | (y == classes[1])
    return x[keep], torch.where(y[keep] == classes[1], 1.0, -1.0)


def spearman(values: list[float]) -> float:
    """Spearman correlation of ``values`` with their index (0.0 when they are all equal)."""
    if len(values) < 3 or len(set(values)) < 2:
        return 0.0
    return float(stats.spearmanr(np.arange(len(values)), values).statistic)


@dataclass(frozen=True)
class Kernel:
    """One seed's network at initialisation, its kernel's spectrum and eigen-tangents."""

    net: nn.Module
    params: int  # p, parameters of the network
    n: int  # training images in the kernel
    estimate: int  # estimated peak bytes for n
    bound: str  # what bounds n: "memory" | "n_max" | "available"
    eigenvalues: torch.Tensor  # (n,) descending
    alignment: torch.Tensor  # (n,) (v_i^T y)^2 / ||y||^2
    tangents: torch.Tensor  # (p, M + 2): w_0..w_{M-1}, their sum, the kernel predictor


def kernel(cfg: NTKConfig, ds: datasets.ImageData, *, seed: int, device: torch.device,
           t: dict[str, float]) -> Kernel:
    """The seed's network (initialisation drawn from the seed), its training subset (the
    largest that fits, drawn from the same generator), the Jacobian J (n, p) and the
    eigendecomposition of K = J J^T; seconds of each step into ``t``."""
    t0 = time.perf_counter()
    x_tr, y_tr = _pair(ds.x_train, ds.y_train, cfg.classes)
    gen = torch.Generator().manual_seed(seed)
    d = int(np.prod(ds.shape))
    net = scalar_mlp(d, width=cfg.width, depth=cfg.depth, generator=gen).to(device)
    p = sum(v.numel() for v in net.parameters())
    n, est, bound = choose_n(len(x_tr), cfg=cfg, p=p, d=d)
    idx = torch.randperm(len(x_tr), generator=gen)[:n]
    x, y = x_tr[idx].to(device), y_tr[idx].to(device)  # (n, C, H, W), (n,)
    j = jacobian(net, x, chunk=cfg.chunk)  # (n, p)
    t["jacobian"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    lam, align, w = eigen_tangents(j, y, m=cfg.n_features, rcond=cfg.rcond)
    t["kernel_eigh"] = time.perf_counter() - t1
    return Kernel(net=net, params=p, n=n, estimate=est, bound=bound, eigenvalues=lam,
                  alignment=align, tangents=w)


def robust_accuracy(cfg: NTKConfig, feats: EigenFeatures, x: torch.Tensor, y: torch.Tensor,
                    *, seed: int) -> torch.Tensor:
    """Share (F,) of x (N, C, H, W) that PGD on the margin y f_i(x) does not flip, per
    feature, in chunks of ``cfg.chunk`` images; y (N,) in {-1, +1}."""
    step = cfg.step_size if cfg.step_size is not None else 2.5 * cfg.eps / max(cfg.steps, 1)
    agen = torch.Generator().manual_seed(seed)
    return torch.cat([attack_features(feats, x[s:s + cfg.chunk], y[s:s + cfg.chunk],
                                      n_features=feats.n, eps=cfg.eps, steps=cfg.steps,
                                      step_size=step, norm=cfg.norm, generator=agen)
                      for s in range(0, len(x), cfg.chunk)], 1).float().mean(1)  # (F,)


def mean_image_gradients(net: nn.Module, tangents: torch.Tensor, x: torch.Tensor
                         ) -> list[list[float]]:
    """The input gradient of each feature whose tangent is a column of ``tangents`` (p, S) at
    the mean of the images x (N, C, H, W), flattened and rounded to 4 digits."""
    x_bar = x.mean(0, keepdim=True).expand(tangents.shape[1], *x.shape[1:]).clone()
    x_bar.requires_grad_(True)  # (S, C, H, W)
    sub = EigenFeatures(net, tangents)
    (g,) = torch.autograd.grad(sub(x_bar.unsqueeze(1)).sum(), x_bar)
    return [[float(f"{v:.4g}") for v in gi.flatten().tolist()] for gi in g]


def analyse_seed(cfg: NTKConfig, ds: datasets.ImageData, *, seed: int, device: torch.device
                 ) -> dict[str, Any]:
    """Kernel, eigen-features and their clean / robust test accuracies for one seed."""
    t: dict[str, float] = {}
    x_te, y_te = _pair(ds.x_test, ds.y_test, cfg.classes)
    x_te, y_te = x_te[:cfg.n_test], y_te[:cfg.n_test]  # the first n_test of the two classes
    kn = kernel(cfg, ds, seed=seed, device=device, t=t)
    feats = EigenFeatures(kn.net, kn.tangents)  # F = M + 2
    t2 = time.perf_counter()
    x_te, y_te = x_te.to(device), y_te.to(device)
    clean_f = feats.on(x_te, chunk=cfg.chunk)  # (F, N_test)
    clean = (clean_f * y_te > 0).float().mean(1)  # (F,)
    both_signs = ((clean_f > 0).any(1) & (clean_f < 0).any(1))[:cfg.n_features]
    t["clean"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    xr, yr = x_te[:cfg.n_test_robust], y_te[:cfg.n_test_robust]
    robust = robust_accuracy(cfg, feats, xr, yr, seed=seed)  # (F,)
    clean_r = (clean_f[:, :len(xr)] * yr > 0).float().mean(1)  # clean acc on the attacked set
    t["attack"] = time.perf_counter() - t3
    m = cfg.n_features
    use = [i for i in range(m) if bool(both_signs[i])]
    rob, cln = robust[:m].tolist(), clean[:m].tolist()
    surv = [float(robust[i] / clean_r[i]) if clean_r[i] > 0 else 0.0 for i in range(m)]
    high = [i for i in use if i >= m // 2]
    show = [i for i in cfg.n_show if i < m]
    return {
        "seed": seed, "n": kn.n, "params": kn.params,
        "memory_estimate_gib": kn.estimate / GIB, "n_bound": kn.bound,
        "chance": float(max((y_te > 0).float().mean(), (y_te < 0).float().mean())),
        "n_test": len(y_te), "n_test_robust": len(yr),
        "clean_acc": cln, "robust_acc": rob, "clean_acc_attacked_set": clean_r[:m].tolist(),
        "survival": surv, "both_signs": both_signs.tolist(),
        "eigenvalues": [float(f"{v:.6g}") for v in kn.eigenvalues.tolist()],
        "label_alignment": [float(f"{v:.4g}") for v in kn.alignment[:m].tolist()],
        "spearman_robust": spearman([rob[i] for i in use]),
        "spearman_clean": spearman([cln[i] for i in use]),
        "spearman_survival": spearman([surv[i] for i in use]),
        "high_clean_acc": float(np.mean([cln[i] for i in high])) if high else 0.0,
        "high_robust_acc": float(np.mean([rob[i] for i in high])) if high else 0.0,
        "n_high": len(high), "n_excluded": m - len(use),
        "top_sum": [float(clean[m]), float(robust[m])],
        "kernel": [float(clean[m + 1]), float(robust[m + 1])],
        "shown": show,
        "input_gradients": mean_image_gradients(kn.net, kn.tangents[:, show], x_te),
        "seconds": t,
    }


def check_classes(cfg: NTKConfig, ds: datasets.ImageData) -> None:
    """Fail before any work on a pair of classes the data does not have."""
    a, b = cfg.classes
    if not (0 <= a < ds.num_classes and 0 <= b < ds.num_classes and a != b):
        raise ValueError(f"classes must be two different labels of {ds.name} "
                         f"(0..{ds.num_classes - 1}), got {cfg.classes}")


def measure(cfg: NTKConfig, *, out: Path, store: Store) -> Result:
    """Load the data; analyse every seed (cached per seed in ``store``); then the metrics and
    the claims."""
    check_norm(cfg.norm)
    device = resolve_device(cfg.device)
    ds = datasets.load(cfg.dataset, root=cfg.data_root)
    check_classes(cfg, ds)
    prefetch_seeds(_seed_unit, cfg, store, cfg.seeds, device=device)  # the loop loads them
    log = StageLog()
    per_seed = [seed_stage(cfg, ds, store, seed, device=device, log=log) for seed in cfg.seeds]
    metrics = _aggregate(per_seed)
    chance = float(np.mean([r["chance"] for r in per_seed]))
    return Result(
        metrics=metrics, claims=decide(metrics, chance=chance, n_features=cfg.n_features),
        details={"per_seed": per_seed, "chance": chance,
                 "literature": {k: list(v) for k, v in LITERATURE.items()},
                 "literature_source": LITERATURE_SOURCE,
                 "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
                 "attack": f"PGD on the margin y f_i(x), {cfg.norm} eps={cfg.eps:g}, "
                           f"{cfg.steps} steps, random start, every iterate counts"},
        data={ds.name: ds.sha256}, stages=log.entries, device=str(device))


def seed_stage(cfg: NTKConfig, ds: datasets.ImageData, store: Store, seed: int, *,
               device: torch.device, log: StageLog | None = None) -> dict[str, Any]:
    """:func:`analyse_seed`, cached in ``store`` (stage ``ntk-features``)."""
    hyper = {k: v for k, v in to_plain(cfg).items() if k not in ("seeds", "device", "data_root")}
    res, _ = store.run("ntk-features", {**hyper, "seed": seed, "device": device.type},
                       inputs=(f"{ds.name}:{ds.sha256}",),
                       compute=partial(_compute, cfg, ds, seed, device),
                       save=_save, load=_load, log=log)
    return res


def _seed_unit(cfg: NTKConfig, store: Store, seed: int) -> None:
    """One seed's stage (an executor's task: :func:`prefetch_seeds`)."""
    seed_stage(cfg, datasets.load(cfg.dataset, root=cfg.data_root), store, seed,
               device=resolve_device(cfg.device))


def _compute(cfg: NTKConfig, ds: datasets.ImageData, seed: int, device: torch.device,
             _work: Path) -> dict[str, Any]:
    return analyse_seed(cfg, ds, seed=seed, device=device)


def _save(res: dict[str, Any], d: Path) -> None:
    atomic_write_bytes(d / "result.json", json.dumps(res).encode())


def _load(d: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((d / "result.json").read_text())
    return out


def _aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Metric]:
    def over(key: str, j: int | None = None, **kw: Any) -> Metric:
        return metric_over_seeds([r[key] if j is None else r[key][j] for r in per_seed], **kw)
    def corr(key: str) -> Metric:  # a correlation in [-1, 1]; the claim expects it negative
        return over(key, lower=-1.0, upper=1.0, higher_is_better=False)
    return {
        "ntk/spearman_index_robust": corr("spearman_robust"),
        "ntk/spearman_index_clean": corr("spearman_clean"),
        "ntk/spearman_index_survival": corr("spearman_survival"),
        "ntk/high_index/clean_acc": over("high_clean_acc"),
        "ntk/high_index/robust_acc": over("high_robust_acc", higher_is_better=False),
        "ntk/top_sum/clean_acc": over("top_sum", 0), "ntk/top_sum/robust_acc": over("top_sum", 1),
        "ntk/kernel/clean_acc": over("kernel", 0), "ntk/kernel/robust_acc": over("kernel", 1),
        "ntk/feature_1/clean_acc": over("clean_acc", 1),
        "ntk/feature_1/robust_acc": over("robust_acc", 1),
        "ntk/memory_estimate_gib": over("memory_estimate_gib", higher_is_better=False,
                                        upper=float("inf")),
    }


def decide(metrics: dict[str, Metric], *, chance: float, n_features: int) -> list[Claim]:
    """Verdicts by rules fixed in advance, on 95% t-intervals over seeds, of the form of
    :func:`~eisbench.runs.claims.decide_against` (reproduced: the CI lies past the bar; not
    reproduced: its far end stays short of bar + margin). Features that predict one class on
    every clean test image (the near-constant top mode) are left out of both.

    - Robustness falls with the eigen-index: the per-seed Spearman correlation between index
      (0..M-1) and the survival ratio (robust accuracy / clean accuracy on the attacked images,
      0 for a feature right on none of them) has CI upper < 0 (reproduced: features, Tsilivis &
      Kempe's ordering); CI lower > -0.2 (margin 0.2, a "weak" rank correlation: no fall worth
      the name) is not reproduced, and inconclusive for the worlds: the ordering of the
      spectrum is not what separates them. Survival, not robust accuracy: clean accuracy also
      falls with the index (usefulness), and robust accuracy falls with it even at a constant
      survival; the Spearman of robust and of clean accuracy are shown beside it. (Rules 6 and
      before tested robust accuracy.)
    - High-index eigen-features are useful yet non-robust: over indices M/2..M-1, the mean
      clean accuracy has CI lower > chance (the majority-class rate of the test set) and the
      mean robust accuracy CI upper < 0.10 (reproduced: features). Not reproduced if the
      clean CI upper < chance + 0.05 (margin 0.05: about a quarter of the published 18 points
      of feature 1, 68% vs 50%) or the robust CI lower > 0.05 (margin 0.05): the kernel's
      non-robust directions are not useful, or its useful ones are robust; either way there
      is no useful non-robust feature, the bug world's reading (World 1: adversarial
      directions are irrelevant for classification).
    The numbers are ``ntk.*`` in :data:`~eisbench.runs.preregistered.THRESHOLDS`.
    """
    over, m = (threshold("ntk.high_index.clean_acc.bar_over_chance"),
               threshold("ntk.high_index.clean_acc.margin"))
    rob, sp = bar_margin("ntk.high_index.robust_acc"), bar_margin("ntk.spearman_index_survival")
    useful = decide_metric(metrics, "ntk/high_index/clean_acc", bar=chance + over, margin=m)
    fragile = decide_metric(metrics, "ntk/high_index/robust_acc", **rob,
                            higher_means_reproduced=False)
    return [
        make_claim(claim="Robustness of NTK eigen-features falls as the eigen-index grows",
                   rule=f"Spearman(index 0..{n_features - 1}, survival = robust acc / clean "
                        f"acc) CI upper < {sp['bar']:g} (reproduced: features); CI lower > "
                        f"{sp['bar'] - sp['margin']:g}, margin {sp['margin']:g} (not reproduced: "
                        "inconclusive)",
                   measured=f"{fmt(metrics, 'ntk/spearman_index_survival')}; "
                            f"{fmt(metrics, 'ntk/spearman_index_robust')}; "
                            f"{fmt(metrics, 'ntk/spearman_index_clean')}",
                   verdict=decide_metric(metrics, "ntk/spearman_index_survival", **sp,
                                         higher_means_reproduced=False),
                   exhibit="G", if_reproduced="features", if_not="inconclusive",
                   literature="robust features sit at the largest eigenvalues (Tsilivis & "
                              "Kempe 2022)"),
        make_claim(claim="High-index eigen-features are useful yet non-robust",
                   rule=f"indices {n_features // 2}..{n_features - 1}: mean clean acc CI lower "
                        f"> chance ({chance:.3f}) and mean robust acc CI upper < {rob['bar']:.2f} "
                        f"(reproduced: features); clean CI upper < chance + {over + m:.2f} or "
                        f"robust CI lower > {rob['bar'] - rob['margin']:.2f}, margins {m:.2f} "
                        "(not reproduced: bugs)",
                   measured=f"{fmt(metrics, 'ntk/high_index/clean_acc')}; "
                            f"{fmt(metrics, 'ntk/high_index/robust_acc')}",
                   verdict=conjunction(useful, fragile),
                   exhibit="G", if_reproduced="features", if_not="bugs",
                   literature="useful non-robust features further down the spectrum; feature "
                              "1: 68% clean, 49% robust (CIFAR-10, FGSM 8/255)"),
    ]


register(Experiment(name="ntk",
                    summary="Tsilivis & Kempe 2022: clean and robust accuracy of the empirical "
                            "NTK's eigen-features against the eigen-index",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.ntk")))
