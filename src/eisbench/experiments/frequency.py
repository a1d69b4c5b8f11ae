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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eisbench.data.frequency import CORRUPTIONS, corrupt, low_frequency_fraction
from eisbench.experiments.core import Experiment, register, report_from
from eisbench.experiments.frequency_maps import (
    FILTER_KINDS,
    accuracy,
    band_errors,
    clamp_change,
    filter_images,
    fourier_heat_map,
    normalised_spec,
)
from eisbench.experiments.ilyas import FULL as FVB_FULL
from eisbench.experiments.ilyas import (
    IlyasConfig,
    Setting,
    derived_config,
    setting,
    source_models,
)
from eisbench.models import ModelSpec
from eisbench.runs.claims import decide_metric, fmt, make_claim, metric_over_seeds, provided
from eisbench.runs.preregistered import bar_margin, threshold
from eisbench.runs.record import Claim, Metric
from eisbench.runs.result import Result
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


@dataclass(frozen=True)
class FrequencyConfig(IlyasConfig):
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


# ---- phases ------------------------------------------------------------------------------

Severities = dict[str, tuple[float, ...]]


@dataclass(frozen=True)
class Filtered:
    """The filtered training sets (keyed for the cache), the filtered test images (N, C, H, W)
    with their labels (N,), and each fresh model's normalised spec, per filter kind."""

    train: dict[str, Tensors]
    test: dict[str, torch.Tensor]
    y_test: torch.Tensor
    specs: dict[str, ModelSpec]


def severities(cfg: FrequencyConfig) -> Severities:
    """The corruption severities of ``cfg`` by name; an unknown corruption fails here."""
    sev = dict(cfg.severities)
    unknown = set(sev) - set(CORRUPTIONS)
    if unknown:
        raise ValueError(f"unknown corruptions {sorted(unknown)}: expected {sorted(CORRUPTIONS)}")
    return sev


def filtered_data(st: Setting, cfg: FrequencyConfig) -> Filtered:
    """Load: every filter of the first ``n_filter_train`` training and ``n_filter_test`` test
    images, and the spec each fresh model normalises its inputs with."""
    def filt(x: torch.Tensor, kind: str) -> torch.Tensor:
        return filter_images(x, kind, low_frac=cfg.lowpass_frac, high_frac=cfg.highpass_frac)

    n_tr = min(cfg.n_filter_train, len(st.train.x))
    x_ft = st.test.x[:cfg.n_filter_test]
    train_f = {kind: Tensors(filt(st.train.x[:n_tr], kind), st.train.y[:n_tr],
                             f"{st.train.key}:first{n_tr}:filter={kind}:low={cfg.lowpass_frac}"
                             f":high={cfg.highpass_frac}") for kind in FILTER_KINDS}
    test_f = {kind: filt(x_ft, kind) for kind in FILTER_KINDS}
    specs = {kind: normalised_spec(cfg.filter_arch, d.x, num_classes=st.ds.num_classes)
             for kind, d in train_f.items()}
    return Filtered(train=train_f, test=test_f, y_test=st.test.y[:cfg.n_filter_test],
                    specs=specs)


def filtered_accuracy(st: Setting, cfg: FrequencyConfig, fd: Filtered,
                      seed: int) -> dict[str, dict[str, float]]:
    """(a) Train a fresh model on each filter (cached); its accuracy on every filter's test
    images, as ``[trained on][tested on]``."""
    out: dict[str, dict[str, float]] = {}
    for kind in FILTER_KINDS:
        model, _ = train_stage(st.ctx, spec=fd.specs[kind], cfg=cfg.filter_train,
                               data=fd.train[kind],
                               seed=seed, desc=f"[seed {seed}] {cfg.filter_arch} on {kind}")
        out[kind] = {t: accuracy(model, fd.test[t], fd.y_test, st.ctx.device)
                     for t in FILTER_KINDS}
    return out


def corruption_accuracy(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                        sev: Severities, *, seed: int, device: torch.device
                        ) -> dict[str, dict[str, Any]]:
    """(b) Accuracy of each model on the clean images x (N, C, H, W) and, per corruption, at
    each of its severities (one list per corruption)."""
    corr: dict[str, dict[str, Any]] = {m: {"clean": accuracy(net, x, y, device)}
                                       for m, net in models.items()}
    for name, levels in sev.items():
        for m in models:
            corr[m][name] = []
        for s in levels:
            xs = corrupt(x, name, s, seed=seed)
            for m, net in models.items():
                corr[m][name].append(accuracy(net, xs, y, device))
    return corr


def one_seed(st: Setting, cfg: FrequencyConfig, fd: Filtered, sev: Severities, seed: int, *,
             heat_map: bool, timing: dict[str, float]
             ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(a), (b) and, if ``heat_map``, (c) for one seed: its per-seed row and its heat map;
    the seconds of each part are added to ``timing``."""
    (std, _), (rob, _) = source_models(st, cfg, seed)
    t1 = time.perf_counter()
    filtered = filtered_accuracy(st, cfg, fd, seed)
    t2 = time.perf_counter()
    models = {"standard": std, "robust": rob}
    corr = corruption_accuracy(models, st.test.x[:cfg.n_corrupt], st.test.y[:cfg.n_corrupt],
                               sev, seed=seed, device=st.ctx.device)
    t3 = time.perf_counter()
    hm = None
    if heat_map:
        hm = fourier_heat_map(models, st.test.x[:cfg.n_fourier], st.test.y[:cfg.n_fourier],
                              norm=cfg.fourier_norm, stride=cfg.fourier_stride, seed=seed,
                              device=st.ctx.device)
    timing["filtered"] += t2 - t1
    timing["corruptions"] += t3 - t2
    timing["fourier"] += time.perf_counter() - t3
    return {"seed": seed, "filtered": filtered, "corruption": corr}, hm


def measure(cfg: FrequencyConfig, *, out: Path, store: Store) -> Result:
    """Load the data and filter it; per seed (a), (b) and, for the first ``fourier_seeds``,
    (c); then the metrics, the claims, the diagnostics and the sample images."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    st = setting(cfg, store)
    sev = severities(cfg)
    fd = filtered_data(st, cfg)
    timing = {"setup": time.perf_counter() - t0, "filtered": 0.0, "corruptions": 0.0,
              "fourier": 0.0}
    per_seed: list[dict[str, Any]] = []
    fourier: dict[str, Any] = {}
    for si, seed in enumerate(cfg.seeds):
        row, hm = one_seed(st, cfg, fd, sev, seed, heat_map=si < cfg.fourier_seeds,
                           timing=timing)
        if hm is not None:
            fourier[str(seed)] = hm
        per_seed.append(row)
    _, h, w = st.ds.shape
    bands = {s: band_errors(hm, h=h, w=w, low_frac=cfg.lowpass_frac,
                            high_frac=cfg.highpass_frac) for s, hm in fourier.items()}
    metrics = _metrics(per_seed, sev) | _band_metrics(bands)
    timing["cpu_total"] = time.process_time() - cpu0  # ~ idle wall time at one thread
    x_c = st.test.x[:cfg.n_corrupt]
    return Result(
        metrics=metrics, claims=decide(metrics, num_classes=st.ds.num_classes),
        details=_details(cfg, per_seed, sev, fourier, bands, x_c=x_c,
                         x_ft=st.test.x[:cfg.n_filter_test],
                         num_classes=st.ds.num_classes, timing=timing),
        artifacts={"samples.safetensors": _samples(fd, x_c, sev)},
        data={st.ds.name: st.ds.sha256}, stages=st.ctx.log.entries, device=str(st.ctx.device))


def _details(cfg: FrequencyConfig, per_seed: list[dict[str, Any]], sev: Severities,
             fourier: dict[str, Any], bands: dict[str, Any], *, x_c: torch.Tensor,
             x_ft: torch.Tensor, num_classes: int, timing: dict[str, float]
             ) -> dict[str, Any]:
    """The record's details: per-seed rows, heat maps, and the checks of the corruptions'
    bands (low-frequency energy of each perturbation) and of the filters (clamping)."""
    spectra = {name: low_frequency_fraction(corrupt(x_c[:200], name, lv[len(lv) // 2], seed=0)
                                            - x_c[:200], radius_frac=cfg.lowpass_frac)
               for name, lv in sev.items()}
    spectra["test images"] = low_frequency_fraction(x_c[:200], radius_frac=cfg.lowpass_frac)
    x0 = x_ft[:200]
    energy_high = 1.0 - low_frequency_fraction(x0, radius_frac=cfg.highpass_frac)
    return {
        "per_seed": per_seed, "num_classes": num_classes, "literature": LITERATURE,
        "literature_source": "Gilmer & Hendrycks 2019 (Distill); Yin et al. 2019 "
                             "(NeurIPS, CIFAR-10-C / ImageNet); Ford et al. 2019",
        "severities": {n: list(v) for n, v in sev.items()},
        "fourier": {"maps": fourier, "norm": cfg.fourier_norm, "n": cfg.n_fourier,
                    "bands": bands},
        "corruption_low_frequency_fraction": spectra,
        "high_band_energy_fraction": energy_high,
        "clamp_change": clamp_change(x0, low_frac=cfg.lowpass_frac,
                                     high_frac=cfg.highpass_frac),
        "timing_seconds": timing,
        "filters": "radial FFT masks: low-pass Gaussian, half amplitude at lowpass_frac * "
                   "Nyquist (stays in [0,1]); high-pass ideal, |k| > highpass_frac * "
                   "Nyquist, mapped to 0.5 + hp / 2; both clamped to [0,1]; every fresh "
                   "model normalises by its training set's mean and std",
    }


def _samples(fd: Filtered, x_c: torch.Tensor, sev: Severities) -> dict[str, torch.Tensor]:
    """Six filtered test images per filter, and the first corrupted image at every severity."""
    samples = {f"filter_{kind}": fd.test[kind][:6] for kind in FILTER_KINDS}
    samples |= {f"corrupt_{n}": torch.stack([corrupt(x_c[:1], n, s, seed=0)[0] for s in lv])
                for n, lv in sev.items()}
    return samples


def _band_metrics(bands: dict[str, dict[str, dict[str, float]]]) -> dict[str, Metric]:
    """Mean heat-map error of each model over the low and the high band, over seeds."""
    out: dict[str, Metric] = {}
    for m in ("standard", "robust"):
        for band in ("low", "high") if bands else ():
            out[f"frequency/fourier/{m}/{band}_band_error"] = metric_over_seeds(
                [b[m][band] for b in bands.values()], higher_is_better=False)
    return out


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


def decide(metrics: dict[str, Metric], *, num_classes: int) -> list[Claim]:
    """Verdicts by rules fixed in advance, on 95% CIs over seeds, each of the form of
    :func:`~eisbench.runs.claims.decide_against` (reproduced: the CI lies past the bar; not
    reproduced: its far end stays short of bar + margin); K classes, MARGIN = 0.02 (the bar and
    margin ``frequency.at_gain.*``; every number is ``frequency.*`` in
    :data:`~eisbench.runs.preregistered.THRESHOLDS`).

    - High-pass generalisation: the model trained and tested on high-pass filtered images:
      reproduced if accuracy CI lower > 2/K (twice chance); not reproduced if its CI upper
      < 2/K + 0.05 (margin 0.05: Yin et al. report ~50% top-1 on ImageNet, hundreds of times
      chance) while the same architecture trained on clean images learns (its CI lower > 2/K;
      otherwise the architecture, not the band, failed: inconclusive). Reproduced supports
      "features": the data carries useful, generalising features that humans barely see. Not
      reproduced supports "bugs": the imperceptible band carries no usable signal, so
      perturbations living there exploit directions irrelevant for classification (World 1).
    - A clean-trained model reads high-pass images: the model trained on clean images, tested
      on high-pass filtered ones: same bar and margin. Reproduced supports "features": a
      normally trained model uses the generalising high-frequency features (the bug world's
      reply to such features, "existing does not mean used", fails). Not reproduced is
      inconclusive: the grey high-pass images are far off the clean distribution, and a
      model can fail on them in either world.
    - AT gain under Gaussian noise (robust minus standard accuracy, mean over severities):
      reproduced if CI lower > +MARGIN, not reproduced if CI upper < +2 MARGIN (margin MARGIN).
    - AT gain under fog, and under contrast: reproduced (AT lowers accuracy) if CI upper
      < -MARGIN, not reproduced if CI lower > -2 MARGIN (margin MARGIN).
    The three adversarial-training claims are inconclusive for the features-or-bugs question
    whatever their outcome: they show whether adversarial training *moves* sensitivity between
    frequency bands rather than removing it, which both views predict (a model that loses its
    Lp-fragile features relies on other, differently fragile ones; a model whose "bugs" are
    sensitivities left where training does not constrain it shows them wherever training
    stops constraining it). They bear on Gilmer & Hendrycks' point that Lp robustness is one
    distribution shift among many, not on whether the Lp vulnerability was useful features.
    """
    x, m = (threshold("frequency.filtered.acc.bar_x_chance"),
            threshold("frequency.filtered.acc.margin"))
    chance2, at = x / num_classes, bar_margin("frequency.at_gain")
    clean = "frequency/filtered/train_clean/test_clean/acc"
    learns = decide_metric(metrics, clean, bar=chance2,
                           margin=threshold("frequency.filtered.clean_learns.margin"))
    claims: list[Claim] = []
    for train, what, if_not, lit in (
            ("high", "A model trained and tested only on high-pass filtered images generalises "
                     "well above chance", "bugs", LITERATURE["high_pass"]),
            ("clean", "A model trained on clean images classifies high-pass filtered test "
                      "images well above chance (it uses the high-frequency features)",
             "inconclusive", "no published figure; Yin et al. 2019 (Fourier heat maps): "
                             "naturally trained models are sensitive to high frequencies")):
        key = f"frequency/filtered/train_{train}/test_high/acc"
        claims.append(make_claim(
            claim=what, rule=f"accuracy CI lower > {chance2:.2f} = {x:g}/K (reproduced: features)"
                             f"; CI upper < {chance2 + m:.2f}, margin {m:.2f}, while the clean "
                             f"model's CI lower > {chance2:.2f} (not reproduced: {if_not})",
            measured=f"{fmt(metrics, key)}; {fmt(metrics, clean)} (clean)",
            verdict=provided(decide_metric(metrics, key, bar=chance2, margin=m), learns),
            exhibit="H", if_reproduced="features", if_not=if_not, literature=lit))
    g = "frequency/at_gain/gaussian_noise"
    claims.append(make_claim(
        claim="Adversarial training improves accuracy under high-frequency corruption "
              "(Gaussian noise)",
        rule=f"AT gain (robust - standard, mean over severities) CI lower > +{at['bar']} "
             f"(reproduced); CI upper < +{at['bar'] + at['margin']}, margin {at['margin']} (not "
             "reproduced); inconclusive for the worlds either way",
        measured=fmt(metrics, g), verdict=decide_metric(metrics, g, **at),
        exhibit="H", if_reproduced="inconclusive", if_not="inconclusive",
        literature=LITERATURE["noise"]))
    for name in ("fog", "contrast"):
        g = f"frequency/at_gain/{name}"
        claims.append(make_claim(
            claim=f"Adversarial training lowers accuracy under low-frequency corruption ({name})",
            rule=f"AT gain (robust - standard, mean over severities) CI upper < -{at['bar']} "
                 f"(reproduced); CI lower > -{at['bar'] + at['margin']}, margin {at['margin']} "
                 "(not reproduced); inconclusive for the worlds either way",
            measured=fmt(metrics, g),
            verdict=decide_metric(metrics, g, bar=-at["bar"], margin=at["margin"],
                                  higher_means_reproduced=False),
            exhibit="H", if_reproduced="inconclusive", if_not="inconclusive",
            literature=LITERATURE["low_freq"]))
    return claims


register(Experiment(name="frequency",
                    summary="Gilmer & Hendrycks 2019: filtered training, corruptions and "
                            "Fourier heat maps of standard vs adversarially trained models",
                    quick=QUICK, full=FULL, measure=measure,
                    report=report_from("eisbench.report.frequency")))
