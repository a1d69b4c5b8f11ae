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

Example:
    >>> gen = torch.Generator().manual_seed(0)
    >>> res = scan(model, x_test[:500], generator=gen)  # doctest: +SKIP
    >>> res.suspect, res.anomaly_index[res.suspect], res.trigger.bbox  # doctest: +SKIP
    (0, 3.9, (5, 5, 7, 7))
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

from eisbench.core.paths import atomic_write_bytes
from eisbench.models.contract import check_model
from eisbench.tools.trigger_reconstruction import (
    SUCCESS,
    TABOR,
    Reconstruction,
    TaborWeights,
    mask_bbox,
    reconstruct_triggers,
)

MAD_CONSISTENCY = 1.4826
THRESHOLD = 2.0


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
    flagged classes and the suspect (None: no trojan detected)."""

    method: str
    reconstructions: tuple[Reconstruction, ...]
    anomaly_index: tuple[float, ...]
    flagged: tuple[int, ...]
    suspect: int | None
    threshold: float = THRESHOLD

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the per-class table, the flagged classes and the suspect."""
        def num(v: float) -> float | str:
            return v if math.isfinite(v) else "inf"

        rows = [{"class": r.target, "l1": r.l1, "success": r.success, "bbox": list(r.bbox),
                 "anomaly_index": num(a), "flagged": r.target in self.flagged,
                 "trigger_found": r.success >= SUCCESS}
                for r, a in zip(self.reconstructions, self.anomaly_index, strict=True)]
        trig = self.trigger
        return {"method": self.method, "threshold": self.threshold,
                "median_l1": statistics.median(self.l1), "classes": rows,
                "flagged": list(self.flagged), "suspect": self.suspect,
                "bbox": list(trig.bbox) if trig else None, "verdict": self.verdict()}


def scan(model: nn.Module, data: torch.Tensor, *, method: str = "neural-cleanse",
         num_classes: int | None = None, steps: int = 200, lr: float = 0.1, lam: float = 1e-3,
         batch_size: int = 64, threshold: float = THRESHOLD, generator: torch.Generator,
         device: str | torch.device = "cpu", tabor: TaborWeights = TABOR
         ) -> ScanResult:
    """Reconstruct a trigger for every class on clean images ``data`` (N, C, H, W) in [0,1]
    (all classes in parallel, see :func:`~eisbench.tools.trigger_reconstruction.
    reconstruct_triggers`) and apply the MAD outlier rule to their mask L1 norms.

    ``num_classes``: checked against the model's output (None: taken from it). A model that
    fails on the images or does not return (B, K) logits raises a ValueError.
    """
    dev = torch.device(device)
    k, _ = check_model(model, data, num_classes=num_classes, device=dev)
    recs = reconstruct_triggers(model, targets=range(k), data=data, method=method, steps=steps,
                                lr=lr, lam=lam, batch_size=batch_size, generator=generator,
                                device=dev, tabor=tabor)
    l1 = [r.l1 for r in recs]
    index, flagged = mad_anomaly(l1, threshold=threshold)
    low = min(range(k), key=lambda i: l1[i])
    return ScanResult(method=method, reconstructions=tuple(recs), anomaly_index=tuple(index),
                      flagged=tuple(flagged), suspect=low if low in flagged else None,
                      threshold=threshold)


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
    """Read what :func:`save_scan` wrote."""
    d = Path(folder)
    meta = json.loads((d / "scan.json").read_text())
    t = load_file(str(d / "triggers.safetensors"))
    recs = tuple(Reconstruction(target=row["class"], method=meta["method"], mask=t["mask"][i],
                                pattern=t["pattern"][i], l1=float(row["l1"]),
                                success=float(row["success"]), bbox=mask_bbox(t["mask"][i]))
                 for i, row in enumerate(meta["classes"]))
    return ScanResult(method=meta["method"], reconstructions=recs,
                      anomaly_index=tuple(float(r["anomaly_index"]) for r in meta["classes"]),
                      flagged=tuple(meta["flagged"]), suspect=meta["suspect"],
                      threshold=float(meta["threshold"]))
