"""Executors: the serial one, the choice of executor, and a Ray run of the evidence suite whose
record equals the serial run's (apart from timings and the executor field)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import eisbench
from eisbench.runs import executor
from eisbench.runs.executor import steady
from eisbench.runs.store import Store

CHEAP = ("goh-linear", "superposition", "ntk")  # each a few seconds on digits with one seed
def test_serial_maps_in_order_and_reports_each_unit() -> None:
    seen: list[tuple[int, int]] = []
    out = executor.Serial().map(abs, [-3, 1, -2], on_done=lambda i, r: seen.append((i, r)))
    assert out == [3, 1, 2] and seen == [(0, 3), (1, 1), (2, 2)]
    assert isinstance(executor.current(), executor.Serial)


def test_executor_choice_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        executor.executor("dask")
    with pytest.raises(ValueError, match="address= is for executor='ray'"):
        executor.executor("serial", address="auto")
    assert executor.gpus_for("cuda:1") == 1.0 and executor.gpus_for("cpu") == 0.0


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray fails
    with pytest.raises(executor.MissingRayError, match=r"pip install -e '\.\[ray\]'"):
        eisbench.run("goh-linear", executor="ray")


@pytest.fixture
def local_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # the `ray` extra is part of `test`: under CI a missing Ray fails, it never skips
    ray = __import__("ray") if os.environ.get("CI") else pytest.importorskip("ray")
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    ray.init(address="local", num_cpus=2, include_dashboard=False,  # never a running cluster
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_suite_record_equals_serial(tmp_path: Path, local_ray: Any) -> None:
    recs = {}
    before = torch.get_num_threads()
    for name in ("serial", "ray"):  # --threads 1: two tasks at once on the 2 CPUs
        recs[name] = eisbench.run(
            "features-vs-bugs", dataset="digits", seeds=1, out=tmp_path / name,
            store=Store(tmp_path / f"cache-{name}"), executor=name, threads=1,
            overrides=["experiments=" + ",".join(CHEAP)])
    assert torch.get_num_threads() == before  # restored after the run
    serial, ray = recs["serial"], recs["ray"]
    assert serial["details"]["executor"] == "serial, 1 torch thread"
    assert ray["details"]["executor"] == "ray (2 CPUs), 1 torch thread per task"
    assert [r["experiment"] for r in ray["details"]["runs"] if r["ok"]] == list(CHEAP)
    assert ray["metrics"] and ray["claims"]
    assert steady(dict(ray)) == steady(dict(serial))  # metrics, claims, seeds, data, config
    for name in CHEAP:  # and each experiment's own record, written by its worker
        one = {e: json.loads((tmp_path / e / name / "record.json").read_text())
               for e in recs}
        assert steady(one["ray"]) == steady(one["serial"]), name


def test_command_line_takes_the_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.cli import main

    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    out = str(tmp_path / "o")
    assert main(["run", "goh-linear", "--executor", "ray", "--out", out]) == 2
    assert "needs the optional extra ray: pip install -e '.[ray]'" in capsys.readouterr().err
    assert main(["run", "goh-linear", "--address", "auto", "--out", out]) == 2
    assert "address= is for executor='ray'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "goh-linear", "--threads", "0", "--out", out])
    assert "--threads: expected a positive integer, got '0'" in capsys.readouterr().err
    assert not Path(out).exists()  # both stop before any work


def test_ray_tasks_run_on_the_callers_threads_and_declare_them(local_ray: Any) -> None:
    """A task computes on this process's torch thread count (its sums depend on it) and asks
    Ray for that many CPUs, capped at a node's: 3 threads on a 2-CPU instance still run."""
    def probe(_: int) -> tuple[int, float]:
        import ray
        import torch

        return torch.get_num_threads(), ray.get_runtime_context().get_assigned_resources()[
            "CPU"]

    ex = executor.RayExecutor()
    for n, cpus in ((1, 1.0), (2, 2.0), (3, 2.0)):
        with executor.threads(n):
            assert ex.map(probe, [0, 1]) == [(n, cpus)] * 2
            assert ex.describe().endswith(f"{n} torch thread{'s' if n > 1 else ''} per task")
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        eisbench.run("goh-linear", threads=0)


def test_ray_keeps_the_other_units_when_a_worker_dies(local_ray: Any) -> None:
    def die_on_one(i: int) -> int:  # defined here: the workers cannot import this test module
        if i == 1:
            import os

            os._exit(3)  # a worker killed mid-task (out of memory, say)
        return i * 10

    ex = executor.RayExecutor()
    out = ex.map(die_on_one, [0, 1, 2], on_error=lambda i, e: -i)
    assert out == [0, -1, 20]
    with pytest.raises(local_ray.exceptions.RayError):
        ex.map(die_on_one, [1])


def test_ray_trains_the_trojan_zoo_as_tasks_with_the_serial_models(local_ray: Any,
                                                                   tmp_path: Path) -> None:
    """``run_zoo`` under Ray trains its 12 trojaned and 2 clean models as tasks into the
    shared cache, then loads them: the same weights and metrics as the serial run."""
    from eisbench.trojans.zoo import run_zoo, zoo_config

    cfg = zoo_config("digits", epochs=1, n_clean=2)
    with executor.threads(1):  # the same sums in both runs; two tasks at once
        serial = run_zoo(cfg, Store(tmp_path / "serial"))
        with executor.using(executor.RayExecutor(num_cpus=2)):
            par = run_zoo(cfg, Store(tmp_path / "ray"))
    assert all(e["cached"] for e in par.log.entries)  # trained by the tasks, loaded here
    assert [m.to_dict() for m in par.metrics] == [m.to_dict() for m in serial.metrics]
    for (a, _), (b, _) in zip([*serial.models, *serial.clean], [*par.models, *par.clean],
                              strict=True):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)


def test_ray_computes_tool_cells_and_scans_as_tasks_with_the_serial_results(local_ray: Any,
                                                                 tmp_path: Path) -> None:
    """``prefetch_cells`` under Ray runs each (tool, trojan, seed) cell as a task into the
    shared cache: the caller's loop then loads it, with the serial run's images."""
    from torch import nn

    from eisbench.bench.trojan_cells import prefetch_cells, trojan_tool_stage
    from eisbench.bench.trojans import TrojanBenchConfig
    from eisbench.runs.stages import Tensors
    from eisbench.runs.store import StageLog
    from eisbench.trojans.zoo import zoo

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    data = Tensors(torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,)), "rand:32")
    cfg = TrojanBenchConfig(dataset="digits", tool_steps=0.05, n_images=2)
    trojans = zoo("digits", shape=(1, 8, 8), num_classes=10)[:2]
    cells: list[dict[str, Any]] = [
        {"name": name, "model": model, "model_key": "lin", "trojan": t, "data": data,
         "cfg": cfg, "seed": s, "device": torch.device("cpu")}
        for name in ("fv-class-fourier", "adversarial-patch") for t in trojans for s in (0, 1)]
    with executor.threads(1):
        serial = [trojan_tool_stage(Store(tmp_path / "serial"), log=StageLog(), **c)
                  for c in cells]
        with executor.using(executor.RayExecutor()):
            prefetch_cells(Store(tmp_path / "ray"), cells, device=torch.device("cpu"))
        log = StageLog()
        par = [trojan_tool_stage(Store(tmp_path / "ray"), log=log, **c) for c in cells]
    assert all(e["cached"] for e in log.entries)  # computed by the tasks, loaded here
    for a, b in zip(serial, par, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)

    # the detection scans the same way: tasks first, then the loop loads them
    from eisbench.bench.trojan_probes import detection
    from eisbench.trojans.zoo import ZooRun

    nets: list[tuple[nn.Module, str]] = [
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(), f"lin{i}") for i in range(4)]
    zr = ZooRun(trojans=trojans, models=nets[:2], clean=nets[2:], metrics=[], log=StageLog())
    scans = {}
    with executor.threads(1):
        for name in ("serial", "ray"):
            log = StageLog()
            with executor.using(executor.RayExecutor() if name == "ray" else executor.Serial()):
                scans[name] = detection(Store(tmp_path / f"scan-{name}"), zr, data,
                                        graded=[0, 1], methods=("neural-cleanse",), steps=2,
                                        device=torch.device("cpu"), log=log)
            assert all(e["cached"] for e in log.entries) == (name == "ray")
    assert scans["ray"][1] == scans["serial"][1]


def test_ray_runs_an_experiments_seeds_as_tasks_with_the_serial_record(
        local_ray: Any, tmp_path: Path) -> None:
    """``eisbench.run("ilyas", executor="ray")`` computes each seed as a task into the shared
    cache, then the experiment loads every stage: the serial run's record."""
    small = {"epochs": 1, "batch_size": 64}
    recs = {name: eisbench.run(
        "ilyas", dataset="digits", seeds=2, out=tmp_path / name,
        store=Store(tmp_path / f"cache-{name}"), executor=name, threads=1, n_train=256,
        n_test=64, n_construct=64, n_test_robust=8, n_checks=8, std_train=small,
        robust_train=small, fresh_train=small, inversion_steps=3, wrong_label_steps=3,
        eval_suite="fast", eps_curve=(), overrides=["eval_attack.steps=3"])
        for name in ("serial", "ray")}
    assert steady(dict(recs["ray"])) == steady(dict(recs["serial"]))
    assert recs["ray"]["stages"] and all(s["cached"] for s in recs["ray"]["stages"])
    assert not any(s["cached"] for s in recs["serial"]["stages"])


PER_SEED = ("ilyas", "nakkiran", "ntk", "saliency", "superposition", "transfer", "tsipras",
            "wallace", "goh_leakage")  # the experiments whose seeds run as tasks


def test_prefetch_seeds_units_and_their_gpus(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """Serially nothing runs; under a parallel executor each seed is a unit
    ``(per_seed, cfg, store root, seed)`` that declares a GPU on cuda only; every
    experiment's ``per_seed`` is module-level (a task finds it by name)."""
    import importlib
    import pickle

    ran: list[int] = []
    store = Store(tmp_path / "cache")
    executor.prefetch_seeds(lambda cfg, st, seed: ran.append(seed), None, store, [0, 1],
                            device="cpu")
    assert ran == []  # serial: the experiment's own loop does the work
    calls: list[tuple[list[Any], float]] = []
    monkeypatch.setattr(executor, "prefetch", lambda fn, units, *, what, num_gpus:
                        calls.append((list(units), num_gpus)))
    def unit(cfg: str, store: Store, seed: int) -> None: ...

    for device in ("cpu", "cuda:1", torch.device("cuda", 0)):
        executor.prefetch_seeds(unit, "cfg", store, (3, 5), device=device)
    assert [u for u, _ in calls] == [[(unit, "cfg", store.root, 3),
                                      (unit, "cfg", store.root, 5)]] * 3
    assert [g for _, g in calls] == [0.0, 1.0, 1.0]
    for name in PER_SEED:
        unit = importlib.import_module(f"eisbench.experiments.{name}")._seed_unit
        assert pickle.loads(pickle.dumps(unit)) is unit, name  # by reference, not by value


def test_prefetch_seeds_leaves_a_failing_seed_to_the_loop(local_ray: Any,
                                                          tmp_path: Path) -> None:
    """Under Ray each seed computes into the shared cache on its own ``Store(root)``; a seed
    that raises stops neither the others nor the caller, and leaves nothing cached."""
    def save(v: int, d: Path) -> None:
        (d / "v").write_text(str(v))

    def load(d: Path) -> int:
        return int((d / "v").read_text())

    def per_seed(cfg: dict[str, int], store: Store, seed: int) -> None:
        if seed == cfg["bad"]:
            raise RuntimeError(f"seed {seed} fails")
        store.run("probe", {"seed": seed}, compute=lambda _w: seed * cfg["k"], save=save,
                  load=load)

    store = Store(tmp_path / "cache")
    with executor.using(executor.RayExecutor()):
        executor.prefetch_seeds(per_seed, {"bad": 1, "k": 7}, store, [0, 1, 2], device="cpu")
    from eisbench.runs.store import StageLog

    log = StageLog()
    got = [store.run("probe", {"seed": s}, compute=lambda _w: -1, save=save, load=load,
                     log=log)[0] for s in (0, 1, 2)]
    assert got == [0, -1, 14]  # seeds 0 and 2 by the tasks; seed 1 computed here
    assert [e["cached"] for e in log.entries] == [True, False, True]


def test_ray_runs_ntk_seeds_as_tasks_with_the_serial_record(local_ray: Any,
                                                            tmp_path: Path) -> None:
    """An experiment moved onto ``prefetch_seeds`` (ntk, the cheapest on digits): under Ray
    each seed's stage is computed by a task, the experiment's loop loads every one of them,
    and the record is the serial one."""
    recs = {name: eisbench.run(
        "ntk", dataset="digits", seeds=2, out=tmp_path / name,
        store=Store(tmp_path / f"cache-{name}"), executor=name, threads=1, n_max=200,
        n_test_robust=64, steps=5)
        for name in ("serial", "ray")}
    assert steady(dict(recs["ray"])) == steady(dict(recs["serial"]))
    assert [s["name"] for s in recs["ray"]["stages"]] == ["ntk-features"] * 2
    assert all(s["cached"] for s in recs["ray"]["stages"])  # computed by the tasks
    assert not any(s["cached"] for s in recs["serial"]["stages"])
