"""The benchmark registry: ``eisbench bench NAME`` runs one with its quick or full preset and
writes ``record.json`` and ``report.html`` (same contract as an experiment)."""

from __future__ import annotations

from eisbench.experiments.core import Experiment, report_from
from eisbench.registry import Registry
from eisbench.tasks import trojan_bench

BENCHMARKS: Registry[Experiment] = Registry("benchmark")

BENCHMARKS.register("trojans")(Experiment(
    name="trojans",
    summary="trojan rediscovery: 10 tools x 12 trojans judged 8-way, attribution, detection",
    quick=trojan_bench.QUICK, full=trojan_bench.FULL, run=trojan_bench.run_trojan_bench,
    report=report_from("eisbench.report.trojans")))

__all__ = ["BENCHMARKS"]
