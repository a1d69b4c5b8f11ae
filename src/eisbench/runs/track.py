"""Experiment tracking: a finished run's record, claims and report logged to MLflow.

``eisbench.api.run(..., track="mlflow")`` (and ``audit``) call :func:`track_record` once the
record and the report are written. It logs one MLflow run:

- params: the resolved config flattened to dotted keys (``std_train.epochs``), values cut to
  MLflow's 6000 characters;
- metrics: every metric's value, and its 95% interval as ``<name>/ci_low`` and
  ``<name>/ci_high``; what ``n`` counts as the tags ``n/<name>`` and ``unit/<name>``;
- tags: ``eisbench.experiment``, ``eisbench.preset``, ``eisbench.version``,
  ``eisbench.git_sha`` (also MLflow's ``mlflow.source.git.commit``), ``eisbench.git_dirty``,
  ``eisbench.verdicts`` (the counts), and per claim ``claim/NN`` (its sentence) and
  ``verdict/NN`` (reproduced, not reproduced, inconclusive), NN its place in the record; the
  run's description lists the verdicts;
- artifacts: every file of the run folder (``record.json``, ``report.html``, images), and
  ``eisbench/claims.json`` and ``eisbench/names.json`` (each metric's and param's name -> the
  name it was logged under: MLflow refuses ``=`` and ``,``, see
  :mod:`eisbench.runs.track_names`).

Where it logs (:func:`resolve_uri`): ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else a
local store in ``$EISBENCH_HOME/mlruns`` (one store for every run, so they compare side by
side): ``mlflow.db`` (SQLite, MLflow's recommended local backend; its plain-file backend is in
maintenance mode and refuses to start by default) and ``artifacts/``. A ``uri`` without a
scheme is such a local folder; ``http://host:5000`` is a tracking server; ``sqlite:///...``
or ``file:///...`` are passed to MLflow as they are. Browse the local store with
``mlflow ui --backend-store-uri sqlite:///$EISBENCH_HOME/mlruns/mlflow.db`` (the UI comes
with the full ``mlflow`` package).

MLflow's usage telemetry is off unless ``MLFLOW_DISABLE_TELEMETRY`` is set otherwise
(:func:`require_mlflow`). MLflow is the optional extra ``track``:
``pip install -c constraints.txt 'eisbench[track]'`` (``mlflow-skinny`` with SQLAlchemy and
Alembic for the local store; the full ``mlflow`` package does as well).

Example (needs the extra):
    >>> rec = run("goh-linear", dataset="digits", seeds=1, track="mlflow")  # doctest: +SKIP
    >>> from mlflow.tracking import MlflowClient  # doctest: +SKIP
    >>> MlflowClient(rec.tracked["mlflow"]["uri"]).get_run(rec.tracked["mlflow"]["run_id"])
    ... # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from eisbench.core.paths import home
from eisbench.core.version import VERSION
from eisbench.runs.record import read
from eisbench.runs.track_names import MAX_TAG_VALUE, clip, flatten, unique_names

EXTRA = "pip install -c constraints.txt 'eisbench[track]'"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # 2+ letters: a Windows drive is a path
_CI_SUFFIX = "/ci_high"  # the longest suffix added to a metric's name


class Tracker(Protocol):
    """``tracker(record, *, out, report, uri, experiment, preset) -> run id``."""

    def __call__(self, record: Mapping[str, Any], *, out: str | Path | None = None,
                 report: str | Path | None = None, uri: str | None = None,
                 experiment: str = "eisbench", preset: str | None = None) -> str: ...


class MissingExtraError(ImportError, RuntimeError):
    """A tracker's optional dependency is not installed; the message names the extra. An
    ImportError, and a RuntimeError as :class:`~eisbench.data.DataError` is: what is missing
    and the command that installs it, which the command line prints without a traceback."""


def require_mlflow(*, local: bool = False) -> ModuleType:
    """The ``mlflow`` module; :class:`MissingExtraError` naming the extra when it (or, for a
    ``local`` store, SQLAlchemy and Alembic) is missing. MLflow's usage telemetry (which
    otherwise contacts MLflow's servers from the first import) is turned off unless the
    environment sets ``MLFLOW_DISABLE_TELEMETRY`` itself: a tracked run talks to the store
    it was given and to nothing else."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    needed = ["mlflow", *(["sqlalchemy", "alembic"] if local else [])]
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise MissingExtraError(
                f"tracking with MLflow needs {name}, which is not installed: install the "
                f"optional extra with `{EXTRA}` (from a checkout: "
                "`pip install -c constraints.txt -e '.[track]'`)") from e
    return importlib.import_module("mlflow")


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the local folder ``$EISBENCH_HOME/mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(home() / "mlruns")


def resolve_uri(uri: str | None = None) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None: the server's choice).
    ``uri`` (default :func:`default_uri`) with a scheme is used as it is; a folder becomes
    the SQLite store ``<folder>/mlflow.db`` with artifacts in ``<folder>/artifacts``.

    Example:
        >>> resolve_uri("http://localhost:5000")
        ('http://localhost:5000', None)
        >>> resolve_uri("/tmp/store")
        ('sqlite:////tmp/store/mlflow.db', 'file:///tmp/store/artifacts')
    """
    uri = uri or default_uri()
    if _SCHEME.match(uri) or uri == "databricks":
        return uri, None
    root = Path(uri).expanduser().absolute()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def _experiment_id(client: Any, name: str, artifacts: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifacts))
    except Exception:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _tags(record: Mapping[str, Any], names: Mapping[str, str], preset: str | None,
          out: Path | None) -> dict[str, str]:
    """Every tag of the run: provenance, the verdicts, and what each metric's n counts."""
    git, claims = record.get("git", {}), record.get("claims", [])
    sha = git.get("sha") or "unknown"
    counts = Counter(c["verdict"] for c in claims)
    tags = {"eisbench.experiment": str(record.get("experiment")),
            "eisbench.version": str(record.get("versions", {}).get("eisbench", VERSION)),
            "eisbench.git_sha": sha, "mlflow.source.git.commit": sha,
            "eisbench.git_dirty": str(git.get("dirty")),
            "eisbench.created": str(record.get("created")),
            "eisbench.device": str(record.get("device")),
            "eisbench.schema_version": str(record.get("schema_version")),
            "eisbench.verdicts": ", ".join(f"{k} {v}" for v, k in counts.items()) or "none",
            "mlflow.note.content": _description(record)}
    if preset is not None:
        tags["eisbench.preset"] = preset
    if out is not None:
        tags["eisbench.run_folder"] = str(Path(out).absolute())
    width = max(2, len(str(len(claims))))
    for i, c in enumerate(claims, 1):
        tags[f"claim/{i:0{width}d}"] = c["claim"]
        tags[f"verdict/{i:0{width}d}"] = c["verdict"]
    for name, m in record.get("metrics", {}).items():
        tags[f"n/{names[name]}"] = str(m["n"])
        if "unit" in m:
            tags[f"unit/{names[name]}"] = m["unit"]
    return {k: clip(v, MAX_TAG_VALUE) for k, v in tags.items()}


def _description(record: Mapping[str, Any]) -> str:
    """The run's description (markdown): one line per claim with its verdict."""
    lines = [f"eisbench `{record.get('experiment')}`"]
    lines += [f"- **{c['verdict']}**: {c['claim']} ({c['measured']})"
              for c in record.get("claims", [])]
    return "\n".join(lines)


def _log_all(client: Any, run_id: str, *, params: dict[str, str], metrics: dict[str, float],
             tags: dict[str, str]) -> None:
    """Log in batches of MLflow's limits (100 params or tags, 1000 metrics a call)."""
    from mlflow.entities import Metric, Param, RunTag

    stamp = int(time.time() * 1000)
    p = [Param(k, v) for k, v in params.items()]
    t = [RunTag(k, v) for k, v in tags.items()]
    m = [Metric(k, v, stamp, 0) for k, v in metrics.items()]
    for i in range(0, len(p), 100):
        client.log_batch(run_id, params=p[i:i + 100])
    for i in range(0, len(t), 100):
        client.log_batch(run_id, tags=t[i:i + 100])
    for i in range(0, len(m), 1000):
        client.log_batch(run_id, metrics=m[i:i + 1000])


def track_record(record: Mapping[str, Any], *, out: str | Path | None = None,
                 report: str | Path | None = None, uri: str | None = None,
                 experiment: str = "eisbench", preset: str | None = None) -> str:
    """Log ``record`` (a ``record.json`` as a dict), its run folder ``out`` (every file, as
    artifacts) and ``report`` (if outside ``out``) as one MLflow run of the MLflow experiment
    ``experiment`` in the store ``uri`` (:func:`resolve_uri`); ``preset`` is tagged. Returns
    the MLflow run id. What is logged: see the module's docstring.

    Example (needs the extra):
        >>> run_id = track_record(read(Path("runs/quick/record.json")),
        ...                       out="runs/quick", preset="quick")  # doctest: +SKIP
    """
    tracking_uri, artifacts = resolve_uri(uri)
    require_mlflow(local=tracking_uri.startswith("sqlite:"))
    from mlflow.tracking import MlflowClient

    metrics = record.get("metrics", {})
    names = unique_names(metrics, max_len=250 - len(_CI_SUFFIX))
    config = flatten(record.get("config", {}))
    if "seeds" not in config:
        config["seeds"] = json.dumps(record.get("seeds", []))
    keys = unique_names(config)
    if artifacts is not None:  # a local store: its folder
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = _experiment_id(client, experiment, artifacts)
    folder = Path(out) if out is not None else None
    run = client.create_run(exp_id, run_name=str(record.get("experiment"))
                            + (f" {folder.name}" if folder is not None else ""))
    run_id: str = run.info.run_id
    try:
        values: dict[str, float] = {}
        for name, m in metrics.items():
            values[names[name]] = float(m["value"])
            values[f"{names[name]}/ci_low"] = float(m["ci95"][0])
            values[f"{names[name]}{_CI_SUFFIX}"] = float(m["ci95"][1])
        _log_all(client, run_id, params={keys[k]: v for k, v in config.items()},
                 metrics=values, tags=_tags(record, names, preset, folder))
        _log_files(client, run_id, record, folder, report,
                   names={"metrics": names, "params": keys})
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_files(client: Any, run_id: str, record: Mapping[str, Any], folder: Path | None,
               report: str | Path | None, *, names: dict[str, dict[str, str]]) -> None:
    """The run folder's files, the claims and the name mapping (and the record itself when
    there is no folder) as artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        side = Path(tmp)
        (side / "claims.json").write_text(json.dumps(record.get("claims", []), indent=2))
        (side / "names.json").write_text(json.dumps(names, indent=2))
        if folder is None:
            (side / "record.json").write_text(json.dumps(record, indent=2))
        client.log_artifacts(run_id, str(side), artifact_path="eisbench")
    if folder is not None:
        client.log_artifacts(run_id, str(folder))
    if report is not None and (folder is None or not Path(report).absolute().is_relative_to(
            folder.absolute())):
        client.log_artifact(run_id, str(report))


def track_folder(folder: str | Path, **kwargs: Any) -> str:
    """Log a finished run's folder (its ``record.json`` and every file beside it) with
    :func:`track_record`; ``kwargs`` as there. Returns the MLflow run id.

    Example (needs the extra):
        >>> track_folder("runs/quick", preset="quick")  # doctest: +SKIP
    """
    folder = Path(folder)
    return track_record(dict(read(folder / "record.json")), out=folder, **kwargs)


def _check_mlflow(uri: str | None) -> None:
    require_mlflow(local=resolve_uri(uri)[0].startswith("sqlite:"))


TRACKERS: dict[str, Tracker] = {"mlflow": track_record}
"""The trackers that ``track=`` (``--track``) names."""
_CHECKS: dict[str, Callable[[str | None], None]] = {"mlflow": _check_mlflow}


def tracker(name: str, *, uri: str | None = None) -> Tracker:
    """The tracker called ``name``, once its optional dependencies for the store ``uri`` are
    known to be installed (so that a run fails before its work, not after). An unknown name
    is a ValueError that lists the known ones; a missing extra a :class:`MissingExtraError`
    that names it.

    Example:
        >>> tracker("wandb")
        Traceback (most recent call last):
        ...
        ValueError: unknown tracker 'wandb'; known trackers: mlflow
    """
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; known trackers: {', '.join(TRACKERS)}")
    _CHECKS[name](uri)
    return TRACKERS[name]


__all__ = ["EXTRA", "TRACKERS", "MissingExtraError", "Tracker", "default_uri", "require_mlflow",
           "resolve_uri", "track_folder", "track_record", "tracker"]
