"""``eisbench bench trojans``: the trojan-rediscovery benchmark (Casper et al. 2023) end to end.

1. The trojan zoo (:mod:`eisbench.trojans.zoo`): 12 trojaned and ``n_clean`` clean
   models, cached.
2. The judge (:mod:`eisbench.trojans.judge`), trained on trigger views only (never on a model
   under test) and validated before it is trusted: accuracy on views of the true trigger
   (target >= 0.95) and on noise (about 1/8).
3. Every tool of :data:`~eisbench.tools.TOOLS` makes ``n_images`` images per trojan and seed
   from clean test images (cached per tool, trojan and seed: adding a tool runs only it).
4. 8-way questions: the judge compares the tool's images with the 8 triggers of the trojan's
   kind (the true one and 7 distractors). Success per tool, for all tools together and the
   best pair (:mod:`eisbench.bench.trojan_scores`), with two reference rows: noise images (a
   tool that shows nothing) and views of the true trigger (a tool that shows it).
5. The 16 captum attribution methods and two baselines on poisoned images of the patch
   trojans, scored by correlation with the trigger's footprint.
6. Detection: Neural Cleanse and TABOR scans of every trojaned and clean model; AUROC of the
   anomaly index of the smallest-trigger class, with a bootstrap CI.

Success rates: the mean over all questions (trojans x seeds); the 95% interval is Wilson's at
that rate with n = the number of trojans (a tool's questions on one trojan are not
independent, so the trojans are the sample).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.bench import trojan_scores as scores
from eisbench.core.config import resolve_device, to_plain
from eisbench.core.progress import progress, say
from eisbench.core.stats import mean_ci, wilson_ci
from eisbench.core.tensors import predict
from eisbench.runs.record import SCHEMA_VERSION, Metric, Record, git_state, library_versions, now
from eisbench.runs.record import write as write_record
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store
from eisbench.tools import TOOLS
from eisbench.tools.attribution import score_methods
from eisbench.tools.scan import ScanResult, load_scan, save_scan, scan
from eisbench.trojans.bank import trigger_bank
from eisbench.trojans.judge import JudgeConfig, ask, judge_stage, validate
from eisbench.trojans.quiz import Question, quiz_html
from eisbench.trojans.stamp import KINDS, Trigger, Trojan, source_mask, stamp
from eisbench.trojans.views import ViewConfig, layers, render
from eisbench.trojans.zoo import bench_zoo

CASPER = {"best_single": 0.47, "all": 0.49}  # human success, Casper et al. (2023), ImageNet
REFERENCES = ("noise", "trigger-views")  # rows that are not tools


@dataclass(frozen=True)
class TrojanBenchConfig:
    """The benchmark's settings; :data:`QUICK` and :data:`FULL` are the presets."""

    dataset: str = "mnist"
    data_root: str | None = None
    natural_root: str | None = None  # folder of the dataset natural triggers come from
    n_train: int | None = None  # zoo models train on the first n images (None: all)
    epochs: int | None = None  # None: the zoo preset's
    n_clean: int = 8
    tools: tuple[str, ...] = ()  # () = every registered tool
    tool_steps: float = 1.0  # scales every tool's default number of optimisation steps
    n_images: int = 10  # per tool, trojan and seed
    n_data: int = 512  # clean test images the tools may use
    judge_steps: int = 2000
    judge_trials: int = 10  # validation questions per trigger
    n_attr: int = 32  # poisoned images per patch trojan for attribution
    scan_methods: tuple[str, ...] = ("neural-cleanse", "tabor")
    scan_steps: int = 200
    n_scan: int = 256  # clean test images per scan
    seeds: tuple[int, ...] = (0, 1, 2)  # tool seeds
    device: str = "cpu"


FULL = TrojanBenchConfig()
QUICK = TrojanBenchConfig(n_train=20000, epochs=4, tool_steps=0.5, judge_trials=5, n_attr=16,
                          scan_methods=("neural-cleanse",), scan_steps=100, n_scan=128,
                          seeds=(0,))
"""Quick: a cheaper zoo (some random-position patch trojans then miss the ASR target: the
record and report say which), half the tool steps, one tool seed, Neural Cleanse scans only.
The judge is the full one (1000 steps left patch views at 0.48 accuracy); it is cached and
shared with full mode."""


def tool_names(cfg: TrojanBenchConfig) -> list[str]:
    names = list(cfg.tools) or sorted(TOOLS.names())
    for n in names:
        TOOLS.get(n)  # an unknown name fails here, with suggestions
    return names


def tool_kwargs(name: str, cfg: TrojanBenchConfig) -> dict[str, Any]:
    """The tool's default ``steps`` scaled by ``cfg.tool_steps`` (at least 1)."""
    default = inspect.signature(TOOLS.get(name)).parameters["steps"].default
    return {"steps": max(1, round(default * cfg.tool_steps))}


def tool_stage(store: Store, *, name: str, model: nn.Module, model_key: str, trojan: Trojan,
               data: Tensors, cfg: TrojanBenchConfig, seed: int, device: torch.device,
               log: StageLog) -> torch.Tensor:
    """A tool's ``cfg.n_images`` images (n, C, H, W) for the trojan's target (cached)."""
    kwargs = tool_kwargs(name, cfg)

    def compute(work: Path) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return TOOLS.get(name)(model, target=trojan.target, data=data.x, n=cfg.n_images,
                               generator=gen, device=device, **kwargs).detach().cpu()

    def save(x: torch.Tensor, d: Path) -> None:
        save_file({"images": x.contiguous()}, str(d / "images.safetensors"))

    def load(d: Path) -> torch.Tensor:
        return load_file(str(d / "images.safetensors"))["images"]

    params = {"tool": name, "kwargs": kwargs, "target": trojan.target, "n": cfg.n_images,
              "seed": seed, "device": device.type}
    out, _ = store.run("tool-images", params, inputs=(model_key, data.key), compute=compute,
                       save=save, load=load, log=log)
    return out


def scan_stage(store: Store, *, method: str, model: nn.Module, model_key: str, data: Tensors,
               cfg: TrojanBenchConfig, device: torch.device, log: StageLog) -> ScanResult:
    """A trigger-reconstruction scan of every class (cached)."""
    def compute(work: Path) -> ScanResult:
        return scan(model, data.x, method=method, steps=cfg.scan_steps,
                    generator=torch.Generator().manual_seed(0), device=device)

    def save(res: ScanResult, d: Path) -> None:
        save_scan(res, d)

    params = {"method": method, "steps": cfg.scan_steps, "n": len(data.x),
              "device": device.type}
    out, _ = store.run("scan", params, inputs=(model_key, data.key), compute=compute,
                       save=save, load=load_scan, log=log)
    return out


def poisoned_images(model: nn.Module, trojan: Trojan, test: Tensors, *, n: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` source test images stamped with the trigger that the model sends to the
    target, and their footprints: (n, C, H, W), (n, 1, H, W)."""
    keep = source_mask(test.y, trojan)
    x = test.x[keep][: 4 * n]
    xs, foot = stamp(x, trojan.trigger, generator=torch.Generator().manual_seed(0))
    hit = predict(model, xs, device=device) == trojan.target
    return xs[hit][:n], foot[hit][:n]


def suspicion(res: ScanResult) -> float:
    """A model's detection score: the anomaly index of its smallest-trigger class."""
    return res.anomaly_index[min(range(len(res.l1)), key=lambda k: res.l1[k])]


def _metric(value: float, lo: float, hi: float, n: int, *, higher: bool = True) -> Metric:
    return {"value": value, "ci95": [min(lo, value), max(hi, value)], "n": n,
            "higher_is_better": higher}


def success_metric(rates: list[float]) -> Metric:
    """Mean success over trojans (each the mean over seeds) with Wilson's interval, n =
    trojans (see the module docstring)."""
    t = len(rates)
    v = sum(rates) / t
    lo, hi = wilson_ci(round(v * t), t)
    return _metric(v, lo, hi, t)


def answer_index(bank: list[Trigger], trojan: Trojan) -> int:
    names = [t.name for t in bank]
    if trojan.trigger.name not in names:
        raise ValueError(f"{trojan.name}: trigger {trojan.trigger.name!r} not in its bank")
    return names.index(trojan.trigger.name)


def reference_images(kind: str, trojan_idx: int, *, lay: dict[str, Any], answer: int,
                     data: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The reference rows: uniform noise ("noise") or fresh views of the true trigger
    ("trigger-views", the judge's validation distribution), (n, C, H, W)."""
    gen = torch.Generator().manual_seed(10_000 * seed + trojan_idx)
    if kind == "noise":
        return torch.rand(n, *data.shape[1:], generator=gen)
    return render(lay["layers"], torch.full((n,), answer), data=data, generator=gen,
                  cfg=dataclasses.replace(ViewConfig(), p_exact=0.0))


def write_quiz(shown: dict[str, torch.Tensor], trojans: list[Trojan], tools: list[str], *,
               banks: dict[str, list[Trigger]], answers: list[int],
               out: Path) -> tuple[Path, Path]:
    """The judge's questions (first seed, every tool x trojan) as an HTML quiz for human
    raters, options shuffled per question; the answers go to a separate key file."""
    gen = torch.Generator().manual_seed(0)
    questions = []
    for i, trojan in enumerate(trojans):
        bank = banks[trojan.trigger.kind]
        for tool in tools:
            perm = torch.randperm(len(bank), generator=gen).tolist()
            questions.append(Question(qid=f"{trojan.name}/{tool}",
                                      images=shown[f"{trojan.name}/{tool}"],
                                      options=[bank[j] for j in perm],
                                      answer=perm.index(answers[i])))
    return quiz_html(questions, out)


def run_trojan_bench(cfg: TrojanBenchConfig, *, out: Path, store: Store) -> Record:
    """Run the benchmark and write ``out/record.json`` and ``out/tool_images.safetensors``."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    names = tool_names(cfg)
    if not cfg.seeds or cfg.n_clean < 2:
        raise ValueError("need at least one seed and n_clean >= 2 (detection AUROC)")
    zoo, ds = bench_zoo(store, dataset=cfg.dataset, epochs=cfg.epochs, data_root=cfg.data_root,
                        natural_root=cfg.natural_root, n_train=cfg.n_train,
                        n_clean=cfg.n_clean, device=cfg.device)
    log = zoo.log
    key = f"{ds.name}:{ds.sha256}"
    shape = ds.shape
    tool_data = Tensors(ds.x_test[:cfg.n_data], ds.y_test[:cfg.n_data],
                        f"{key}:test:{cfg.n_data}")
    scan_data = Tensors(ds.x_test[:cfg.n_scan], ds.y_test[:cfg.n_scan],
                        f"{key}:test:{cfg.n_scan}")
    test = Tensors(ds.x_test, ds.y_test, f"{key}:test:{len(ds.x_test)}")
    train_d = Tensors(ds.x_train, ds.y_train, f"{key}:train:{len(ds.x_train)}")

    # the judge: trained on trigger views and clean training images only
    banks = {k: trigger_bank(k, dataset=cfg.dataset, shape=shape, data_root=cfg.natural_root)
             for k in KINDS}
    say("judge: training on trigger views")
    enc, _ = judge_stage(store, banks=banks, shape=shape, data=train_d,
                         cfg=JudgeConfig(steps=cfg.judge_steps), device=device, log=log)
    val = validate(enc, bank=banks, shape=shape, n_trials=cfg.judge_trials,
                   generator=torch.Generator().manual_seed(1), data=ds.x_test[-2000:])

    # tools -> 8-way questions
    answers = [answer_index(banks[t.trigger.kind], t) for t in zoo.trojans]
    lays = {k: {"layers": layers(banks[k], shape)} for k in KINDS}
    rows = [*names, *REFERENCES]
    sims = {r: {s: torch.zeros(len(zoo.trojans), 8) for s in cfg.seeds} for r in rows}
    shown: dict[str, torch.Tensor] = {}
    jobs = [(i, s, r) for i in range(len(zoo.trojans)) for s in cfg.seeds for r in rows]
    for i, s, r in progress(jobs, desc="tools"):
        trojan, (model, mkey) = zoo.trojans[i], zoo.models[i]
        if r in REFERENCES:
            imgs = reference_images(r, i, lay=lays[trojan.trigger.kind], answer=answers[i],
                                    data=tool_data.x, n=cfg.n_images, seed=s)
        else:
            imgs = tool_stage(store, name=r, model=model, model_key=mkey, trojan=trojan,
                              data=tool_data, cfg=cfg, seed=s, device=device, log=log)
        opts = banks[trojan.trigger.kind]
        sims[r][s][i] = ask(enc, images=imgs, options=opts, shape=shape).similarities
        if s == cfg.seeds[0]:
            shown[f"{trojan.name}/{r}"] = imgs.contiguous()
    for k in KINDS:
        shown[f"options/{k}"] = torch.stack([t.image(shape) for t in banks[k]]).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(shown, str(out / "tool_images.safetensors"))
    quiz_page, _ = write_quiz(shown, zoo.trojans, names, banks=banks, answers=answers,
                              out=out / "quiz.html")
    grid = {r: [[scores.success_grid({r: sims[r][s]}, answers=answers)[r][i]
                 for s in cfg.seeds] for i in range(len(answers))] for r in rows}
    metrics: dict[str, Metric] = {}
    for r in rows:
        metrics[f"tool/{r}/success_rate"] = success_metric([sum(g) / len(g) for g in grid[r]])
    all_ok, pair_ok, pair_cv, pairs = [], [], [], []
    for s in cfg.seeds:
        per_seed = {r: sims[r][s] for r in names}
        all_ok.append(scores.success_grid({"all": scores.combine(per_seed, names)},
                                          answers=answers)["all"])
        if len(names) >= 2:
            bp = scores.best_pair(per_seed, answers=answers)
            pair_ok.append(bp.correct)
            pair_cv.append(bp.cv_correct)
            pairs.append(bp.pair)
    n_t = len(answers)

    def over_seeds(rows_: list[list[bool]]) -> list[float]:
        return [sum(r[i] for r in rows_) / len(rows_) for i in range(n_t)]

    metrics["tool/all/success_rate"] = success_metric(over_seeds(all_ok))
    if pair_ok:
        metrics["tool/best_pair/success_rate"] = success_metric(over_seeds(pair_ok))
        metrics["tool/best_pair_cv/success_rate"] = success_metric(over_seeds(pair_cv))
    tv, nv = val["true_trigger"], val["noise"]
    metrics["judge/true_trigger_acc"] = _metric(tv["accuracy"], tv["ci"][0], tv["ci"][1], tv["n"])
    metrics["judge/noise_acc"] = _metric(nv["accuracy"], nv["ci"][0], nv["ci"][1], nv["n"],
                                         higher=False)

    # attribution on patch trojans
    attr_rows: dict[str, list[float]] = {}
    attr_per_trojan: dict[str, dict[str, float | None]] = {}
    skipped: dict[str, str] = {}
    for i, trojan in enumerate(zoo.trojans):
        if trojan.trigger.kind != "patch":
            continue
        model = zoo.models[i][0]
        x, foot = poisoned_images(model, trojan, test, n=cfg.n_attr, device=device)
        res = score_methods(model, x.to(device), trojan.target, foot.to(device),
                            generator=torch.Generator().manual_seed(i))
        attr_per_trojan[trojan.name] = {m.name: m.mean for m in res}
        for m in res:
            if m.skipped:
                skipped[m.name] = m.skipped
            attr_rows.setdefault(m.name, []).extend(m.per_image)
    for name, vals in attr_rows.items():
        if vals:
            metrics[f"attribution/{name}/correlation"] = _metric(*mean_ci(vals), len(vals))

    # detection over trojaned and clean models
    detection: dict[str, Any] = {}
    for method in cfg.scan_methods:
        res_t = [scan_stage(store, method=method, model=m, model_key=k, data=scan_data, cfg=cfg,
                            device=device, log=log) for m, k in zoo.models]
        res_c = [scan_stage(store, method=method, model=m, model_key=k, data=scan_data, cfg=cfg,
                            device=device, log=log) for m, k in zoo.clean]

        st, sc = [suspicion(r) for r in res_t], [suspicion(r) for r in res_c]
        det = scores.detection_auroc(st, sc, generator=torch.Generator().manual_seed(2))
        hits = [r.suspect == t.target for r, t in zip(res_t, zoo.trojans, strict=True)]
        fp = [r.suspect is not None for r in res_c]
        metrics[f"detection/{method}/auroc"] = _metric(det.auroc, *det.ci95,
                                                       det.n_trojaned + det.n_clean)
        metrics[f"detection/{method}/target_found"] = scores.rate(hits)
        metrics[f"detection/{method}/false_alarm"] = scores.rate(fp, higher_is_better=False)
        detection[method] = det.to_dict() | {
            "trojaned": [{"trojan": t.name, "score": s_, "suspect": r.suspect,
                          "target": t.target, "bbox": list(r.trigger.bbox) if r.trigger else None}
                         for t, r, s_ in zip(zoo.trojans, res_t, st, strict=True)],
            "clean": [{"score": s_, "suspect": r.suspect} for r, s_ in zip(res_c, sc,
                                                                         strict=True)]}
    if cfg.scan_methods:
        metrics["detection/auroc"] = metrics[f"detection/{cfg.scan_methods[0]}/auroc"]

    details = {
        "zoo": [m.to_dict() for m in zoo.metrics],
        "trojans": [t.name for t in zoo.trojans], "kinds": [t.trigger.kind for t in zoo.trojans],
        "answers": answers, "options": {k: [t.name for t in banks[k]] for k in KINDS},
        "tools": names, "references": list(REFERENCES),
        "grid": grid, "all": all_ok, "best_pairs": [list(p) for p in pairs],
        "best_pair_correct": pair_ok, "best_pair_cv": pair_cv,
        "choices": {r: {str(s): sims[r][s].argmax(1).tolist() for s in cfg.seeds}
                    for r in rows},
        "judge": val, "attribution": attr_per_trojan, "attribution_images": attr_rows,
        "attribution_skipped": skipped,
        "detection": detection, "casper": CASPER, "quiz": quiz_page.name,
    }
    rec: Record = {
        "schema_version": SCHEMA_VERSION, "experiment": "trojans", "created": now(),
        "config": to_plain(cfg), "seeds": list(cfg.seeds), "git": git_state(),
        "versions": library_versions(), "device": str(device), "data": {ds.name: ds.sha256},
        "stages": log.entries, "wall_seconds": time.perf_counter() - t0, "metrics": metrics,
        "claims": scores.judge_claims(metrics, details, names), "details": details,
    }
    write_record(rec, out / "record.json")
    return rec
