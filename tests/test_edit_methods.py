"""Contract tests over every edit method of the edit benchmark (the registry
:data:`~eisbench.bench.edit_methods.EDIT_METHODS`): each entry is well-formed, reconstructs
what its stamper stamps, edits a copy (never the model itself), and keeps the cache
parameters it had; the bench's rows come from the registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import corner_trojan
from torch import nn

from eisbench.bench import edit as edit_bench
from eisbench.bench.edit_methods import (
    BASELINES,
    EDIT_METHODS,
    REFERENCES,
    TOOL_ROWS,
    MaskReconstruction,
    PatchReconstruction,
    budget_params,
    input_at_config,
    lat_targeted_config,
    rows,
)
from eisbench.core.config import to_plain
from eisbench.edit.unlearn import FinetuneConfig
from eisbench.models import build
from eisbench.runs.store import StageLog, Store
from eisbench.tools import TOOLS
from eisbench.tools.adversarial_patch import default_side
from eisbench.trojans.stamp import stamp

NAMES = EDIT_METHODS.names()
SHAPE = (1, 8, 8)
TINY = edit_bench.EditBenchConfig(finetune=FinetuneConfig(steps=3, batch_size=8),
                                  lat_steps=1, n_patches=2)


def tiny_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build("cnn-small", in_shape=SHAPE, num_classes=10).eval()


def images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_the_registry_holds_exactly_the_rows() -> None:
    assert set(NAMES) == {*TOOL_ROWS, *REFERENCES, *BASELINES}
    assert len(NAMES) == len(TOOL_ROWS) + len(REFERENCES) + len(BASELINES)
    for role, names in (("tool", TOOL_ROWS), ("reference", REFERENCES),
                        ("baseline", BASELINES)):
        assert {n for n in NAMES if EDIT_METHODS.get(n).role == role} == set(names)
    assert edit_bench.EditBenchConfig().tools == TOOL_ROWS


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_well_formed(name: str) -> None:
    m = EDIT_METHODS.get(name)
    assert m.role in ("tool", "reference", "baseline") and m.summary
    assert callable(m.fine_tune) and callable(m.stamper) and callable(m.budget)
    assert (m.role == "tool") == (m.reconstruction is not None)
    if m.reconstruction is not None:
        assert name in TOOLS  # a tool row is a registered tool
        assert isinstance(m.reconstruction, MaskReconstruction | PatchReconstruction)
        steps = m.reconstruction.default_steps()
        assert isinstance(steps, int) and steps >= 1
    extra = m.budget(TINY)
    assert "ft" not in extra and to_plain(extra) == extra  # JSON-ready cache parameters


def test_budget_params_are_the_cache_keys_of_before() -> None:
    ft = {"ft": to_plain(TINY.finetune)}
    for name in NAMES:
        want = dict(ft)
        if name == "fine-pruning":
            want["max_drop"] = TINY.prune_max_drop
        if name == "lat":
            want["lat"] = to_plain(TINY.lat())
        if name == "lat-targeted":
            want["lat_targeted"] = to_plain(lat_targeted_config(TINY))
        if name == "input-at":
            want["input_at"] = to_plain(input_at_config(TINY))
        got = budget_params(TINY, name)
        assert got == want and list(got) == list(want), name
    assert {n for n in NAMES if EDIT_METHODS.get(n).robust} == {"no-trigger", "lat",
                                                                 "lat-targeted", "input-at"}


@pytest.fixture
def small_autoencoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator-based tool's autoencoder trained for 5 steps, not 400 (speed only)."""
    from eisbench.tools import decoder, feature_adversary

    def trained(x: torch.Tensor, cfg: decoder.AutoencoderConfig, **kw: Any) -> nn.Module:
        return decoder.trained_autoencoder(x, dataclasses.replace(cfg, steps=5), **kw)

    monkeypatch.setattr(feature_adversary, "trained_autoencoder", trained)


@pytest.mark.parametrize("name", [n for n in NAMES if EDIT_METHODS.get(n).role == "tool"])
def test_tool_reconstruction_is_what_its_stamper_stamps(name: str,
                                                         small_autoencoder: None) -> None:
    recon = EDIT_METHODS.get(name).reconstruction
    assert recon is not None
    data, _ = images(16)
    out = recon(tiny_model(), target=3, data=data, n=2, steps=2,
                generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    if isinstance(recon, MaskReconstruction):
        assert set(out) == {"mask", "pattern", "stats"}
        assert out["mask"].shape == (1, 8, 8) and out["pattern"].shape == SHAPE
    else:
        side = default_side(SHAPE, recon.side)
        assert set(out) == {"patches"} and out["patches"].shape == (2, 1, side, side)
    stamper = EDIT_METHODS.get(name).stamper(out, corner_trojan())
    assert stamper is not None
    x, _ = images(6, seed=1)
    xs = stamper(x, torch.Generator().manual_seed(0))
    assert xs.shape == x.shape and float(xs.min()) >= 0 and float(xs.max()) <= 1
    assert not torch.equal(xs, x)
    with pytest.raises(ValueError, match="needs its reconstruction"):
        EDIT_METHODS.get(name).stamper(None, corner_trojan())


@pytest.mark.parametrize("name", [n for n in NAMES if EDIT_METHODS.get(n).role != "tool"])
def test_reference_and_baseline_stampers(name: str) -> None:
    trojan = corner_trojan()
    stamper = EDIT_METHODS.get(name).stamper(None, trojan)
    if name != "true-trigger":
        assert stamper is None  # clean fine-tuning only
        return
    assert stamper is not None
    x, _ = images(6)
    want, _ = stamp(x, trojan.trigger, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(stamper(x, torch.Generator().manual_seed(5)), want)


@pytest.mark.parametrize("name", NAMES)
def test_fine_tune_edits_a_copy(name: str) -> None:
    m = EDIT_METHODS.get(name)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = images(32)
    stamper = m.stamper({"mask": torch.ones(1, 8, 8) * 0.1, "pattern": torch.ones(SHAPE),
                         "patches": torch.ones(2, 1, 3, 3)}, corner_trojan())
    edited, extra = m.fine_tune(model, x, y, stamper=stamper, settings=TINY, seed=0,
                                device=torch.device("cpu"), desc=name, target=3)
    assert edited is not model
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(v, before[k]) for k, v in edited.state_dict().items())
    assert set(extra) == ({"pruned", "of", "acc_pruned"} if name == "fine-pruning" else set())


def test_rows_and_their_errors() -> None:
    assert rows(("tabor", "snafue")) == ["tabor", "snafue", *REFERENCES, *BASELINES]
    with pytest.raises(ValueError, match="gives no trigger"):
        rows(("fv-class-fourier",))
    with pytest.raises(KeyError, match="unknown tool 'lat'"):  # a row, but not a tool
        rows(("lat",))
    with pytest.raises(KeyError, match="did you mean"):
        rows(("neural-cleans",))


def test_the_bench_takes_its_rows_from_the_registry(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = images(40)
    ds = SimpleNamespace(name="fake", sha256="0" * 64, shape=SHAPE, x_train=x, y_train=y,
                         x_test=x[:10], y_test=y[:10])
    zoo = SimpleNamespace(log=StageLog())

    def fake_zoo(store: Store, **kwargs: Any) -> tuple[Any, Any]:
        return zoo, ds

    monkeypatch.setattr(edit_bench, "bench_zoo", fake_zoo)
    cfg = dataclasses.replace(TINY, tools=("snafue", "neural-cleanse"), defender_frac=0.5)
    st = edit_bench.setting(cfg, Store(tmp_path))
    assert st.methods == rows(cfg.tools)
    assert st.methods == ["snafue", "neural-cleanse", *REFERENCES, *BASELINES]
    assert all(m in EDIT_METHODS for m in st.methods)
