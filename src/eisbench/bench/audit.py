"""``eisbench audit``: one report on a model someone brings.

1. Its contract, checked before anything else (:func:`check_model`): it takes (B, C, H, W)
   images in [0,1] of the dataset and returns finite logits (B, K) with K = the dataset's
   classes. A model that fails on those images, returns another shape, or returns
   probabilities (rows in [0,1] summing to 1: attacks and the trojan scan need logits) is
   refused with the reason and the fix.
2. Clean accuracy on the whole test set (Wilson interval).
3. Robust accuracy under an attack suite at each eps, with every sanity check of
   :mod:`eisbench.evaluation` (an undefended reference model is the control).
4. Trojan scan (Neural Cleanse over every class): anomaly index per class, the suspect and its
   reconstructed trigger with its location.
5. Transfer: adversarial examples made on reference models eisbench trains itself (cached;
   architectures unlike and like the audited one) and the share that also fools the audited
   model, beside same-norm random noise: high transfer means the model relies on the same
   non-robust features as independently trained models (the "features" signal of Ilyas et al.).
6. A replacement: the distillers of :mod:`eisbench.replace` fitted to the model's own labels,
   agreement with the model on test and out-of-distribution digits against their size.
7. The tools' images for the most suspicious class (:data:`eisbench.tools.TOOLS`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from eisbench import data as datasets
from eisbench.attacks.pgd import pgd
from eisbench.core.config import resolve_device, to_plain
from eisbench.core.progress import say
from eisbench.core.stats import wilson_ci
from eisbench.core.tensors import eval_mode, predict
from eisbench.models import ModelSpec
from eisbench.models.contract import check_model
from eisbench.runs.record import SCHEMA_VERSION, Metric, Record, git_state, library_versions, now
from eisbench.runs.record import write as write_record
from eisbench.runs.stages import Context, Tensors, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.training import TrainConfig


@dataclass(frozen=True)
class AuditConfig:
    """What the audit measures and how hard it tries."""

    dataset: str = "mnist"
    data_root: str | None = None
    eps: tuple[float, ...] = (0.1, 0.3)  # Linf budgets of the robust-accuracy suite
    suite: str = "fast"
    n_robust: int = 500  # test images for robust accuracy
    scan_steps: int = 200
    n_scan: int = 256
    references: tuple[str, ...] = ("cnn-small", "mlp")  # trained by eisbench, cached
    reference_train: TrainConfig = TrainConfig(epochs=5, lr=3e-3)
    transfer_eps: float = 0.2
    n_transfer: int = 500
    distillers: tuple[str, ...] = ("sparse-linear", "tree", "templates")
    n_fit: int = 10000
    n_val: int = 5000
    tools: tuple[str, ...] = ("neural-cleanse", "adversarial-patch", "fv-class-fourier",
                              "snafue")
    n_images: int = 6
    seed: int = 0
    device: str = "cpu"


QUICK = AuditConfig(eps=(0.3,), n_robust=100, scan_steps=60, n_scan=64, references=("cnn-small",),
                    n_transfer=100, distillers=("sparse-linear", "tree"), n_fit=2000,
                    n_val=1000, tools=("neural-cleanse", "fv-class-fourier"), n_images=4)
"""A smoke test of the audit (about a minute on MNIST), not an audit."""


def _rate_metric(k: int, n: int, *, higher: bool = True) -> Metric:
    lo, hi = wilson_ci(k, n)
    return {"value": k / n, "ci95": [lo, hi], "n": n, "higher_is_better": higher}


def transfer_rates(model: nn.Module, ref: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   eps: float, generator: torch.Generator,
                   device: torch.device) -> dict[str, Any]:
    """PGD-20 (Linf ``eps``) on ``ref`` for images x (N, C, H, W), y (N,) that both models
    classify correctly; the share of the reference's successful examples that also fool
    ``model`` (transfer), and the share of same-norm random sign noise that fools it."""
    ok = (predict(model, x, device=device) == y) & (predict(ref, x, device=device) == y)
    xs, ys = x[ok], y[ok]
    if len(xs) == 0:
        raise ValueError("no test image is classified correctly by both models")
    with eval_mode(ref):
        adv = pgd(ref.to(device), xs.to(device), ys.to(device), eps=eps, steps=20,
                  step_size=eps / 8, generator=generator).cpu()
    fooled_ref = predict(ref, adv, device=device) != ys
    fooled = predict(model, adv, device=device) != ys
    sign = torch.randint(0, 2, xs.shape, generator=generator).float() * 2 - 1
    noise = (xs + eps * sign).clamp(0, 1)
    fooled_noise = predict(model, noise, device=device) != ys
    k, n = int((fooled & fooled_ref).sum()), int(fooled_ref.sum())
    return {"transfer": _rate_metric(k, max(n, 1), higher=False), "n_source": n,
            "noise": _rate_metric(int(fooled_noise.sum()), len(xs), higher=False),
            "white_box_on_reference": float(fooled_ref.float().mean())}


def run_audit(model: nn.Module, cfg: AuditConfig, *, out: Path, store: Store,
              name: str = "model") -> Record:
    """Audit ``model`` (left in the mode it came in) and write ``out/record.json`` and
    ``out/images.safetensors``; ``name`` labels it in the record."""
    from eisbench.evaluation import evaluate_robustness
    from eisbench.replace.fidelity import distil_model
    from eisbench.tools import TOOLS
    from eisbench.tools.scan import save_scan, scan

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    ds = datasets.load(cfg.dataset, root=cfg.data_root)
    model = model.to(device)
    _, output = check_model(model, ds.x_test, num_classes=ds.num_classes, device=device)
    log = StageLog()
    key = f"{ds.name}:{ds.sha256}"
    ctx = Context(store=store, log=log, device=device)
    train_d = Tensors(ds.x_train, ds.y_train, f"{key}:train:{len(ds.x_train)}")
    metrics: dict[str, Metric] = {}
    details: dict[str, Any] = {"model": name, "output": output}

    say("audit: clean accuracy")
    hits = int((predict(model, ds.x_test, device=device) == ds.y_test).sum())
    metrics["clean_acc"] = _rate_metric(hits, len(ds.y_test))

    say("audit: reference models (cached)")
    refs = {}
    for arch in cfg.references:
        spec = ModelSpec(arch=arch, in_shape=ds.shape, num_classes=ds.num_classes)
        refs[arch] = train_stage(ctx, spec=spec, cfg=cfg.reference_train, data=train_d,
                                 seed=cfg.seed, desc=f"reference {arch}")[0]

    x_r, y_r = ds.x_test[:cfg.n_robust], ds.y_test[:cfg.n_robust]
    details["robust"] = {}
    control = refs.get("cnn-small", next(iter(refs.values()), None))
    for eps in cfg.eps:
        say(f"audit: robust accuracy at eps {eps:g} ({cfg.suite} suite, with checks)")
        ev = evaluate_robustness(model, x_r, y_r, eps=eps, suite=cfg.suite, control=control,
                                 seed=cfg.seed, device=device)
        k = int(ev.result.robust.sum())
        metrics[f"robust_acc/eps={eps:g}"] = _rate_metric(k, len(x_r))
        details["robust"][f"{eps:g}"] = ev.to_dict() | {
            "failed_checks": [w.name for w in ev.warnings]}

    say("audit: trojan scan (Neural Cleanse, every class)")
    res = scan(model, ds.x_test[:cfg.n_scan], steps=cfg.scan_steps, num_classes=ds.num_classes,
               generator=torch.Generator().manual_seed(cfg.seed), device=device)
    save_scan(res, out / "scan")
    worst = min(range(len(res.l1)), key=lambda c: res.l1[c])  # the smallest trigger's class
    index = min(float(res.anomaly_index[worst]), 1e6)  # a zero MAD gives inf
    details["scan"] = res.to_dict()
    metrics["scan/anomaly_index"] = {"value": index, "ci95": [index, index], "n": 1,
                                     "higher_is_better": False}

    say("audit: transfer from reference models")
    details["transfer"] = {}
    for arch, ref in refs.items():
        tr = transfer_rates(model, ref, ds.x_test[-cfg.n_transfer:],
                            ds.y_test[-cfg.n_transfer:], eps=cfg.transfer_eps,
                            generator=torch.Generator().manual_seed(cfg.seed), device=device)
        metrics[f"transfer/{arch}"] = tr["transfer"]
        metrics[f"transfer/{arch}/noise"] = tr["noise"]
        details["transfer"][arch] = tr

    say("audit: replacements (distillation)")
    from eisbench.data.ood import digits_like

    x_ood = digits_like(ds.shape)[0] if ds.num_classes == 10 and min(ds.shape[1:]) >= 8 \
        else None
    n_fit = min(cfg.n_fit, len(ds.x_train) // 2)
    n_val = min(cfg.n_val, len(ds.x_train) - n_fit)
    rep = distil_model(model, x_train=ds.x_train, x_test=ds.x_test, x_ood=x_ood, n_fit=n_fit,
                       n_val=n_val, distillers=cfg.distillers, seed=cfg.seed, device=device)
    details["replace"] = rep
    for dname, p in rep["chosen"].items():
        metrics[f"replace/{dname}/agreement"] = _rate_metric(
            round(p["agree_test"] * len(ds.x_test)), len(ds.x_test))

    say(f"audit: tools' images for class {worst}")
    images: dict[str, torch.Tensor] = {}
    for tool in cfg.tools:
        images[tool] = TOOLS.get(tool)(model, target=worst, data=ds.x_test[:512],
                                       n=cfg.n_images,
                                       generator=torch.Generator().manual_seed(cfg.seed),
                                       device=device).contiguous()
    details["tools"] = {"class": worst, "names": list(cfg.tools)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(images, str(out / "images.safetensors"))
    rec: Record = {
        "schema_version": SCHEMA_VERSION, "experiment": "audit", "created": now(),
        "config": to_plain(cfg), "seeds": [cfg.seed], "git": git_state(),
        "versions": library_versions(), "device": str(device), "data": {ds.name: ds.sha256},
        "stages": log.entries, "wall_seconds": time.perf_counter() - t0, "metrics": metrics,
        "claims": [], "details": details,
    }
    write_record(rec, out / "record.json")
    return rec
