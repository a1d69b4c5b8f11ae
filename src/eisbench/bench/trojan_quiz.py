"""The trojan benchmark's questions: where the true trigger sits among its kind's options, the
reference rows (noise, fresh views of the trigger) and the HTML quiz for human raters."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from eisbench.trojans.quiz import Question, quiz_html
from eisbench.trojans.stamp import Trigger, Trojan
from eisbench.trojans.views import ViewConfig, render

Banks = dict[str, list[Trigger]]  # trigger kind -> its 8 options


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
    """The judge's questions (first seed, every tool x trojan but the failed cells) as an
    HTML quiz for human raters, options shuffled per question; the answers go to a separate
    key file."""
    gen = torch.Generator().manual_seed(0)
    questions = []
    for i, trojan in enumerate(trojans):
        bank = banks[trojan.trigger.kind]
        for tool in tools:
            perm = torch.randperm(len(bank), generator=gen).tolist()
            if f"{trojan.name}/{tool}" not in shown:  # a failed cell: no images to ask about
                continue
            questions.append(Question(qid=f"{trojan.name}/{tool}",
                                      images=shown[f"{trojan.name}/{tool}"],
                                      options=[bank[j] for j in perm],
                                      answer=perm.index(answers[i])))
    return quiz_html(questions, out)
