"""One command-line vocabulary (``--data`` everywhere, quick by default, ``--dry-run``,
examples and defaults in every ``--help``, typo suggestions, ``--version``, ``list`` with
descriptions), loud warnings for a model at chance, and logs a file can hold (one line per
finished loop, a suite line with the time left)."""

from __future__ import annotations

import argparse
import doctest
import importlib
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch

from eisbench.cli import main
from eisbench.cli_args import parse_command_line, parser
from eisbench.cli_help import EXAMPLES

MODEL = ["--checkpoint", "m"]
COMMANDS = {"run": ["run", "goh-linear"], "bench": ["bench", "replace"], "train": ["train"],
            "attack": ["attack", *MODEL], "scan": ["scan", *MODEL],
            "replace": ["replace", *MODEL], "audit": ["audit", *MODEL]}


def _subparsers(p: argparse.ArgumentParser, path: tuple[str, ...] = ()
                ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)parser of ``p`` with the command words that reach it."""
    found = [(path, p)]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _subparsers(child, (*path, name))
    return found


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading data or a model, or running anything, fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started")

    for target in ("eisbench.data.load", "eisbench.cli_models.load_model", "eisbench.api.run",
                   "eisbench.api.audit"):
        monkeypatch.setattr(target, refuse)


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["--data", "--dataset"])
def test_data_and_its_alias_dataset_are_one_flag_everywhere(cmd: str, flag: str) -> None:
    args = parse_command_line([*COMMANDS[cmd], flag, "digits", "--out", "o"])
    assert args.data == "digits" and not hasattr(args, "dataset")


@pytest.mark.parametrize("cmd", ["run", "bench", "audit"])
def test_run_bench_and_audit_default_to_quick_and_dry_run_does_no_work(
        cmd: str, no_work: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.api import audit_config, find
    from eisbench.core.config import to_plain

    monkeypatch.chdir(tmp_path)
    setting = "n_robust=7" if cmd == "audit" else "seeds=4,5"
    for mode, preset in (([], "quick"), (["--full"], "full")):
        assert main([*COMMANDS[cmd], "--data", "digits", *mode, "--set", setting,
                     "--dry-run"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["preset"] == preset
        base = (audit_config(data="digits", quick=preset == "quick") if cmd == "audit"
                else getattr(find(COMMANDS[cmd][1]), preset))
        want = to_plain(base) | {"dataset": "digits"} | (
            {"n_robust": 7} if cmd == "audit" else {"seeds": [4, 5]})
        assert plan["config"] == want
    assert not list(tmp_path.iterdir())


def test_dry_run_of_the_suite_shows_each_experiment_and_checks_overrides(
        no_work: None, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "features-vs-bugs", "--set", "experiments=ilyas,wallace", "--dry-run"]
    assert main([*base, "--set", "overrides=wallace:foreign_root=/data/fmnist"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert sorted(plan["experiments"]) == ["ilyas", "wallace"]
    assert plan["experiments"]["wallace"]["foreign_root"] == "/data/fmnist"
    assert main([*base, "--set", "overrides=wallace:foreign_rot=/x"]) == 2
    assert "did you mean foreign_root" in capsys.readouterr().err


def test_out_is_required_unless_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "goh-linear"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: eisbench run" in err and "--out" in err and "--dry-run" in err


def test_every_help_has_examples_that_parse_defaults_and_help_for_every_flag(
        capsys: pytest.CaptureFixture[str]) -> None:
    for path, p in _subparsers(parser()):
        text = p.format_help()
        assert "examples:\n  eisbench " in text, path
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{' '.join(path)} {action.option_strings[0]} has no help"
    helps = {path: p.format_help() for path, p in _subparsers(parser())}
    attack = " ".join(helps[("attack",)].split())
    assert "--eps EPS perturbation budget in --norm" in attack and "(default: 0.3)" in attack
    assert "threat model: the norm --eps is measured in (default: linf)" in attack
    assert "(default: 1000)" in attack and "(default: None)" not in attack
    for lines in EXAMPLES.values():
        for line in lines:
            words = shlex.split(line.split("|")[0])
            assert words[0] == "eisbench"
            if "--help" not in words:
                parse_command_line(words[1:])  # an example that no longer parses fails here


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "features-vs-bugs", "--qick"],
     ["usage: eisbench run", "unrecognized argument --qick; did you mean --quick?"]),
    (["rn", "features-vs-bugs"], ["unknown command 'rn'; did you mean 'run'?"]),
    (["cache", "verfy"], ["usage: eisbench cache", "did you mean 'verify'?"]),
    (["run", "goh-linear", "--seed", "3", "--dry-run"], ["did you mean --seeds?"]),
    (["attack", *MODEL, "--norm", "lnf"], ["invalid choice 'lnf'; did you mean 'linf'?"]),
    (["audit", *MODEL, "--dataset-root", "x", "--dry-run"], ["did you mean --data-root?"])])
def test_typos_get_the_closest_flag_or_command(argv: list[str], says: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(s in err for s in says), err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.core.version import VERSION

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"eisbench {VERSION}")


def test_list_describes_every_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    said: dict[str, dict[str, str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith("  "):
            kind = said.setdefault(line.rstrip(":"), {})
        else:
            name, _, text = line.strip().partition("  ")
            kind[name] = text.strip()
    assert sum(map(len, said.values())) > 80
    assert [(k, n) for k, d in said.items() for n, t in d.items() if not t] == []
    assert said["attacks"]["pgd"].startswith("Projected gradient descent")
    assert said["experiments"]["ilyas"].startswith("Ilyas et al. 2019: D_R")  # not cut at "al."
    assert said["attack suites"]["standard"] == "attacks: apgd, apgd-t, fmn, square"
    assert said["training methods"]["standard"] == "perturbs=nothing, guarded=False"
    assert said["distillers"]["tree"] == "decision tree of bounded depth on pixels"


def test_a_reader_that_stops_early_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def closed(*args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("eisbench.cli._cmd_list", closed)  # as in: eisbench list | head
    assert main(["list"]) == 0


def test_chance_warning_threshold() -> None:
    from eisbench.cli_models import chance_warning

    assert chance_warning(0.15, 10) and chance_warning(0.149, 10)
    assert chance_warning(0.151, 10) is None and chance_warning(0.56, 2) is None
    text = chance_warning(0.55, 2, label_map=True) or ""
    assert all(w in text for w in ("50.0%", "--weights", "--scale 255", "--data",
                                   "--label-map"))


@pytest.fixture
def constant_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``chancenet:Net``: answers class 0 for every image (chance on digits)."""
    (tmp_path / "chancenet.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(64, 10)\n"
        "        with torch.no_grad():\n"
        "            self.fc.weight.mul_(1e-3)\n"
        "            self.fc.bias.copy_(torch.arange(10.0, 0.0, -1.0))\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("chancenet", None)
    return "chancenet:Net"


def test_own_model_without_weights_is_refused_and_at_chance_is_loud(
        constant_net: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    attack = ["attack", "--model", constant_net, "--data", "digits", "--attack", "fgsm",
              "--eps", "0.1", "--n", "100", "--n-checks", "10"]
    assert main(attack) == 2
    err = capsys.readouterr().err
    assert "without --weights" in err and "--random-init" in err and "robust" not in err
    assert main([*attack, "--random-init"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["clean_at_chance"] is True
    assert "WARNING: clean accuracy" in err and "--scale 255" in err
    assert main(["scan", "--model", constant_net, "--random-init", "--data", "digits",
                 "--n", "40", "--steps", "1", "--batch-size", "40"]) == 0
    assert "WARNING: clean accuracy" in capsys.readouterr().err


def test_suite_logs_time_left_and_a_skip_names_the_real_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("eisbench.data.fashion.DEFAULT_ROOT", tmp_path / "not-installed")
    monkeypatch.setenv("EISBENCH_QUIET", "0")
    small = "wallace:foreign=fashion-mnist,wallace:n_construct=200"  # fashion-mnist missing
    assert main(["run", "features-vs-bugs", "--data", "digits", "--set",
                 "experiments=goh-linear,wallace", "--set", "seeds=1", "--set",
                 f"overrides=goh-linear:contamination=0,{small}",
                 "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "features-vs-bugs: 2 experiments, typically 2 min 14 s" in err
    assert "[1/2] goh-linear ok in " in err and "elapsed, about " in err
    assert "left (1 to go)" in err and "[2/2] wallace skipped in " in err
    assert "\r" not in err
    rec = json.loads((tmp_path / "out" / "record.json").read_text())
    skip = rec["details"]["runs"][1]["error"]
    assert "--set overrides=wallace:foreign_root=DIR" in skip and "--root DIR" not in skip
    assert main(["run", "wallace", "--data", "digits", "--set", "foreign=fashion-mnist",
                 "--set", "n_construct=200", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "--set foreign_root=DIR" in err and "(--root DIR)" not in err


def test_progress_off_a_terminal_is_one_line_per_loop_saying_what_it_counted(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.core.progress import bars, progress
    from eisbench.training import TrainConfig, train

    monkeypatch.setenv("EISBENCH_QUIET", "0")
    assert not bars()  # captured stderr is not a terminal
    assert list(progress(range(3), desc="stage", unit="batch")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert err.startswith("stage: 3 batches in ") and err.endswith(" s\n") and "\r" not in err
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 2, 2, generator=gen), torch.randint(0, 2, (40,), generator=gen)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    train(net, x, y, cfg=TrainConfig(epochs=2, batch_size=16), seed=0, desc="robust model")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "robust model (epoch 1/2): 3 batches", "robust model (epoch 2/2): 3 batches"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert bars()


@pytest.mark.parametrize("module", ["eisbench.cli_help", "eisbench.core.progress",
                                    "eisbench.runs.overrides", "eisbench.experiments.suite"])
def test_docstring_examples(module: str) -> None:
    res = doctest.testmod(importlib.import_module(module),
                          optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted > 0


def test_a_named_preset_of_the_experiment_from_the_command_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    from eisbench.cli import main

    assert main(["run", "ilyas", "--preset", "cifar10", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "cifar10" and out["config"]["arch"] == "preact-resnet18"
    assert main(["bench", "trojans", "--preset", "cifar10", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["dataset"] == "cifar10"
    assert main(["run", "ilyas", "--preset", "cifar100", "--dry-run"]) == 2
    assert "did you mean 'cifar10'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "ilyas", "--preset", "cifar10", "--full", "--dry-run"])
