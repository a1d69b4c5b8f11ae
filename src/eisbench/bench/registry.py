"""The benchmark registry: ``eisbench bench NAME`` runs one with its quick or full preset and
writes ``record.json`` and ``report.html`` (same contract as an experiment)."""

from __future__ import annotations

from eisbench.bench import edit as edit_bench
from eisbench.bench import replace as replace_bench
from eisbench.bench import trojans as trojan_bench
from eisbench.core.registry import Registry
from eisbench.experiments.core import Experiment, report_from

BENCHMARKS: Registry[Experiment] = Registry("benchmark")

BENCHMARKS.register("trojans")(Experiment(
    name="trojans",
    summary="trojan rediscovery: 10 tools x 12 trojans judged 8-way, attribution, detection",
    quick=trojan_bench.QUICK, full=trojan_bench.FULL, measure=trojan_bench.measure,
    report=report_from("eisbench.report.trojans"), extra={"cifar10": trojan_bench.CIFAR10}))

BENCHMARKS.register("replace")(Experiment(
    name="replace",
    summary="distillation: sparse linear, tree, templates, program search; EIS VII challenges",
    quick=replace_bench.QUICK, full=replace_bench.FULL, measure=replace_bench.measure,
    report=report_from("eisbench.report.replace")))

BENCHMARKS.register("edit")(Experiment(
    name="edit",
    summary="control: tool-guided trojan removal (DER), fine-pruning, LAT, capability ablation",
    quick=edit_bench.QUICK, full=edit_bench.FULL, measure=edit_bench.measure,
    report=report_from("eisbench.report.edit")))

__all__ = ["BENCHMARKS"]
