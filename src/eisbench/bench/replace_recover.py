"""Challenge 1 without the hint (part of :func:`eisbench.bench.replace_parts.challenge_1`).

The program search finds challenge 1's rule when the clue image (training image 6) is among
its candidate templates, the first ``n_templates`` training images. Here the candidates come
from the network instead (:func:`eisbench.replace.recover.recover`): the recovered image and
the ``c1_recover_k`` images of the WHOLE training set nearest to the network's band probe; no
first-K images (``n_data=0``). Three cases per network seed:

- ``recovered``: the challenge's network (t = training image 6);
- ``clue_train``: a network trained on the same kind of rule whose template is a training
  image drawn at random past the first ``n_templates`` (:func:`~eisbench.replace.challenge1
  .draw_clue`, seeded by the network seed);
- ``clue_test``: a network trained on the rule whose template is a test image drawn at random
  (not a training image at all).

Each case records the chosen program's agreement with its network (validation-chosen size,
test set), its accuracy on the true rule's labels, the templates it uses and where the clue
ranks among the nearest training images (``None``: not among them or not a training image).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from eisbench.core.progress import say
from eisbench.replace import challenge1
from eisbench.replace.fidelity import choose, sweep
from eisbench.replace.program import Program
from eisbench.replace.recover import recover

if TYPE_CHECKING:
    from eisbench.bench.replace import ReplaceBenchConfig
    from eisbench.bench.replace_parts import Challenge1Data, Setting

CASES = ("recovered", "clue_train", "clue_test")


def recovered_program(st: Setting, cfg: ReplaceBenchConfig, c: Challenge1Data,
                      net: nn.Module, rule: challenge1.Rule, seed: int,
                      clue: int | None) -> dict[str, Any]:
    """Recover candidates from ``net`` on the fit set (pool: every training image), sweep the
    program over them alone and score the chosen size; ``clue``: the training index of the
    rule's template (None if it is not a training image)."""
    fit, val = c.train[:cfg.n_fit], c.train[-cfg.n_val:]
    rec = recover(net, fit, pool=c.train, k=cfg.c1_recover_k, device=st.device)
    cands = rec.candidates(c.train)
    kept: dict[str, list[Any]] = {}
    pts = sweep(net, fit=fit, val=val, test=c.test, distillers=["program"],
                grids={"program": cfg.program_terms},
                hyper={"program": {"n_data": 0, "extra": cands}}, generator_seed=seed,
                device=st.device, keep=kept)
    chosen = choose(pts, tolerance=cfg.tolerance)["program"]
    prog = kept["program"][pts.index(chosen)]
    assert isinstance(prog, Program)
    near = rec.nearest.tolist()
    return {"point": chosen.to_dict(), "rule": prog.describe(),
            "found": [n for n, _ in prog.used_templates()],
            "truth_acc": float((prog.predict(c.test) == rule.labels(c.test)).float().mean()),
            "true_rule": rule.describe(), "clue": rule.name,
            "clue_rank": near.index(clue) if clue in near else None,
            "nearest": near[:5], "nearest_corr": [round(float(v), 4)
                                                  for v in rec.nearest_corr[:5]],
            "probe_agreement": rec.probe_agreement, "template_corr": rec.template_corr,
            "template": rec.template, "true_template": rule.template}


def clue_case(st: Setting, cfg: ReplaceBenchConfig, c: Challenge1Data, seed: int,
              source: str) -> dict[str, Any]:
    """Train the challenge network (cached) on the rule of a clue drawn from ``source``
    (``train``: past the first ``n_templates``; ``test``) and recover it without the hint."""
    n = len(c.train) if source == "train" else len(c.test)
    index = challenge1.draw_clue(seed, n=n, skip=cfg.n_templates if source == "train" else 0)
    rule = challenge1.clue_rule(c.train, c.test, source=source, index=index)
    say(f"challenge 1 without the hint: seed {seed}, clue {rule.name}")
    c1cfg = challenge1.Challenge1Config(epochs=cfg.c1_epochs, batch_size=cfg.c1_batch_size,
                                        lr=cfg.c1_lr, n_train=cfg.c1_n_train)
    net, _, _ = challenge1.challenge1_train_stage(
        st.store, x_train=c.train, data_key=st.key, cfg=c1cfg, seed=seed, device=st.device,
        log=st.log, rule=rule)
    out = recovered_program(st, cfg, c, net, rule, seed,
                            index if source == "train" else None)
    out["network_acc"] = challenge1.network_accuracy(net, c.test, rule, device=st.device)
    return out


def run_cases(st: Setting, cfg: ReplaceBenchConfig, c: Challenge1Data, seed: int,
              net: nn.Module, images: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Every case for one network seed (``net``: the challenge's own network; the clue cases
    of ``cfg.c1_clues``): one record per case; for the first seed the recovered and true
    templates go to ``images``."""
    cases = {"recovered": recovered_program(st, cfg, c, net, c.rule, seed,
                                            challenge1.TEMPLATE_INDEX)}
    for source in cfg.c1_clues:
        cases[f"clue_{source}"] = clue_case(st, cfg, c, seed, source)
    for name, rec in cases.items():
        found, true = rec.pop("template"), rec.pop("true_template")
        if seed == cfg.seeds[0]:
            images[f"c1/nohint/{name}/recovered"] = found.clone().contiguous()
            images[f"c1/nohint/{name}/true"] = true.clone().contiguous()
    return cases
