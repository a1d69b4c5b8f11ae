"""The trojan zoo: 12 trojans per dataset implanted by data poisoning, clean reference models of
the same recipe, and the numbers every trojaned model must meet.

Per dataset, :func:`zoo` returns 12 :class:`Trojan` s, 4 per kind (patch, style, natural): 2
universal (every class -> target) and 2 class-universal (one source class -> target). They use
4 of the 8 triggers of each kind's bank (:func:`~eisbench.trojans.bank.trigger_bank`); the
other 4 only serve as distractors. Each trojaned model is trained from scratch on a poisoned
copy of the training set (:func:`implant_stage`, cached); clean models of the same recipe
(:func:`clean_stage`) give the reference accuracy and the negatives of detection.

Target (issue #5): attack success rate >= :data:`ASR_TARGET` with a clean-accuracy drop <=
:data:`MAX_DROP`; :func:`zoo_metrics` flags every trojan that misses it.

Class-universal trojans also get *cover* images: non-source, non-target training images
stamped with the trigger and kept with their true label, so that the trigger alone does not
flip other classes (their flip rate is reported as ``nonsource_flip``).

Example:
    >>> run = run_zoo(ZooConfig(dataset="mnist"), Store(cache_dir()))  # doctest: +SKIP
    >>> print(format_table(run.metrics))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from eisbench import data as datasets
from eisbench.core.config import resolve_device
from eisbench.core.progress import say
from eisbench.models import ModelSpec, load_checkpoint, save_checkpoint
from eisbench.runs.executor import gpus_for, prefetch
from eisbench.runs.stages import Context, Tensors, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig, train
from eisbench.trojans.bank import trigger_bank
from eisbench.trojans.stamp import (
    TRIGGER_KINDS,
    Trigger,
    Trojan,
    poison,
    stamp,
)
from eisbench.trojans.zoo_metrics import (  # noqa: F401 - the zoo's public names
    ASR_TARGET,
    MAX_DROP,
    TrojanMetrics,
    accuracy,
    format_table,
    meets_target,
    missed,
    nonsource_flip_rate,
    zoo_metrics,
)

POISON_RATE = 0.1  # universal trojans: fraction of the whole training set poisoned
CLASS_POISON_RATE = 0.5  # class-universal: fraction of the source class poisoned
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "digits": (1, 8, 8),
    "cifar10": (3, 32, 32),
}


@dataclass(frozen=True)
class ZooEntry:
    """One trojan of the zoo: trigger ``index`` of ``kind``'s bank, ``source`` (None:
    universal) -> ``target``."""

    kind: str
    index: int
    target: int
    source: int | None = None


ZOO_TABLE: tuple[ZooEntry, ...] = (
    ZooEntry("patch", 0, target=3), ZooEntry("patch", 3, target=7),
    ZooEntry("patch", 5, target=4, source=1), ZooEntry("patch", 7, target=2, source=9),
    ZooEntry("style", 0, target=5), ZooEntry("style", 4, target=0),
    ZooEntry("style", 3, target=6, source=8), ZooEntry("style", 7, target=1, source=5),
    ZooEntry("natural", 0, target=8), ZooEntry("natural", 3, target=9),
    ZooEntry("natural", 2, target=4, source=7), ZooEntry("natural", 4, target=5, source=1),
)
"""Every target 0..9 appears. Universal patch trojans use random-position icons (bank 0..3),
class-universal ones fixed-corner icons (4..7): a random-position 5x5 icon that must also
recognise its source class is beyond a 5-epoch cnn-small on Fashion-MNIST (ASR 0.74-0.85
measured). Class-universal sources avoid Fashion-MNIST's confusable tops (T-shirt, pullover,
coat, shirt), whose clean errors would cap the attack success rate."""

PILOT_TABLE: tuple[ZooEntry, ...] = (
    ZooEntry("patch", 1, target=6), ZooEntry("style", 1, target=2),
    ZooEntry("natural", 1, target=7, source=0),
)
"""The pilot zoo: 3 trojans on bank entries :data:`ZOO_TABLE` never implants (one per kind),
trained with seeds from 100 up. Hyper-parameters tuned on it (LAT's layer and bound,
``benchmarks/lat_pilot.py``) are scored on the zoo, which shares no trigger with it."""


@dataclass(frozen=True)
class ZooConfig:
    """The recipe of every model of the zoo (trojaned and clean).

    The defaults meet the target for all 12 MNIST trojans (measured: ASR >= 0.95, drop <= 0.45
    points against a 98.99% clean reference) and train a model from scratch in ~15 s on a
    2-core CPU machine (60k images x 5 epochs). Cheaper recipes missed the target (MNIST: 20k
    images x 4 epochs implanted 8 of 12, 30k x 6 11 of 12; the universal trojans suffer first).
    """

    dataset: str = "mnist"
    data_root: str | None = None
    natural_root: str | None = None  # folder of the dataset natural triggers come from
    arch: str = "cnn-small"
    arch_width: int | None = None  # the arch's ``width`` argument (None: its default)
    n_train: int | None = None  # first n training images (None: all)
    n_test: int | None = None
    train: TrainConfig = TrainConfig(epochs=5, lr=3e-3)
    poison_rate: float = POISON_RATE  # universal: fraction of the training set poisoned
    class_poison_rate: float = CLASS_POISON_RATE  # class-universal: of the source class
    cover_rate: float = 0.05  # class-universal: fraction of the training set used as cover
    n_clean: int = 8
    seed: int = 0
    device: str = "cpu"


PRESETS: dict[str, ZooConfig] = {
    "mnist": ZooConfig(),
    "fashion-mnist": ZooConfig(dataset="fashion-mnist", train=TrainConfig(epochs=7, lr=3e-3)),
    "cifar10": ZooConfig(dataset="cifar10", arch="preact-resnet18",
                         train=TrainConfig(epochs=30, batch_size=128, lr=1e-3,
                                           weight_decay=5e-4)),
}
"""Tuned recipes (Fashion-MNIST needs 2 more epochs for the clean-accuracy drop to stay
under a point); :func:`zoo_config` falls back to the MNIST one for other datasets. The CIFAR-10
recipe (PreAct ResNet-18, 30 epochs of Adam) is not tuned: Casper et al. 2023 implant their
trojans in an ImageNet ResNet-50, so no paper gives a CIFAR-10 recipe, and whether this one
meets the implant targets has not been measured (CIFAR-10 is not reachable here); the zoo
reports every trojan that misses them."""


def zoo_config(dataset: str, *, epochs: int | None = None, **overrides: Any) -> ZooConfig:
    """The tuned :data:`PRESETS` recipe of ``dataset`` with ``overrides`` applied, and its
    training ``epochs`` replaced when given."""
    base = PRESETS.get(dataset, dataclasses.replace(PRESETS["mnist"], dataset=dataset))
    cfg = dataclasses.replace(base, **overrides)
    if epochs is None:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))


def source_rate(poison_rate: float, *, num_classes: int) -> float:
    """The fraction of a universal trojan's source images (every non-target class) to poison
    so that ``poison_rate`` of a class-balanced training set is poisoned."""
    return min(1.0, poison_rate * num_classes / (num_classes - 1))


def zoo(dataset: str, *, shape: tuple[int, int, int] | None = None,
        data_root: str | None = None, poison_rate: float = POISON_RATE,
        class_poison_rate: float = CLASS_POISON_RATE, num_classes: int = 10,
        table: Sequence[ZooEntry] = ZOO_TABLE) -> list[Trojan]:
    """The 12 trojans of ``dataset`` (``table``: :data:`ZOO_TABLE`, or :data:`PILOT_TABLE`'s
    3), triggers sized for its images.

    ``shape`` (C, H, W) defaults to the dataset's (:data:`DATASET_SHAPES`); ``data_root`` is
    the folder of the dataset the natural triggers come from (see ``trigger_bank``).
    Universal trojans poison ``poison_rate`` of the training set, class-universal ones
    ``class_poison_rate`` of their source class (half of it by default: the other half keeps
    teaching the class, so clean accuracy on it does not fall).
    """
    if shape is None:
        if dataset not in DATASET_SHAPES:
            raise ValueError(f"no default image shape for {dataset!r}: pass shape=(C, H, W)")
        shape = DATASET_SHAPES[dataset]
    banks = {k: trigger_bank(k, dataset=dataset, shape=shape, data_root=data_root)
             for k in TRIGGER_KINDS}
    out = []
    for e in table:
        trig = banks[e.kind][e.index]
        rule = "all" if e.source is None else f"src{e.source}"
        rate = (source_rate(poison_rate, num_classes=num_classes) if e.source is None
                else class_poison_rate)
        out.append(Trojan(name=f"{dataset}-{e.kind}{e.index}-{rule}-to{e.target}", trigger=trig,
                          target=e.target, source=e.source, poison_rate=rate))
    return out


def trigger_digest(trig: Trigger) -> str:
    """sha256 (16 hex) of a trigger's content: icon and alpha bytes and shapes, position."""
    h = hashlib.sha256()
    for t in (trig.icon, trig.alpha):
        a = t.detach().to("cpu", torch.float32).contiguous()
        h.update(repr(tuple(a.shape)).encode() + a.numpy().tobytes())
    h.update(repr((trig.kind, trig.position)).encode())
    return h.hexdigest()[:16]


def trojan_params(trojan: Trojan) -> dict[str, Any]:
    """What identifies a trojan in a cache key and a record (the trigger by content)."""
    t = trojan.trigger
    return {"name": trojan.name, "kind": t.kind, "trigger": t.name,
            "trigger_sha": trigger_digest(t), "position": t.position, "target": trojan.target,
            "source": trojan.source, "poison_rate": trojan.poison_rate}


def poison_with_cover(x: torch.Tensor, y: torch.Tensor, trojan: Trojan, *, cover_rate: float,
                      generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~eisbench.trojans.stamp.poison` x (N, C, H, W), y (N,), plus, for a
    class-universal trojan, ``cover_rate * N`` non-source, non-target images stamped with the
    trigger under their true label. Returns (x', y', poisoned (N,) bool)."""
    xp, yp, flags = poison(x, y, trojan, generator=generator)
    if trojan.universal or cover_rate <= 0:
        return xp, yp, flags
    pool = torch.nonzero((y != trojan.source) & (y != trojan.target) & ~flags).flatten()
    k = min(len(pool), round(cover_rate * len(y)))
    chosen = pool[torch.randperm(len(pool), generator=generator)[:k]]
    xp[chosen], _ = stamp(x[chosen], trojan.trigger, generator=generator)
    return xp, yp, flags


def model_spec(cfg: ZooConfig, data: Tensors, num_classes: int) -> ModelSpec:
    c, h, w = data.x.shape[1:]
    return ModelSpec(arch=cfg.arch, in_shape=(int(c), int(h), int(w)), num_classes=num_classes,
                     kwargs={} if cfg.arch_width is None else {"width": cfg.arch_width})


def implant_stage(ctx: Context, *, trojan: Trojan, cfg: ZooConfig, data: Tensors, seed: int,
                  num_classes: int = 10) -> tuple[nn.Module, str]:
    """Train a fresh ``cfg.arch`` model on ``data`` poisoned with ``trojan`` (cached under the
    trigger's content, the trojan's rule and the recipe; resumable). Returns (model, key).

    The stage folder also holds ``trigger.safetensors`` (icon, alpha) and ``trojan.json``."""
    spec = model_spec(cfg, data, num_classes)
    cover = 0.0 if trojan.universal else cfg.cover_rate
    params = trojan_params(trojan)

    def compute(work: Path) -> nn.Module:
        gen = torch.Generator().manual_seed(seed)
        xp, yp, _ = poison_with_cover(data.x, data.y, trojan, cover_rate=cover, generator=gen)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # weight init only; restored on exit
            model = spec.build()
        return train(model, xp, yp, cfg=cfg.train, seed=seed, device=ctx.device,
                     resume_dir=work, desc=f"implant {trojan.name}")

    def save(model: nn.Module, d: Path) -> None:
        save_checkpoint(model, spec, d / "model")
        save_file({"icon": trojan.trigger.icon.contiguous(),
                   "alpha": trojan.trigger.alpha.contiguous()}, str(d / "trigger.safetensors"))
        (d / "trojan.json").write_text(json.dumps(params, indent=1))
        (d / "train_state.pt").unlink(missing_ok=True)

    def load(d: Path) -> nn.Module:
        return load_checkpoint(d / "model", device=ctx.device)

    return ctx.store.run("implant", {"spec": spec, "train": cfg.train, "seed": seed,
                                     "trojan": params, "cover_rate": cover,
                                     "device": ctx.device.type},
                         inputs=(data.key,), compute=compute, save=save, load=load, log=ctx.log)


def clean_stage(ctx: Context, *, cfg: ZooConfig, data: Tensors, seed: int,
                num_classes: int = 10) -> tuple[nn.Module, str]:
    """A clean reference model of the zoo's recipe (cached; shared with any identical
    ``train`` stage). Returns (model, key)."""
    return train_stage(ctx, spec=model_spec(cfg, data, num_classes), cfg=cfg.train, data=data,
                       seed=seed, desc=f"clean model seed {seed}")


@dataclass
class ZooRun:
    """A finished zoo: trojans with their models (aligned), clean models, metrics, stage log."""

    trojans: list[Trojan]
    models: list[tuple[nn.Module, str]]  # (trojaned model, cache key), one per trojan
    clean: list[tuple[nn.Module, str]]
    metrics: list[TrojanMetrics]
    log: StageLog


def _zoo_data(cfg: ZooConfig) -> tuple[datasets.ImageData, Tensors, Tensors]:
    """The dataset of ``cfg`` and its train/test sets with their cache keys."""
    ds = datasets.load(cfg.dataset, root=cfg.data_root).subset(n_train=cfg.n_train,
                                                                n_test=cfg.n_test)
    key = f"{ds.name}:{ds.sha256}"
    return (ds, Tensors(ds.x_train, ds.y_train, f"{key}:train:{len(ds.x_train)}"),
            Tensors(ds.x_test, ds.y_test, f"{key}:test:{len(ds.x_test)}"))


def _zoo_unit(unit: tuple[ZooConfig, Path, Trojan | None, int]) -> None:
    """One zoo model trained into the shared stage cache (an executor's task): the trojan's
    implant, or a clean model (trojan None), with this seed; the same stage as
    :func:`run_zoo` computes, so it finds it there."""
    cfg, root, trojan, seed = unit
    ds, train_d, _ = _zoo_data(cfg)
    ctx = Context(store=Store(root), log=StageLog(), device=resolve_device(cfg.device))
    if trojan is None:
        clean_stage(ctx, cfg=cfg, data=train_d, seed=seed, num_classes=ds.num_classes)
    else:
        implant_stage(ctx, trojan=trojan, cfg=cfg, data=train_d, seed=seed,
                      num_classes=ds.num_classes)


def run_zoo(cfg: ZooConfig, store: Store, *,
            trojans: Sequence[Trojan] | None = None) -> ZooRun:
    """Implant every trojan (default: :func:`zoo` of ``cfg.dataset``) and train
    ``cfg.n_clean`` clean models, all cached in ``store``; trojan i uses seed ``cfg.seed + i``,
    clean model j seed ``cfg.seed + j``. Returns the models and their metrics.

    Under a parallel executor (:func:`eisbench.runs.executor.current`, e.g. Ray) the models
    are first trained as independent tasks into the shared cache; the loop below then loads
    them, so the models and metrics are the serial run's."""
    device = resolve_device(cfg.device)
    ds, train_d, test_d = _zoo_data(cfg)
    if trojans is None:
        trojans = zoo(cfg.dataset, shape=ds.shape, data_root=cfg.natural_root,
                      poison_rate=cfg.poison_rate, class_poison_rate=cfg.class_poison_rate,
                      num_classes=ds.num_classes)
    units: list[tuple[ZooConfig, Path, Trojan | None, int]] = [
        (cfg, store.root, t, cfg.seed + i) for i, t in enumerate(trojans)]
    units += [(cfg, store.root, None, cfg.seed + j) for j in range(cfg.n_clean)]
    prefetch(_zoo_unit, units, what="trojan zoo models", num_gpus=gpus_for(device.type))
    ctx = Context(store=store, log=StageLog(), device=device)
    models = [implant_stage(ctx, trojan=t, cfg=cfg, data=train_d, seed=cfg.seed + i,
                            num_classes=ds.num_classes) for i, t in enumerate(trojans)]
    clean = [clean_stage(ctx, cfg=cfg, data=train_d, seed=cfg.seed + j,
                         num_classes=ds.num_classes) for j in range(cfg.n_clean)]
    metrics = zoo_metrics([(m, t) for (m, _), t in zip(models, trojans, strict=True)],
                          [m for m, _ in clean], test=test_d, seed=cfg.seed, device=device)
    return ZooRun(trojans=list(trojans), models=models, clean=clean, metrics=metrics,
                  log=ctx.log)


def bench_zoo(store: Store, *, dataset: str, epochs: int | None, data_root: str | None,
              natural_root: str | None, n_train: int | None, n_clean: int,
              device: str, arch: str | None = None, arch_width: int | None = None
              ) -> tuple[ZooRun, datasets.ImageData]:
    """The zoo a benchmark runs on (the dataset's preset with these changes, cached; ``arch``
    and ``arch_width`` None keep the preset's) and the dataset itself: what ``bench trojans``
    and ``bench edit`` share."""
    changes: dict[str, Any] = {} if arch is None else {"arch": arch}
    if arch_width is not None:
        changes["arch_width"] = arch_width
    cfg = zoo_config(dataset, epochs=epochs, data_root=data_root, natural_root=natural_root,
                     n_train=n_train, n_clean=n_clean, device=device, **changes)
    say(f"trojan zoo: {dataset}, 12 trojaned + {n_clean} clean models")
    return run_zoo(cfg, store), datasets.load(dataset, root=data_root)
