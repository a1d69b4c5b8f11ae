"""Targeted latent adversarial training (Sheshadri et al. 2024, "Targeted Latent Adversarial
Training Improves Robustness to Persistent Harmful Behaviors in LLMs"): the latent adversary
pushes toward the bad behaviour, not just away from the good one, and the model is trained to
move away from that behaviour under the perturbation while a retain loss keeps its clean skill.

For a trojan the bad behaviour is the target label t. On a batch x (B, C, H, W), y (B,), with
m the examples not of class t (the images a trojan can send to t), p_f(k | x) the softmax
and f_d the model with the adversary's latent perturbations d added
(:func:`eisbench.edit.lat.latent_pgd`, the same bounds, steps and step rule as untargeted LAT):

- the adversary *minimises* ``a_toward * sum_m CE(f_d(x), t) + a_away * sum_m A(f_d(x), y)``,
  toward the target and away from the true label;
- the model minimises ``d_toward * mean_m CE(f_d(x), y) + d_away * mean_m A(f_d(x), t)
  + d_retain * mean CE(f(x), y)`` (the last on the clean batch, no adversary);

where ``A(z, k) = -log(1 - p(k | z))``, set to 0 where ``log p(k | z) < floor`` (-5: the
example is already far from k), HarmBench's ``log_1_minus_p_loss`` that the reference uses
for its away losses. The weights are the reference's jailbreak-robustness run
(github.com/aengusl/latent-adversarial-training, ``notebooks/jailbreaks.ipynb``:
``adv_loss_coefs = {"toward": 0.5, "away": 0.5}``, ``def_loss_coefs = {"sft": 1.5,
"toward": 0.5, "away": 0.5}``), normalised to sum 1 as its ``lat_methods.py`` does
(``normalize_dict``): adversary 0.5 / 0.5, model 0.2 / 0.2 / 0.6. Differences from the
reference: its adversary is AdamW (lr 0.05, 16 steps) on an L2 ball per token; here it is
LAT's normalised-gradient PGD with LAT's bound and steps, so the two LAT rows of the edit bench
differ only in their objectives. Its retain ("sft") batch is separate benign data; here it is
the same clean defender batch.

Threat model (the edit bench's): the defender knows the trojan's target class, as every
tool of the bench is given it, but neither its source class nor its trigger; so the adversary
pushes every defender image not of class t toward t (a class-specific trojan's source class
is among them), and class t's own images take only the retain loss.

The method is the training loop's ``"latent-at-targeted"`` (:func:`targeted_adversary`,
:func:`targeted_lat_loss`, options in :class:`TargetedLatTrainConfig`);
:func:`lat_targeted_finetune` runs it with an edit's fine-tuning budget.

Example:
    >>> tlat = TargetedLatConfig(lat=LatConfig(bounds=(LatentBound("body.1", eps=0.5),)))
    >>> fixed = lat_targeted_finetune(net, x_def, y_def, target=3, tlat=tlat, seed=0)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eisbench.edit.lat import DEFAULT_LAT, LatConfig, Objective, latent_pgd
from eisbench.edit.layers import add_to_outputs
from eisbench.edit.unlearn import DEFAULT_FT, FinetuneConfig, finetune_loop
from eisbench.training import Batch, TrainConfig, register_method

AWAY_FLOOR = -5.0  # HarmBench's log_1_minus_p_loss threshold, as in the reference


@dataclass(frozen=True)
class TargetedLatConfig:
    """The targeted latent adversary (``lat``: bounds, steps, step rule; its ``clean_weight``
    is unused) and the weights of the adversary's and the model's losses (normalised to sum 1
    within each; see the module docstring)."""

    lat: LatConfig = DEFAULT_LAT
    adv_toward: float = 0.5
    adv_away: float = 0.5
    def_toward: float = 0.5
    def_away: float = 0.5
    def_retain: float = 1.5
    away_floor: float = AWAY_FLOOR

    def __post_init__(self) -> None:
        adv, dfn = (self.adv_toward, self.adv_away), (self.def_toward, self.def_away,
                                                      self.def_retain)
        for w in (*adv, *dfn):
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"targeted LAT weights must be finite and >= 0, got {w}")
        if sum(adv) == 0 or sum(dfn) == 0:
            raise ValueError("the adversary's and the model's weights must not all be 0")
        if not math.isfinite(self.away_floor):
            raise ValueError(f"away_floor must be finite, got {self.away_floor}")

    def adversary_weights(self) -> tuple[float, float]:
        """(toward, away) of the adversary, summing to 1."""
        s = self.adv_toward + self.adv_away
        return self.adv_toward / s, self.adv_away / s

    def model_weights(self) -> tuple[float, float, float]:
        """(toward, away, retain) of the model's loss, summing to 1."""
        s = self.def_toward + self.def_away + self.def_retain
        return self.def_toward / s, self.def_away / s, self.def_retain / s


DEFAULT_TLAT = TargetedLatConfig()


def away_loss(logits: torch.Tensor, labels: torch.Tensor, *,
              floor: float = AWAY_FLOOR) -> torch.Tensor:
    """Per example (B,): ``-log(1 - p(labels | logits))`` for logits (B, K), labels (B,),
    computed stably as ``logsumexp(all) - logsumexp(all but the label)``; 0 where
    ``log p(label) < floor``."""
    lse = torch.logsumexp(logits, dim=1)  # (B,)
    log_p = logits.gather(1, labels[:, None])[:, 0] - lse  # (B,)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    out = lse - torch.logsumexp(others, dim=1)  # (B,): -log(1 - p)
    return torch.where(log_p < floor, torch.zeros_like(out), out)


def _target_of(cfg: TrainConfig) -> tuple[TargetedLatConfig, int]:
    """The options and target class of a run (``cfg.tlat``, ``cfg.target``)."""
    tlat = getattr(cfg, "tlat", DEFAULT_TLAT)
    target = getattr(cfg, "target", None)
    if not isinstance(tlat, TargetedLatConfig):
        raise TypeError(f"latent-at-targeted needs a TargetedLatConfig as cfg.tlat, got "
                        f"{type(tlat).__name__}")
    if not isinstance(target, int) or target < 0:
        raise ValueError("latent-at-targeted needs the target class (cfg.target, an int >= 0): "
                         "use TargetedLatTrainConfig(target=...)")
    return tlat, target


def toward_objective(target: int, tlat: TargetedLatConfig) -> Objective:
    """The adversary's objective to *ascend*: minus its toward and away losses, summed over
    the examples of logits (B, K), y (B,) whose label is not ``target``."""
    w_toward, w_away = tlat.adversary_weights()

    def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = y != target  # (B,)
        z, t = logits[m], torch.full_like(y[m], target)
        toward = F.cross_entropy(z, t, reduction="sum")
        away = away_loss(z, y[m], floor=tlat.away_floor).sum()
        return -(w_toward * toward + w_away * away)

    return objective


def targeted_latent_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, target: int,
                        tlat: TargetedLatConfig, generator: torch.Generator
                        ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The targeted adversary on x (B, C, H, W), y (B,): latent perturbations ``{layer: d
    (B, ...)}`` within ``tlat.lat``'s bounds that push the examples not of class ``target``
    toward it (:func:`~eisbench.edit.lat.latent_pgd` with :func:`toward_objective`)."""
    return latent_pgd(model, x, y, cfg=tlat.lat, generator=generator,
                      objective=toward_objective(target, tlat))


@dataclass(frozen=True)
class TargetedLatTrainConfig(TrainConfig):
    """The config of ``"latent-at-targeted"``: ``TrainConfig`` plus the adversary and the
    target class (None raises: the method cannot run without it)."""

    method: str = "latent-at-targeted"
    tlat: TargetedLatConfig = DEFAULT_TLAT
    target: int | None = None


def targeted_adversary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       cfg: TrainConfig, generator: torch.Generator) -> Batch:
    """The method's batch: the clean x (B, C, H, W) and :func:`targeted_latent_pgd`'s
    perturbations of the hidden layers."""
    tlat, target = _target_of(cfg)
    deltas, _ = targeted_latent_pgd(model, x, y, target=target, tlat=tlat, generator=generator)
    return Batch(x, hidden=deltas)


def targeted_lat_loss(model: nn.Module, batch: Batch, y: torch.Tensor, *,
                      cfg: TrainConfig) -> torch.Tensor:
    """The model's loss (module docstring): toward the true label and away from the target
    under ``batch.hidden``, on the examples not of the target class, plus the clean retain
    loss on the whole batch."""
    tlat, target = _target_of(cfg)
    w_toward, w_away, w_retain = tlat.model_weights()
    m = y != target  # (B,)
    with add_to_outputs(model, batch.hidden):
        z = model(batch.x)[m]  # (M, K)
    retain = F.cross_entropy(model(batch.x), y)
    if not bool(m.any()):
        return w_retain * retain
    toward = F.cross_entropy(z, y[m])
    away = away_loss(z, torch.full_like(y[m], target), floor=tlat.away_floor).mean()
    return w_toward * toward + w_away * away + w_retain * retain


register_method("latent-at-targeted", perturb=targeted_adversary, loss=targeted_lat_loss,
                perturbs="hidden", guarded=False)


def lat_targeted_finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, target: int,
                          tlat: TargetedLatConfig = DEFAULT_TLAT,
                          cfg: FinetuneConfig = DEFAULT_FT, seed: int = 0,
                          device: str | torch.device = "cpu") -> nn.Module:
    """A copy of ``model`` fine-tuned with targeted LAT toward class ``target`` on clean x
    (N, C, H, W), y (N,) with the budget ``cfg`` (LAT's; ``stamp_frac`` unused). ``model``
    is not changed; the copy comes back in its mode."""
    edited = copy.deepcopy(model)
    tcfg = TargetedLatTrainConfig(batch_size=cfg.batch_size, lr=cfg.lr,
                                  weight_decay=cfg.weight_decay, schedule="constant",
                                  tlat=tlat, target=int(target))
    return finetune_loop(edited, x, y, cfg=tcfg, steps=cfg.steps, seed=seed, device=device,
                         desc="targeted LAT fine-tune")
