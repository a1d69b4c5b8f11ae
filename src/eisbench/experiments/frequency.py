"""Gilmer & Hendrycks 2019 (Distill response to Ilyas et al.): robustness beyond Lp.

Their point: models latch onto whatever statistics of the data generalise, including ones
humans do not see, so adversarial (Lp) robustness is one case of robustness to distribution
shift, and fixing one shift can move the vulnerability elsewhere. Three measurements:

(a) Filtered training (Yin et al. 2019). Fresh models (``filter_arch``, cheap) are trained on
    low-pass or high-pass filtered training images and tested on identically filtered and on
    clean test images, next to a model of the same architecture trained on clean images.
    Filters are radial masks on the 2-D FFT (radius r a fraction of Nyquist, min(H, W) / 2).
    Low-pass: a Gaussian mask, half amplitude at r; its spatial kernel is a positive blur, so
    the image stays in [0, 1] (an ideal mask rings below 0 around the strokes, and clamping
    that would put high frequencies back). High-pass: an ideal mask keeping |k| > r, a
    zero-mean image in about [-1, 1], mapped to 0.5 + hp / 2 (a fixed affine map, the same for every
    image, so no per-image statistics leak). Both are clamped to [0, 1]; the relative change
    the clamp makes is recorded (~0).
    Each fresh model normalises its inputs by its training set's per-channel mean and std.
(b) Corruptions at several severities (deterministic under a torch.Generator): Gaussian noise
    and Gaussian blur (high-frequency), contrast reduction and fog (a smooth random pattern
    blended in as in ImageNet-C; low-frequency), applied to the same test images for the
    STANDARD and the ROBUST (fast-AT) source models of ``features-vs-bugs`` (same config, same
    cache). The spectrum of each corruption's perturbation is recorded to check its band.
(c) Fourier heat maps of error (Yin et al. 2019): each test image plus a random-sign Fourier
    basis image of fixed L2 norm, for a grid of frequencies; the error rate of each model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from eisbench.core.config import to_plain
from eisbench.core.tensors import predict
from eisbench.data.frequency import (
    CORRUPTIONS,
    band_split,
    corrupt,
    fourier_basis,
    grid_frequencies,
    high_pass_image,
    low_frequency_fraction,
    low_pass_image,
    low_pass_raw,
)
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.ilyas import FULL as FVB_FULL
from eisbench.experiments.ilyas import FeaturesVsBugsConfig, derived_config, setting, source_models
from eisbench.models import ModelSpec
from eisbench.runs.claims import make_claim, metric_over_seeds, verdict
from eisbench.runs.record import (
    SCHEMA_VERSION,
    Claim,
    Metric,
    Record,
    git_state,
    library_versions,
    now,
)
from eisbench.runs.record import write as write_record
from eisbench.runs.stages import Tensors, train_stage
from eisbench.runs.store import Store
from eisbench.training import TrainConfig

LITERATURE = {
    "high_pass": "~50% top-1 on ImageNet-1K, trained and tested on extreme high-pass filtered "
                 "images that look grey to humans (Yin et al. 2019, in Gilmer & Hendrycks 2019)",
    "noise": "adversarial training improves CIFAR-10-C / ImageNet-C accuracy under noise and "
             "blur (Ford et al. 2019; Yin et al. 2019)",
    "low_freq": "adversarial training significantly degrades accuracy under fog and contrast "
                "(Ford et al. 2019; Yin et al. 2019, CIFAR-10-C)",
}
FILTER_KINDS = ("clean", "low", "high")
MARGIN = 0.02  # accuracy points an effect of adversarial training must clear to count


@dataclass(frozen=True)
class FrequencyConfig(FeaturesVsBugsConfig):
    """The features-vs-bugs config (its standard and robust models, shared cache) plus ours."""

    filter_arch: str = "mlp"
    lowpass_frac: float = 0.25  # low-pass keeps |k| <= frac * Nyquist
    highpass_frac: float = 0.5  # high-pass keeps |k| > frac * Nyquist
    n_filter_train: int = 10000  # first training images, filtered, for the fresh models
    n_filter_test: int | None = 5000  # first test images (None: all)
    filter_train: TrainConfig = TrainConfig(method="standard", epochs=5, lr=3e-3)
    n_corrupt: int = 1000  # first test images for the corruptions
    severities: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("gaussian_noise", (0.1, 0.2, 0.3, 0.4, 0.5)),  # sigma (pixels in [0, 1])
        ("gaussian_blur", (0.5, 1.0, 1.5, 2.0, 2.5)),  # sigma (pixels)
        ("contrast", (0.5, 0.4, 0.3, 0.2, 0.1)),  # factor c: mean + c (x - mean)
        ("fog", (0.25, 0.5, 0.75, 1.0, 1.5)),  # weight of the fog pattern
    )
    fourier_norm: float = 8.0  # L2 norm of the basis perturbation (peak 0.4 per pixel on 28x28)
    fourier_stride: int = 2  # frequency grid step (2 on 28x28: a 14x14 grid)
    n_fourier: int = 500  # first test images for the heat maps
    fourier_seeds: int = 3  # heat maps for this many of the first seeds


QUICK = FrequencyConfig()
FULL = derived_config(FrequencyConfig, FVB_FULL, n_filter_train=50000, n_filter_test=None,
                      n_corrupt=5000, n_fourier=1000)


# ---- filters -----------------------------------------------------------------------------

def filter_images(x: torch.Tensor, kind: str, cfg: FrequencyConfig,
                  batch_size: int = 5000) -> torch.Tensor:
    """``x`` (N, C, H, W) under filter ``kind`` (clean | low | high) of ``cfg``."""
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "clean": lambda t: t,
        "low": lambda t: low_pass_image(t, radius_frac=cfg.lowpass_frac),
        "high": lambda t: high_pass_image(t, radius_frac=cfg.highpass_frac)}
    if kind not in fns:
        raise ValueError(f"unknown filter {kind!r}: expected one of {sorted(fns)}")
    return torch.cat([fns[kind](x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def fourier_heat_map(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                     norm: float, stride: int, seed: int, device: torch.device,
                     cells_per_batch: int = 16) -> dict[str, Any]:
    """Error rate of each model on x + r * norm * U(fy, fx) (clamped to [0, 1]), r = +-1 per
    image, for every (fy, fx) of the grid. x: (N, C, H, W), y: (N,). Returns the frequencies
    and, per model, a (len(fys), len(fxs)) list of error rates. (fy, fx) and (-fy, -fx) give
    the same basis image and are evaluated once."""
    _, c, h, w = x.shape
    fys, fxs = grid_frequencies(h, stride), grid_frequencies(w, stride)
    gen = torch.Generator().manual_seed(seed)
    canon: dict[tuple[int, int], tuple[int, int]] = {}
    for fy in fys:
        for fx in fxs:
            a, b = (fy % h, fx % w), (-fy % h, -fx % w)
            canon[(fy, fx)] = min(a, b)
    unique = sorted(set(canon.values()))
    err: dict[str, dict[tuple[int, int], float]] = {m: {} for m in models}
    for i in range(0, len(unique), cells_per_batch):
        cells = unique[i:i + cells_per_batch]
        u = torch.stack([fourier_basis(h, w, fy, fx) for fy, fx in cells])  # (K, H, W)
        sign = torch.randint(0, 2, (len(cells), len(x)), generator=gen).float() * 2 - 1  # (K, N)
        pert = norm / math.sqrt(c) * sign[:, :, None, None, None] * u[:, None, None]
        xp = (x[None] + pert).clamp(0, 1).flatten(0, 1)  # (K * N, C, H, W)
        for name, model in models.items():
            wrong = (predict(model, xp, device=device) != y.repeat(len(cells))).view(len(cells),
                                                                                    -1)
            for cell, e in zip(cells, wrong.float().mean(1).tolist(), strict=True):
                err[name][cell] = e
    return {"fy": fys, "fx": fxs,
            "error": {m: [[err[m][canon[(fy, fx)]] for fx in fxs] for fy in fys]
                      for m in models}}


def band_errors(hm: dict[str, Any], *, h: int, w: int, low_frac: float,
                high_frac: float) -> dict[str, dict[str, float]]:
    """Mean heat-map error per model over cells with |k| <= low_frac * Nyquist (low) and
    |k| > high_frac * Nyquist (high)."""
    nyq = min(h, w) / 2
    out: dict[str, dict[str, float]] = {}
    for m, grid in hm["error"].items():
        lo, hi = [], []
        for fy, row in zip(hm["fy"], grid, strict=True):
            for fx, e in zip(hm["fx"], row, strict=True):
                k = math.hypot(fy, fx)
                if k <= low_frac * nyq:
                    lo.append(e)
                elif k > high_frac * nyq:
                    hi.append(e)
        out[m] = {"low": sum(lo) / max(1, len(lo)), "high": sum(hi) / max(1, len(hi))}
    return out


# ---- the experiment ----------------------------------------------------------------------

def normalised_spec(arch: str, x: torch.Tensor, *, num_classes: int) -> ModelSpec:
    """``arch`` for images like x (N, C, H, W), normalised inside the model by the per-channel
    mean and std of x (high-pass images have std ~0.05 around 0.5: unnormalised, an MLP
    trained on them stays at chance)."""
    mean = x.mean(dim=(0, 2, 3))  # (C,)
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)  # (C,)
    return ModelSpec(arch=arch, in_shape=(x.shape[1], x.shape[2], x.shape[3]),
                     num_classes=num_classes, mean=tuple(mean.tolist()),
                     std=tuple(std.tolist()))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    return float((predict(model, x, device=device) == y).float().mean())


def run(cfg: FrequencyConfig, *, out: Path, store: Store) -> Record:
    """(a), (b) and (c) for every seed ((c) for the first ``fourier_seeds``); write
    ``out/record.json`` (and sample images) and return the record."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    st = setting(cfg, store)
    dev, k, (_, h, w) = st.ctx.device, st.ds.num_classes, st.ds.shape
    sev = dict(cfg.severities)
    unknown = set(sev) - set(CORRUPTIONS)
    if unknown:
        raise ValueError(f"unknown corruptions {sorted(unknown)}: expected {sorted(CORRUPTIONS)}")
    n_tr = min(cfg.n_filter_train, len(st.train.x))
    x_ft = st.test.x[:cfg.n_filter_test]
    y_ft = st.test.y[:cfg.n_filter_test]
    train_f = {kind: Tensors(filter_images(st.train.x[:n_tr], kind, cfg), st.train.y[:n_tr],
                             f"{st.train.key}:first{n_tr}:filter={kind}:low={cfg.lowpass_frac}"
                             f":high={cfg.highpass_frac}") for kind in FILTER_KINDS}
    test_f = {kind: filter_images(x_ft, kind, cfg) for kind in FILTER_KINDS}
    specs = {kind: normalised_spec(cfg.filter_arch, d.x, num_classes=k)
             for kind, d in train_f.items()}
    x_c, y_c = st.test.x[:cfg.n_corrupt], st.test.y[:cfg.n_corrupt]
    t_setup = time.perf_counter() - t0
    timing = {"setup": t_setup, "filtered": 0.0, "corruptions": 0.0, "fourier": 0.0}
    per_seed: list[dict[str, Any]] = []
    fourier: dict[str, Any] = {}
    for si, seed in enumerate(cfg.seeds):
        (std, _), (rob, _) = source_models(st, cfg, seed)
        t1 = time.perf_counter()
        filtered: dict[str, dict[str, float]] = {}
        for kind in FILTER_KINDS:
            model, _ = train_stage(st.ctx, spec=specs[kind], cfg=cfg.filter_train,
                                   data=train_f[kind],
                                   seed=seed, desc=f"[seed {seed}] {cfg.filter_arch} on {kind}")
            filtered[kind] = {t: _accuracy(model, test_f[t], y_ft, dev) for t in FILTER_KINDS}
        t2 = time.perf_counter()
        models = {"standard": std, "robust": rob}
        corr: dict[str, dict[str, Any]] = {m: {"clean": _accuracy(net, x_c, y_c, dev)}
                                           for m, net in models.items()}
        for name, levels in sev.items():
            for m in models:
                corr[m][name] = []
            for s in levels:
                xs = corrupt(x_c, name, s, seed=seed)
                for m, net in models.items():
                    corr[m][name].append(_accuracy(net, xs, y_c, dev))
        t3 = time.perf_counter()
        if si < cfg.fourier_seeds:
            fourier[str(seed)] = fourier_heat_map(
                models, st.test.x[:cfg.n_fourier], st.test.y[:cfg.n_fourier],
                norm=cfg.fourier_norm, stride=cfg.fourier_stride, seed=seed, device=dev)
        timing["filtered"] += t2 - t1
        timing["corruptions"] += t3 - t2
        timing["fourier"] += time.perf_counter() - t3
        per_seed.append({"seed": seed, "filtered": filtered, "corruption": corr})
    bands = {s: band_errors(hm, h=h, w=w, low_frac=cfg.lowpass_frac,
                            high_frac=cfg.highpass_frac) for s, hm in fourier.items()}
    metrics = _metrics(per_seed, sev)
    for m in ("standard", "robust"):
        for band in ("low", "high") if bands else ():
            metrics[f"frequency/fourier/{m}/{band}_band_error"] = metric_over_seeds(
                [b[m][band] for b in bands.values()], higher_is_better=False)
    timing["cpu_total"] = time.process_time() - cpu0  # ~ idle wall time at one thread
    spectra = {name: low_frequency_fraction(corrupt(x_c[:200], name, lv[len(lv) // 2], seed=0)
                                            - x_c[:200], radius_frac=cfg.lowpass_frac)
               for name, lv in sev.items()}
    spectra["test images"] = low_frequency_fraction(x_c[:200], radius_frac=cfg.lowpass_frac)
    x0 = x_ft[:200]
    energy_high = 1.0 - low_frequency_fraction(x0, radius_frac=cfg.highpass_frac)
    rec: Record = {
        "schema_version": SCHEMA_VERSION, "experiment": "frequency", "created": now(),
        "config": to_plain(cfg), "seeds": list(cfg.seeds), "git": git_state(),
        "versions": library_versions(), "device": str(dev),
        "data": {st.ds.name: st.ds.sha256}, "stages": st.ctx.log.entries,
        "wall_seconds": time.perf_counter() - t0, "metrics": metrics,
        "claims": judge(metrics, num_classes=k),
        "details": {
            "per_seed": per_seed, "num_classes": k, "literature": LITERATURE,
            "literature_source": "Gilmer & Hendrycks 2019 (Distill); Yin et al. 2019 "
                                 "(NeurIPS, CIFAR-10-C / ImageNet); Ford et al. 2019",
            "severities": {n: list(v) for n, v in sev.items()},
            "fourier": {"maps": fourier, "norm": cfg.fourier_norm, "n": cfg.n_fourier,
                        "bands": bands},
            "corruption_low_frequency_fraction": spectra,
            "high_band_energy_fraction": energy_high,
            "clamp_change": clamp_change(x0, cfg),
            "timing_seconds": timing,
            "filters": "radial FFT masks: low-pass Gaussian, half amplitude at lowpass_frac * "
                       "Nyquist (stays in [0,1]); high-pass ideal, |k| > highpass_frac * "
                       "Nyquist, mapped to 0.5 + hp / 2; both clamped to [0,1]; every fresh "
                       "model normalises by its training set's mean and std",
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_record(rec, out / "record.json")
    samples = {f"filter_{kind}": test_f[kind][:6] for kind in FILTER_KINDS}
    samples |= {f"corrupt_{n}": torch.stack([corrupt(x_c[:1], n, s, seed=0)[0] for s in lv])
                for n, lv in sev.items()}
    save_file({kk: v.contiguous() for kk, v in samples.items()}, str(out / "samples.safetensors"))
    return rec


def clamp_change(x: torch.Tensor, cfg: FrequencyConfig) -> dict[str, float]:
    """Relative L2 change that clamping to [0, 1] makes to the filtered images of x."""
    low = low_pass_raw(x, radius_frac=cfg.lowpass_frac)
    high = 0.5 + band_split(x, radius_frac=cfg.highpass_frac)[1] / 2
    return {k: float((v.clamp(0, 1) - v).norm() / v.norm().clamp_min(1e-12))
            for k, v in (("low", low), ("high", high))}


def _metrics(per_seed: list[dict[str, Any]], sev: dict[str, tuple[float, ...]]
             ) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for a in FILTER_KINDS:
        for b in FILTER_KINDS:
            out[f"frequency/filtered/train_{a}/test_{b}/acc"] = metric_over_seeds(
                [r["filtered"][a][b] for r in per_seed])
    for m in ("standard", "robust"):
        out[f"frequency/corruption/{m}/clean_acc"] = metric_over_seeds(
            [r["corruption"][m]["clean"] for r in per_seed])
        for name, levels in sev.items():
            for i in range(len(levels)):
                out[f"frequency/corruption/{m}/{name}/sev{i + 1}_acc"] = metric_over_seeds(
                    [r["corruption"][m][name][i] for r in per_seed])
            out[f"frequency/corruption/{m}/{name}/mean_acc"] = metric_over_seeds(
                [sum(r["corruption"][m][name]) / len(levels) for r in per_seed])
    for name, levels in sev.items():
        out[f"frequency/at_gain/{name}"] = metric_over_seeds(
            [(sum(r["corruption"]["robust"][name]) - sum(r["corruption"]["standard"][name]))
             / len(levels) for r in per_seed], lower=-1.0, upper=1.0)
    return out


def judge(metrics: dict[str, Metric], *, num_classes: int) -> list[Claim]:
    """Verdicts by rules fixed in advance, on 95% CIs over seeds (K classes, margin 0.02):

    - High-pass generalisation: the model trained on high-pass filtered images, tested on
      high-pass filtered test images: reproduced if accuracy CI lower > 2/K (twice chance),
      not reproduced if CI upper <= 2/K. Reproduced supports "features": the data carries
      useful, generalising features that humans barely see. Not reproduced is inconclusive
      (a cheap model may simply fail to use them).
    - AT gain under Gaussian noise (robust minus standard accuracy, mean over severities):
      reproduced if CI lower > +0.02, not reproduced if CI upper <= +0.02.
    - AT gain under fog, and under contrast: reproduced (AT lowers accuracy) if CI upper
      < -0.02, not reproduced if CI lower >= -0.02.
    The three adversarial-training claims are inconclusive for the features-or-bugs question
    whatever their outcome: they show whether adversarial training *moves* sensitivity between
    frequency bands rather than removing it, which both views predict (a model that loses its
    Lp-fragile features relies on other, differently fragile ones; a model whose "bugs" are
    sensitivities left where training does not constrain it shows them wherever training
    stops constraining it). They bear on Gilmer & Hendrycks' point that Lp robustness is one
    distribution shift among many, not on whether the Lp vulnerability was useful features.
    """
    chance2 = 2.0 / num_classes

    def fmt(key: str) -> str:
        m = metrics[key]
        return f"{key} = {m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"

    hp = "frequency/filtered/train_high/test_high/acc"
    lo, hi = metrics[hp]["ci95"]
    claims = [make_claim(
        claim="A model trained and tested only on high-pass filtered images generalises well "
              "above chance", rule=f"accuracy CI lower > {chance2:.2f} (twice chance)",
        measured=f"{fmt(hp)}; {fmt('frequency/filtered/train_clean/test_clean/acc')} (clean)",
        verdict=verdict(lo > chance2, hi <= chance2), exhibit="H", if_reproduced="features",
        if_not="inconclusive", literature=LITERATURE["high_pass"])]
    g = "frequency/at_gain/gaussian_noise"
    lo, hi = metrics[g]["ci95"]
    claims.append(make_claim(
        claim="Adversarial training improves accuracy under high-frequency corruption "
              "(Gaussian noise)",
        rule=f"AT gain (robust - standard, mean over severities) CI lower > +{MARGIN}",
        measured=fmt(g), verdict=verdict(lo > MARGIN, hi <= MARGIN), exhibit="H",
        if_reproduced="inconclusive", if_not="inconclusive", literature=LITERATURE["noise"]))
    for name in ("fog", "contrast"):
        g = f"frequency/at_gain/{name}"
        lo, hi = metrics[g]["ci95"]
        claims.append(make_claim(
            claim=f"Adversarial training lowers accuracy under low-frequency corruption ({name})",
            rule=f"AT gain (robust - standard, mean over severities) CI upper < -{MARGIN}",
            measured=fmt(g), verdict=verdict(hi < -MARGIN, lo >= -MARGIN), exhibit="H",
            if_reproduced="inconclusive", if_not="inconclusive",
            literature=LITERATURE["low_freq"]))
    return claims


register(Experiment(name="frequency",
                    summary="Gilmer & Hendrycks 2019: filtered training, corruptions and "
                            "Fourier heat maps of standard vs adversarially trained models",
                    quick=QUICK, full=FULL, run=run,
                    report=report_from("eisbench.report.frequency")))
