"""The ``eisbench bench replace`` report (and the ``eisbench replace`` one): verdicts, the
recovered rule of challenge 1 in one line, the template found beside the true one, Pareto
plots of agreement against size (test and out-of-distribution), challenge 2's label grids
(truth, network, replacement), its replacements on the true labels beside the network, and
every replacement's numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from safetensors.torch import load_file

from eisbench.core.paths import atomic_write_bytes
from eisbench.report.html import (
    esc,
    figure,
    footer,
    header,
    legend_outside,
    page,
    table,
    verdict_table,
)
from eisbench.runs.claims import n_label
from eisbench.runs.record import Record

COLOURS = {"sparse-linear": "#4c72b0", "tree": "#55a868", "templates": "#c44e52",
           "program": "#8172b2"}


def _ci(m: Mapping[str, Any]) -> str:
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] ({n_label(m)})"


def _front(points: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    ok = [p for p in points if p.get(key) is not None]
    front = [p for p in ok if not any(q["size"] <= p["size"] and q[key] >= p[key]
                                      and (q["size"] < p["size"] or q[key] > p[key])
                                      for q in ok)]
    return sorted(front, key=lambda p: p["size"])


def pareto_figure(points: Sequence[Mapping[str, Any]], *, title: str,
                  units: Mapping[str, str]) -> str:
    """Agreement (test: filled, OOD: hollow) against size per distiller, log size axis, with
    the Pareto front of the test agreement over all distillers."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    has_ood = any(p.get("agree_ood") is not None for p in points)
    for name in dict.fromkeys(p["distiller"] for p in points):
        mine = sorted((p for p in points if p["distiller"] == name), key=lambda p: p["size"])
        c = COLOURS.get(name, "#333333")
        xs = [max(p["size"], 1) for p in mine]
        ax.plot(xs, [p["agree_test"] for p in mine], "o-", color=c, ms=4, lw=1,
                label=f"{name} ({units.get(name, 'size')})")
        ood = [p["agree_ood"] for p in mine]
        if all(v is not None for v in ood):
            ax.plot(xs, ood, "o--", color=c, ms=4, lw=0.8, mfc="none")
    front = _front(points, "agree_test")
    ax.step([max(p["size"], 1) for p in front], [p["agree_test"] for p in front], where="post",
            color="black", lw=1.5, alpha=0.5, marker="s", ms=8, mfc="none",
            label="Pareto front (test)")
    ax.set_xscale("log")
    ax.set_xlabel("replacement size (each family's unit; log scale; 0 drawn at 1)")
    ax.set_ylabel("agreement with the network")
    ax.set_title(title + (" (filled: test, hollow: out of distribution)" if has_ood else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return figure(fig)


def points_table(points: Sequence[Mapping[str, Any]]) -> str:
    rows = [[p["distiller"], ", ".join(f"{k}={v}" for k, v in p["hyper"].items()), p["size"],
             f"{p['agree_fit']:.3f}", f"{p['agree_val']:.3f}", f"{p['agree_test']:.3f}",
             "-" if p["agree_ood"] is None else f"{p['agree_ood']:.3f}",
             f"{p['seconds']:.1f}", p["description"]] for p in points]
    return table(["distiller", "hyper", "size", "fit", "val", "test", "OOD", "s",
                  "replacement"], rows)


def _templates_figure(imgs: dict[str, Any]) -> str:
    found = sorted(k for k in imgs if k.startswith("c1/found/"))
    panels = [("true template: training image 6", imgs["c1/true_template"])] + [
        ("found: " + k.split(":", 1)[1], imgs[k]) for k in found]
    return _image_row(panels, width=2.2, height=2.4, fontsize=8)


def _image_row(panels: list[tuple[str, Any]], *, width: float, height: float,
               fontsize: int) -> str:
    """One row of grey images (1, H, W) in [0,1], each titled, as a figure."""
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (name, img) in zip(axes, panels, strict=True):
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=fontsize)
        ax.axis("off")
    return figure(fig)


def _grids_figure(imgs: dict[str, Any], title: str) -> str:
    keys = [k for k in ("c2/truth", "c2/network", "c2/replacement") if k in imgs]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.0 * (len(keys) + 1), 3.2))
    for ax, k in zip(axes, keys, strict=False):
        ax.imshow(imgs[k].numpy(), cmap="viridis", vmin=0, vmax=1, origin="lower")
        ax.set_title(k.split("/")[1], fontsize=8)
        ax.set_xlabel("b", fontsize=8)
    axes[0].set_ylabel("a", fontsize=8)
    diff = (imgs["c2/network"] != imgs["c2/replacement"]).float()
    mask = imgs["c2/train_mask"].float()
    axes[-1].imshow(diff.numpy() * (2 - mask.numpy()), cmap="magma", vmin=0, vmax=2,
                    origin="lower")
    axes[-1].set_title("network != replacement\n(bright: held-out pair)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return figure(fig)


def _chosen_table(chosen: Sequence[Mapping[str, Mapping[str, Any]]]) -> str:
    rows = []
    for s, c in enumerate(chosen):
        for name, p in c.items():
            rows.append([s, name, p["size"], f"{p['agree_val']:.3f}", f"{p['agree_test']:.3f}",
                         "-" if p["agree_ood"] is None else f"{p['agree_ood']:.3f}",
                         p["description"]])
    return table(["seed #", "distiller", "size", "val", "test", "OOD", "replacement"], rows)


def _challenge2_text(c2: Mapping[str, Any], m: Mapping[str, Any]) -> str:
    """Challenge 2's labelling, network, published network and the distillers against the
    true labels beside the network."""
    pub, lab = c2["published_network"], c2["labels"]
    rows = [[name, f"{t:.4f}", f"{c2['truth_val'][0][name]:.4f}"]
            for name, t in c2["truth_acc"][0].items()]
    rows.append(["the transformer itself", f"{c2['network_acc'][0]:.4f}", "-"])
    d = m["replace/challenge2/best_distiller_minus_network"]
    return (f"<p>Labelling: {esc(lab['source'])}; {lab['ones']:.1%} ones, sha256 "
            f"<code>{esc(lab['sha256'])}</code>. Split: {esc(c2['split'])}. Network: "
            f"{esc(c2['network'])}.</p>"
            f"<p>Held-out accuracy of the transformer, per seed: {esc(c2['network_acc'])} "
            f"(training half: {esc(c2['train_acc'])}). The published network: "
            f"{c2['published_acc']} by the challenge's count (every error counted against the "
            f"held-out half), {pub['heldout_acc']:.4f} on the held-out half and "
            f"{pub['train_acc']:.4f} on the training half of this split; agreement of ours "
            f"with it on the held-out half: {esc(c2['published_agreement'])}.</p>"
            f"<p>Does a replacement recover the labelling better than the network? Accuracy "
            f"on the TRUE labels (first seed; held-out half, and the validation pairs that "
            f"choose the distiller): chosen per seed {esc(c2['truth_pick'])}, minus the "
            f"network: {_ci(d)}.</p>"
            + table(["distiller", "held-out (truth)", "validation (truth)"], rows)
            + f"<p>Pixels of the pair images: {esc(c2['pixels'])}. {esc(c2['note'])}.</p>")


def _nohint_html(c1: Mapping[str, Any], m: Mapping[str, Any], imgs: dict[str, Any]) -> str:
    """Challenge 1 without the hint: per case the agreement with the network and the true
    rule, the rule found (first seed) and where the clue ranks among the nearest images,
    beside the first-K figures; the recovered templates beside the true ones."""
    nohint = c1.get("nohint", {})
    if not nohint:
        return ""
    rows = []
    for case, recs in nohint.items():
        net = m.get(f"replace/challenge1/{case}/network_acc")
        rows.append([case, esc(recs[0]["clue"]),
                     _ci(m[f"replace/challenge1/{case}/agreement"]),
                     _ci(m[f"replace/challenge1/{case}/rule_truth_acc"]),
                     "-" if net is None else _ci(net),
                     esc([r["clue_rank"] for r in recs]), f"<code>{esc(recs[0]['rule'])}</code>"])
    for key, name in (("agreement", "first-K candidates, image 6 among them"),
                      ("ablation_agreement", "first-K candidates, image 6 excluded")):
        if f"replace/challenge1/{key}" in m:
            rows.append([name, "training image 6", _ci(m[f"replace/challenge1/{key}"]),
                         "-", "-", "-", "-"])
    html = ("<h3>Without the hint</h3><p>Candidate templates recovered from the network (a "
            "band probe of its labels, an image fitted to the probe from the mean image, and "
            "the training images whose rule best matches the probe, searched over the whole "
            "training set); none of the first training images.</p>"
            + table(["case", "clue (first seed)", "agreement with network",
                     "accuracy on true rule", "network accuracy", "clue rank per seed",
                     "rule (first seed)"], rows))
    panels = [(f"{case}: {kind}", imgs[f"c1/nohint/{case}/{kind}"]) for case in nohint
              for kind in ("true", "recovered") if f"c1/nohint/{case}/{kind}" in imgs]
    if panels:
        html += _image_row(panels, width=1.9, height=2.2, fontsize=7)
    return html


def write_report(rec: Record, out: Path) -> Path:
    d, m = rec["details"], rec["metrics"]
    units = {k: v["unit"] for k, v in d["distillers"].items()}
    imgs_file = out / "replace_images.safetensors"
    imgs: dict[str, Any] = load_file(str(imgs_file)) if imgs_file.exists() else {}
    c1, c2 = d["challenge1"], d["challenge2"]
    body = [header(rec), "<h2>Verdicts</h2>", verdict_table(rec["claims"]),
            "<h2>Metrics</h2>",
            table(["metric", "value [95% CI] (n)"], [[k, _ci(v)] for k, v in m.items()])]
    body += ["<h2>Challenge 1 (EIS VII, recreated)</h2>",
             f"<p>True rule (ours, fixed in code): <code>{esc(c1['true_rule'])}</code>. "
             f"Network accuracy on it: {esc(c1['network_acc'])} (published network: "
             f"{c1['published_acc']}).</p>",
             "<p>Recovered from the network alone (one line per seed):</p><ul>"
             + "".join(f"<li><code>{esc(r)}</code></li>" for r in c1["rules"]) + "</ul>",
             f"<p>The candidate templates are the first images of MNIST's training set in "
             f"order, so training image {c1['template_index']} is among them by construction "
             f"({esc(c1['candidates_include_true_template'])}); the ablation excludes it: "
             + ", ".join(f"<code>{esc(a['description'])}</code> (test agreement "
                         f"{a['agree_test']:.3f})" for a in c1["ablation"]) + ".</p>"]
    if "c1/true_template" in imgs:
        body.append(_templates_figure(imgs))
    body.append(_nohint_html(c1, m, imgs))
    body += [pareto_figure(c1["points"][0], title="Challenge 1 network, first seed",
                           units=units), _chosen_table(c1["chosen"])]
    body += ["<h2>Any model: a 10-class network</h2>",
             f"<p>{esc(d['model']['arch'])}; out-of-distribution images: {esc(d['ood'])}.</p>",
             pareto_figure(d["model"]["points"], title=f"{d['model']['arch']}", units=units),
             _chosen_table([d["model"]["chosen"]])]
    body += ["<h2>Challenge 2 (EIS VII, the challenge's labelling)</h2>",
             _challenge2_text(c2, m)]
    if "c2/truth" in imgs:
        b = c2["best"][0]
        body.append(_grids_figure(imgs, f"first seed; replacement: {b['distiller']} size "
                                        f"{b['size']}"))
    body += [pareto_figure(c2["points"][0], title="Challenge 2 transformer, first seed "
                           "(test = held-out half)", units=units), _chosen_table(c2["chosen"])]
    body += ["<h2>Every replacement (first seed)</h2>", "<h3>Challenge 1</h3>",
             points_table(c1["points"][0]), "<h3>10-class network</h3>",
             points_table(d["model"]["points"]), "<h3>Challenge 2</h3>",
             points_table(c2["points"][0]), footer(rec)]
    path = out / "report.html"
    atomic_write_bytes(path, page("Replace: distillation benchmark", "".join(body)).encode())
    return path


def write_model_report(result: Mapping[str, Any], out: Path) -> Path:
    """The ``eisbench replace`` report of one model: Pareto plot and every replacement."""
    pts = result["points"]
    units = result.get("units", {})
    body = [f"<p>Model: <code>{esc(result['model'])}</code> on {esc(result['dataset'])} "
            f"(fit {result['n_fit']}, validation {result['n_val']}, test {result['n_test']}, "
            f"OOD {result['n_ood']} images).</p>",
            "<h2>Chosen replacements</h2>", _chosen_table([result["chosen"]]),
            pareto_figure(pts, title="agreement against size", units=units),
            "<h2>Every replacement</h2>", points_table(pts)]
    path = out / "report.html"
    atomic_write_bytes(path, page("Replace: distillation of a model", "".join(body)).encode())
    return path
