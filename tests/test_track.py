"""Experiment tracking: a run and an audit logged to a local MLflow store and read back with
MLflow's own client; names mapped onto what MLflow accepts; a missing extra or an unknown
tracker fails before any work, with the install command."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import eisbench
from eisbench.cli import main
from eisbench.runs import track, track_names
from eisbench.runs.track import MissingExtraError, resolve_uri, tracker
from eisbench.runs.track_names import flatten, mlflow_name, unique_names

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # as track.require_mlflow does
if os.environ.get("CI"):  # the `track` extra is part of `test`: CI never skips these tests
    import mlflow
else:
    mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.validation import _validate_metric_name  # noqa: E402

pytestmark = pytest.mark.filterwarnings(  # SQLAlchemy 2.1 on MLflow's store: not ours
    "ignore:The ``noload`` loader strategy is deprecated")

TINY_AUDIT: dict[str, Any] = {"eps": (0.1,), "n_robust": 16, "scan_steps": 5, "n_scan": 16,
              "references": ("mlp",), "reference_train": {"epochs": 1}, "n_transfer": 32,
              "distillers": ("tree",), "n_fit": 200, "n_val": 100,
              "tools": ("fv-class-fourier",), "n_images": 1}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_run_round_trip_through_mlflow(tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    rec = eisbench.run("goh-linear", dataset="digits", seeds=2, contamination=(0.0, 0.1),
                       out=tmp_path / "run", track="mlflow", track_uri=str(store))
    client = MlflowClient(tracking_uri=resolve_uri(str(store))[0])
    run_id = rec.tracked["mlflow"]["run_id"]
    assert f"tracked: mlflow run {run_id} in sqlite:///{store}/mlflow.db" in str(rec)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "eisbench"
    params, metrics, tags = got.data.params, got.data.metrics, got.data.tags
    # the resolved config, flattened; values as text
    assert params["dataset"] == "digits" and params["seeds"] == "[0, 1]"
    assert params["contamination"] == "[0.0, 0.1]"
    # every metric with its interval, and what n counts
    assert len(metrics) == 3 * len(rec["metrics"])
    for name, m in rec["metrics"].items():
        assert metrics[name] == pytest.approx(m["value"])
        assert metrics[f"{name}/ci_low"] == pytest.approx(m["ci95"][0])
        assert metrics[f"{name}/ci_high"] == pytest.approx(m["ci95"][1])
        assert tags[f"n/{name}"] == str(m["n"]) and tags[f"unit/{name}"] == m["unit"]
    # provenance and a verdict per claim
    assert tags["eisbench.experiment"] == "goh-linear" and tags["eisbench.preset"] == "quick"
    assert tags["eisbench.version"] == rec["versions"]["eisbench"]
    assert tags["eisbench.git_sha"] == (rec["git"]["sha"] or "unknown")
    for i, c in enumerate(rec["claims"], 1):
        assert tags[f"claim/{i:02d}"] == c["claim"] and tags[f"verdict/{i:02d}"] == c["verdict"]
    assert "reproduced" in tags["eisbench.verdicts"]
    # the run folder and the claims as artifacts, identical to what is on disk
    assert {"record.json", "report.html", "eisbench/claims.json",
            "eisbench/names.json"} <= _artifacts(client, run_id)
    back = Path(client.download_artifacts(run_id, "record.json", str(tmp_path / "dl")))
    assert json.loads(back.read_text()) == json.loads((tmp_path / "run" / "record.json")
                                                      .read_text())
    claims = Path(client.download_artifacts(run_id, "eisbench/claims.json",
                                            str(tmp_path / "dl")))
    assert json.loads(claims.read_text()) == rec["claims"]


def test_audit_round_trip_default_store_and_mapped_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    rec = eisbench.audit(net, data="digits", out=tmp_path / "a", quick=True, track="mlflow",
                         **TINY_AUDIT)
    store = tmp_path / "home" / "mlruns"
    assert (store / "mlflow.db").is_file()  # the default: $EISBENCH_HOME/mlruns
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    run_id = rec.tracked["mlflow"]["run_id"]
    got = client.get_run(run_id)
    m = rec["metrics"]["robust_acc/eps=0.1"]  # '=' is refused by MLflow: mapped to '_'
    assert got.data.metrics["robust_acc/eps_0.1"] == pytest.approx(m["value"])
    assert got.data.metrics["robust_acc/eps_0.1/ci_high"] == pytest.approx(m["ci95"][1])
    assert got.data.tags["eisbench.preset"] == "quick"
    assert got.data.params["reference_train.epochs"] == "1"
    names = json.loads(Path(client.download_artifacts(
        run_id, "eisbench/names.json", str(tmp_path / "dl"))).read_text())
    assert names["metrics"]["robust_acc/eps=0.1"] == "robust_acc/eps_0.1"
    files = _artifacts(client, run_id)
    assert {"record.json", "report.html", "images.safetensors"} <= files
    assert str(got.info.artifact_uri).startswith((store / "artifacts").as_uri())


def test_missing_extra_fails_before_the_run_with_the_install_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install -c constraints.txt "
                                                r"'eisbench\[track\]'"):
        eisbench.run("goh-linear", dataset="digits", seeds=2, out=tmp_path / "run",
                     track="mlflow", track_uri=str(tmp_path / "store"))
    assert not (tmp_path / "run").exists()  # nothing ran
    with pytest.raises(SystemExit) as stop:  # the command line: one line, no traceback
        sys.exit(main(["run", "goh-linear", "--data", "digits", "--track", "mlflow",
                       "--out", str(tmp_path / "cli")]))
    assert stop.value.code != 0 and not (tmp_path / "cli").exists()
    err = capsys.readouterr().err
    assert "eisbench[track]" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(MissingExtraError, match="needs sqlalchemy"):  # the local store's
        tracker("mlflow", uri=str(tmp_path / "store"))


def test_unknown_tracker_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tracker 'wandb'; known trackers: mlflow"):
        eisbench.run("goh-linear", dataset="digits", out=tmp_path / "run", track="wandb")
    assert not (tmp_path / "run").exists()


def test_store_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri() == ("http://127.0.0.1:5000", None)  # a server: its artifact store
    assert resolve_uri(str(tmp_path)) == (f"sqlite:///{tmp_path}/mlflow.db",
                                          (tmp_path / "artifacts").as_uri())
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    assert resolve_uri()[0] == f"sqlite:///{tmp_path}/home/mlruns/mlflow.db"


def test_mlflow_telemetry_stays_off_so_a_run_talks_only_to_its_store() -> None:
    env = {k: v for k, v in os.environ.items()  # MLflow itself turns it off under CI, pytest
           if k not in ("CI", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY")}
    code = ("from eisbench.runs.track import require_mlflow; require_mlflow(); "
            "from mlflow.telemetry import get_telemetry_client; "
            "print(get_telemetry_client() is None)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["True"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=6))
def test_mapped_names_are_accepted_by_mlflow_and_stay_distinct(names: list[str]) -> None:
    mapped = unique_names(names)
    assert len(set(mapped.values())) == len(mapped) == len(set(names))
    for name in mapped.values():
        _validate_metric_name(name)  # MLflow's own check: raises on a refused name
        assert len(name) <= 250
    assert unique_names(names) == mapped  # deterministic


def test_names_and_flattening() -> None:
    assert mlflow_name("a/eps=0.3") == "a/eps_0.3"
    assert mlflow_name("x" * 300).startswith("x") and len(mlflow_name("x" * 300)) == 250
    assert unique_names(["a=1", "a,1", "a_1"]) == {"a=1": "a_1", "a,1": "a_1_2", "a_1": "a_1_3"}
    flat = flatten({"a": {"b": {"c": 1}, "d": []}, "e": {}, "f": "x" * 7000})
    assert flat["a.b.c"] == "1" and flat["a.d"] == "[]" and flat["e"] == "{}"
    assert len(flat["f"]) == 6000 and flat["f"].endswith("...")


@pytest.mark.parametrize("module", [track, track_names])
def test_docstring_examples_run(module: Any) -> None:
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0
