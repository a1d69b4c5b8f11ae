"""Contract tests over every registered model, checkpoints and bring-your-own models."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from eisbench.models import MODELS, ModelSpec, build, load_checkpoint, load_foreign, save_checkpoint


@pytest.mark.parametrize("name", MODELS.names())
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


@pytest.mark.parametrize("name", MODELS.names())
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
    from eisbench.models import features

    with pytest.raises(TypeError, match="features"):
        features(nn.Linear(2, 2), torch.zeros(1, 2))


def test_checkpoint_names_with_dots_are_kept(tmp_path: Path) -> None:
    spec = ModelSpec(arch="mlp", in_shape=(1, 8, 8), num_classes=10)
    a, b = spec.build(), spec.build()
    save_checkpoint(a, spec, tmp_path / "run-lr0.005")
    save_checkpoint(b, spec, tmp_path / "run-lr0.01")
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(load_checkpoint(tmp_path / "run-lr0.005")(x), a.eval()(x))
    torch.testing.assert_close(load_checkpoint(tmp_path / "run-lr0.01.safetensors")(x), b.eval()(x))

