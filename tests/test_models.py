"""Contract tests over every registered model, checkpoints and bring-your-own models."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from eisbench.models import (
    MODELS,
    ModelSpec,
    build,
    load_checkpoint,
    load_foreign,
    parse_spec,
    save_checkpoint,
)

# plain builders (in_shape, num_classes); "pkg.mod:Class" names are classes with their own kwargs
BUILDERS = [n for n in MODELS.names() if ":" not in n]


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_model_contract(name: str, in_shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = build(name, in_shape=in_shape, num_classes=10).eval()
    x = torch.rand(3, *in_shape)
    out = net(x)
    assert out.shape == (3, 10)
    feats = net.features(x)  # type: ignore[operator]
    assert feats.dim() == 2 and feats.shape[0] == 3
    assert torch.isfinite(out).all()


def test_preact_resnet18_shape_parameters_and_stages() -> None:
    net = build("preact-resnet18", in_shape=(3, 32, 32), num_classes=10)
    n = sum(p.numel() for p in net.parameters())
    assert 11.1e6 < n < 11.25e6, n  # He et al.'s PreAct ResNet-18 on CIFAR-10: ~11.2M
    assert net.features(torch.rand(2, 3, 32, 32)).shape == (2, 512)  # type: ignore[operator]
    blocks = [m for m in net.modules() if type(m).__name__ == "PreActBlock"]
    assert len(blocks) == 8  # four stages of two blocks
    sizes: list[tuple[int, ...]] = []
    handles = [b.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
               for b in blocks]
    try:
        net(torch.rand(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert sizes == [(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 2 + [(512, 4, 4)] * 2
    # pre-activation: each block normalises its input (BN over c_in), not its conv's output
    assert [cast(nn.BatchNorm2d, b.bn1).num_features for b in blocks] == [
        64, 64, 64, 128, 128, 256, 256, 512]
    narrow = build("preact-resnet18", in_shape=(3, 32, 32), num_classes=10, width=8)
    assert narrow.features(torch.rand(2, 3, 32, 32)).shape == (2, 64)  # type: ignore[operator]


@pytest.mark.parametrize("name", BUILDERS)
def test_checkpoint_roundtrip(name: str, tmp_path: Path) -> None:
    spec = ModelSpec(arch=name, in_shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,))
    torch.manual_seed(1)
    net = spec.build().eval()
    save_checkpoint(net, spec, tmp_path / "m")
    assert (tmp_path / "m.safetensors").exists() and (tmp_path / "m.json").exists()
    back = load_checkpoint(tmp_path / "m")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(back(x), net(x))


def test_missing_spec_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"\.json is missing"):
        load_checkpoint(tmp_path / "nothing")


def _write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "byo_net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class Net(nn.Module):
            def __init__(self, hidden: int = 8):
                super().__init__()
                self.fc = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(),
                                        nn.Linear(hidden, 10))
            def forward(self, x):
                return self.fc(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("byo_net", None)


def test_bring_your_own_model_pt_and_safetensors(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, monkeypatch)
    net = load_foreign("byo_net:Net", kwargs={"hidden": 8})
    torch.save(net.state_dict(), tmp_path / "w.pt")
    back = load_foreign("byo_net:Net", tmp_path / "w.pt", kwargs={"hidden": 8})
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(back(x), net(x))
    with pytest.raises(ValueError, match="do not fit"):
        load_foreign("byo_net:Net", tmp_path / "w.pt", kwargs={"hidden": 4})


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch /tmp/eisbench_pwned_by_pt",))


def test_hostile_pt_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, monkeypatch)
    marker = Path("/tmp/eisbench_pwned_by_pt")
    marker.unlink(missing_ok=True)
    torch.save({"fc.0.weight": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot read weights"):
        load_foreign("byo_net:Net", tmp_path / "evil.pt")
    assert not marker.exists()


def test_bad_import_target_messages() -> None:
    with pytest.raises(ValueError, match="package.module:Class"):
        load_foreign("no_colon_here")
    with pytest.raises(ValueError, match="cannot import module"):
        load_foreign("surely_not_a_module_xyz:Net")
    with pytest.raises(ValueError, match="not an nn.Module"):
        load_foreign("torch:tensor")


def test_model_without_features_is_explained() -> None:
    from eisbench.models import LayerError, features

    with pytest.raises(LayerError, match="^Linear has no nn.Linear with 2 outputs to take its "
                       "penultimate features from: name the layer"):
        features(nn.Linear(2, 2), torch.zeros(1, 2))


def test_checkpoint_names_with_dots_are_kept(tmp_path: Path) -> None:
    spec = ModelSpec(arch="mlp", in_shape=(1, 8, 8), num_classes=10)
    a, b = spec.build(), spec.build()
    save_checkpoint(a, spec, tmp_path / "run-lr0.005")
    save_checkpoint(b, spec, tmp_path / "run-lr0.01")
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(load_checkpoint(tmp_path / "run-lr0.005")(x), a.eval()(x))
    torch.testing.assert_close(load_checkpoint(tmp_path / "run-lr0.01.safetensors")(x), b.eval()(x))



_VALID = {"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}


def _write_spec(stem: Path, meta: dict[str, Any]) -> None:
    spec = ModelSpec(arch="mlp", in_shape=(1, 8, 8), num_classes=10)
    save_checkpoint(spec.build(), spec, stem)
    stem.with_name(stem.name + ".json").write_text(json.dumps(meta))


@pytest.mark.parametrize("arch", ["payload:Net", "this:Zen", "payload"])
def test_hostile_spec_imports_nothing(arch: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    code = tmp_path / "code"
    code.mkdir()
    (code / "payload.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                     "from torch import nn\nNet = nn.Identity\n")
    monkeypatch.syspath_prepend(str(code))
    for name in ("payload", "this"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    _write_spec(tmp_path / "m", {**_VALID, "arch": arch})
    with pytest.raises(ValueError, match=r"arch: .*not a registered architecture.*--model"):
        load_checkpoint(tmp_path / "m")
    assert not marker.exists()
    assert "payload" not in sys.modules and "this" not in sys.modules


def test_checkpoint_flag_never_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from eisbench.cli_models import load_model

    monkeypatch.delitem(sys.modules, "this", raising=False)
    with pytest.raises(FileNotFoundError):  # read as a checkpoint path, not a class
        load_model(argparse.Namespace(checkpoint="this:Zen", model=None, weights=None,
                                      random_init=False, scale=1.0, layer=None))
    assert "this" not in sys.modules


@pytest.mark.parametrize(("field", "value"), [
    ("num_classes", 1e400), ("num_classes", 1), ("num_classes", 10**6), ("num_classes", "10"),
    ("num_classes", True), ("in_shape", "1,8,8"), ("in_shape", [1, -8, 8]), ("in_shape", [1, 8]),
    ("in_shape", [1, 8.0, 8]), ("in_shape", [1, 10**6, 8]), ("arch", 3), ("version", 2),
    ("kwargs", {"width": -1}), ("kwargs", {"width": float("nan")}), ("kwargs", {"depht": 2}),
    ("kwargs", {"num_classes": 3}), ("kwargs", []), ("mean", [float("nan")]),
])
def test_bad_fields_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}"):
        parse_spec({**_VALID, field: value, **({"std": [1.0]} if field == "mean" else {})})


def test_nan_and_infinity_in_the_json_file_are_refused(tmp_path: Path) -> None:
    _write_spec(tmp_path / "m", _VALID)
    (tmp_path / "m.json").write_text(json.dumps({**_VALID, "mean": [float("nan")], "std": [1]}))
    with pytest.raises(ValueError, match="NaN"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps(_VALID).replace("10}", "1e400}"))
    with pytest.raises(ValueError, match="num_classes"):
        load_checkpoint(tmp_path / "m")


def test_spec_missing_std_or_unknown_field_is_refused() -> None:
    with pytest.raises(ValueError, match="mean, std"):
        parse_spec({**_VALID, "mean": [0.5]})
    with pytest.raises(ValueError, match="unknown field"):
        parse_spec({**_VALID, "module": "payload"})
    with pytest.raises(ValueError, match="JSON object"):
        parse_spec([_VALID])


def test_registered_module_path_arch_round_trips(tmp_path: Path) -> None:
    from eisbench.experiments import superposition

    spec = ModelSpec(arch=superposition.ARCH, in_shape=(1, 8, 8), num_classes=3,
                     kwargs={"in_shape": [1, 8, 8], "num_classes": 3, "widths": [5, 5],
                             "bias": False})
    net = spec.build().eval()
    save_checkpoint(net, spec, tmp_path / "m")
    assert parse_spec(json.loads((tmp_path / "m.json").read_text())) == spec
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(load_checkpoint(tmp_path / "m")(x), net(x))
    with pytest.raises(ValueError, match="widths"):
        parse_spec({**_VALID, "arch": superposition.ARCH,
                    "kwargs": {"in_shape": [1, 8, 8], "num_classes": 3}})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
_ARCHS = st.sampled_from(["mlp", "resnet-small", "cnn-small", "payload:Net", "this:Zen",
                          "os:system", "torch.nn:Linear", ""]) | st.text(max_size=12)
_NEAR_VALID = st.fixed_dictionaries(
    {"arch": _ARCHS | _JSON,
     "in_shape": st.lists(st.integers(-2, 70_000), min_size=2, max_size=4) | _JSON,
     "num_classes": st.integers(-5, 200_000) | st.floats() | _JSON},
    optional={"kwargs": st.dictionaries(st.sampled_from(["width", "depth", "bias", "x"]),
                                        _JSON | st.integers(-5, 2_000_000), max_size=3),
              "mean": st.lists(st.floats(), max_size=3) | _JSON,
              "std": st.lists(st.floats(), max_size=3) | _JSON,
              "version": st.integers(0, 2) | _JSON})


@settings(max_examples=300, deadline=None)
@given(meta=_NEAR_VALID | _JSON)
def test_spec_parser_returns_a_valid_spec_or_value_error(meta: object) -> None:
    before = set(sys.modules)
    try:
        spec = parse_spec(meta)
    except ValueError:
        assert set(sys.modules) == before
        return
    assert set(sys.modules) == before
    assert spec.arch in MODELS
    assert len(spec.in_shape) == 3 and all(1 <= s <= 65_536 for s in spec.in_shape)
    assert 2 <= spec.num_classes <= 100_000
    for stats in (spec.mean, spec.std):
        assert stats is None or all(math.isfinite(t) for t in stats)


def test_a_checkpoint_folder_loads_and_weights_that_would_be_cast_are_refused(
        tmp_path: Path) -> None:
    """``load_state_dict`` casts int32 weights into float parameters without a word: quantised
    weights, or another file. They, and NaN weights, are refused, naming the tensor."""
    from safetensors.torch import save_file

    spec = ModelSpec(arch="mlp", in_shape=(1, 8, 8), num_classes=10)
    net = spec.build().eval()
    (tmp_path / "ckpt").mkdir()
    save_checkpoint(net, spec, tmp_path / "ckpt")  # a folder: ckpt/model.*
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "model.json", "model.safetensors"]
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(load_checkpoint(tmp_path / "ckpt")(x), net(x))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    name = next(iter(state))
    for bad, msg in ((state[name].round().to(torch.int32), "int32 but the model's is torch.fl"),
                     (torch.full_like(state[name], float("nan")), "NaN or infinite")):
        save_file({**state, name: bad}, str(tmp_path / "ckpt" / "model.safetensors"))
        with pytest.raises(ValueError, match=rf"'{name}'.*{msg}"):
            load_checkpoint(tmp_path / "ckpt")
