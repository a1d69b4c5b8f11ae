"""Trojan detection (Neural Cleanse's outlier test): reconstruct a trigger for every class and
flag the class whose trigger is anomalously small.

A trojaned target class is reachable from every image through a small patch; the other
classes need a large change. Given the mask L1 norms l_k of the reconstructed triggers, the
anomaly index of class k is ``|l_k - median(l)| / (1.4826 * MAD)`` (MAD: the median absolute
deviation; 1.4826 makes it consistent with the standard deviation of a normal law). A class is
flagged when its index exceeds 2 on the small side (l_k below the median); the suspect is the
class of smallest norm if it is flagged (:func:`mad_anomaly`).

:func:`scan` is a pure function of the model, the images and its hyper-parameters (all the
randomness comes from ``generator``), so its result can be cached; :func:`save_scan` and
:func:`load_scan` write and read it.

A :class:`ScanResult` prints as a short summary: the verdict, then the anomaly index of every
class with the flagged ones marked.

Example (a linear model on the 8x8 digits, its class-mean templates as weights, with a trojan
planted by hand: a bright 2x2 bottom-right corner says "0"):
    >>> from eisbench import data
    >>> d = data.load("digits")
    >>> means = torch.stack([d.x_train[d.y_train == k].mean(0) for k in range(10)])
    >>> w = means - means.mean(0)  # (10, 1, 8, 8)
    >>> w[0, 0, 6:, 6:] += 3.0
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(w.flatten(1)), net[1].bias.zero_()
    >>> scan(net, "digits", n=64, steps=50)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    neural-cleanse scan of 10 classes: trojan suspected: class 0 (anomaly index 7.49 > 2;
    mask L1 4.1 vs median 42.5); trigger at rows 6-7, cols 6-7
    anomaly index per class (* flagged, threshold 2): 0 7.49*  1 1.74 ...
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench import data as datasets
from eisbench.core.paths import atomic_write_bytes
from eisbench.core.tensors import eval_mode, predict
from eisbench.models.contract import check_model
from eisbench.tools.cost_schedule import get_schedule
from eisbench.tools.tabor_terms import TaborV1Weights, TaborWeights, finite_or_inf, tabor_score
from eisbench.tools.trigger_reconstruction import (
    SUCCESS,
    LossCurve,
    Reconstruction,
    mask_bbox,
    reconstruct_triggers,
)

MAD_CONSISTENCY = 1.4826
THRESHOLD = 2.0
SCAN_FORMAT = 2  # scan.json: 2 adds the schedule, TABOR's score and the loss curves


def mad_anomaly(values: Sequence[float], *, threshold: float = THRESHOLD
                ) -> tuple[list[float], list[int]]:
    """Neural Cleanse's anomaly index of each value, ``|v - median| / (1.4826 * MAD)``, and the
    indices flagged (index > ``threshold`` and v below the median).

    A zero MAD gives index 0 to the values at the median and infinity to the others.

    Example:
        >>> mad_anomaly([10, 11, 9, 10, 12, 2, 10, 11, 9, 10])[1]
        [5]
    """
    if len(values) < 2:
        raise ValueError("the anomaly index needs at least two values")
    med = statistics.median(values)
    dev = [abs(v - med) for v in values]
    scale = MAD_CONSISTENCY * statistics.median(dev)
    index = [d / scale if scale > 0 else (0.0 if d == 0 else math.inf) for d in dev]
    flagged = [k for k, (v, a) in enumerate(zip(values, index, strict=True))
               if a > threshold and v < med]
    return index, flagged


@dataclass(frozen=True, eq=False)
class ScanResult:
    """One reconstruction per class, the anomaly index of each class's mask L1 norm, the
    flagged classes and the suspect (None: no trojan detected); the cost schedule's name; and
    beside Neural Cleanse's rule, TABOR's trigger-quality score per class, its anomaly index
    (the same MAD rule, low side) and the classes it flags (empty for a scan saved before
    they existed)."""

    method: str
    reconstructions: tuple[Reconstruction, ...]
    anomaly_index: tuple[float, ...]
    flagged: tuple[int, ...]
    suspect: int | None
    threshold: float = THRESHOLD
    schedule: str = ""
    tabor_score: tuple[float, ...] = ()
    tabor_index: tuple[float, ...] = ()
    tabor_flagged: tuple[int, ...] = ()

    @property
    def tabor_suspect(self) -> int | None:
        """The class of lowest TABOR score (:func:`~eisbench.tools.tabor_terms.tabor_score`)
        if the MAD rule on those scores flags it."""
        if not self.tabor_score:
            return None
        low = min(range(len(self.tabor_score)), key=lambda k: self.tabor_score[k])
        return low if low in self.tabor_flagged else None

    @property
    def curves(self) -> tuple[LossCurve | None, ...]:
        """Each class's record of its checks (:class:`~eisbench.tools.trigger_reconstruction.
        LossCurve`): whether the reconstruction converged."""
        return tuple(r.curve for r in self.reconstructions)

    @property
    def l1(self) -> tuple[float, ...]:
        return tuple(r.l1 for r in self.reconstructions)

    @property
    def success(self) -> tuple[float, ...]:
        return tuple(r.success for r in self.reconstructions)

    @property
    def bbox(self) -> tuple[tuple[int, int, int, int], ...]:
        return tuple(r.bbox for r in self.reconstructions)

    @property
    def trigger(self) -> Reconstruction | None:
        """The reconstructed trigger of the suspect class."""
        return None if self.suspect is None else self.reconstructions[self.suspect]

    def verdict(self) -> str:
        """One line: the suspect with its index and trigger location, or the largest index."""
        med = statistics.median(self.l1)
        if self.suspect is not None:
            r0, c0, r1, c1 = self.reconstructions[self.suspect].bbox
            return (f"trojan suspected: class {self.suspect} (anomaly index "
                    f"{self.anomaly_index[self.suspect]:.2f} > {self.threshold:g}; mask L1 "
                    f"{self.l1[self.suspect]:.1f} vs median {med:.1f}); trigger at rows "
                    f"{r0}-{r1}, cols {c0}-{c1}")
        k = min(range(len(self.l1)), key=lambda i: self.l1[i])
        return (f"no trojan detected: the smallest trigger (class {k}, mask L1 "
                f"{self.l1[k]:.1f} vs median {med:.1f}) has anomaly index "
                f"{self.anomaly_index[k]:.2f} <= {self.threshold:g}")

    def __repr__(self) -> str:
        """The verdict, then the anomaly index of every class (``*``: flagged)."""
        index = "  ".join(f"{k} {'inf' if math.isinf(a) else f'{a:.2f}'}"
                          + ("*" if k in self.flagged else "")
                          for k, a in enumerate(self.anomaly_index))
        return (f"{self.method} scan of {len(self.reconstructions)} classes: {self.verdict()}\n"
                f"anomaly index per class (* flagged, threshold {self.threshold:g}): {index}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the per-class table, the flagged classes and the suspect."""
        num = finite_or_inf

        rows = [{"class": r.target, "l1": r.l1, "success": r.success, "bbox": list(r.bbox),
                 "anomaly_index": num(a), "flagged": r.target in self.flagged,
                 "trigger_found": r.success >= SUCCESS,
                "curve": r.curve.to_dict() if r.curve else None,
                "converged_step": r.curve.converged_step if r.curve else None}
                for r, a in zip(self.reconstructions, self.anomaly_index, strict=True)]
        for k, row in enumerate(rows):
            if self.tabor_score:
                row |= {"tabor_score": num(self.tabor_score[k]),
                        "tabor_index": num(self.tabor_index[k]),
                        "tabor_flagged": k in self.tabor_flagged}
        trig = self.trigger
        return {"method": self.method, "format": SCAN_FORMAT, "schedule": self.schedule,
                "threshold": self.threshold, "median_l1": statistics.median(self.l1),
                "classes": rows, "flagged": list(self.flagged), "suspect": self.suspect,
                "tabor_flagged": list(self.tabor_flagged), "tabor_suspect": self.tabor_suspect,
                "bbox": list(trig.bbox) if trig else None, "verdict": self.verdict()}


def scan(model: nn.Module, data: torch.Tensor | str, *, n: int = 500,
         data_root: str | Path | None = None, method: str = "neural-cleanse",
         num_classes: int | None = None, steps: int | None = None, lr: float = 0.1,
         lam: float | None = None, batch_size: int | None = None,
         threshold: float = THRESHOLD, seed: int = 0, generator: torch.Generator | None = None,
         device: str | torch.device = "cpu", tabor: TaborWeights | TaborV1Weights | None = None,
         schedule: str | None = "eisbench-v1", check_every: int | None = None) -> ScanResult:
    """Reconstruct a trigger for every class on clean images ``data`` (N, C, H, W) in [0,1] (all
    classes in parallel, see :func:`~eisbench.tools.trigger_reconstruction.
    reconstruct_triggers`) and apply the MAD outlier rule to their mask L1 norms, and beside it
    to TABOR's trigger-quality scores (:func:`~eisbench.tools.tabor_terms.tabor_score`).

    ``schedule``: the L1 weight's schedule: by default eisbench's (``"eisbench-v1"``, with
    ``steps=200, batch_size=64``), the one the trojan benchmark's detection figures were
    measured with; None: the method's published one (Wang et al.'s for ``"neural-cleanse"``,
    TrojanZoo's for ``"tabor"``), which runs to convergence at a cost not yet measured on the
    zoo (``benchmarks/scan_recipes.py``); ``steps``, ``lam``, ``batch_size``, ``check_every``:
    None takes the schedule's. ``data`` may also name a dataset (``"mnist"``, ``"digits"``,
    ...): its first ``n`` test images, from ``data_root`` if given. ``num_classes``: checked
    against the model's output (None: taken from the dataset named, else from the model). A
    model that fails on the images or does not return (B, K) logits raises a ValueError. The
    randomness comes from ``generator``, by default a generator seeded with ``seed``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> res = scan(net, torch.rand(16, 1, 8, 8), steps=2)
        >>> len(res.anomaly_index), res.suspect in (None, *range(10))
        (10, True)
    """
    if isinstance(data, str):
        ds = datasets.load(data, root=data_root)
        data, num_classes = ds.x_test[:n], num_classes or ds.num_classes
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    sched = get_schedule(schedule, method)
    k, _ = check_model(model, data, num_classes=num_classes, device=dev)
    recs = reconstruct_triggers(model, targets=range(k), data=data, method=method, steps=steps,
                                lr=lr, lam=lam, batch_size=batch_size, generator=generator,
                                device=dev, tabor=tabor, schedule=sched,
                                check_every=check_every)
    l1 = [r.l1 for r in recs]
    index, flagged = mad_anomaly(l1, threshold=threshold)
    low = min(range(k), key=lambda i: l1[i])
    with torch.no_grad(), eval_mode(model):
        score = tabor_score(model, data.to(dev), predict(model, data, device=dev).to(dev),
                            torch.stack([r.mask for r in recs]).to(dev),
                            torch.stack([r.pattern for r in recs]).to(dev),
                            torch.tensor([r.success for r in recs]))
    t_index, t_flagged = mad_anomaly(score.tolist(), threshold=threshold)
    return ScanResult(method=method, reconstructions=tuple(recs), anomaly_index=tuple(index),
                      flagged=tuple(flagged), suspect=low if low in flagged else None,
                      threshold=threshold, schedule=sched.name,
                      tabor_score=tuple(score.tolist()), tabor_index=tuple(t_index),
                      tabor_flagged=tuple(t_flagged))


def save_scan(res: ScanResult, folder: str | Path, *,
              extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``scan.json`` (:meth:`ScanResult.to_dict`, plus ``extra``) and
    ``triggers.safetensors`` (masks (K, 1, H, W), patterns (K, C, H, W)) into ``folder``;
    returns the JSON's path."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    save_file({"mask": torch.stack([r.mask for r in res.reconstructions]).contiguous(),
               "pattern": torch.stack([r.pattern for r in res.reconstructions]).contiguous()},
              str(d / "triggers.safetensors"))
    path = d / "scan.json"
    atomic_write_bytes(path, json.dumps(res.to_dict() | dict(extra or {}), indent=2).encode())
    return path


def load_scan(folder: str | Path) -> ScanResult:
    """Read what :func:`save_scan` wrote. A scan saved before format 2 (no schedule, TABOR
    score or curves) loads with schedule ``"eisbench-v1"`` (the only one then), no curves and
    no TABOR score; a newer format is refused."""
    d = Path(folder)
    meta = json.loads((d / "scan.json").read_text())
    fmt = int(meta.get("format", 1))
    if fmt > SCAN_FORMAT:
        raise ValueError(f"{d / 'scan.json'} is scan format {fmt}; this eisbench reads up to "
                         f"{SCAN_FORMAT}: upgrade eisbench")
    t = load_file(str(d / "triggers.safetensors"))
    schedule = meta.get("schedule", "eisbench-v1")
    rows = meta["classes"]
    recs = tuple(Reconstruction(target=row["class"], method=meta["method"], mask=t["mask"][i],
                                pattern=t["pattern"][i], l1=float(row["l1"]),
                                success=float(row["success"]), bbox=mask_bbox(t["mask"][i]),
                                curve=LossCurve.from_dict(row["curve"]) if row.get("curve")
                                else None, schedule=schedule)
                 for i, row in enumerate(rows))
    has_tabor = all("tabor_score" in row for row in rows)
    return ScanResult(method=meta["method"], reconstructions=recs,
                      anomaly_index=tuple(float(r["anomaly_index"]) for r in rows),
                      flagged=tuple(meta["flagged"]), suspect=meta["suspect"],
                      threshold=float(meta["threshold"]), schedule=schedule,
                      tabor_score=tuple(float(r["tabor_score"]) for r in rows) if has_tabor
                      else (),
                      tabor_index=tuple(float(r["tabor_index"]) for r in rows) if has_tabor
                      else (),
                      tabor_flagged=tuple(meta.get("tabor_flagged", ())))
