"""The judge's 8-way questions as an HTML quiz for human raters.

The page shows, per question, the tool's images and the option images with one radio button
each (labelled A, B, ...), and a button that downloads the rater's choices as JSON. The
answers are never in the page: they go to a separate key file, so the page can be handed to
raters as is.

Example:
    >>> q = Question(qid="mnist-patch0/snafue", images=imgs, options=bank, answer=0)
    >>> page, key = quiz_html([q], Path("quiz.html"))  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eisbench.core.paths import atomic_write_bytes
from eisbench.trojans.stamp import Trigger


@dataclass(frozen=True)
class Question:
    """One multiple choice: tool images (n, C, H, W) in [0,1], the options (triggers, drawn
    with ``Trigger.image`` at the images' shape) and the index of the true one."""

    qid: str
    images: torch.Tensor
    options: Sequence[Trigger]
    answer: int


def png_bytes(img: torch.Tensor) -> bytes:
    """An 8-bit PNG of img (C, H, W) in [0,1]: grey for C=1, RGB for C=3, else channel mean."""
    if img.dim() != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(img.shape)}")
    x = img.detach().float().cpu().clamp(0, 1)
    if x.shape[0] not in (1, 3):
        x = x.mean(0, keepdim=True)
    c, h, w = x.shape
    a = (x * 255).round().to(torch.uint8).permute(1, 2, 0).reshape(h, w * c).numpy()  # (H, W*C)
    raw = b"".join(b"\x00" + row.tobytes() for row in a)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _img(img: torch.Tensor, px: int) -> str:
    data = base64.b64encode(png_bytes(img)).decode()
    return (f'<img src="data:image/png;base64,{data}" width="{px}" height="{px}" '
            'style="image-rendering:pixelated">')


_SCRIPT = """
function answers() {
  const out = {};
  document.querySelectorAll('fieldset').forEach(f => {
    const c = f.querySelector('input:checked');
    out[f.dataset.qid] = c ? Number(c.value) : null;
  });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([JSON.stringify(out, null, 1)],
                                        {type: 'application/json'}));
  a.download = 'ratings.json';
  a.click();
}
"""


def quiz_html(questions: Sequence[Question], out: str | Path, *,
              px: int = 84) -> tuple[Path, Path]:
    """Write the quiz page ``out`` and its answer key ``out`` with suffix ``.key.json``
    ({qid: index of the true option}). Images are shown ``px`` pixels wide, unsmoothed.
    Returns (page path, key path)."""
    out = Path(out)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Which trigger?</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "fieldset{margin:1em 0}label{display:inline-block;text-align:center;margin:4px}"
             ".tool img{margin:2px}</style>",
             f"<script>{_SCRIPT}</script></head><body>",
             "<h1>Which trigger do these images show?</h1>",
             "<p>For each question, look at the images an interpretability tool produced and "
             "pick the option they most resemble. Then press the button at the bottom and "
             "send the downloaded file back.</p>"]
    key: dict[str, int] = {}
    for qi, q in enumerate(questions):
        if not 0 <= q.answer < len(q.options) or len(q.options) > len(letters):
            raise ValueError(f"question {q.qid!r}: answer {q.answer} not among "
                             f"{len(q.options)} options")
        if q.qid in key:
            raise ValueError(f"duplicate question id {q.qid!r}")
        key[q.qid] = int(q.answer)
        shape = tuple(int(s) for s in q.images.shape[1:])
        parts.append(f"<fieldset data-qid='{html.escape(q.qid, quote=True)}'>"
                     f"<legend>Question {qi + 1}</legend><div class='tool'>")
        parts += [_img(im, px) for im in q.images]
        parts.append("</div><div>")
        for k, opt in enumerate(q.options):
            img = opt.image(shape)  # type: ignore[arg-type]
            parts.append(f"<label>{_img(img, px)}<br><input type='radio' name='q{qi}' "
                         f"value='{k}'> {letters[k]}</label>")
        parts.append("</div></fieldset>")
    parts.append("<button onclick='answers()'>Download my answers</button></body></html>")
    atomic_write_bytes(out, "\n".join(parts).encode())
    key_path = out.with_suffix(".key.json")
    atomic_write_bytes(key_path, json.dumps(key, indent=1, sort_keys=True).encode())
    return out, key_path
