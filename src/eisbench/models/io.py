"""Checkpoints (safetensors weights + a small JSON spec) and bring-your-own models.

Nothing here unpickles untrusted data: eisbench's own checkpoints are safetensors; foreign
``.pt``/``.pth`` state dicts are read with ``torch.load(..., weights_only=True)``. Nothing read
from a checkpoint imports code: its spec names a registered architecture
(:func:`~eisbench.models.spec.parse_spec`); only :func:`load_foreign`, given an explicit
``package.module:Class``, imports a module.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from eisbench.core.accel import place
from eisbench.core.paths import atomic_write_bytes
from eisbench.models.core import MODELS
from eisbench.models.spec import SPEC_VERSION, ModelSpec, parse_spec


def _import_class(target: str) -> type[nn.Module]:
    mod_name, _, cls_name = target.partition(":")
    if not mod_name or not cls_name:
        raise ValueError(f"expected 'package.module:Class', got {target!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {mod_name!r} for model {target!r}: {e}. "
                         "Is it on PYTHONPATH?") from e
    cls = getattr(mod, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{target!r} is not an nn.Module class")
    return cls


def save_checkpoint(model: nn.Module, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (each atomically); returns the
    safetensors path. ``path`` may be a folder: ``<folder>/model``."""
    stem = _stem(path)
    weights = stem.with_name(stem.name + ".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(state))
    meta = {"version": SPEC_VERSION, **dataclasses.asdict(spec)}
    atomic_write_bytes(stem.with_name(stem.name + ".json"), json.dumps(meta, indent=2).encode())
    return weights


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_checkpoint` (in eval mode, on ``device``)."""
    stem = _stem(path)
    spec_file = stem.with_name(stem.name + ".json")
    if not spec_file.exists():
        raise FileNotFoundError(f"{spec_file} is missing: a checkpoint is <name>.safetensors plus "
                                "<name>.json (written by eisbench train)")
    try:
        meta = json.loads(spec_file.read_text(), parse_constant=_refuse_constant)
        spec = parse_spec(meta)
    except (ValueError, RecursionError) as e:  # JSON errors included
        raise ValueError(f"{spec_file} is not a valid model spec: {e}") from e
    net = spec.build()
    _load_state(net, stem.with_name(stem.name + ".safetensors"))
    return place(net, device).eval()  # safe: nn.Module.eval (mode switch)


def load_foreign(target: str, weights: str | Path | None = None, *,
                 kwargs: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> nn.Module:
    """Bring your own model: import ``package.module:Class``, instantiate it with ``kwargs`` and
    load ``weights``: the one place a model's module is imported.

    ``weights`` may be ``.safetensors`` or a ``.pt``/``.pth`` state dict (read with
    ``weights_only=True``, so a hostile pickle cannot run code).
    """
    net = _import_class(target)(**(kwargs or {}))
    if weights is not None:
        _load_state(net, Path(weights))
    return place(net, device).eval()  # safe: nn.Module.eval (mode switch)


def _stem(path: str | Path) -> Path:
    """``dir/name`` for ``dir/name``, ``dir/name.json`` or ``dir/name.safetensors`` (dots kept);
    ``folder/model`` for an existing ``folder`` (what ``eisbench train --out folder`` writes)."""
    p = Path(path)
    if p.is_dir():
        return p / "model"
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a model spec may hold (numbers must be finite)")


def _load_state(net: nn.Module, file: Path) -> None:
    if not file.exists():
        raise FileNotFoundError(f"weights file {file} does not exist")
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError,
            ValueError) as e:
        raise ValueError(f"cannot read weights from {file}: {e}. Expected a safetensors file or "
                         "a plain state dict saved with torch.save(model.state_dict(), f)") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{file} does not hold a state dict (got {type(state).__name__})")
    _check_dtypes(net, state, file)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights in {file} do not fit {type(net).__name__}: {e}") from e



def _check_dtypes(net: nn.Module, state: dict[str, Any], file: Path) -> None:
    """Refuse weights that ``load_state_dict`` would silently cast: an integer or bool tensor
    for a floating-point parameter (quantised weights, or the wrong file), and NaN or infinite
    values."""
    own = net.state_dict()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor) or name not in own:
            continue  # load_state_dict reports these
        want = own[name].dtype
        if want.is_floating_point and not value.dtype.is_floating_point:
            raise ValueError(f"weights in {file}: {name!r} is {value.dtype} but the model's is "
                             f"{want}; integer weights are quantised or from another file: "
                             "dequantise them (e.g. tensor.float() * scale) before loading")
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            raise ValueError(f"weights in {file}: {name!r} holds NaN or infinite values")


__all__ = ["MODELS", "ModelSpec", "load_checkpoint", "load_foreign", "save_checkpoint"]
