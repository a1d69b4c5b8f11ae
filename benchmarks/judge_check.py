"""The trojan benchmark's two judges, checked on questions whose answer is known: the learned
encoder (trained as the benchmark trains it, cached in ``$EISBENCH_HOME``) and the template
matcher (normalised cross-correlation, nothing learned).

Per judge: true-trigger accuracy on fresh views of the training distribution, the noise
uniformity test, the trigger's own image, and true-trigger accuracy on each held-out view
family (transforms outside the training ranges: :mod:`eisbench.trojans.views_held_out`).
Prints one table with both judges side by side and whether each meets its targets.

    python benchmarks/judge_check.py --dataset mnist [--trials 10] [--steps 2000]
"""

from __future__ import annotations

import argparse
import time


def main() -> int:

    from eisbench import data as datasets
    from eisbench.bench.trojan_judges import check_judge, judge_scorers
    from eisbench.core.paths import cache_dir
    from eisbench.runs.stages import Tensors
    from eisbench.runs.store import Store
    from eisbench.trojans.bank import trigger_bank
    from eisbench.trojans.judge import JudgeConfig, judge_stage
    from eisbench.trojans.judge_checks import scorer_answer
    from eisbench.trojans.stamp import TRIGGER_KINDS

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--trials", type=int, default=10, help="questions per trigger and check")
    p.add_argument("--steps", type=int, default=2000, help="judge training steps")
    a = p.parse_args()
    ds = datasets.load(a.dataset)
    key = f"{ds.name}:{ds.sha256}"
    banks = {k: trigger_bank(k, dataset=a.dataset, shape=ds.shape) for k in TRIGGER_KINDS}
    store = Store(cache_dir())
    t0 = time.perf_counter()
    enc, _ = judge_stage(store, banks=banks, shape=ds.shape,
                         data=Tensors(ds.x_train, ds.y_train, f"{key}:train:{len(ds.x_train)}"),
                         cfg=JudgeConfig(steps=a.steps))
    t_train = time.perf_counter() - t0
    sc = judge_scorers(enc, shape=ds.shape)
    judges = {"judge (CNN)": scorer_answer(sc["cnn"]), "second (NCC)": scorer_answer(sc["ncc"])}
    reps, secs = {}, {}
    for name, answer in judges.items():
        t = time.perf_counter()
        reps[name] = check_judge(answer, banks=banks, shape=ds.shape, n_trials=a.trials,
                                 data=ds.x_test[-2000:])
        secs[name] = time.perf_counter() - t

    def acc(r: dict) -> str:
        return f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

    def noise(r: dict, group: str) -> str:
        per = [v for k, v in r["noise"]["uniformity"]["per_kind"].items()
               if k.endswith(f"({group} noise)")]
        return (f"{min(v['p'] for v in per):.2g} / "
                f"{max(v['largest_share'] for v in per):.3f}")

    names = list(reps)
    print(f"# {a.dataset}: {sum(len(b) for b in banks.values())} triggers, {a.trials} questions"
          f" per trigger and check, 10 images per question")
    print(f"judge training: {t_train:.0f} s ({'cached' if t_train < 5 else 'trained'})")
    print("| check | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    rows = [("true-trigger views (target >= 0.95)", lambda r: acc(r["true_trigger"])),
            ("own image (must be 1)", lambda r: acc(r["exact"])),
            ("noise like training's (uniform, Gaussian): smallest chi-square p / largest "
             "share of one option (uniform: p >= bar, share near 1/8)",
             lambda r: noise(r, "seen")),
            ("noise never seen (smooth, sparse): the same", lambda r: noise(r, "unseen")),
            ("noise: the bar (0.01 / tests)",
             lambda r: f"{r['noise']['uniformity']['bar']:.4f}")]
    for fam in reps[names[0]]["held_out"]["families"]:
        rows.append((f"held-out: {fam}",
                     lambda r, f=fam: acc(r["held_out"]["families"][f])))  # type: ignore[misc]
    rows.append(("held-out pooled (target >= 0.80)", lambda r: acc(r["held_out"]["overall"])))
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(reps[n]) for n in names) + " |")
    for n in names:
        r = reps[n]
        ok = (r["true_trigger"]["meets_target"] and r["noise"]["uniformity"]["uniform"]
              and r["held_out"]["meets_target"])
        print(f"{n}: {'passes' if ok else 'FAILS'} its validation "
              f"(in-distribution {'met' if r['true_trigger']['meets_target'] else 'missed'}, "
              f"noise {'uniform' if r['noise']['uniformity']['uniform'] else 'BIASED'}, "
              f"held-out {'met' if r['held_out']['meets_target'] else 'missed'}); "
              f"checks took {secs[n]:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
