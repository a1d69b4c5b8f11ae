"""Wallace 2019 (Distill response to Ilyas et al.): learning from incorrectly labelled data.

(a) Foreign images: the standard model of D (the one of ``features-vs-bugs``, same cache)
    labels images of another dataset (Fashion-MNIST for MNIST), resized to D's shape; a fresh
    model trained only on those (image, predicted label) pairs is tested on D's test set.
    Wallace reports 91% on MNIST: the labels transfer the source model's features.
    Where the default foreign set is not installed (Fashion-MNIST comes from a Debian package
    that pip cannot install), it falls back to patches of the photographs that ship with
    scikit-learn and matplotlib (:mod:`eisbench.data.photos`), and the record, the claim and
    the report say so. The fallback keeps the test meaningful: what (a) needs is a varied set
    of images that are not of D, for the source model to label. On the pilot (MNIST, seed 0,
    the quick settings: a standard model at 98.3%, 20000 foreign images, a fresh model of 10
    epochs) the fresh model reached 79.8% on Fashion-MNIST and 80.3% on the photo patches,
    while 20000 images of uniform noise, labelled the same way (95% of them as one class),
    gave 11.0%: the test can fail, and the photo patches pass it as Fashion-MNIST does. The
    patches were fixed before that pilot and not tuned on it (a per-patch contrast stretch,
    tried afterwards, gave 87.0% and was not adopted); the pilot is
    ``benchmarks/wallace_foreign.py``.
(b) Errors of a weak model: a model trained briefly on a few images of D labels the training
    set; only the images it gets WRONG are kept, with its wrong labels; a fresh model trained on
    them is tested on D's clean test set (Wallace: 49.7% on CIFAR-10).

Above-chance accuracy in either case means that "incorrect" labels still carry the labelling
model's (generalising) features, which is the phenomenon behind D_rand and D_det.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eisbench import data as datasets
from eisbench.core.progress import say
from eisbench.core.tensors import predict
from eisbench.data import photos
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.ilyas import FULL as FVB_FULL
from eisbench.experiments.ilyas import (
    IlyasConfig,
    Setting,
    derived_config,
    setting,
    source_models,
)
from eisbench.runs.claims import decide_metric, fmt, make_claim, metric_over_seeds
from eisbench.runs.executor import prefetch_seeds
from eisbench.runs.preregistered import threshold
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import Tensors, train_stage
from eisbench.runs.store import Store
from eisbench.training import TrainConfig

LITERATURE = {"foreign": 0.91, "weak_errors": 0.497}  # Wallace 2019: MNIST; CIFAR-10
LIT_WHERE = {"foreign": "Wallace 2019, MNIST", "weak_errors": "Wallace 2019, CIFAR-10"}


@dataclass(frozen=True)
class WallaceConfig(IlyasConfig):
    """The features-vs-bugs config (its standard model and cache) plus Wallace's settings."""

    # images to be labelled by the standard model of D: a dataset's name or "photo-patches"
    # (None: Fashion-MNIST, or MNIST when D is Fashion-MNIST, and photo-patches where that is
    # not installed)
    foreign: str | None = None
    foreign_root: str | None = None
    n_foreign: int | None = None  # foreign training images used (None or more: all)
    n_weak: int = 1000  # images of D the weak model sees
    weak_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=1e-3))


QUICK = WallaceConfig(n_foreign=20000)
FULL = derived_config(WallaceConfig, FVB_FULL)


def resize_like(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Images (N, C', H', W') in [0,1] to (N, C, H, W) = (N, *shape): channel mean or repeat,
    then bilinear resizing with antialiasing."""
    c, h, w = shape
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c in (1, 3) else x
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).contiguous()


@dataclass(frozen=True)
class Foreign:
    """The foreign images, resized to D's shape: ``x`` (M, C, H, W) in [0,1]; ``fallback``:
    the default set that the photo patches replaced, and the error that loading it raised
    (None: no fallback)."""

    name: str
    sha256: str
    x: torch.Tensor
    description: str
    fallback: tuple[str, str] | None = None

    def note(self, *, long: bool = False) -> str:
        """What the claim says about the foreign images; ``long``: what the report says (the
        set's description and the loading error too).

        Example:
            >>> f = Foreign("photo-patches", "0" * 64, torch.zeros(5, 1, 2, 2),
            ...             "grey patches of photographs", ("fashion-mnist", "not found"))
            >>> print(f.note())
            foreign images: 5 photo-patches (the FALLBACK: fashion-mnist is not installed here, and Wallace's 91% is on Fashion-MNIST)
            >>> print(f.note(long=True))
            Foreign images: 5 photo-patches, grey patches of photographs (the FALLBACK: fashion-mnist is not installed here, and Wallace's 91% is on Fashion-MNIST). not found
        """  # noqa: E501
        what = f"{len(self.x)} {self.name}" + (f", {self.description}" if long else "")
        if self.fallback is None:
            return f"{'F' if long else 'f'}oreign images: {what}"
        why = (f"the FALLBACK: {self.fallback[0]} is not installed here, and Wallace's 91% is "
               "on Fashion-MNIST")
        return (f"{'F' if long else 'f'}oreign images: {what} ({why})"
                + (f". {self.fallback[1]}" if long else ""))


def foreign_images(cfg: WallaceConfig, st: Setting) -> Foreign:
    """The foreign images (capped at ``cfg.n_foreign``; the photo patches: that many, or
    60000 as in Fashion-MNIST's training set), resized to D's shape. The default set falls
    back to the photo patches when it is not installed; a set named in ``cfg.foreign`` or
    read from ``cfg.foreign_root`` never does (its error says how to install it)."""
    if cfg.foreign == photos.NAME:
        return _patches(cfg, st, fallback=None)
    name = cfg.foreign or ("mnist" if cfg.dataset == "fashion-mnist" else "fashion-mnist")
    try:
        fds = datasets.load(name, root=cfg.foreign_root)
    except datasets.DataError as e:
        if cfg.foreign is not None or cfg.foreign_root is not None:
            raise
        say(f"wallace: {name} is not installed; the foreign images are {photos.NAME}")
        return _patches(cfg, st, fallback=(name, str(e)))
    if cfg.n_foreign is not None:  # capped at what the foreign set has
        fds = fds.subset(n_train=min(cfg.n_foreign, len(fds.x_train)))
    return Foreign(fds.name, fds.sha256, resize_like(fds.x_train, st.ds.shape),
                   description="training images")


def _patches(cfg: WallaceConfig, st: Setting, *, fallback: tuple[str, str] | None
             ) -> Foreign:
    p = photos.photo_patches(cfg.n_foreign or 60000, seed=0)
    return Foreign(p.name, p.sha256, resize_like(p.x, st.ds.shape), p.description, fallback)


def learn_from_foreign(st: Setting, cfg: WallaceConfig, fds: Foreign,
                       std: tuple[nn.Module, str], seed: int
                       ) -> tuple[nn.Module, torch.Tensor]:
    """(a): the standard model labels the foreign images ``fds.x`` (M, C, H, W); a fresh
    model is trained on those pairs (cached). Returns it and the labels (M,)."""
    x_f = fds.x
    labels = predict(std[0], x_f, device=st.ctx.device)  # (M,)
    foreign = Tensors(x_f, labels, f"{fds.name}:{fds.sha256}:{len(x_f)}:as:{st.ds.shape}"
                                   f":labelled-by:{std[1]}")
    on_foreign, _ = train_stage(st.ctx, spec=st.spec, cfg=cfg.fresh_train, data=foreign,
                                seed=seed, desc=f"[seed {seed}] fresh model on {fds.name}")
    return on_foreign, labels


def learn_from_errors(st: Setting, cfg: WallaceConfig, weak_d: Tensors, seed: int
                      ) -> tuple[nn.Module, nn.Module, int]:
    """(b): a weak model trained on ``weak_d`` labels all of D; a fresh model is trained on
    the images it gets wrong, with its labels (cached). Returns (weak, fresh, errors)."""
    weak, weak_key = train_stage(st.ctx, spec=st.spec, cfg=cfg.weak_train, data=weak_d,
                                 seed=seed, desc=f"[seed {seed}] weak model")
    pred = predict(weak, st.train.x, device=st.ctx.device)  # (N,)
    wrong = pred != st.train.y  # (N,)
    errors = Tensors(st.train.x[wrong], pred[wrong], f"{st.train.key}:errors-of:{weak_key}")
    on_errors, _ = train_stage(st.ctx, spec=st.spec, cfg=cfg.fresh_train, data=errors,
                               seed=seed, desc=f"[seed {seed}] fresh model on its errors")
    return weak, on_errors, int(wrong.sum())


def weak_data(cfg: WallaceConfig, st: Setting) -> Tensors:
    """The first ``cfg.n_weak`` images of D, the weak model's training set."""
    return Tensors(st.train.x[:cfg.n_weak], st.train.y[:cfg.n_weak],
                   f"{st.train.key}:first{cfg.n_weak}")


def _seed_unit(cfg: WallaceConfig, store: Store, seed: int) -> None:
    """One seed's cached stages: the source models, the fresh model on the foreign images,
    the weak model and the fresh model on its errors (an executor's task:
    :func:`prefetch_seeds`)."""
    st = setting(cfg, store)
    std, _ = source_models(st, cfg, seed)
    learn_from_foreign(st, cfg, foreign_images(cfg, st), std, seed)
    learn_from_errors(st, cfg, weak_data(cfg, st), seed)


def measure(cfg: WallaceConfig, *, out: Path, store: Store) -> Result:
    """Load D and the foreign images; per seed, train on foreign images and on a weak model's
    errors and test every model on D's test set; aggregate and decide."""
    del out  # nothing but the record
    st = setting(cfg, store)
    k = st.ds.num_classes
    fds = foreign_images(cfg, st)
    weak_d = weak_data(cfg, st)
    prefetch_seeds(_seed_unit, cfg, store, cfg.seeds, device=st.ctx.device)  # loop loads them
    per_seed: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        std, _ = source_models(st, cfg, seed)
        on_foreign, labels = learn_from_foreign(st, cfg, fds, std, seed)
        weak, on_errors, n_errors = learn_from_errors(st, cfg, weak_d, seed)
        acc = {name: float((predict(m, st.test.x, device=st.ctx.device)
                            == st.test.y).float().mean())
               for name, m in (("foreign", on_foreign), ("weak_errors", on_errors),
                               ("weak_model", weak), ("source_model", std[0]))}
        per_seed.append({**acc, "n_errors": n_errors,
                         "foreign_label_counts": torch.bincount(labels, minlength=k).tolist()})
    metrics: dict[str, Metric] = {
        f"wallace/{name}/std_acc": metric_over_seeds([r[name] for r in per_seed])
        for name in ("foreign", "weak_errors", "weak_model", "source_model")}
    note = fds.note()
    return Result(
        metrics=metrics, claims=decide(metrics, num_classes=k, foreign=note),
        details={"per_seed": per_seed, "literature": LITERATURE, "num_classes": k,
                 "foreign": {"name": fds.name, "images": len(fds.x),
                             "description": fds.description,
                             "fallback_for": fds.fallback and fds.fallback[0],
                             "error": fds.fallback and fds.fallback[1]},
                 "literature_source": "Wallace 2019, Distill: MNIST (a), CIFAR-10 (b). "
                                      + fds.note(long=True)},
        data={st.ds.name: st.ds.sha256, fds.name: fds.sha256}, stages=st.ctx.log.entries,
        device=str(st.ctx.device))


def decide(metrics: dict[str, Metric], *, num_classes: int,
           foreign: str | None = None) -> list[Claim]:
    """Rules fixed in advance, on 95% CIs over seeds, of the form of
    :func:`~eisbench.runs.claims.decide_against`: each claim is reproduced if the fresh
    model's test accuracy CI lower > 2/K (twice chance), not reproduced if its CI upper
    < 2/K + 0.05 (margin 0.05, as for D_rand and D_det; Wallace's own figures, 91% and 49.7%,
    are far above). Both outcomes are inconclusive for the worlds (Wallace: learning from
    wrong labels is distillation, which explains D_rand and D_det without deciding what the
    features are; and a failed distillation here says nothing about adversarial examples).
    The numbers are ``wallace.*`` in :data:`~eisbench.runs.preregistered.THRESHOLDS`.
    ``foreign`` (what the foreign images were) is added to the first claim's ``measured``.
    """
    x, m = threshold("wallace.std_acc.bar_x_chance"), threshold("wallace.std_acc.margin")
    bar = x / num_classes
    claims: list[Claim] = []
    for name, claim in (("foreign", "A model trained only on foreign images labelled by a "
                                    "model of D is well above chance on D"),
                        ("weak_errors", "A model trained only on a weak model's errors (with its "
                                        "wrong labels) is well above chance")):
        key = f"wallace/{name}/std_acc"
        claims.append(make_claim(
            claim=claim, rule=f"test accuracy CI lower > {bar:.2f} = {x:g}/K (reproduced); CI "
                              f"upper < {bar + m:.2f}, margin {m:.2f} (not reproduced); "
                              "inconclusive for the worlds either way (distillation)",
            measured=fmt(metrics, key) + (f"; {foreign}" if foreign and name == "foreign"
                                          else ""),
            verdict=decide_metric(metrics, key, bar=bar, margin=m),
            exhibit="D", if_reproduced="inconclusive", if_not="inconclusive",
            literature=f"{LITERATURE[name]:.1%} ({LIT_WHERE[name]})"))
    return claims


register(Experiment(name="wallace",
                    summary="Wallace 2019: learning from foreign images and from a weak "
                            "model's errors",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.wallace")))
