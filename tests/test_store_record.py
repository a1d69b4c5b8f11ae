from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from eisbench.core.stats import mean_ci, wilson_ci
from eisbench.runs import record
from eisbench.runs.store import StageLog, Store


def _save(v: int, d: Path) -> None:
    (d / "v.json").write_text(json.dumps(v))


def _load(d: Path) -> int:
    out: int = json.loads((d / "v.json").read_text())
    return out


def test_stage_runs_once_and_is_keyed_by_config_and_inputs(tmp_path: Path) -> None:
    store, log = Store(tmp_path), StageLog()
    calls: list[int] = []

    def compute(work: Path) -> int:
        calls.append(1)
        return 41 + len(calls)

    a, ka = store.run("s", {"x": 1}, compute=compute, save=_save, load=_load, log=log)
    b, kb = store.run("s", {"x": 1}, compute=compute, save=_save, load=_load, log=log)
    c, kc = store.run("s", {"x": 2}, compute=compute, save=_save, load=_load, log=log)
    d, kd = store.run("s", {"x": 1}, inputs=("other",), compute=compute, save=_save, load=_load)
    assert (a, b) == (42, 42) and ka == kb and len({ka, kc, kd}) == 3
    assert len(calls) == 3
    assert [e["cached"] for e in log.entries] == [False, True, False]


def test_interrupted_stage_leaves_no_result_and_resumes_in_place(tmp_path: Path) -> None:
    store = Store(tmp_path)
    seen: list[Path] = []

    def dying(work: Path) -> int:
        (work / "progress").write_text("half")
        seen.append(work)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.run("s", {"x": 1}, compute=dying, save=_save, load=_load)

    def resuming(work: Path) -> int:
        assert (work / "progress").read_text() == "half"  # same work folder, state kept
        return 7

    out, key = store.run("s", {"x": 1}, compute=resuming, save=_save, load=_load)
    assert out == 7 and (store.folder("s", key) / "done.json").exists()
    assert not seen[0].exists()  # the partial folder was published


def _valid() -> dict:
    return {"schema_version": 1, "experiment": "e", "created": record.now(), "config": {},
            "seeds": [0], "git": record.git_state(), "versions": record.library_versions(),
            "device": "cpu", "data": {}, "stages": [], "wall_seconds": 1.0,
            "metrics": {"a/std_acc": {"value": 0.5, "ci95": [0.4, 0.6], "n": 3,
                                      "higher_is_better": True}},
            "claims": [{"claim": "c", "rule": "r", "measured": "m", "verdict": "reproduced"}],
            "details": {}}


def test_record_schema_validation(tmp_path: Path) -> None:
    rec = _valid()
    record.validate(rec)
    record.write(rec, tmp_path / "r.json")  # type: ignore[arg-type]
    assert record.read(tmp_path / "r.json")["metrics"] == rec["metrics"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"metrics": {"a/std_acc": {"value": 1.5, "ci95": [1.4, 1.6], "n": 1,
                                    "higher_is_better": True}}}, "not a fraction"),
        ({"metrics": {"m": {"value": 0.5, "ci95": [0.6, 0.7], "n": 1,
                            "higher_is_better": True}}}, "does not bracket"),
        ({"metrics": {"m": {"value": 0.5}}}, "has fields"),
        ({"claims": [{"claim": "c", "verdict": "maybe"}]}, "verdict"),
        ({"schema_version": 0}, "schema_version"),
    ]
    for broken, msg in cases:
        with pytest.raises(ValueError, match=msg):
            record.validate({**_valid(), **broken})
    bad = _valid()
    del bad["git"]
    with pytest.raises(ValueError, match="missing field 'git'"):
        record.validate(bad)


def test_confidence_intervals() -> None:
    m, lo, hi = mean_ci([0.9, 0.92, 0.94])
    assert lo < m < hi and abs(m - 0.92) < 1e-12
    assert abs((hi - m) - 4.302652729 * 0.02 / 3 ** 0.5) < 1e-6  # t_{0.975, 2}
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)
    lo, hi = wilson_ci(50, 100)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9
    for k, n in [(0, 50), (50, 50), (0, 1000)]:  # the interval brackets p exactly at the edges
        lo, hi = wilson_ci(k, n)
        assert lo <= k / n <= hi


def test_a_corrupted_cached_file_is_recomputed_not_served(tmp_path: Path) -> None:
    store, calls = Store(tmp_path), []

    def compute(work: Path) -> int:
        calls.append(1)
        return 5

    _, key = store.run("s", {"x": 1}, compute=compute, save=_save, load=_load)
    (store.folder("s", key) / "v.json").write_text("666")  # flipped on disk
    with pytest.warns(UserWarning, match=r"s/.*v\.json.*recomputing"):
        out, key2 = store.run("s", {"x": 1}, compute=compute, save=_save, load=_load)
    assert (out, key2, len(calls)) == (5, key, 2)
    assert store.run("s", {"x": 1}, compute=compute, save=_save, load=_load)[0] == 5
    assert len(calls) == 2  # repaired: served from the cache again
    (store.folder("s", key) / "extra.bin").write_bytes(b"x")  # a file nobody wrote
    with pytest.warns(UserWarning, match="extra.bin"):
        store.run("s", {"x": 1}, compute=compute, save=_save, load=_load)
    (store.folder("s", key) / "done.json").write_text('{"seconds": 1}')  # no hashes: unverifiable
    with pytest.warns(UserWarning, match="content hashes"):
        store.run("s", {"x": 1}, compute=compute, save=_save, load=_load)
    assert len(calls) == 4


def _slow_stage(root: str, out: str) -> None:
    import time as _t

    def compute(work: Path) -> int:
        (work / f"started-{os.getpid()}").write_text("")
        _t.sleep(1.0)
        return 9

    v, key = Store(Path(root)).run("s", {"x": 1}, compute=compute, save=_save, load=_load)
    Path(out).write_text(json.dumps([v, key]))


def test_two_processes_on_one_cache_both_finish_with_one_computation(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_slow_stage, args=(str(tmp_path), str(tmp_path / f"o{i}")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads((tmp_path / f"o{i}").read_text()) for i in range(2)]
    assert results[0] == results[1] and results[0][0] == 9
    key = results[0][1]
    assert len(list(Store(tmp_path).folder("s", key).glob("started-*"))) == 1  # computed once


def test_cache_verify_counts_good_bad_and_unfinished_stages(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.cli import main
    from eisbench.runs.store import verify_cache

    store = Store(tmp_path)
    keys = [store.run("s", {"x": i}, compute=lambda w: 0, save=_save, load=_load)[1]
            .partition("@")[0] for i in range(3)]
    (tmp_path / "s" / keys[1] / "v.json").write_text("666")  # corrupted
    (tmp_path / "s" / keys[2] / "extra.bin").write_bytes(b"x")  # a file nobody wrote
    (tmp_path / "t" / "abc.partial").mkdir(parents=True)  # interrupted
    report = verify_cache(tmp_path)
    assert (report.verified, sorted(report.bad), report.unfinished) == (
        1, sorted([f"s/{keys[1]}", f"s/{keys[2]}"]), ("t/abc.partial",))
    assert report.bad[f"s/{keys[1]}"] == ["v.json changed since it was written"]
    assert report.bad[f"s/{keys[2]}"] == ["extra.bin was not written by the stage"]
    assert main(["cache", "verify", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"s/{keys[1]}: v.json" in out
    assert "1 stages verified, 2 bad, 1 unfinished (.partial)" in out
    for key in keys[1:]:
        shutil.rmtree(tmp_path / "s" / key)
    assert main(["cache", "verify", "--root", str(tmp_path)]) == 0
    assert "1 stages verified, 0 bad, 1 unfinished" in capsys.readouterr().out


def test_cache_verify_data_checks_each_file_against_its_sha256(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from eisbench.cli import main
    from eisbench.data.cache import save_image_data
    from eisbench.data.core import ImageData

    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    for name in ("a", "b"):
        save_image_data(tmp_path / name / f"{name}.safetensors",
                        ImageData(name, x, y, x.clone(), y.clone(), 2, "0" * 64))
    assert main(["cache", "verify", "--data", "--root", str(tmp_path)]) == 0
    (tmp_path / "b" / "b.safetensors").write_bytes(b"changed")
    assert main(["cache", "verify", "--data", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "b/b.safetensors: cache file" in out and "1 data files verified, 1 bad" in out


def test_downstream_stages_are_keyed_by_the_content_of_their_inputs(tmp_path: Path) -> None:
    """An upstream stage recomputed with other bytes (non-deterministic training after a
    corruption) must not let its dependants serve results computed from the old bytes; the
    same bytes again must keep them cached."""
    store, up_value, calls = Store(tmp_path), [1], []

    def upstream() -> str:
        return store.run("up", {"x": 1}, compute=lambda w: up_value[0], save=_save,
                         load=_load)[1]

    def downstream(ref: str) -> int:
        def compute(work: Path) -> int:
            calls.append(ref)
            return _load(store.folder("up", ref))
        return store.run("down", {}, inputs=(ref,), compute=compute, save=_save, load=_load)[0]

    ref = upstream()
    assert downstream(ref) == 1 and len(calls) == 1
    (store.folder("up", ref) / "v.json").write_text("666")  # corrupted: recomputed, same bytes
    with pytest.warns(UserWarning, match="recomputing"):
        assert upstream() == ref
    assert downstream(ref) == 1 and len(calls) == 1  # same content: still served
    (store.folder("up", ref) / "v.json").write_text("666")
    up_value[0] = 2  # the recomputation now gives other bytes
    with pytest.warns(UserWarning, match="recomputing"):
        ref2 = upstream()
    assert ref2.partition("@")[0] == ref.partition("@")[0] and ref2 != ref
    assert downstream(ref2) == 2 and len(calls) == 2  # recomputed from the new content


def test_cache_gc_removes_what_no_run_can_reach_and_keeps_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.cli import main
    from eisbench.runs.store import collect_garbage

    store = Store(tmp_path)
    up = store.run("up", {"x": 1}, compute=lambda w: 1, save=_save, load=_load)[1]
    down = store.run("down", {}, inputs=(up,), compute=lambda w: 2, save=_save, load=_load)[1]
    orphan = store.run("down", {"y": 1}, inputs=("0" * 16 + "@" + "1" * 16,),
                       compute=lambda w: 3, save=_save, load=_load)[1]
    old = store.run("up", {"x": 2}, compute=lambda w: 4, save=_save, load=_load)[1]
    meta = json.loads((store.folder("up", old) / "done.json").read_text())
    (store.folder("up", old) / "done.json").write_text(json.dumps(
        {**meta, "code_version": "0.0.1"}))
    bad = store.run("up", {"x": 3}, compute=lambda w: 5, save=_save, load=_load)[1]
    (store.folder("up", bad) / "v.json").write_text("6")
    under_bad = store.run("down", {"z": 1}, inputs=(bad,), compute=lambda w: 7, save=_save,
                          load=_load)[1]
    (tmp_path / "up" / "abc.partial").mkdir()  # an interrupted stage: kept
    before = {p for p in tmp_path.glob("*/*") if p.is_dir()}

    dry = collect_garbage(tmp_path, dry_run=True)
    assert {p for p in tmp_path.glob("*/*") if p.is_dir()} == before
    gone = {f"down/{orphan.partition('@')[0]}", f"up/{old.partition('@')[0]}",
            f"up/{bad.partition('@')[0]}", f"down/{under_bad.partition('@')[0]}"}
    assert set(dry.removed) == gone and dry.kept == 2 and dry.interrupted == ("up/abc.partial",)
    assert "eisbench 0.0.1" in dry.removed[f"up/{old.partition('@')[0]}"]
    assert main(["cache", "gc", "--root", str(tmp_path)]) == 0
    assert "removed 4 stages" in capsys.readouterr().out
    assert {f"{p.parent.name}/{p.name}" for p in tmp_path.glob("*/*") if p.is_dir()} == {
        f"up/{up.partition('@')[0]}", f"down/{down.partition('@')[0]}", "up/abc.partial"}
    assert store.run("down", {}, inputs=(up,), compute=lambda w: 9, save=_save,
                     load=_load)[0] == 2  # what was kept is still served
