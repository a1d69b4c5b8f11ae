"""The Python API's verbs that sit above the registries: run an experiment or a benchmark by
name, audit a model, load a model, look a tool up.

:func:`run` and :func:`audit` are what ``eisbench run``/``bench`` and ``eisbench audit`` call:
the command line parses its flags, calls them and prints what they return, a
:class:`RunRecord` (the record of ``record.json``, printed as a short summary).
"""

from __future__ import annotations

import difflib
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from eisbench.core.paths import cache_dir, current_umask, home, output_folder
from eisbench.core.registry import UnknownNameError
from eisbench.runs import presets
from eisbench.runs.claims import n_label
from eisbench.runs.experiment import Experiment
from eisbench.runs.overrides import root_remedy
from eisbench.runs.page_context import page_context
from eisbench.runs.store import Store
from eisbench.tools import TOOLS, Tool

_CLASS = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # package.module:Class


class RunRecord(dict[str, Any]):
    """A run's record (the dict written to ``record.json``: see :mod:`eisbench.runs.record`)
    that prints as a short summary: the run's name, each claim's verdict with what was
    measured, and the first metrics with their 95% CI and n. ``out`` is the run's folder,
    ``report`` its ``report.html``; ``lines``, where given, replace the claims and metrics in
    the summary (the audit's sentences); ``tracked``: each experiment tracker the run was
    logged to (``track=``) -> ``{"run_id", "uri"}``."""

    def __init__(self, rec: Mapping[str, Any], *, out: Path, report: Path,
                 lines: Sequence[str] | None = None) -> None:
        super().__init__(rec)
        self.out, self.report = out, report
        self.lines = None if lines is None else list(lines)
        self.tracked: dict[str, dict[str, str]] = {}

    def summary(self, *, max_metrics: int | None = 6) -> str:
        """The summary; ``max_metrics`` caps the metrics listed (None: all of them)."""
        claims, metrics = self.get("claims", []), self.get("metrics", {})
        counts = {v: sum(c["verdict"] == v for c in claims)
                  for v in dict.fromkeys(c["verdict"] for c in claims)}
        verdicts = ", ".join(f"{k} {v}" for v, k in counts.items())
        out = [f"{self.get('experiment')}: "
               + (f"{len(claims)} claims ({verdicts}), " if claims else "")
               + f"{len(metrics)} metrics, {self.get('wall_seconds', 0.0):.0f} s"]
        failed = int(metrics.get("bench/failed_cells", {}).get("value", 0))
        if failed:  # a degraded benchmark says so on its first line
            out[0] += f"; DEGRADED: {failed} failed cell(s), scored as failures (see the report)"
        if self.lines is not None:
            out += [f"  {line}" for line in self.lines]
        else:
            out += [f"  [{c['verdict']:>14}] {c['claim']}\n                   {c['measured']}"
                    for c in claims]
            out += self._exhibits()
            out += self._metrics(max_metrics)
        out += [f"tracked: {name} run {t['run_id']} in {t['uri']}"
                for name, t in self.tracked.items()]
        return "\n".join([*out, f"record: {self.out / 'record.json'}", f"report: {self.report}"])

    def _exhibits(self) -> list[str]:
        """The evidence suite's verdict table, one line per exhibit."""
        return [f"  exhibit {key} ({ex['title']}): {ex['world']} {ex['counts']}"
                + (f" ({ex['reason']})" if ex.get("reason") else "")
                + (f" INCOMPLETE: {', '.join(ex['incomplete'])} did not finish"
                   if ex.get("incomplete") else "")
                for key, ex in self.get("details", {}).get("exhibits", {}).items()]

    def _metrics(self, max_metrics: int | None) -> list[str]:
        metrics = self.get("metrics", {})
        shown = list(metrics)[:max_metrics]
        lines = [f"  {name}: {m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] "
                 f"({n_label(m, how=False)})" for name, m in ((k, metrics[k]) for k in shown)]
        if len(shown) < len(metrics):
            lines.append(f"  ... {len(metrics) - len(shown)} more metrics in record.json")
        return (["  metrics: value [95% CI] (n)"] if lines else []) + lines

    def __repr__(self) -> str:
        return self.summary()

    __str__ = __repr__


def find(name: str) -> Experiment:
    """The experiment or benchmark registered as ``name``; an unknown name raises
    :class:`~eisbench.core.registry.UnknownNameError` with the closest names of both.

    Example:
        >>> find("goh-linear").name, find("trojans").name
        ('goh-linear', 'trojans')
        >>> find("goh-liner")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        eisbench.core.registry.UnknownNameError: unknown experiment or benchmark 'goh-liner'; did you mean 'goh-linear', ...
    """  # noqa: E501
    from eisbench.bench.registry import BENCHMARKS
    from eisbench.experiments import EXPERIMENTS

    for reg in (EXPERIMENTS, BENCHMARKS):
        if name in reg:
            return reg.get(name)
    names = [*EXPERIMENTS.names(), *BENCHMARKS.names()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UnknownNameError(f"unknown experiment or benchmark {name!r}{hint} (experiments: "
                           f"{', '.join(EXPERIMENTS.names())}; benchmarks: "
                           f"{', '.join(BENCHMARKS.names())})")


def fresh_folder(name: str) -> Path:
    """A new, empty folder ``<home>/runs/<name>-<date>-<time>-<random>``."""
    root = home() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))
    path.chmod(0o777 & ~current_umask())  # a plain mkdir's mode, not mkdtemp's private 0700
    return path


def configure(name: str, preset: str = "quick", *, dataset: str | None = None,
              data_root: str | None = None, seeds: int | Sequence[int] | None = None,
              device: str = "cpu", overrides: Sequence[str] = (), **fields: Any) -> Any:
    """The config :func:`run` would run ``name`` with (same arguments), checked, without
    running anything: what ``eisbench run NAME --dry-run`` prints.

    Example:
        >>> cfg = configure("goh-linear", dataset="digits", seeds=2, overrides=["eps=0.2"])
        >>> cfg.dataset, cfg.seeds, cfg.eps
        ('digits', (0, 1), 0.2)
    """
    return presets.configure(find(name), preset, dataset=dataset, data_root=data_root,
                             seeds=seeds, device=device, overrides=overrides, **fields)


def dry_run(name: str, preset: str = "quick", **given: Any) -> dict[str, Any]:
    """What :func:`run` would run (same arguments), as JSON-able data, running nothing:
    ``{"name", "preset", "config"}``, and for the evidence suite ``"experiments"``, each
    experiment's own resolved config (so a typo in ``overrides`` fails here too).

    Example:
        >>> plan = dry_run("features-vs-bugs", overrides=["experiments=ilyas,wallace"])
        >>> sorted(plan["experiments"]), plan["experiments"]["wallace"]["n_foreign"]
        (['ilyas', 'wallace'], 20000)
    """
    from eisbench.core.config import to_plain
    from eisbench.experiments.suite import EvidenceConfig, check_config

    cfg = configure(name, preset, **given)
    plan: dict[str, Any] = {"name": name, "preset": preset, "config": to_plain(cfg)}
    if isinstance(cfg, EvidenceConfig):
        plan["experiments"] = {exp.name: to_plain(sub) for exp, sub in check_config(cfg)}
    return plan


def run(name: str, preset: str = "quick", *, out: str | Path | None = None,
        store: Store | None = None, dataset: str | None = None, data_root: str | None = None,
        seeds: int | Sequence[int] | None = None, device: str = "cpu",
        overrides: Sequence[str] = (), force: bool = False, track: str | None = None,
        track_uri: str | None = None, executor: str = "serial", address: str | None = None,
        threads: int | None = None, **fields: Any) -> RunRecord:
    """Run the experiment or benchmark ``name`` with its ``preset`` config changed as
    :func:`eisbench.runs.presets.configure` says (``seeds``: a count N for 0..N-1, or the
    seeds; ``fields``: config fields by name; ``overrides``: ``"a.b=value"`` strings), write
    ``record.json`` and ``report.html`` into ``out`` (default: a fresh folder under
    ``$EISBENCH_HOME/runs``) and return the record. ``store``: the stage cache (default: the
    one under ``$EISBENCH_HOME``), so finished stages are reused. A folder that already holds
    outputs is refused unless ``force``; the outputs appear in ``out`` only once the run has
    finished (:func:`~eisbench.core.paths.output_folder`), so a failed run leaves the previous
    ones as they were. ``track``: an experiment tracker (``"mlflow"``, the optional extra
    ``track``) that the finished run is logged to, in the store ``track_uri`` (default:
    ``$MLFLOW_TRACKING_URI``, else ``$EISBENCH_HOME/mlruns``; see
    :mod:`eisbench.runs.track`); an unknown name or a missing extra fails before any work.
    ``executor``: where independent units run, ``"serial"`` (in this process) or ``"ray"``
    (Ray tasks, the optional extra ``ray``; ``address``: the cluster, ``"auto"`` or
    ``"HOST:PORT"``, default a local instance): the evidence suite's experiments, every
    experiment's seeds, the trojan zoo's models, the trojan bench's tool cells and scans, and
    the edit bench's edits; the record's ``details["executor"]`` says which ran them, and on
    how many threads. ``threads``: torch intra-op threads for the run and each of its units
    (default: torch's, as set in this process). Results depend on it in the last bits, so a
    Ray run's record equals the serial run's at equal ``threads`` (:mod:`eisbench.runs.executor`).

    Example:
        >>> rec = run("goh-linear", dataset="digits", seeds=1, contamination=(0.0, 0.2),
        ...           out=tempfile.mkdtemp())
        >>> rec  # doctest: +ELLIPSIS
        goh-linear: 3 claims (2 reproduced, 1 not reproduced), 11 metrics, ... s
          [    reproduced] The data has useful, non-robust linear directions
                           singular/frac_useful_nonrobust = 0.302 [0.233, 0.442]
        ...
          metrics: value [95% CI] (n)
          goh_linear/logreg/usefulness: ...
        report: .../report.html
        >>> [c["verdict"] for c in rec["claims"]]
        ['reproduced', 'not reproduced', 'reproduced']
    """
    from eisbench.data import DataError
    from eisbench.runs.executor import executor as make_executor
    from eisbench.runs.executor import threads as torch_threads
    from eisbench.runs.executor import using

    exp = find(name)
    _check_tracker(track, track_uri)
    with torch_threads(threads):  # a bad count fails here, before any work
        pass
    ex = make_executor(executor, address=address)
    cfg = configure(name, preset, dataset=dataset, data_root=data_root, seeds=seeds,
                    device=device, overrides=overrides, **fields)
    folder = Path(out) if out is not None else fresh_folder(name)
    try:
        with output_folder(folder, force=force) as work, page_context(
                preset=preset, dataset=getattr(cfg, "dataset", None)), using(ex), \
                torch_threads(threads):
            rec = exp.run(cfg, out=work, store=store if store is not None
                          else Store(cache_dir()))
            report = exp.report(rec, work)
    except DataError as e:  # missing data: the settings of this run that point at it
        raise DataError(root_remedy(str(e), cfg)) from e
    return _track(RunRecord(rec, out=folder, report=folder / report.relative_to(work)),
                  track, uri=track_uri, preset=preset)


def audit(model: nn.Module, *, data: str = "mnist", data_root: str | None = None,
          out: str | Path | None = None, quick: bool = False, store: Store | None = None,
          name: str = "model", device: str = "cpu", overrides: Sequence[str] = (),
          force: bool = False, track: str | None = None, track_uri: str | None = None,
          **settings: Any) -> RunRecord:
    """Audit ``model`` (images (B, C, H, W) in [0,1] of dataset ``data`` -> logits (B, K)):
    clean and robust accuracy with their checks, trojan scan, transfer, replacements and the
    tools' images (:mod:`eisbench.bench.audit`); write ``record.json``, ``report.html`` and the
    images into ``out`` (default: a fresh folder under ``$EISBENCH_HOME/runs``).

    ``quick``: the smoke-test preset (fewer images and steps); ``settings``: fields of
    :class:`~eisbench.bench.audit.AuditConfig` by name; ``overrides``: ``"key=value"``
    strings (as ``eisbench audit --set``); ``name`` labels the model in the report; ``out``,
    ``force``, ``track`` and ``track_uri`` as in :func:`run`.

    Example (an untrained linear model on the 8x8 digits, a very small audit):
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> rec = audit(net, data="digits", out=tempfile.mkdtemp(), quick=True, eps=(0.1,),
        ...             n_robust=16, scan_steps=5, n_scan=16, references=("mlp",),
        ...             reference_train={"epochs": 1}, n_transfer=32, distillers=("tree",),
        ...             n_fit=200, n_val=100, tools=("fv-class-fourier",), n_images=1)
        >>> rec  # doctest: +ELLIPSIS
        audit: 6 metrics, ... s
          clean accuracy 0.111 [0.083, 0.148] on 360 test images
          robust accuracy at Linf 0.1: 0.000 [0.000, 0.194] (fast suite, 16 images); checks ...
          trojan scan: no trojan detected: ...
        report: .../report.html
    """
    from eisbench.bench.audit import run_audit
    from eisbench.report.audit import summary, write_report

    cfg = audit_config(data=data, data_root=data_root, quick=quick, device=device,
                       overrides=overrides, **settings)
    _check_tracker(track, track_uri)
    folder = Path(out) if out is not None else fresh_folder("audit")
    with output_folder(folder, force=force) as work:
        rec = run_audit(model, cfg, out=work, store=store if store is not None
                        else Store(cache_dir()), name=name)
        report = write_report(rec, work)
    return _track(RunRecord(rec, out=folder, report=folder / report.relative_to(work),
                            lines=summary(rec)), track, uri=track_uri,
                  preset="quick" if quick else "default")


def audit_config(*, data: str = "mnist", data_root: str | None = None, quick: bool = False,
                 device: str = "cpu", overrides: Sequence[str] = (), **settings: Any) -> Any:
    """The :class:`~eisbench.bench.audit.AuditConfig` :func:`audit` would run with (same
    arguments), checked, without loading anything: what ``eisbench audit --dry-run`` prints.

    Example:
        >>> audit_config(data="digits", quick=True, overrides=["n_robust=50"]).n_robust
        50
    """
    from eisbench.bench.audit import QUICK, AuditConfig
    from eisbench.runs.overrides import apply
    from eisbench.runs.validation import check_config

    base = QUICK if quick else AuditConfig()
    cfg = presets.replace_fields(base, {"dataset": data, "data_root": data_root,
                                        "device": device})
    cfg = apply(presets.replace_fields(cfg, settings), list(overrides))
    return check_config(cfg, name="audit")


def _check_tracker(track: str | None, uri: str | None) -> None:
    """Fail before any work for an unknown tracker or a missing extra."""
    if track is not None:
        from eisbench.runs.track import tracker

        tracker(track, uri=uri)


def _track(rec: RunRecord, track: str | None, *, uri: str | None, preset: str) -> RunRecord:
    """Log the finished run ``rec`` (its record and folder) to the tracker ``track``."""
    if track is None:
        return rec
    from eisbench.runs.track import resolve_uri, tracker

    try:
        run_id = tracker(track, uri=uri)(rec, out=rec.out, report=rec.report, uri=uri,
                                         preset=preset)
    except Exception as e:
        e.add_note(f"the run finished and its outputs are in {rec.out}; log them again with "
                   f"eisbench.runs.track.track_folder({str(rec.out)!r}, uri=...)")
        raise
    rec.tracked[track] = {"run_id": run_id, "uri": resolve_uri(uri)[0]}
    return rec


def load_model(source: str | Path, *, weights: str | Path | None = None,
               kwargs: Mapping[str, Any] | None = None,
               device: str = "cpu") -> nn.Module:
    """A model, in eval mode on ``device``: an eisbench checkpoint (``source`` the path of
    ``<name>.safetensors`` + ``<name>.json``, with or without the suffix), or your own
    ``"package.module:Class"`` built with ``kwargs`` and loaded from ``weights``
    (``.safetensors`` or a ``.pt`` state dict, read with ``weights_only=True``).

    Example:
        >>> import tempfile, torch
        >>> from eisbench.models import ModelSpec, save_checkpoint
        >>> spec = ModelSpec(arch="mlp", in_shape=(1, 8, 8), num_classes=10)
        >>> stem = Path(tempfile.mkdtemp()) / "net"
        >>> _ = save_checkpoint(spec.build(), spec, stem)
        >>> load_model(stem)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> load_model("torch.nn:Linear", kwargs={"in_features": 64, "out_features": 10})
        Linear(in_features=64, out_features=10, bias=True)
    """
    from eisbench.models import load_checkpoint, load_foreign

    if isinstance(source, str) and _CLASS.fullmatch(source):
        return load_foreign(source, weights, kwargs=dict(kwargs or {}), device=device)
    if weights is not None or kwargs:
        raise ValueError(f"weights= and kwargs= are for your own model class "
                         f"('package.module:Class'); {str(source)!r} is read as an eisbench "
                         "checkpoint, which holds its own")
    return load_checkpoint(source, device=device)


def tool(name: str) -> Tool:
    """The interpretability tool registered as ``name`` (see ``TOOLS.names()``):
    ``tool(model, *, target, data, n, generator, device) -> images (n, C, H, W)``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> tool("fv-class-fourier")(net, target=3, data=torch.rand(8, 1, 8, 8), n=2,
        ...                          steps=3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 8, 8])
    """
    return TOOLS.get(name)


__all__ = ["RunRecord", "audit", "audit_config", "configure", "dry_run", "find", "fresh_folder",
           "load_model", "run", "tool"]
