"""Transferability vs learnability (Ilyas et al. 2019, Fig. 3): exhibit B of "features or bugs?".

Ilyas et al. explain adversarial transferability by shared non-robust features: an architecture
that picks up the non-robust features of a source model should both be fooled by the source's
adversarial examples and learn well from D_det, the set of the source's targeted adversarial
examples labelled with their target. On CIFAR-10 (ResNet-50 source) the architectures that learn
D_det worst receive the fewest transferred examples.

Per seed, on the models and D_det of ``features-vs-bugs`` (same config, same cache):

- Source: the standard ``cfg.arch`` model (cnn-small by default) trained on all of D; D_det is
  its targeted L2 PGD set (targets y+1 mod K, eps ``wrong_label_eps``) built from the first
  ``n_construct`` training images.
- Target models: one standard model per architecture in ``archs``, trained on
  ``n_target_train`` training images disjoint from D_det's, with an init seed of its own (so the
  target of the source's architecture is an independent model, not the source).
- Transfer matrix: every model (the source, then each target model) attacks the first
  ``n_attack`` test images with the D_det attack (targeted y+1, L2, eps ``wrong_label_eps``).
  T[s, t] = among the images that s classifies correctly and whose attack succeeds on s, and
  that t classifies correctly, the fraction that t classifies as the target y+1. A model against
  itself is white-box, not transfer: that cell is None. The untargeted rate (t no longer
  predicts y) is recorded beside it.
- Noise baseline: the same images moved by a uniformly random direction of the same L2 norm as
  each adversarial perturbation (after clipping to [0,1]); same denominators.
- Learnability: a fresh model of each architecture trained on the first ``n_det`` images of
  D_det, tested on the original test set.
- Correlation across architectures between T[source, a] and the D_det accuracy of a: Pearson
  and Spearman per seed, then mean and 95% CI over seeds.

The attack, the noise baseline, the matrices and the correlations are in
:mod:`eisbench.experiments.transfer_matrix`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eisbench.core.config import to_plain
from eisbench.core.tensors import predict
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.ilyas import FULL as FVB_FULL
from eisbench.experiments.ilyas import (
    IlyasConfig,
    Setting,
    derived_config,
    setting,
    wrong_label_sets,
)
from eisbench.experiments.transfer_matrix import correlations, cross_mean, transfer_matrices
from eisbench.models import MODELS, ModelSpec
from eisbench.runs.claims import (
    conjunction,
    decide_metric,
    fmt,
    make_claim,
    metric_over_seeds,
    needed,
)
from eisbench.runs.executor import prefetch_seeds
from eisbench.runs.preregistered import bar_margin, threshold
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import Tensors, train_stage
from eisbench.runs.store import Store
from eisbench.training import TrainConfig

# Named variants of registered architectures; any other entry of ``archs`` is a MODELS name.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": ("mlp", {"depth": 0}),  # a linear classifier on the pixels
    "resnet-small-w8": ("resnet-small", {"width": 8}),
}
LITERATURE = {
    "correlation": "Ilyas et al. 2019, Fig. 3 (CIFAR-10, ResNet-50 source; VGG-16, "
                   "Inception-v3, ResNet-18, DenseNet-121 targets): transfer rate and D_det "
                   "accuracy rise together, VGG-16 lowest on both (qualitative, no coefficient)",
    "transfer": "Liu et al. 2017 (ImageNet): adversarial examples often transfer between "
                "architectures, targeted ones much less reliably; random noise of the same norm "
                "rarely changes a label (Szegedy et al. 2014)",
}


@dataclass(frozen=True)
class TransferConfig(IlyasConfig):
    """The features-vs-bugs config (its source model, D_det and cache) plus this experiment's."""

    archs: tuple[str, ...] = ("linear", "mlp", "cnn-small", "cnn-deep")
    n_target_train: int = 6000  # images of D after the first n_construct, for target models
    target_train: TrainConfig = TrainConfig(method="standard", epochs=2, lr=1e-2)
    n_det: int | None = None  # first images of D_det that the learnability models see (None: all)
    det_train: TrainConfig = TrainConfig(method="standard", epochs=5, lr=5e-3)
    n_attack: int = 300  # test images attacked by every model
    transfer_steps: int = 20  # targeted L2 PGD steps of the transfer attack (eps: wrong_label_eps)
    transfer_step_size: float = 0.25
    target_seed_offset: int = 1000  # init/shuffle seed of target models: seed + offset
    det_seed_offset: int = 2000  # and of the models trained on D_det


QUICK = TransferConfig()
FULL = derived_config(TransferConfig, FVB_FULL, n_target_train=10000, n_det=5000, n_attack=1000,
                      target_train=TrainConfig(method="standard", epochs=3, lr=1e-2),
                      det_train=TrainConfig(method="standard", epochs=8, lr=5e-3))


def arch_spec(label: str, *, in_shape: tuple[int, int, int], num_classes: int) -> ModelSpec:
    """The ModelSpec of ``label``: a key of :data:`VARIANTS` or a registered model name."""
    arch, kwargs = VARIANTS.get(label, (label, {}))
    MODELS.get(arch)  # an unknown name fails here, with the closest matches
    return ModelSpec(arch=arch, in_shape=in_shape, num_classes=num_classes, kwargs=dict(kwargs))


def _acc(model: nn.Module, d: Tensors, *, device: torch.device) -> float:
    return float((predict(model, d.x, device=device) == d.y).float().mean())


@dataclass(frozen=True)
class SeedModels:
    """The models of one seed: the source and its D_det, and per architecture a target model
    trained on D and a learner trained on D_det."""

    src: nn.Module
    d_det: Tensors  # all of the source's D_det
    targets: dict[str, nn.Module]
    learners: dict[str, nn.Module]


def train_models(st: Setting, cfg: TransferConfig, seed: int) -> SeedModels:
    """The source model and its D_det (features-vs-bugs' cache), then per architecture a target
    model on D (disjoint from D_det's images) and a learner on D_det (cached)."""
    ctx, k, nc = st.ctx, st.ds.num_classes, cfg.n_construct
    src, src_key = train_stage(ctx, spec=st.spec, cfg=cfg.std_train, data=st.train, seed=seed,
                               desc=f"[seed {seed}] standard model")
    d_det = wrong_label_sets(st, cfg, (src, src_key), seed)["D_det"]
    n_det = len(d_det.x) if cfg.n_det is None else cfg.n_det
    det = Tensors(d_det.x[:n_det], d_det.y[:n_det], f"{d_det.key}:first{n_det}")
    target_d = Tensors(st.train.x[nc:nc + cfg.n_target_train],
                       st.train.y[nc:nc + cfg.n_target_train],
                       f"{st.train.key}:rows{nc}-{nc + cfg.n_target_train}")
    targets: dict[str, nn.Module] = {}
    learners: dict[str, nn.Module] = {}
    for label in cfg.archs:
        spec = arch_spec(label, in_shape=st.ds.shape, num_classes=k)
        targets[label], _ = train_stage(ctx, spec=spec, cfg=cfg.target_train, data=target_d,
                                        seed=seed + cfg.target_seed_offset,
                                        desc=f"[seed {seed}] {label} on D")
        learners[label], _ = train_stage(ctx, spec=spec, cfg=cfg.det_train, data=det,
                                         seed=seed + cfg.det_seed_offset,
                                         desc=f"[seed {seed}] {label} on D_det")
    return SeedModels(src=src, d_det=d_det, targets=targets, learners=learners)


def attack_all(st: Setting, cfg: TransferConfig, m: SeedModels, seed: int) -> dict[str, Any]:
    """Transfer and noise matrices of the source's and every target model's attack on the
    first ``n_attack`` test images (logged as the stage ``transfer-attacks``, not cached)."""
    t0 = time.perf_counter()
    xa, ya = st.test.x[:cfg.n_attack], st.test.y[:cfg.n_attack]  # (N, C, H, W), (N,)
    mats = transfer_matrices([m.src, *m.targets.values()], list(m.targets.values()), xa, ya,
                             num_classes=st.ds.num_classes, eps=cfg.wrong_label_eps,
                             steps=cfg.transfer_steps, step_size=cfg.transfer_step_size,
                             seed=seed, device=st.ctx.device)
    st.ctx.log.entries.append({"name": "transfer-attacks", "key": f"seed {seed}",
                               "seconds": time.perf_counter() - t0, "cached": False})
    return mats


def seed_figures(st: Setting, cfg: TransferConfig, m: SeedModels, mats: dict[str, Any],
                 seed: int) -> dict[str, Any]:
    """Every figure of one seed: accuracies, transfer from the source, the correlations across
    architectures and the means over pairs of distinct models."""
    dev = st.ctx.device
    det_acc = {a: _acc(x, st.test, device=dev) for a, x in m.learners.items()}
    from_src = {a: v for a, v in zip(cfg.archs, mats["transfer"][0], strict=True)}
    from_src_u = {a: v for a, v in zip(cfg.archs, mats["transfer_untargeted"][0], strict=True)}
    xs = [from_src[a] or 0.0 for a in cfg.archs]
    ys = [det_acc[a] for a in cfg.archs]
    det_set = {a: _acc(x, m.d_det, device=dev) for a, x in m.targets.items()}
    pearson, spearman = correlations(xs, ys)
    cross = {k: cross_mean(mats[k], mats["transfer"]) for k in
             ("transfer", "noise", "transfer_untargeted", "noise_untargeted")}
    return {
        "seed": seed, "sources": ["source", *cfg.archs], "targets": list(cfg.archs),
        "source_clean_acc": _acc(m.src, st.test, device=dev),
        "source_attack_success": mats["attack_success"][0],
        "source_det_target_rate": _acc(m.src, m.d_det, device=dev),
        "clean_acc": {a: _acc(x, st.test, device=dev) for a, x in m.targets.items()},
        "det_acc": det_acc, "transfer_from_source": from_src,
        "transfer_from_source_untargeted": from_src_u,
        "noise_from_source": dict(zip(cfg.archs, mats["noise"][0], strict=True)),
        "det_set_transfer": det_set, **mats,
        "pearson": pearson, "spearman": spearman,
        "pearson_untargeted": correlations([from_src_u[a] or 0.0 for a in cfg.archs], ys)[0],
        "pearson_det_set": correlations([det_set[a] for a in cfg.archs], ys)[0],
        **{f"cross_{k}": v for k, v in cross.items()},
        "cross_excess": cross["transfer"] - cross["noise"],
    }


def run_seed(st: Setting, cfg: TransferConfig, seed: int) -> dict[str, Any]:
    """Every measurement of one seed (see the module docstring): train, attack, measure."""
    models = train_models(st, cfg, seed)
    return seed_figures(st, cfg, models, attack_all(st, cfg, models, seed), seed)


def _check(cfg: TransferConfig, st: Setting) -> None:
    if len(cfg.archs) < 3 or len(set(cfg.archs)) != len(cfg.archs):
        raise ValueError(f"archs={cfg.archs}: need >= 3 distinct architectures for a "
                         "correlation across them (the issue asks for >= 4)")
    for a in cfg.archs:
        arch_spec(a, in_shape=st.ds.shape, num_classes=st.ds.num_classes)
    end = cfg.n_construct + cfg.n_target_train
    if end > len(st.train.x):
        raise ValueError(f"n_construct + n_target_train = {end} exceeds the "
                         f"{len(st.train.x)} training images: lower n_target_train")
    if cfg.n_det is not None and not 0 < cfg.n_det <= cfg.n_construct:
        raise ValueError(f"n_det={cfg.n_det} must be in [1, n_construct={cfg.n_construct}]")


def _seed_unit(cfg: TransferConfig, store: Store, seed: int) -> None:
    """One seed's cached stages: its models and D_det (an executor's task:
    :func:`prefetch_seeds`; the transfer attacks are not cached)."""
    train_models(setting(cfg, store), cfg, seed)


def measure(cfg: TransferConfig, *, out: Path, store: Store) -> Result:
    """Load the features-vs-bugs setting and check the config, measure every seed, aggregate
    and decide."""
    del out  # nothing but the record
    st = setting(cfg, store)
    _check(cfg, st)
    prefetch_seeds(_seed_unit, cfg, store, cfg.seeds, device=st.ctx.device)  # loop loads them
    per_seed = [run_seed(st, cfg, seed) for seed in cfg.seeds]
    metrics = _aggregate(per_seed, cfg.archs)
    return Result(metrics=metrics, claims=decide(metrics), details=_details(cfg, st, per_seed),
                  data={st.ds.name: st.ds.sha256}, stages=st.ctx.log.entries,
                  device=str(st.ctx.device))


def _details(cfg: TransferConfig, st: Setting, per_seed: list[dict[str, Any]]
             ) -> dict[str, Any]:
    return {
        "per_seed": per_seed, "literature": LITERATURE,
        "literature_source": "Ilyas et al. 2019 (NeurIPS), Fig. 3; Liu et al. 2017 (ICLR)",
        "num_classes": st.ds.num_classes, "source_arch": cfg.arch,
        "arch_specs": {a: to_plain(arch_spec(a, in_shape=st.ds.shape,
                                             num_classes=st.ds.num_classes))
                       for a in cfg.archs},
        "attack": f"targeted (y+1 mod K) L2 PGD-{cfg.transfer_steps} eps="
                  f"{cfg.wrong_label_eps:g} step={cfg.transfer_step_size:g}, no random "
                  f"start, on the first {cfg.n_attack} test images",
        "stage_seconds": _stage_split(st.ctx.log.entries),
    }


def _stage_split(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds spent in this run per stage name (cached stages cost nothing here)."""
    split: dict[str, float] = {}
    for e in entries:
        split[e["name"]] = split.get(e["name"], 0.0) + (0.0 if e["cached"] else e["seconds"])
    return split


def _aggregate(per_seed: list[dict[str, Any]], archs: Sequence[str]) -> dict[str, Metric]:
    def over(key: str, **kw: Any) -> Metric:
        return metric_over_seeds([float(r[key]) for r in per_seed], **kw)

    out: dict[str, Metric] = {}
    for key in ("pearson", "spearman", "pearson_untargeted", "pearson_det_set"):
        out[f"transfer/{key}"] = over(key, lower=-1.0)
    for key in ("cross_transfer", "cross_transfer_untargeted"):
        out[f"transfer/{key}_rate"] = over(key)
    for key in ("cross_noise", "cross_noise_untargeted"):
        out[f"transfer/{key}_rate"] = over(key, higher_is_better=False)
    out["transfer/cross_excess_over_noise"] = over("cross_excess", lower=-1.0)
    out["transfer/source/clean_acc"] = over("source_clean_acc")
    out["transfer/source/attack_success"] = over("source_attack_success")
    for a in archs:
        for key, name in (("clean_acc", "clean_acc"), ("det_acc", "D_det_acc"),
                          ("transfer_from_source", "transfer_from_source"),
                          ("det_set_transfer", "D_det_set_transfer")):
            out[f"transfer/{a}/{name}"] = metric_over_seeds(
                [float(r[key][a] or 0.0) for r in per_seed])
    return out


def decide(metrics: dict[str, Metric]) -> list[Claim]:
    """Verdicts by rules fixed before any number was seen, on 95% CIs over seeds, each of the
    form of :func:`~eisbench.runs.claims.decide_against` (reproduced: the CI lies past the
    bar; not reproduced: its far end stays short of bar + margin). The numbers are
    ``transfer.*`` in :data:`~eisbench.runs.preregistered.THRESHOLDS`.

    1. Transfer tracks learnability (Ilyas et al., Fig. 3). Per seed, Pearson r across the
       architectures between the targeted transfer rate from the D_det source into each
       architecture and the test accuracy of a fresh model of it trained on D_det. Reproduced
       if the CI of mean r has lower end > 0 and mean Spearman > 0; not reproduced if its upper
       end < 0.2 (margin 0.2: the paper shows a strong, monotone relation, no coefficient; a
       correlation under 0.2 is "none to speak of"). Reproduced supports "features" (Ilyas's
       explanation: architectures are fooled by the source's examples to the extent that they
       use the same non-robust features D_det teaches). Not reproduced is mapped to
       "inconclusive", not to "bugs": with a handful of small MNIST architectures a capacity
       confound (weaker models are both easier to fool and worse at learning D_det) can drive
       r to or below 0 in either world. Claim 2 is this exhibit's route to "bugs".
    2. Adversarial examples transfer well above same-norm random noise. Per seed, the mean
       targeted transfer rate over all pairs of distinct models minus the rate at which random
       noise of the same L2 norm moves the same images of the same pairs to the same target.
       Reproduced if its CI lower end > 0.10; not reproduced if its upper end < 0.05 (margin
       -0.05: transfer within 5 points of noise, where published transfer rates are tens of
       points). Reproduced is inconclusive (the seed's exhibit B: the bug world explains
       transfer by failure modes shared from one task); not reproduced supports "bugs":
       perturbations that do not carry over to other models beyond noise are specific to the
       model, as the bug world has them, while in the feature world "we expect that this
       perturbation transfers to other classifiers" (Nakkiran's definition of World 2, seed).
    """
    def shown(*names: str) -> str:
        return "; ".join(fmt(metrics, n) for n in names)

    rho, sp = metrics["transfer/spearman"], threshold("transfer.spearman.bar")
    pr, ex = bar_margin("transfer.pearson"), bar_margin("transfer.excess_over_noise")
    r_v = decide_metric(metrics, "transfer/pearson", **pr)
    return [
        make_claim(
            claim="Architectures that learn D_det better receive more of its source's "
                  "adversarial examples (positive correlation across architectures)",
            rule=f"mean Pearson r CI lower > {pr['bar']:g} and mean Spearman > {sp:g} "
                 f"(reproduced); CI upper < {pr['bar'] + pr['margin']:g}, margin "
                 f"{pr['margin']:g} (not reproduced: inconclusive, a capacity confound can "
                 "remove the relation in either world)",
            measured=shown("transfer/pearson", "transfer/spearman"),
            verdict=conjunction(r_v, needed("reproduced" if rho["value"] > sp else
                                            "not reproduced")),
            exhibit="B", if_reproduced="features", if_not="inconclusive",
            literature=LITERATURE["correlation"]),
        make_claim(
            claim="Adversarial examples transfer between architectures well above the rate of "
                  "random noise of the same norm",
            rule=f"transfer minus noise (targeted, pairs of distinct models) CI lower > "
                 f"{ex['bar']:.2f} (reproduced: inconclusive, both worlds explain "
                 f"transfer); CI upper < {ex['bar'] + ex['margin']:.2f}, margin "
                 f"{ex['margin']:.2f} (not reproduced: bugs, the perturbations are specific to "
                 "their model)",
            measured=shown("transfer/cross_excess_over_noise", "transfer/cross_transfer_rate",
                           "transfer/cross_noise_rate"),
            verdict=decide_metric(metrics, "transfer/cross_excess_over_noise", **ex),
            exhibit="B", if_reproduced="inconclusive", if_not="bugs",
            literature=LITERATURE["transfer"]),
    ]


register(Experiment(name="transfer",
                    summary="Ilyas et al. 2019 Fig. 3: transfer rate between architectures vs "
                            "their accuracy when trained on D_det",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.transfer")))
