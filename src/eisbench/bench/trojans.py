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
   trojans, scored by correlation with the trigger's footprint
   (:mod:`eisbench.bench.trojan_probes`).
6. Detection: Neural Cleanse and TABOR scans of every trojaned and clean model; AUROC of the
   anomaly index of the smallest-trigger class, with a bootstrap CI.

Success rates: the mean over all questions (trojans x seeds); the 95% interval is Wilson's at
that rate with n = the number of trojans (a tool's questions on one trojan are not
independent, so the trojans are the sample).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench import data as datasets
from eisbench.bench import trojan_scores as scores
from eisbench.bench.trojan_probes import attribution, detection
from eisbench.core.config import resolve_device
from eisbench.core.progress import progress, say
from eisbench.runs.record import Metric
from eisbench.runs.result import Result
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store
from eisbench.tools import TOOLS
from eisbench.trojans.bank import trigger_bank
from eisbench.trojans.judge import JudgeConfig, JudgeEncoder, ask, judge_stage, validate
from eisbench.trojans.quiz import Question, quiz_html
from eisbench.trojans.stamp import TRIGGER_KINDS as KINDS
from eisbench.trojans.stamp import Trigger, Trojan
from eisbench.trojans.views import ViewConfig, layers, render
from eisbench.trojans.zoo import ZooRun, bench_zoo

CASPER = {"best_single": 0.47, "all": 0.49}  # human success, Casper et al. (2023), ImageNet
REFERENCES = ("noise", "trigger-views")  # rows that are not tools
Banks = dict[str, list[Trigger]]  # trigger kind -> its 8 options


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
    """The tools benchmarked (default: every registered one); an unknown name fails here."""
    names = list(cfg.tools) or sorted(TOOLS.names())
    for n in names:
        TOOLS.get(n)  # an unknown name fails here, with suggestions
    return names


def tool_kwargs(name: str, cfg: TrojanBenchConfig) -> dict[str, Any]:
    """The tool's default ``steps`` scaled by ``cfg.tool_steps`` (at least 1)."""
    default: int = TOOLS.meta(name)["steps"]
    return {"steps": max(1, round(default * cfg.tool_steps))}


def trojan_tool_stage(store: Store, *, name: str, model: nn.Module, model_key: str,
                      trojan: Trojan, data: Tensors, cfg: TrojanBenchConfig, seed: int,
                      device: torch.device, log: StageLog) -> torch.Tensor:
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


def answer_index(bank: list[Trigger], trojan: Trojan) -> int:
    """The position of the trojan's trigger among its kind's options."""
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
               banks: Banks, answers: list[int], out: Path) -> tuple[Path, Path]:
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


@dataclass(frozen=True)
class Setting:
    """What every phase shares: the zoo, the data each part may use, the judge's options."""

    device: torch.device
    names: list[str]  # the tools benchmarked
    zoo: ZooRun
    ds: datasets.ImageData
    tool_data: Tensors  # the first n_data test images
    scan_data: Tensors  # the first n_scan test images
    test: Tensors
    train: Tensors
    banks: Banks
    answers: list[int]  # per trojan, the true option's index in its kind's bank

    @property
    def log(self) -> StageLog:
        return self.zoo.log

    @property
    def rows(self) -> list[str]:
        return [*self.names, *REFERENCES]


def setting(cfg: TrojanBenchConfig, store: Store) -> Setting:
    """Check the config, load the zoo (cached), slice the data and build the trigger banks."""
    device = resolve_device(cfg.device)
    names = tool_names(cfg)
    if not cfg.seeds or cfg.n_clean < 2:
        raise ValueError("need at least one seed and n_clean >= 2 (detection AUROC)")
    zoo, ds = bench_zoo(store, dataset=cfg.dataset, epochs=cfg.epochs, data_root=cfg.data_root,
                        natural_root=cfg.natural_root, n_train=cfg.n_train,
                        n_clean=cfg.n_clean, device=cfg.device)
    key = f"{ds.name}:{ds.sha256}"
    banks = {k: trigger_bank(k, dataset=cfg.dataset, shape=ds.shape, data_root=cfg.natural_root)
             for k in KINDS}
    return Setting(
        device=device, names=names, zoo=zoo, ds=ds,
        tool_data=Tensors(ds.x_test[:cfg.n_data], ds.y_test[:cfg.n_data],
                          f"{key}:test:{cfg.n_data}"),
        scan_data=Tensors(ds.x_test[:cfg.n_scan], ds.y_test[:cfg.n_scan],
                          f"{key}:test:{cfg.n_scan}"),
        test=Tensors(ds.x_test, ds.y_test, f"{key}:test:{len(ds.x_test)}"),
        train=Tensors(ds.x_train, ds.y_train, f"{key}:train:{len(ds.x_train)}"),
        banks=banks, answers=[answer_index(banks[t.trigger.kind], t) for t in zoo.trojans])


def train_judge(st: Setting, cfg: TrojanBenchConfig,
                store: Store) -> tuple[JudgeEncoder, dict[str, Any]]:
    """The judge, trained on trigger views and clean training images only (cached), and its
    validation on questions whose answer is known."""
    say("judge: training on trigger views")
    enc, _ = judge_stage(store, banks=st.banks, shape=st.ds.shape, data=st.train,
                         cfg=JudgeConfig(steps=cfg.judge_steps), device=st.device, log=st.log)
    val = validate(enc, bank=st.banks, shape=st.ds.shape, n_trials=cfg.judge_trials,
                   generator=torch.Generator().manual_seed(1), data=st.ds.x_test[-2000:])
    return enc, val


def ask_tools(st: Setting, cfg: TrojanBenchConfig, store: Store, enc: JudgeEncoder
              ) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, torch.Tensor]]:
    """Every row's images for every trojan and seed (tools cached), asked of the judge:
    ``sims[row][seed]`` (trojans, 8) and the images of the first seed (``shown``, with each
    kind's options)."""
    lays = {k: {"layers": layers(st.banks[k], st.ds.shape)} for k in KINDS}
    sims = {r: {s: torch.zeros(len(st.zoo.trojans), 8) for s in cfg.seeds} for r in st.rows}
    shown: dict[str, torch.Tensor] = {}
    jobs = [(i, s, r) for i in range(len(st.zoo.trojans)) for s in cfg.seeds for r in st.rows]
    for i, s, r in progress(jobs, desc="tools"):
        trojan, (model, mkey) = st.zoo.trojans[i], st.zoo.models[i]
        if r in REFERENCES:
            imgs = reference_images(r, i, lay=lays[trojan.trigger.kind], answer=st.answers[i],
                                    data=st.tool_data.x, n=cfg.n_images, seed=s)
        else:
            imgs = trojan_tool_stage(store, name=r, model=model, model_key=mkey, trojan=trojan,
                                     data=st.tool_data, cfg=cfg, seed=s, device=st.device,
                                     log=st.log)
        opts = st.banks[trojan.trigger.kind]
        sims[r][s][i] = ask(enc, images=imgs, options=opts, shape=st.ds.shape).similarities
        if s == cfg.seeds[0]:
            shown[f"{trojan.name}/{r}"] = imgs.contiguous()
    for k in KINDS:
        shown[f"options/{k}"] = torch.stack([t.image(st.ds.shape)
                                             for t in st.banks[k]]).contiguous()
    return sims, shown


def success(st: Setting, cfg: TrojanBenchConfig, sims: dict[str, dict[int, torch.Tensor]]
            ) -> tuple[dict[str, Metric], dict[str, Any]]:
    """Success per row, for all tools together and the best pair (with its leave-one-trojan-out
    estimate): metrics ``tool/.../success_rate`` and the details behind them."""
    answers, names = st.answers, st.names
    grid = {r: [[scores.success_grid({r: sims[r][s]}, answers=answers)[r][i]
                 for s in cfg.seeds] for i in range(len(answers))] for r in st.rows}
    metrics = {f"tool/{r}/success_rate": scores.success_metric([sum(g) / len(g)
                                                                for g in grid[r]])
               for r in st.rows}
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

    def over_seeds(rows_: list[list[bool]]) -> list[float]:
        return [sum(r[i] for r in rows_) / len(rows_) for i in range(len(answers))]

    metrics["tool/all/success_rate"] = scores.success_metric(over_seeds(all_ok))
    if pair_ok:
        metrics["tool/best_pair/success_rate"] = scores.success_metric(over_seeds(pair_ok))
        metrics["tool/best_pair_cv/success_rate"] = scores.success_metric(over_seeds(pair_cv))
    return metrics, {"grid": grid, "all": all_ok, "best_pairs": [list(p) for p in pairs],
                     "best_pair_correct": pair_ok, "best_pair_cv": pair_cv}


def judge_metrics(val: dict[str, Any]) -> dict[str, Metric]:
    """The judge's validation accuracies on true-trigger views and on noise."""
    tv, nv = val["true_trigger"], val["noise"]
    return {"judge/true_trigger_acc": scores.ci_metric(tv["accuracy"], tv["ci"][0],
                                                       tv["ci"][1], tv["n"]),
            "judge/noise_acc": scores.ci_metric(nv["accuracy"], nv["ci"][0], nv["ci"][1],
                                                nv["n"], higher=False)}


def measure(cfg: TrojanBenchConfig, *, out: Path, store: Store) -> Result:
    """Load the zoo, train the judge, ask it about every tool's images, score attribution and
    detection, judge the claims; the images go to ``tool_images.safetensors`` and the
    questions to ``quiz.html`` (answers in ``quiz.key.json``)."""
    st = setting(cfg, store)
    enc, val = train_judge(st, cfg, store)
    sims, shown = ask_tools(st, cfg, store, enc)
    out.mkdir(parents=True, exist_ok=True)
    quiz_page, _ = write_quiz(shown, st.zoo.trojans, st.names, banks=st.banks,
                              answers=st.answers, out=out / "quiz.html")
    metrics, scored = success(st, cfg, sims)
    metrics |= judge_metrics(val)
    attr_metrics, attr = attribution(st.zoo, st.test, n=cfg.n_attr, device=st.device)
    det_metrics, det = detection(store, st.zoo, st.scan_data, methods=cfg.scan_methods,
                                 steps=cfg.scan_steps, device=st.device, log=st.log)
    metrics |= attr_metrics | det_metrics
    details = {
        "zoo": [m.to_dict() for m in st.zoo.metrics],
        "trojans": [t.name for t in st.zoo.trojans],
        "kinds": [t.trigger.kind for t in st.zoo.trojans], "answers": st.answers,
        "options": {k: [t.name for t in st.banks[k]] for k in KINDS}, "tools": st.names,
        "references": list(REFERENCES), **scored,
        "choices": {r: {str(s): sims[r][s].argmax(1).tolist() for s in cfg.seeds}
                    for r in st.rows},
        "judge": val, **attr, "detection": det, "casper": CASPER, "quiz": quiz_page.name,
    }
    return Result(metrics=metrics, claims=scores.decide(metrics, details, st.names),
                  details=details, artifacts={"tool_images.safetensors": shown},
                  data={st.ds.name: st.ds.sha256}, stages=st.log.entries,
                  device=str(st.device))
