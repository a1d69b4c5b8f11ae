from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from eisbench.cli import main
from eisbench.models import ModelSpec, save_checkpoint


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("cnn-small", "pgd", "fast-at", "features-vs-bugs", "mnist", "wrong-label"):
        assert word in out


@pytest.mark.parametrize("cmd", [["--help"], ["run", "--help"], ["train", "--help"],
                                 ["attack", "--help"], ["data", "fetch", "--help"]])
def test_help(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(cmd)
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_unknown_names_suggest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "features-vs-bug", "--out", str(tmp_path)]) == 2
    assert "did you mean 'features-vs-bugs'" in capsys.readouterr().err
    assert main(["data", "fetch", "mnits"]) == 2
    assert "did you mean 'mnist'" in capsys.readouterr().err
    assert main(["run", "features-vs-bugs", "--device", "cuda:7", "--out", str(tmp_path)]) == 2


def test_train_then_attack_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stem = tmp_path / "digits_cnn"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "2",
                 "--out", str(stem)]) == 0
    assert main(["attack", "--checkpoint", str(stem), "--dataset", "digits", "--eps", "0.3",
                 "--suite", "fast", "--n", "50", "--n-checks", "30", "--control", str(stem),
                 "--out", str(tmp_path / "res")]) == 0
    res = json.loads((tmp_path / "res" / "attack.json").read_text())
    assert (res["model"], res["dataset"], res["weights"]) == (str(stem), "digits", None)
    assert res["suite"] == "fast" and [a["name"] for a in res["per_attack"]] == [
        "apgd", "apgd-t", "square"]
    bb = next(c for c in res["checks"] if c["name"] == "black-box-not-stronger")
    assert bb["passed"] is not None  # the fast suite's gradient-free attack lets it run
    assert 0 <= res["ci95"][0] <= res["robust_acc"] <= res["ci95"][1] <= 1
    checks = {c["name"]: c for c in res["checks"]}
    assert checks["control-falls"]["passed"] is not None and checks["eval-mode"]["passed"]
    assert "sanity checks failed" in capsys.readouterr().err
    assert main(["attack", "--checkpoint", str(stem), "--dataset", "digits", "--eps", "0.1",
                 "--attack", "pgd", "--steps", "5", "--n", "50", "--n-checks", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["suite"] == "custom" and out["per_attack"][0]["hyper"]["steps"] == 5
    assert main(["attack", "--checkpoint", str(stem), "--dataset", "digits",
                 "--suite", "strong"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_attack_byo_model_with_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rawnet.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1) / 16.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("rawnet", None)
    net = importlib.import_module("rawnet").Net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    assert main(["attack", "--model", "rawnet:Net", "--weights", str(tmp_path / "w.pt"),
                 "--dataset", "digits", "--scale", "16", "--attack", "fgsm", "--n", "20",
                 "--n-checks", "20"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "clean_acc" in res and (res["model"], res["weights"], res["scale"]) == (
        "rawnet:Net", str(tmp_path / "w.pt"), 16.0)  # the imported code is recorded


BAD_FORWARDS = {
    "nan": ("return self.fc(x.flatten(1)) * float('nan')", "non-finite outputs"),
    "softmax": ("return self.fc(x.flatten(1)).softmax(1)", "returns probabilities"),
    "keyerror": ("return {}['logits']", "KeyError"),
    "classes": ("return self.fc(x.flatten(1))[:, :3]", "3 logits per image"),
}


@pytest.mark.parametrize("bad", sorted(BAD_FORWARDS))
def test_attack_refuses_a_model_that_breaks_the_contract(
        bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    body, reason = BAD_FORWARDS[bad]
    name = f"badnet_{bad}"
    (tmp_path / f"{name}.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        f"        {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "res.json"
    assert main(["attack", "--model", f"{name}:Net", "--random-init", "--dataset", "digits",
                 "--attack", "fgsm", "--n", "20", "--n-checks", "20", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "eisbench: error:" in err and reason in err and "robust" not in err
    assert not out.exists()


def test_bad_checkpoint_is_a_clear_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    spec = ModelSpec(arch="mlp", in_shape=(1, 8, 8), num_classes=10)
    save_checkpoint(spec.build(), spec, tmp_path / "m")
    (tmp_path / "m.safetensors").write_bytes(b"garbage")
    assert main(["attack", "--checkpoint", str(tmp_path / "m"), "--dataset", "digits"]) == 2
    assert "cannot read weights" in capsys.readouterr().err


def test_run_prints_the_summary_of_the_python_api(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.experiments import EXPERIMENTS
    from eisbench.runs.presets import configure

    assert main(["run", "goh-linear", "--dataset", "digits", "--seeds", "2",
                 "--set", "contamination=0,0.1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((tmp_path / "record.json").read_text())
    n = rec["metrics"]["goh_linear/logreg/usefulness"]["n"]  # training images resampled
    assert printed.startswith("goh-linear: 3 claims (") and f"(n={n} training images)" in printed
    assert all(c["measured"] in printed for c in rec["claims"])
    assert f"report: {tmp_path / 'report.html'}" in printed
    cfg = configure(EXPERIMENTS.get("goh-linear"), dataset="digits", seeds=2,
                    overrides=["contamination=0,0.1"])
    assert rec["config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))


def test_config_overrides() -> None:
    from eisbench.experiments.ilyas import QUICK
    from eisbench.runs import overrides

    cfg = overrides.apply(QUICK, ["n_construct=500", "robust_train.epochs=3",
                                  "eval_attack.eps=0.1", "seeds=0,5", "n_train=none"])
    assert cfg.n_construct == 500 and cfg.robust_train.epochs == 3
    assert cfg.eval_attack.eps == 0.1 and cfg.seeds == (0, 5) and cfg.n_train is None
    with pytest.raises(ValueError, match="did you mean n_construct"):
        overrides.apply(QUICK, ["n_constuct=5"])
    with pytest.raises(ValueError, match="expected a value of type"):
        overrides.apply(QUICK, ["n_construct=many"])
    with pytest.raises(ValueError, match="key=value"):
        overrides.apply(QUICK, ["n_construct"])


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading data or a model fails the test: bad flags must be refused before either."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the flags were checked")

    monkeypatch.setattr("eisbench.data.load", refuse)
    monkeypatch.setattr("eisbench.cli_models.load_model", refuse)


@pytest.mark.parametrize(("flags", "named"), [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-2"], "--epochs"),
    (["--batch-size", "-1"], "--batch-size"), (["--batch-size", "0"], "--batch-size"),
    (["--lr", "nan"], "--lr"), (["--eps", "-0.1"], "--eps"), (["--alpha", "inf"], "--alpha"),
    (["--attack-steps", "0"], "--attack-steps"), (["--method", "pgd-att"], "did you mean")])
def test_train_refuses_bad_flags_before_any_work(
        flags: list[str], named: str, tmp_path: Path, no_work: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "digits", "--arch", "mlp", *flags,
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eisbench: error: ") and named in err
    assert not list(tmp_path.iterdir())


def test_train_refuses_an_out_it_cannot_create(tmp_path: Path, no_work: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "file" / "m")]) == 2
    assert "--out" in capsys.readouterr().err


def test_train_creates_the_folder_of_out(tmp_path: Path) -> None:
    out = tmp_path / "newdir" / "m"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert [p.name for p in (tmp_path / "newdir").iterdir()] == ["m"]  # no temporary left


@pytest.mark.parametrize(("flags", "named"), [
    (["--eps", "nan"], "--eps"), (["--eps", "-1"], "--eps"), (["--n", "-5"], "--n "),
    (["--n-checks", "0"], "--n-checks"), (["--attack", "pgd", "--steps", "-1"], "--steps"),
    (["--attack", "apgd", "--restarts", "0"], "--restarts"), (["--scale", "0"], "--scale"),
    (["--scale", "inf"], "--scale"), (["--out", "/dev/null"], "must be a folder")])
def test_attack_refuses_bad_flags_before_any_work(
        flags: list[str], named: str, tmp_path: Path, no_work: None,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["attack", "--checkpoint", "m", "--dataset", "digits", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eisbench: error: ") and named in err
    assert not list(tmp_path.iterdir())


def test_attack_refuses_an_out_under_a_file(tmp_path: Path, no_work: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["attack", "--checkpoint", "m", "--out", str(tmp_path / "file" / "r")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "named"), [
    (["--n", "0"], "--n "), (["--steps", "0"], "--steps"), (["--lr", "inf"], "--lr"),
    (["--batch-size", "0"], "--batch-size"), (["--scale", "-1"], "--scale"),
    (["--lam", "nan"], "--lam"), (["--out", "file"], "existing file")])
def test_scan_refuses_bad_flags_before_any_work(
        flags: list[str], named: str, tmp_path: Path, no_work: None,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    assert main(["scan", "--checkpoint", "m", "--data", "digits", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eisbench: error: ") and named in err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def _previous_run(out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True)
    files = {"record.json": b'{"old": 1}', "report.html": b"<p>old</p>"}
    for name, blob in files.items():
        (out / name).write_bytes(blob)
    return files


@pytest.mark.parametrize("cmd", [
    ["train", "--dataset", "digits"], ["attack", "--checkpoint", "m"],
    ["scan", "--checkpoint", "m"], ["replace", "--checkpoint", "m"],
    ["audit", "--checkpoint", "m"], ["run", "goh-linear"], ["bench", "replace"]])
def test_every_command_refuses_to_overwrite_a_previous_run_without_force(
        cmd: list[str], tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _previous_run(tmp_path / "out")
    assert main([*cmd, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "already holds outputs (record.json, report.html)" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_forced_run_leaves_the_previous_outputs_and_a_good_one_replaces_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.api import find

    files = _previous_run(tmp_path / "out")
    args = ["run", "goh-linear", "--dataset", "digits", "--seeds", "1",
            "--set", "contamination=0.0,0.2", "--out", str(tmp_path / "out"), "--force"]
    exp = find("goh-linear")

    def dies(cfg: object, **kw: object) -> object:
        (Path(str(kw["out"])) / "half.json").write_text("{")  # a half-written output
        raise RuntimeError("failed half way")

    monkeypatch.setattr("eisbench.runs.experiment.Experiment.run",
                        lambda self, cfg, *, out, store: dies(cfg, out=out))
    assert main(args) == 2
    assert "failed half way" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
    monkeypatch.undo()
    assert main(args) == 0
    rec = json.loads((tmp_path / "out" / "record.json").read_text())
    assert rec["experiment"] == exp.name and (tmp_path / "out" / "report.html").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_full_disk_is_reported_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk says so and where, whether the write raised ENOSPC or a library's raw
    C++ error (safetensors and torch.save report one as "enforce fail" or "basic_ios")."""
    import errno
    import os

    def enospc(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.bin"))

    monkeypatch.setattr("eisbench.cli._cmd_list", enospc)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "x.bin" in err

    real = os.statvfs

    class Full:
        f_bavail, f_frsize = 3, 4096

    def raw(*args: object, **kwargs: object) -> None:
        raise RuntimeError("enforce fail at inline_container.cc:664] . unexpected pos 64")

    monkeypatch.setattr("eisbench.cli._cmd_list", raw)
    monkeypatch.setattr(os, "statvfs", lambda p: Full() if str(p).startswith(
        str(tmp_path)) else real(p))
    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert "enforce fail" in err and f"the disk holding {tmp_path}" in err
    assert "is full (12288 bytes free)" in err
    monkeypatch.setattr(os, "statvfs", real)
    assert main(["list"]) == 2
    assert "is full" not in capsys.readouterr().err  # a raw error on a disk with room: as is


def test_attack_records_a_budget_violation_and_exits_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.attacks import ATTACKS

    def leaky(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
              norm: str = "linf", generator: torch.Generator | None = None) -> torch.Tensor:
        return (x + 3 * eps).clamp(0, 1)

    monkeypatch.setitem(ATTACKS._items, "leaky", leaky)
    monkeypatch.setitem(ATTACKS._meta, "leaky", {**ATTACKS.meta("fgsm")})
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1",
                 "--out", str(tmp_path / "m")]) == 0
    assert main(["attack", "--checkpoint", str(tmp_path / "m"), "--dataset", "digits",
                 "--attack", "leaky", "--eps", "0.1", "--n", "30", "--n-checks", "10",
                 "--out", str(tmp_path / "res")]) == 1
    assert "broke the threat model" in capsys.readouterr().err
    res = json.loads((tmp_path / "res" / "attack.json").read_text())
    check = next(c for c in res["checks"] if c["name"] == "within-budget")
    assert check["passed"] is False and "leaky" in check["detail"]
