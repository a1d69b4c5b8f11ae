"""The automated judge of the trojan benchmark: an independent image encoder answers 8-way
multiple-choice questions "which of these triggers do the tool's images show?".

The encoder (:class:`JudgeEncoder`, a small CNN with a 64-d embedding) is trained by
eisbench on trigger *views* only (:mod:`eisbench.trojans.views`): every trigger of the
banks drawn alone and as a tool might show it (shifted, rescaled, blurred, at another
contrast, partly hidden, repeated, stamped on clean data images, or as the difference from
the clean image), plus a background class of clean images, noise and flat grey. No model
under test is involved. Training is cross-entropy over the trigger identities and the
background with a cosine classifier (class centres on the unit sphere), plus an *anchor*
term that pulls the embedding of each trigger's own image (``Trigger.image``) to the centre
of its class: :func:`ask` compares the tool's images with the options' own images, so the
anchor makes that comparison the trained one (a pure prototypical loss, with the own-image
embeddings as the class centres, learned far slower in trials on 8x8 icons), plus a *flat*
term (weight ``trojans.judge.flat``) that spreads each background view's softmax evenly over
the trigger classes, so that a view without a trigger is no nearer one trigger than another.
Options the encoder never saw still get their image's embedding. The stage is cached under
the banks' content, the clean data and the config.

:func:`ask` embeds the tool's images and each option's own image (``Trigger.image``) and
scores option k by the *mean over the tool's images* of the cosine similarity: a tool is
judged on its images as a whole, and a single lucky image among noise moves the answer only
as much as it deserves. When the encoder's classifier sees background rather than any trigger
in the images, the judge abstains with a guess (:func:`guess`).
:mod:`eisbench.trojans.judge_checks` validates a judge before it is trusted (true-trigger
views, noise uniformity, held-out view families).

Example:
    >>> banks = {k: trigger_bank(k, dataset="mnist", shape=(1, 28, 28)) for k in TRIGGER_KINDS}
    >>> enc, _ = judge_stage(store, banks=banks, shape=(1, 28, 28), data=train_tensors)
    >>> ask(enc, images=tool_images, options=banks["patch"], shape=(1, 28, 28)).choice
    3
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from eisbench.core.progress import progress
from eisbench.core.tensors import eval_mode
from eisbench.runs.preregistered import threshold
from eisbench.runs.stages import Tensors
from eisbench.runs.store import StageLog, Store
from eisbench.trojans.quiz import Question, quiz_html
from eisbench.trojans.stamp import Trigger
from eisbench.trojans.views import BACKGROUND, ViewConfig, layers, render
from eisbench.trojans.zoo import trigger_digest

__all__ = ["Answer", "JudgeConfig", "JudgeEncoder", "Question", "ask",
           "bank_digests", "guess", "judge_stage", "quiz_html", "train_judge"]

Banks = Mapping[str, Sequence[Trigger]]


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge's encoder is built and trained."""

    width: int = 16  # channels of the first conv; later ones have twice as many
    embed_dim: int = 64
    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-3
    background_share: float = 0.1  # fraction of each batch without a trigger
    scale: float = 16.0  # temperature of the cosine classifier
    anchor: float = 1.0  # weight of the pull of each trigger's own image to its class centre
    flat: float = threshold("trojans.judge.flat")  # background spread evenly over triggers
    views: ViewConfig = ViewConfig()
    seed: int = 0


class JudgeEncoder(nn.Module):
    """Images (B, C, H, W) in [0,1] -> unit embeddings (B, D) (:meth:`embed`) and cosine
    logits (B, K+1) over the K trigger identities it was trained on and the background
    (:meth:`forward`).

    Four 3x3 convs (two of stride 2), global mean and max pooling (so a trigger is recognised
    wherever it is), a two-layer projection to ``embed_dim``; ``weight`` (K+1, D) holds the
    class centres.
    """

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 32,
                 embed_dim: int = 64, scale: float = 16.0) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        )
        self.proj = nn.Sequential(nn.Linear(4 * w, 128), nn.ReLU(), nn.Linear(128, embed_dim))
        self.weight = nn.Parameter(0.1 * torch.randn(num_classes, embed_dim))
        self.scale = scale
        self.names: list[str] = []  # class names: the trigger identities, then "background"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x - 0.5)  # (B, 2w, h, w)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)  # (B, 4w)
        return F.normalize(self.proj(pooled), dim=1)  # (B, D)

    def centres(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1)  # (K+1, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.embed(x) @ self.centres().T  # (B, K+1)


def _flat(banks: Banks) -> tuple[list[Trigger], list[str]]:
    triggers = [t for kind in sorted(banks) for t in banks[kind]]
    names = [t.name for t in triggers]
    if len(set(names)) != len(names):
        raise ValueError("trigger names must be unique across the banks")
    return triggers, names


def _loss(enc: JudgeEncoder, x: torch.Tensor, y: torch.Tensor, exact: torch.Tensor, *,
          anchor: float, flat: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the views x (B, C, H, W) with labels y (B,) (K = background) and of
    the K triggers' own images ``exact`` (K, C, H, W), plus ``anchor`` x the mean cosine
    distance between each own image's embedding and its class centre, plus ``flat`` x the
    cross-entropy between the uniform distribution over the K triggers and the background
    views' softmax over the K trigger centres (a view without a trigger is equally like each
    one, so :func:`ask` has no favourite on images that show none)."""
    k = len(exact)
    centres = enc.centres()  # (K+1, D)
    own = enc.embed(exact)  # (K, D)
    labels = torch.arange(k, device=x.device)
    logits = enc(x)  # (B, K+1)
    loss = (F.cross_entropy(logits, y)
            + F.cross_entropy(enc.scale * own @ centres.T, labels)
            + anchor * (1 - (own * centres[:k]).sum(1)).mean())
    bg = y == k
    if flat > 0 and bool(bg.any()):
        loss = loss - flat * F.log_softmax(logits[bg, :k], dim=1).mean()
    return loss


def train_judge(banks: Banks, *, shape: tuple[int, int, int], data: torch.Tensor | None,
                cfg: JudgeConfig = JudgeConfig(), device: str | torch.device = "cpu",
                desc: str = "judge") -> JudgeEncoder:
    """Train a :class:`JudgeEncoder` on views of every trigger of ``banks`` (kind -> list)
    for images of ``shape`` (C, H, W); ``data``: clean images (N, C, H, W) in [0,1] for the
    data canvases (None: black, noise and grey only). Returned in eval mode.

    Example:
        >>> enc = train_judge({"patch": bank}, shape=(1, 8, 8), data=x_train)  # doctest: +SKIP
    """
    triggers, names = _flat(banks)
    if not triggers:
        raise ValueError("the judge needs at least one trigger")
    lay = layers(triggers, shape)
    k = len(triggers)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # weight init only; restored on exit
        enc = JudgeEncoder(in_channels=shape[0], num_classes=k + 1, width=cfg.width,
                           embed_dim=cfg.embed_dim, scale=cfg.scale)
    enc.names = [*names, "background"]
    enc.to(device).train()
    # not training.fit: batches are views rendered per step (no data set), warm-up cosine lr
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr)
    data_cpu = None if data is None else data.detach().float().cpu()
    exact = lay.exact.to(device)  # (K, C, H, W)
    for step in progress(range(cfg.steps), desc=desc):
        t = step / max(cfg.steps, 1)  # linear warm-up over 10%, cosine decay to 0
        lr = cfg.lr * (t / 0.1 if t < 0.1 else 0.5 * (1 + math.cos(math.pi * (t - 0.1) / 0.9)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(k, (cfg.batch_size,), generator=gen)  # (B,)
        idx[torch.rand(cfg.batch_size, generator=gen) < cfg.background_share] = BACKGROUND
        x = render(lay, idx, data=data_cpu, generator=gen, cfg=cfg.views)  # (B, C, H, W)
        y = torch.where(idx == BACKGROUND, k, idx)
        loss = _loss(enc, x.to(device), y.to(device), exact, anchor=cfg.anchor, flat=cfg.flat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(value := float(loss.detach())):
            raise FloatingPointError(f"{desc}: loss became {value}; lower the lr")
    return enc.eval()  # safe: nn.Module.eval (mode switch)


def bank_digests(banks: Banks) -> dict[str, list[str]]:
    """The banks by content (kind -> sha256 digest of each trigger): the judge's cache key."""
    return {kind: [trigger_digest(t) for t in banks[kind]] for kind in sorted(banks)}


def judge_stage(store: Store, *, banks: Banks, shape: tuple[int, int, int],
                data: Tensors | None, cfg: JudgeConfig = JudgeConfig(),
                device: str | torch.device = "cpu",
                log: StageLog | None = None) -> tuple[JudgeEncoder, str]:
    """:func:`train_judge` cached in ``store`` under the banks' content, the clean data's key
    and ``cfg``. ``data.x`` (N, C, H, W): clean training images, never a model's output.
    Returns (encoder in eval mode, cache key)."""
    dev = torch.device(device)

    def compute(work: Path) -> JudgeEncoder:
        return train_judge(banks, shape=shape, data=None if data is None else data.x,
                           cfg=cfg, device=dev)

    def save(enc: JudgeEncoder, d: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()},
                  str(d / "judge.safetensors"))
        (d / "judge.json").write_text(json.dumps(
            {"in_channels": shape[0], "num_classes": len(enc.names), "width": cfg.width,
             "embed_dim": cfg.embed_dim, "scale": cfg.scale, "names": enc.names}, indent=1))

    def load(d: Path) -> JudgeEncoder:
        meta = json.loads((d / "judge.json").read_text())
        enc = JudgeEncoder(in_channels=meta["in_channels"], num_classes=meta["num_classes"],
                           width=meta["width"], embed_dim=meta["embed_dim"],
                           scale=meta["scale"])
        enc.load_state_dict(load_file(str(d / "judge.safetensors")))
        enc.names = list(meta["names"])
        return enc.to(dev).eval()  # safe: nn.Module.eval (mode switch)

    params = {"banks": bank_digests(banks), "shape": list(shape), "cfg": cfg,
              "device": dev.type}
    return store.run("judge", params, inputs=() if data is None else (data.key,),
                     compute=compute, save=save, load=load, log=log)


@dataclass(frozen=True)
class Answer:
    """The judge's answer: the chosen option's index and every option's similarity (K,);
    ``abstained``: the images showed no trigger to the judge, and the choice is a guess."""

    choice: int
    similarities: torch.Tensor
    abstained: bool = False


def _device(enc: nn.Module) -> torch.device:
    return next(enc.parameters()).device


def guess(images: torch.Tensor, k: int) -> int:
    """A choice among ``k`` options that depends on the images' bytes only (sha256): a guess
    that is the same for the same images and, over different images, uniform and unrelated to
    which option is true."""
    digest = hashlib.sha256(images.detach().float().cpu().contiguous().numpy().tobytes())
    return int(digest.hexdigest(), 16) % k


def ask(encoder: JudgeEncoder, *, images: torch.Tensor, options: Sequence[Trigger],
        shape: tuple[int, int, int]) -> Answer:
    """Which option do ``images`` (n, C, H, W) in [0,1] (a tool's output) show?

    similarity_k = mean over the n images of cos(embed(image), embed(options[k].image(shape)));
    the answer is the most similar option (the first on a tie). When the encoder's classifier,
    its softmax averaged over the images, puts the background class above every trigger it was
    trained on (they show no trigger it knows), the judge abstains: the answer is
    :func:`guess` and the similarities are all zero but the guess's, 1e-6 (so an argmax over
    them, or a combination of several answers, treats it as the guess it is). A judge that
    picked the most similar option on images that show nothing would favour whichever trigger
    sits nearest its background, and every tool that shows nothing would be "right" on that
    trigger's trojans.
    The encoder's mode is kept.

    Example:
        >>> ask(enc, images=x, options=bank, shape=(1, 28, 28)).choice
        5
    """
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(shape) or len(images) == 0:
        raise ValueError(f"images must be (n, {', '.join(map(str, shape))}) with n >= 1, got "
                         f"{tuple(images.shape)}")
    if not options:
        raise ValueError("ask needs at least one option")
    dev = _device(encoder)
    opts = torch.stack([o.image(shape) for o in options])  # (K, C, H, W)
    x = images.detach().float().to(dev)
    with eval_mode(encoder), torch.no_grad():
        z = encoder.embed(x)  # (n, D)
        probs = torch.softmax(encoder.scale * z @ encoder.centres().T, 1).mean(0)  # (K'+1,)
        if int(probs.argmax()) == len(probs) - 1:  # the background class: no option embedded
            choice = guess(images, len(options))
            flat = torch.zeros(len(options))
            flat[choice] = 1e-6
            return Answer(choice=choice, similarities=flat, abstained=True)
        p = encoder.embed(opts.to(dev))  # (K, D)
        sim = (z @ p.T).mean(0)  # (K,)
    return Answer(choice=int(sim.argmax()), similarities=sim.cpu())
