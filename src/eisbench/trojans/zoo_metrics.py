"""How well each trojan of the zoo took: clean accuracy against clean reference models,
attack success rate, the non-source flip rate of class-universal trojans, and the implant
targets (:func:`meets_target`, thresholds preregistered in :mod:`eisbench.runs.preregistered`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eisbench.core.tensors import predict
from eisbench.runs.preregistered import threshold
from eisbench.runs.stages import Tensors
from eisbench.trojans.stamp import Trojan, attack_success_rate, stamp

ASR_TARGET = threshold("trojans.zoo.asr_target")
MAX_DROP = threshold("trojans.zoo.max_drop")  # one accuracy point


@dataclass(frozen=True)
class TrojanMetrics:
    """How one trojaned model fares (accuracies and rates in [0, 1])."""

    name: str
    kind: str
    universal: bool
    target: int
    source: int | None
    clean_acc: float  # on the clean test set
    clean_ref_acc: float  # mean over the clean reference models
    drop: float  # clean_ref_acc - clean_acc (positive: the trojan costs accuracy)
    asr: float  # stamped source test images sent to the target
    n_asr: int
    nonsource_flip: float | None  # class-universal: the same for non-source, non-target images
    meets_target: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def meets_target(asr: float, drop: float) -> bool:
    """ASR >= :data:`ASR_TARGET` and clean-accuracy drop <= :data:`MAX_DROP`."""
    return asr >= ASR_TARGET and drop <= MAX_DROP + 1e-9


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             device: str | torch.device = "cpu") -> float:
    """Fraction of images x (N, C, H, W) classified as y (N,)."""
    return float((predict(model, x, device=device) == y).float().mean())


def nonsource_flip_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trojan: Trojan, *,
                        generator: torch.Generator,
                        device: str | torch.device = "cpu") -> float | None:
    """Class-universal trojans: fraction of the non-source, non-target images x (N, C, H, W)
    that the stamped trigger sends to the target (lower is more specific); None if universal."""
    if trojan.universal:
        return None
    keep = (y != trojan.source) & (y != trojan.target)
    xs, _ = stamp(x[keep], trojan.trigger, generator=generator)
    return float((predict(model, xs, device=device) == trojan.target).float().mean())


def zoo_metrics(trojaned: Sequence[tuple[nn.Module, Trojan]], clean: Sequence[nn.Module], *,
                test: Tensors, seed: int = 0,
                device: str | torch.device = "cpu") -> list[TrojanMetrics]:
    """Metrics of every (trojaned model, trojan) on the clean test set (x (N, C, H, W),
    y (N,)) against the mean accuracy of the ``clean`` reference models of the same recipe.
    Random trigger positions come from a generator seeded with ``seed`` per trojan."""
    if not clean:
        raise ValueError("zoo_metrics needs at least one clean reference model")
    ref = sum(accuracy(m, test.x, test.y, device=device) for m in clean) / len(clean)
    out = []
    for model, trojan in trojaned:
        acc = accuracy(model, test.x, test.y, device=device)
        asr, n = attack_success_rate(model, test.x, test.y, trojan,
                                     generator=torch.Generator().manual_seed(seed), device=device)
        flip = nonsource_flip_rate(model, test.x, test.y, trojan,
                                   generator=torch.Generator().manual_seed(seed), device=device)
        out.append(TrojanMetrics(
            name=trojan.name, kind=trojan.trigger.kind, universal=trojan.universal,
            target=trojan.target, source=trojan.source, clean_acc=acc, clean_ref_acc=ref,
            drop=ref - acc, asr=asr, n_asr=n, nonsource_flip=flip,
            meets_target=meets_target(asr, ref - acc)))
    return out


def missed(metrics: Sequence[TrojanMetrics]) -> list[str]:
    """Names of the trojans that miss the target, each with why."""
    return [f"{m.name}: ASR {m.asr:.3f}" + (f", clean-accuracy drop {100 * m.drop:.2f} points"
                                           if m.drop > MAX_DROP else "")
            for m in metrics if not m.meets_target]


def format_table(metrics: Sequence[TrojanMetrics]) -> str:
    """A Markdown table: one row per trojan."""
    rows = ["| trojan | kind | rule | clean acc | drop (pts) | ASR | non-source flip | target |",
            "|---|---|---|---|---|---|---|---|"]
    for m in metrics:
        rule = f"all -> {m.target}" if m.universal else f"{m.source} -> {m.target}"
        flip = "" if m.nonsource_flip is None else f"{m.nonsource_flip:.3f}"
        rows.append(f"| {m.name} | {m.kind} | {rule} | {m.clean_acc:.4f} | {100 * m.drop:+.2f} "
                    f"| {m.asr:.3f} | {flip} | {'met' if m.meets_target else 'MISSED'} |")
    return "\n".join(rows)
