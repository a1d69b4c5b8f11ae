"""LAT against its real baseline: latent adversarial training (untargeted and targeted) against
input-space adversarial training at a matched clean cost (Casper et al. 2024), and the edited
models' input-space robustness under the standard attack suite with every sanity check.

From the edit bench's ``res[method][trojan][seed]`` (dicts with "asr", "acc", "der"; the
cells of the suite's subset also with "suite_robust_acc" and "suite_failed_checks"):

- ``compare/<lat row>/asr_gain_vs_input_at``: input-AT's ASR after minus the LAT row's (higher:
  LAT removes more), ``clean_vs_input_at`` and ``der_vs_input_at`` (LAT row minus input-AT),
  each paired per trojan (mean over seeds) with a t-interval over trojans;
- ``suite/<robust row>/robust_acc``: the standard suite's robust accuracy over the subset's
  trojans (one seed each), ``suite/<robust row>/pgd_robust_acc`` the same models' accuracy
  under the bench's PGD alone (its own ``n_robust`` images), ``suite/<robust row>/failed_checks``
  the number of failed checks summed over them, and ``suite/<row>/robust_gain`` the paired
  gain over plain fine-tuning.

Claims (:func:`lat_claims`): LAT beats input-AT on ASR at matched clean accuracy (rule in
:func:`matched_verdict`), and each adversarial row is more robust in input space than plain
fine-tuning, inconclusive when any check failed on a model it rests on.

Example:
    >>> asr = {"value": 0.1, "ci95": [0.05, 0.15], "n": 12}
    >>> matched_verdict(asr, {"value": -0.004, "ci95": [-0.01, 0.0], "n": 12}, tol=0.01)
    'reproduced'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eisbench.edit.metrics import fmt, mean_over, metric, paired, verdict
from eisbench.runs.record import Claim, Metric

Rows = Sequence[Sequence[Mapping[str, Any]]]  # per trojan, per seed: one edit's scores
LAT_ROWS = ("lat", "lat-targeted")  # the edit bench's rows compared with its "input-at" row


def _per_trojan(rows: Rows, field: str) -> list[float]:
    return mean_over([[float(r[field]) for r in seeds] for seeds in rows])


def suite_cells(rows: Rows) -> list[tuple[int, Mapping[str, Any]]]:
    """(trojan index, cell) of the cells that carry a standard-suite evaluation (the first
    seed's cell of each trojan in the subset; a failed cell carries none)."""
    out = []
    for i, seeds in enumerate(rows):
        cell = next((r for r in seeds if "suite_robust_acc" in r), None)
        if cell is not None:
            out.append((i, cell))
    return out


def lat_metrics(res: Mapping[str, Rows], *, robust_rows: Sequence[str],
                lat_rows: Sequence[str] = LAT_ROWS, baseline: str = "input-at",
                reference: str = "no-trigger") -> dict[str, Metric]:
    """The comparison's metrics (module docstring) for the rows of ``res`` present."""
    out: dict[str, Metric] = {}
    if baseline in res:
        at = res[baseline]
        for m in (r for r in lat_rows if r in res):
            out[f"compare/{m}/asr_gain_vs_input_at"] = paired(
                _per_trojan(at, "asr"), _per_trojan(res[m], "asr"))
            out[f"compare/{m}/clean_vs_input_at"] = paired(
                _per_trojan(res[m], "acc"), _per_trojan(at, "acc"))
            out[f"compare/{m}/der_vs_input_at"] = paired(
                _per_trojan(res[m], "der"), _per_trojan(at, "der"))
    unit = "trojans' models of the suite's subset, first seed (95% t-interval)"
    ref = dict(suite_cells(res[reference])) if reference in res else {}
    for m in (r for r in robust_rows if r in res):
        cells = suite_cells(res[m])
        if not cells:
            continue
        out[f"suite/{m}/robust_acc"] = metric([c["suite_robust_acc"] for _, c in cells],
                                              unit=unit)
        if all("robust_acc" in c for _, c in cells):  # the same models under PGD alone
            out[f"suite/{m}/pgd_robust_acc"] = metric([c["robust_acc"] for _, c in cells],
                                                      unit=unit)
        failed = float(sum(len(c["suite_failed_checks"]) for _, c in cells))
        out[f"suite/{m}/failed_checks"] = {"value": failed, "ci95": [failed, failed],
                                           "n": len(cells), "higher_is_better": False,
                                           "unit": "failed checks summed over the evaluated "
                                                   "models; a count, no interval"}
        both = [(c, ref[i]) for i, c in cells if i in ref]
        if m != reference and both:
            out[f"suite/{m}/robust_gain"] = paired(
                [c["suite_robust_acc"] for c, _ in both],
                [r["suite_robust_acc"] for _, r in both], unit=unit)
    return out


def matched_verdict(asr_gain: Metric, clean_diff: Metric, *, tol: float) -> str:
    """The pre-registered rule of "LAT beats input-AT at matched clean accuracy", from the
    paired ASR gain (input-AT's ASR minus LAT's) and clean difference (LAT minus input-AT):
    'reproduced' if the gain's CI lies above 0 and LAT's mean clean accuracy is no more than
    ``tol`` below input-AT's (LAT removes more at no more cost); 'not reproduced' if the mean
    gain is <= 0 (or its CI lies below 0) and LAT's mean clean accuracy is no more than ``tol``
    above input-AT's (input-AT removes as much at no more than ``tol`` extra cost); else
    'inconclusive' (the costs are not matched, or the interval straddles 0)."""
    c = clean_diff["value"]
    if verdict(asr_gain) == "reproduced" and c >= -tol:
        return "reproduced"
    if verdict(asr_gain) == "not reproduced" and c <= tol:
        return "not reproduced"
    return "inconclusive"


NAMES = {"lat": "Latent adversarial training", "lat-targeted": "Targeted LAT",
         "input-at": "Input-space adversarial training"}


def lat_claims(metrics: Mapping[str, Metric], *, robust_rows: Sequence[str], tol: float,
               lat_rows: Sequence[str] = LAT_ROWS,
               details: Mapping[str, Any] | None = None) -> list[Claim]:
    """The comparison's claims (module docstring) for the metrics present; ``details``'s
    ``suite_checks`` (row -> failed check names per model) goes into the gated claims."""
    claims: list[Claim] = []
    for m in lat_rows:
        key = f"compare/{m}/asr_gain_vs_input_at"
        if key not in metrics:
            continue
        gain, clean = metrics[key], metrics[f"compare/{m}/clean_vs_input_at"]
        claims.append({
            "claim": f"{NAMES.get(m, m)} removes trojans better than input-space adversarial "
                     "training at matched clean accuracy (Casper et al. 2024)",
            "rule": f"paired per trojan (mean over seeds), 95% t-interval over trojans; "
                    f"'reproduced' if the ASR gain (input-AT minus {m}) has CI above 0 and "
                    f"{m}'s clean accuracy is at most {tol:g} below input-AT's (mean); 'not "
                    f"reproduced' if the mean gain is <= 0 (or its CI below 0) and {m}'s "
                    f"clean accuracy is at most {tol:g} above input-AT's; else inconclusive "
                    "(costs not matched, or the interval straddles 0)",
            "measured": f"ASR gain {fmt(gain)}; clean accuracy difference {fmt(clean)}; DER "
                        f"difference {fmt(metrics[f'compare/{m}/der_vs_input_at'])}",
            "verdict": matched_verdict(gain, clean, tol=tol)})
    for m in robust_rows:
        key = f"suite/{m}/robust_gain"
        if key not in metrics:
            continue
        failed = metrics[f"suite/{m}/failed_checks"]["value"]
        ref_failed = metrics.get("suite/no-trigger/failed_checks", {"value": 0.0})["value"]
        v = verdict(metrics[key])
        checks = ""
        if failed or ref_failed:
            v = "inconclusive"
            names = sorted({n for row in (m, "no-trigger")
                            for model in (details or {}).get("suite_checks", {}).get(row, [])
                            for n in model})
            checks = (f"; INCONCLUSIVE: {int(failed)} failed check(s) on {m}'s models, "
                      f"{int(ref_failed)} on plain fine-tuning's ({', '.join(names)})")
        claims.append({
            "claim": f"{NAMES.get(m, m)} makes the model more robust to input-space Linf "
                     "attacks than plain fine-tuning with the same budget (standard suite, "
                     "every check)",
            "rule": "robust-accuracy difference under the standard suite, paired per trojan of "
                    "the subset: 'reproduced' if its 95% t-interval lies above 0; 'not "
                    "reproduced' if the mean is <= 0 or the CI lies below 0; else "
                    "inconclusive; any failed sanity check on a model it rests on makes it "
                    "inconclusive",
            "measured": f"robust accuracy {metrics[f'suite/{m}/robust_acc']['value']:.3f}; "
                        f"difference {fmt(metrics[key])}{checks}",
            "verdict": v})
    return claims


def suite_check_names(res: Mapping[str, Rows], rows: Sequence[str]) -> dict[str, list[list[str]]]:
    """Per row, the failed checks of each model the suite evaluated (for the record)."""
    return {m: [list(c["suite_failed_checks"]) for _, c in suite_cells(res[m])]
            for m in rows if m in res}
