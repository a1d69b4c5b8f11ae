"""``eisbench audit``: one report on a model someone brings.

1. Its contract, checked before anything else (:func:`check_model`): it takes (B, C, H, W)
   images in [0,1] of the dataset and returns finite logits (B, K). A model that fails on
   those images, returns another shape, or returns probabilities (rows in [0,1] summing to 1:
   attacks and the trojan scan need logits) is refused with the reason and the fix.
2. Its labels (:func:`model_labels`): the dataset's when K is the dataset's class count;
   ``label_map`` (dataset class -> model class) when given, e.g. a 2-class model on MNIST;
   otherwise the model's own predictions on clean images (the report says so: clean accuracy
   is then not measured, robust accuracy is the share of predictions an attack cannot change,
   and there are no reference models of its task).
3. Clean accuracy on the whole test set (Wilson interval).
4. Robust accuracy under an attack suite at each eps, with every sanity check of
   :mod:`eisbench.evaluation` (an undefended reference model is the control).
5. Trojan scan (Neural Cleanse over every class of the model): anomaly index per class, the
   suspect and its reconstructed trigger with its location.
6. Transfer: adversarial examples made on reference models eisbench trains itself on the same
   labels (cached; architectures unlike and like the audited one) and the share that also
   fools the audited model, beside same-norm random noise: high transfer means the model
   relies on the same non-robust features as independently trained models (the "features"
   signal of Ilyas et al.).
7. A replacement: the distillers of :mod:`eisbench.replace` fitted to the model's own labels,
   agreement with the model on test and out-of-distribution digits against their size.
8. The tools' images for the most suspicious class (:data:`eisbench.tools.TOOLS`).

Each step after the contract is a :class:`~eisbench.bench.audit_sections.Section`
(:data:`SECTIONS`) that runs on its own: one that fails is recorded with its error and remedy
in ``details["sections"]`` and the others complete (a tool that fails is one failed part of
the tools' section). :func:`measure` returns a :class:`~eisbench.runs.result.Result`;
:func:`run_audit` adds the record's envelope and writes ``record.json``,
``images.safetensors`` and ``scan/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eisbench import data as datasets
from eisbench.attacks.pgd import pgd
from eisbench.bench.audit_sections import Partial, Section, Skip, missing, run_sections
from eisbench.core.config import resolve_device
from eisbench.core.progress import say
from eisbench.core.stats import wilson_ci
from eisbench.core.tensors import eval_mode, predict
from eisbench.data import ImageData
from eisbench.models import ModelSpec
from eisbench.models.contract import check_model
from eisbench.runs.record import Metric, Record
from eisbench.runs.result import Result, to_record, write
from eisbench.runs.stages import Context, Tensors, train_stage
from eisbench.runs.store import StageLog, Store
from eisbench.runs.validation import check_config
from eisbench.training import TrainConfig


@dataclass(frozen=True)
class AuditConfig:
    """What the audit measures and how hard it tries."""

    dataset: str = "mnist"
    data_root: str | None = None
    eps: tuple[float, ...] = (0.1, 0.3)  # Linf budgets of the robust-accuracy suite
    suite: str = "standard"  # reported numbers come from the standard suite, never the fast one
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
    label_map: tuple[int, ...] | None = None  # dataset class -> model class (None: its own)
    seed: int = 0
    device: str = "cpu"


QUICK = AuditConfig(eps=(0.3,), suite="fast", n_robust=100, scan_steps=60, n_scan=64,
                    references=("cnn-small",), n_transfer=100,
                    distillers=("sparse-linear", "tree"), n_fit=2000, n_val=1000,
                    tools=("neural-cleanse", "fv-class-fourier"), n_images=4)
"""A smoke test of the audit (about a minute on MNIST), not an audit."""


def _rate_metric(k: int, n: int, *, unit: str, higher: bool = True) -> Metric:
    """k of n with its Wilson interval; ``unit`` names the n items."""
    lo, hi = wilson_ci(k, n)
    return {"value": k / n, "ci95": [lo, hi], "n": n, "higher_is_better": higher,
            "unit": f"{unit} (Wilson)"}


def transfer_rates(model: nn.Module, ref: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   eps: float, generator: torch.Generator,
                   device: torch.device) -> dict[str, Any]:
    """PGD-20 (Linf ``eps``) on ``ref`` for images x (N, C, H, W), labels y (N,) (of the
    audited model's classes, which the reference shares) that both models classify correctly;
    the share of the reference's successful examples that also fool ``model`` (transfer), and
    the share of same-norm random sign noise that fools it."""
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
    return {"transfer": _rate_metric(k, max(n, 1), higher=False,
                                     unit="test images whose attack fooled the reference"),
            "n_source": n,
            "noise": _rate_metric(int(fooled_noise.sum()), len(xs), higher=False,
                                  unit="test images both models classify correctly"),
            "white_box_on_reference": float(fooled_ref.float().mean())}


def model_labels(model: nn.Module, ds: ImageData, *, k: int, label_map: tuple[int, ...] | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """The labels the audit scores a K-class ``model`` against: (test (N,), train (M,) or None
    when there are no labels to train references on, a description for the record); see the
    module docstring. A label map of the wrong length or with a class outside [0, K) raises."""
    if label_map is not None:
        if len(label_map) != ds.num_classes or not all(0 <= c < k for c in label_map):
            raise ValueError(f"label_map must give each of the dataset's {ds.num_classes} "
                             f"classes one of the model's classes 0..{k - 1}, got "
                             f"{list(label_map)}")
        lut = torch.tensor(label_map)
        return lut[ds.y_test], lut[ds.y_train], {
            "source": "label map", "map": list(label_map), "num_classes": k,
            "note": f"the dataset's classes mapped to the model's {k}: "
                    + ", ".join(f"{i}->{c}" for i, c in enumerate(label_map))}
    if k == ds.num_classes:
        return ds.y_test, ds.y_train, {"source": "dataset", "num_classes": k}
    own = predict(model, ds.x_test, device=device)
    return own, None, {
        "source": "own predictions", "num_classes": k,
        "note": f"the model has {k} classes and {ds.name} {ds.num_classes}: its own predictions "
                "on clean test images are the labels, so clean accuracy is not measured, robust "
                "accuracy is the share of predictions an attack cannot change, and no reference "
                f"model shares its task (give --label-map with the model's class for each of "
                f"the {ds.num_classes} classes to score it on the dataset's labels)"}


@dataclass
class Audit:
    """What the sections share: the model, its data, labels and device, the stage cache, and
    what the sections have measured so far (``refs``: the reference models; ``worst``: the
    class of the smallest reconstructed trigger; ``images``: the tools' images (n, C, H, W)
    by tool)."""

    model: nn.Module
    cfg: AuditConfig
    ds: ImageData
    device: torch.device
    ctx: Context
    out: Path
    k: int  # the model's classes
    y_test: torch.Tensor  # (N,) labels in the model's classes
    y_train: torch.Tensor | None  # (M,) or None: no labels to train references on
    metrics: dict[str, Metric] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    refs: dict[str, nn.Module] = field(default_factory=dict)
    worst: int | None = None
    images: dict[str, torch.Tensor] = field(default_factory=dict)


def load(model: nn.Module, cfg: AuditConfig, *, out: Path, store: Store, name: str) -> Audit:
    """Load the dataset, move the model to the device, check its contract (a model that fails
    on the test images or does not return (B, K) logits raises a ValueError) and find its
    labels (:func:`model_labels`)."""
    device = resolve_device(cfg.device)
    ds = datasets.load(cfg.dataset, root=cfg.data_root)
    model = model.to(device)
    k, output = check_model(model, ds.x_test, num_classes=None, device=device)
    y_test, y_train, labels = model_labels(model, ds, k=k, label_map=cfg.label_map,
                                           device=device)
    ctx = Context(store=store, log=StageLog(), device=device)
    return Audit(model=model, cfg=cfg, ds=ds, device=device, ctx=ctx, out=out, k=k,
                 y_test=y_test, y_train=y_train,
                 details={"model": name, "output": output, "labels": labels})


def clean_accuracy(a: Audit) -> None:
    """Accuracy on the whole test set, with its Wilson interval."""
    if a.details["labels"]["source"] == "own predictions":
        raise Skip(f"the labels are the model's own predictions (it has {a.k} classes, "
                   f"{a.ds.name} {a.ds.num_classes}); give --label-map for accuracy")
    say("audit: clean accuracy")
    hits = int((predict(a.model, a.ds.x_test, device=a.device) == a.y_test).sum())
    a.metrics["clean_acc"] = _rate_metric(hits, len(a.y_test), unit="test images")


def references(a: Audit) -> None:
    """Train (or load from the cache) the reference models of ``cfg.references`` on the
    audited model's labels."""
    if a.y_train is None:
        raise Skip("no labels to train reference models of the model's task on (its classes "
                   "are not the dataset's); give --label-map")
    say("audit: reference models (cached)")
    ds, lm = a.ds, a.cfg.label_map
    key = f"{ds.name}:{ds.sha256}:train:{len(ds.x_train)}" + (
        "" if lm is None else f":map={','.join(map(str, lm))}")
    train_d = Tensors(ds.x_train, a.y_train, key)
    for arch in a.cfg.references:
        spec = ModelSpec(arch=arch, in_shape=ds.shape, num_classes=a.k)
        a.refs[arch] = train_stage(a.ctx, spec=spec, cfg=a.cfg.reference_train, data=train_d,
                                   seed=a.cfg.seed, desc=f"reference {arch}")[0]


def robust_accuracy(a: Audit) -> None:
    """Robust accuracy at each eps under the attack suite, with every sanity check (the
    cnn-small reference, else the first one, is the undefended control; another reference,
    else the control, is the surrogate of the transfer part of the black-box check)."""
    from eisbench.evaluation import evaluate_robustness

    cfg = a.cfg
    x_r, y_r = a.ds.x_test[:cfg.n_robust], a.y_test[:cfg.n_robust]
    a.details["robust"] = {}
    control = a.refs.get("cnn-small", next(iter(a.refs.values()), None))
    surrogate = next((m for m in a.refs.values() if m is not control), control)
    for eps in cfg.eps:
        say(f"audit: robust accuracy at eps {eps:g} ({cfg.suite} suite, with checks)")
        ev = evaluate_robustness(a.model, x_r, y_r, eps=eps, suite=cfg.suite, control=control,
                                 surrogate=surrogate, seed=cfg.seed, device=a.device)
        k = int(ev.result.robust.sum())
        a.metrics[f"robust_acc/eps={eps:g}"] = _rate_metric(k, len(x_r), unit="test images")
        a.details["robust"][f"{eps:g}"] = ev.to_dict() | {
            "failed_checks": [w.name for w in ev.warnings]}


def trojan_scan(a: Audit) -> None:
    """Neural Cleanse over every class; writes ``out/scan/`` and remembers the class of the
    smallest trigger for the tools."""
    from eisbench.tools.scan import save_scan, scan

    say("audit: trojan scan (Neural Cleanse, every class)")
    cfg = a.cfg
    res = scan(a.model, a.ds.x_test[:cfg.n_scan], steps=cfg.scan_steps,
               num_classes=a.k, generator=torch.Generator().manual_seed(cfg.seed),
               device=a.device)
    save_scan(res, a.out / "scan")
    a.worst = min(range(len(res.l1)), key=lambda c: res.l1[c])  # the smallest trigger's class
    index = min(float(res.anomaly_index[a.worst]), 1e6)  # a zero MAD gives inf
    a.details["scan"] = res.to_dict()
    a.metrics["scan/anomaly_index"] = {"value": index, "ci95": [index, index], "n": 1,
                                       "higher_is_better": False,
                                       "unit": "the audited model (one scan: no interval)"}


def transfer(a: Audit) -> None:
    """Transfer of each reference model's adversarial examples, beside same-norm noise."""
    say("audit: transfer from reference models")
    cfg, ds = a.cfg, a.ds
    a.details["transfer"] = {}
    for arch, ref in a.refs.items():
        tr = transfer_rates(a.model, ref, ds.x_test[-cfg.n_transfer:],
                            a.y_test[-cfg.n_transfer:], eps=cfg.transfer_eps,
                            generator=torch.Generator().manual_seed(cfg.seed), device=a.device)
        a.metrics[f"transfer/{arch}"] = tr["transfer"]
        a.metrics[f"transfer/{arch}/noise"] = tr["noise"]
        a.details["transfer"][arch] = tr


def replacements(a: Audit) -> None:
    """Distil the model (its own labels) and score agreement on test and OOD digits."""
    from eisbench.data.ood import digits_like
    from eisbench.replace.fidelity import distil_model

    say("audit: replacements (distillation)")
    cfg, ds = a.cfg, a.ds
    x_ood = digits_like(ds.shape)[0] if ds.num_classes == 10 and min(ds.shape[1:]) >= 8 \
        else None
    n_fit = min(cfg.n_fit, len(ds.x_train) // 2)
    n_val = min(cfg.n_val, len(ds.x_train) - n_fit)
    rep = distil_model(a.model, x_train=ds.x_train, x_test=ds.x_test, x_ood=x_ood, n_fit=n_fit,
                       n_val=n_val, distillers=cfg.distillers, seed=cfg.seed, device=a.device)
    a.details["replace"] = rep
    for dname, p in rep["chosen"].items():
        a.metrics[f"replace/{dname}/agreement"] = _rate_metric(
            round(p["agree_test"] * len(ds.x_test)), len(ds.x_test), unit="test images")


def tool_images(a: Audit) -> None:
    """Each tool's images for the class of the smallest reconstructed trigger (class 0 when
    the scan did not complete); a tool that fails is a failed part, the others still run."""
    from eisbench.tools import TOOLS

    cfg = a.cfg
    target = 0 if a.worst is None else a.worst
    why = ("the class of the smallest reconstructed trigger" if a.worst is not None
           else "class 0: the scan did not complete, so no class is suspect")
    say(f"audit: tools' images for class {target}")
    failed: dict[str, str] = {}
    for tool in cfg.tools:
        try:
            a.images[tool] = TOOLS.get(tool)(a.model, target=target, data=a.ds.x_test[:512],
                                             n=cfg.n_images,
                                             generator=torch.Generator().manual_seed(cfg.seed),
                                             device=a.device).contiguous()
        except Exception as e:  # one tool's failure is one failed part of the section
            failed[tool] = f"{type(e).__name__}: {e}"
    a.details["tools"] = {"class": target, "why": why, "names": list(a.images),
                          "failed": failed}
    if failed and not a.images:
        raise RuntimeError("every tool failed: "
                           + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    if failed:
        raise Partial(failed)


SECTIONS: tuple[Section, ...] = (
    Section("clean", "clean accuracy", clean_accuracy),
    Section("references", "reference models", references),
    Section("robust", "robust accuracy", robust_accuracy),
    Section("scan", "trojan scan", trojan_scan),
    Section("transfer", "transfer from reference models", transfer,
            needs=("references",)),
    Section("replace", "replacements", replacements),
    Section("tools", "tools' images", tool_images),
)
"""The audit's sections, in the order they run."""


def measure(model: nn.Module, cfg: AuditConfig, *, out: Path, store: Store,
            name: str = "model") -> Result:
    """Audit ``model`` (left in the mode it came in): every section of :data:`SECTIONS`, each on
    its own (``details["sections"]`` says how each ended, ``details["missing"]`` lists those
    that did not complete); writes ``out/scan/``; ``name`` labels the model in the details. A
    setting of the wrong type or out of its range, or a model that breaks its contract,
    raises ``ValueError`` before any work."""
    check_config(cfg, name="audit")
    a = load(model, cfg, out=out, store=store, name=name)
    sections = run_sections(a, SECTIONS)
    a.details |= {"sections": sections, "missing": missing(sections)}
    return Result(metrics=a.metrics, details=a.details,
                  artifacts={"images.safetensors": a.images}, data={a.ds.name: a.ds.sha256},
                  stages=a.ctx.log.entries, seeds=(cfg.seed,), device=str(a.device))


def run_audit(model: nn.Module, cfg: AuditConfig, *, out: Path, store: Store,
              name: str = "model") -> Record:
    """Audit ``model`` (:func:`measure`) and write ``out/record.json`` and
    ``out/images.safetensors``; return the record."""
    t0 = time.perf_counter()
    result = measure(model, cfg, out=out, store=store, name=name)
    rec = to_record("audit", cfg, result, seconds=time.perf_counter() - t0)
    write(rec, result, out)
    return rec
