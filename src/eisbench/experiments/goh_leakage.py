"""Goh 2019 (Distill response to Ilyas et al.): robust-feature leakage in D_rand and D_det.

D_rand and D_det are labelled with the attack's target. If the targeted attack also moves
*robust* features towards the target class, a model trained on D_rand may learn the target
class from those robust features rather than from non-robust ones ("leakage"). Goh measures it
by fitting a linear classifier on the frozen representation of a ROBUST model, using D_rand
(or D_det) images and their target labels, and testing it on the clean test set: a robust
model only sees robust features, so any accuracy above chance is leakage. D_det's targets are
a fixed permutation of the true class, so robust features there point at the wrong class and
leakage should be near or below chance (Goh on CIFAR-10: 23.5% for D_rand, 6.8% for D_det).

The probe's robust model is robust in the threat model of the attack that built D_rand and
D_det: L2 at ``wrong_label_eps`` (Goh's probe model was L2-robust like Ilyas et al.'s CIFAR-10
attack). ``probe_train`` trains it, a cached stage of its own (one training per seed; the same
model as features-vs-bugs' robust source wherever their recipes agree, as in Ilyas et al.'s
CIFAR-10 setting), and a config whose probe model does not match the attack is refused. The
earlier probe, on features-vs-bugs' Linf-robust source (fast-AT, eps 0.3), whose robust features
at Linf 0.3 are not the ones an L2 attack of 3.0 can move, is kept beside it as
``linf_probe/...`` (no claim reads it).

Before and after (8x8 digits, quick preset with ``n_construct=1000``, 3 seeds; probe accuracy
on the clean test set, mean [95% CI], chance 10%; the verdicts are the same either way, D_rand
leaks and D_det does too, both far past the bar of 15%):

===============  ==========================  ==========================
probe trained    Linf-robust probe (before)  L2-robust probe (now)
===============  ==========================  ==========================
D                96.6% [96.2, 97.0]          89.7% [87.3, 92.1]
D_rand           79.4% [76.4, 82.5]          62.0% [50.6, 73.4]
D_det            68.5% [62.9, 74.1]          50.6% [34.0, 67.3]
D_det vs y+1     5.6% [1.9, 9.2]             9.6% [5.4, 13.8]
===============  ==========================  ==========================

The other models and datasets are those of ``features-vs-bugs`` with the same config (same
cache): run after it, this experiment reuses them and fits the probes (and trains the L2 probe
model where it has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from eisbench.core.tensors import eval_mode
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.ilyas import FULL as FVB_FULL
from eisbench.experiments.ilyas import (
    IlyasConfig,
    Setting,
    derived_config,
    setting,
    source_models,
    wrong_label_sets,
)
from eisbench.models.core import features
from eisbench.runs.claims import decide_metric, fmt, make_claim, metric_over_seeds
from eisbench.runs.executor import prefetch_seeds
from eisbench.runs.preregistered import threshold
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import train_stage
from eisbench.runs.store import Store
from eisbench.training import TrainConfig

LITERATURE = {"D_rand": 0.235, "D_det": 0.068}  # Goh 2019, CIFAR-10, robust ResNet-50 probe


@dataclass(frozen=True)
class GohLeakageConfig(IlyasConfig):
    """The features-vs-bugs config (models and datasets, shared cache) plus the probe's."""

    probe_c: float = 1.0  # inverse L2 strength of the logistic-regression probe
    probe_max_iter: int = 2000
    # the probe's robust model: L2, at the budget of the attack that built D_rand / D_det
    # (norm "l2", eps = wrong_label_eps); fast-AT like features-vs-bugs' robust source
    probe_train: TrainConfig = TrainConfig(method="fast-at", norm="l2", eps=3.0, epochs=8,
                                           lr=5e-3, eps_warmup_epochs=5)

    def __post_init__(self) -> None:
        """Refuse a probe model that is not robust in the attack's threat model."""
        p = self.probe_train
        if p.method == "standard" or p.norm != "l2" or p.eps != self.wrong_label_eps:
            raise ValueError(
                f"probe_train must train a model robust to the L2 attack that built D_rand and "
                f"D_det (norm l2, eps wrong_label_eps = {self.wrong_label_eps:g}), got method "
                f"{p.method}, norm {p.norm}, eps {p.eps:g}: set probe_train.norm=l2 and "
                f"probe_train.eps={self.wrong_label_eps:g}")


QUICK = GohLeakageConfig()
FULL = derived_config(GohLeakageConfig, FVB_FULL, probe_train=TrainConfig(
    method="fast-at", norm="l2", eps=FVB_FULL.wrong_label_eps, epochs=12, lr=5e-3,
    eps_warmup_epochs=8))


def representation(model: nn.Module, x: torch.Tensor, *, device: torch.device,
                   batch_size: int = 1000) -> np.ndarray:
    """Penultimate-layer features (N, D) of images x (N, C, H, W), as float64 numpy."""
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(features(model, x[i:i + batch_size].to(device)).flatten(1).cpu())
    return torch.cat(out).double().numpy()


def probe_predictions(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *,
                      c: float, max_iter: int, seed: int) -> np.ndarray:
    """Fit a multinomial logistic regression on (train_x (N, D), train_y (N,)) after
    standardisation; return its predicted classes (M,) for test_x (M, D)."""
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    clf.fit(scaler.transform(train_x), train_y)
    out: np.ndarray = clf.predict(scaler.transform(test_x))
    return out


def probe_model(st: Setting, cfg: GohLeakageConfig, seed: int) -> tuple[nn.Module, str]:
    """The probe's L2-robust model of one seed, (model, cache key) (a cached stage)."""
    return train_stage(st.ctx, spec=st.spec, cfg=cfg.probe_train, data=st.train, seed=seed,
                       desc=f"[seed {seed}] L2-robust probe model")


def probe_seed(st: Setting, cfg: GohLeakageConfig, seed: int) -> dict[str, float]:
    """Probe accuracies of one seed on the clean test set: a probe on the L2-robust model's
    features (and, as ``linf_probe/...``, on the Linf-robust source's), fitted on D (the first
    ``n_construct`` images), D_rand and D_det."""
    dev = st.ctx.device
    std, (rob_linf, _) = source_models(st, cfg, seed)
    sets = wrong_label_sets(st, cfg, std, seed)
    rob, _ = probe_model(st, cfg, seed)
    test_y = st.test.y.numpy()  # (M,)
    row: dict[str, float] = {}
    for prefix, model in (("", rob), ("linf_probe/", rob_linf)):
        test_f = representation(model, st.test.x, device=dev)  # (M, D)
        for name, d in (("D", st.base), *sets.items()):
            pred = probe_predictions(representation(model, d.x, device=dev), d.y.numpy(),
                                     test_f, c=cfg.probe_c, max_iter=cfg.probe_max_iter,
                                     seed=seed)
            row[prefix + name] = float((pred == test_y).mean())
            if name == "D_det":  # labels y+1 mod K: a probe that learnt the TRUE class from
                # robust features predicts y+1 on clean images; this measures that directly
                row[prefix + "D_det_shifted"] = float(
                    (pred == (test_y + 1) % st.ds.num_classes).mean())
    return row


def _seed_unit(cfg: GohLeakageConfig, store: Store, seed: int) -> None:
    """One seed's cached stages: the source models, D_rand and D_det, and the L2-robust probe
    model (an executor's task: :func:`prefetch_seeds`; the probes are not cached)."""
    st = setting(cfg, store)
    wrong_label_sets(st, cfg, source_models(st, cfg, seed)[0], seed)
    probe_model(st, cfg, seed)


def measure(cfg: GohLeakageConfig, *, out: Path, store: Store) -> Result:
    """Load the features-vs-bugs setting, fit the leakage probes of every seed, decide."""
    del out  # nothing but the record
    st = setting(cfg, store)
    prefetch_seeds(_seed_unit, cfg, store, cfg.seeds, device=st.ctx.device)  # loop loads them
    per_seed = [probe_seed(st, cfg, seed) for seed in cfg.seeds]
    metrics: dict[str, Metric] = {
        f"goh_leakage/{k}/probe_acc": metric_over_seeds([r[k] for r in per_seed])
        for k in per_seed[0]}
    return Result(
        metrics=metrics, claims=decide(metrics, num_classes=st.ds.num_classes),
        details={"per_seed": per_seed, "literature": LITERATURE,
                 "num_classes": st.ds.num_classes,
                 "literature_source": "Goh 2019, Distill, CIFAR-10 (robust ResNet-50)",
                 "probe": "logistic regression on standardised penultimate-layer features "
                          f"of an L2-robust model (fast-AT, eps {cfg.probe_train.eps:g}, the "
                          "budget of the L2 attack that built D_rand and D_det), trained on "
                          "the constructed set with its target labels, tested on the clean "
                          "test set; linf_probe: the same on the Linf-robust source model"},
        data={st.ds.name: st.ds.sha256}, stages=st.ctx.log.entries, device=str(st.ctx.device))


def decide(metrics: dict[str, Metric], *, num_classes: int) -> list[Claim]:
    """Verdicts by rules fixed in advance, on 95% CIs over seeds, of the form of
    :func:`~eisbench.runs.claims.decide_against` (chance = 1/K, bar = chance + 0.05, margin
    0.02: about a quarter of Goh's D_rand leakage past the bar, 23.5% vs 15%):

    - D_rand leaks robust features: reproduced if its probe accuracy CI lower > bar; not
      reproduced if its CI upper < bar + 0.02. Reproduced is inconclusive (leakage is another
      explanation of D_rand's accuracy: it weakens the feature reading without supporting
      bugs); not reproduced supports features (D_rand learnt without robust cues).
    - D_det does not: reproduced if its probe accuracy CI upper < bar; not reproduced if its
      CI lower > bar - 0.02. Reproduced supports features (D_det learnt without robust cues
      can only come from non-robust features); not reproduced is inconclusive (leakage would
      explain D_det's accuracy instead).
    The numbers are ``goh_leakage.*`` in :data:`~eisbench.runs.preregistered.THRESHOLDS`.
    """
    over, m = (threshold("goh_leakage.probe_acc.bar_over_chance"),
               threshold("goh_leakage.probe_acc.margin"))
    bar = 1.0 / num_classes + over

    def shown(k: str) -> str:
        return fmt(metrics, f"goh_leakage/{k}/probe_acc", label=f"{k} probe acc")

    return [
        make_claim(
            claim="D_rand leaks robust features (a robust-feature probe learns the true class)",
            rule=f"probe acc CI lower > {bar:.2f} = chance + {over:.2f} (reproduced: "
                 f"inconclusive); CI upper < {bar + m:.2f}, margin {m:.2f} (not reproduced: "
                 "features)",
            measured=shown("D_rand"),
            verdict=decide_metric(metrics, "goh_leakage/D_rand/probe_acc", bar=bar, margin=m),
            exhibit="D", if_reproduced="inconclusive", if_not="features",
            literature=f"CIFAR-10: {LITERATURE['D_rand']:.1%}"),
        make_claim(
            claim="D_det shows little or no robust-feature leakage",
            rule=f"probe acc CI upper < {bar:.2f} = chance + {over:.2f} (reproduced: features); "
                 f"CI lower > {bar - m:.2f}, margin {m:.2f} (not reproduced: inconclusive)",
            measured=f"{shown('D_det')}; {shown('D_det_shifted')} (against y+1)",
            verdict=decide_metric(metrics, "goh_leakage/D_det/probe_acc", bar=bar, margin=m,
                                  higher_means_reproduced=False),
            exhibit="D", if_reproduced="features", if_not="inconclusive",
            literature=f"CIFAR-10: {LITERATURE['D_det']:.1%}"),
    ]


register(Experiment(name="goh-leakage",
                    summary="Goh 2019: robust-feature leakage in D_rand vs D_det (linear probe)",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.goh_leakage")))
