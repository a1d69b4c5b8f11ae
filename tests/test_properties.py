"""Property-based tests (hypothesis) at the edges where text, numbers and files come in:

- ``--set`` items and Python keyword fields for any field of any preset: a config that passes
  :func:`~eisbench.runs.validation.check_config` (and writes as strict JSON), or a ValueError;
- IDX files (random headers, bodies, truncation, gzip): the header's array or a DataError, with
  memory bounded by the file and one read chunk, whatever the header declares;
- CIFAR batch files (random bytes, truncated and corrupted pickles): a validated batch or a
  DataError, memory bounded by the file, and the hostile pickles that made the unpickler
  allocate gigabytes from a few bytes refused before they run;
- checkpoint specs with registered architectures and random JSON: a spec that builds or a
  ValueError, and never an import.

(``tests/test_data.py`` and ``tests/test_models.py`` hold the byte-level IDX and the generic
spec-parser properties; these add the file paths, memory bounds, CIFAR and buildability.)
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import sys
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import eisbench.experiments.superposition  # noqa: F401  (registers its module-path arch)
from eisbench.bench.registry import BENCHMARKS
from eisbench.core.config import to_plain
from eisbench.data import DataError, idx
from eisbench.data.cifar import read_batch
from eisbench.experiments import EXPERIMENTS
from eisbench.models.core import MODELS
from eisbench.models.spec import _signature, parse_spec
from eisbench.runs import presets
from eisbench.runs.validation import check_config

EXPS = sorted([*EXPERIMENTS.names(), *BENCHMARKS.names()])
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _exp(name: str) -> Any:
    return EXPERIMENTS.get(name) if name in EXPERIMENTS else BENCHMARKS.get(name)


def _leaves(cfg: Any, prefix: str = "") -> Iterator[str]:
    """The dotted path of every non-config field of ``cfg``."""
    for name, value in vars(cfg).items():
        if hasattr(value, "__dataclass_fields__"):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield prefix + name


_TEXT = (st.sampled_from(["", "nan", "inf", "-inf", "-1", "0", "1", "2", "0.5", "1e400", "none",
                          "true", "False", "1,2", "0,0", ",", "3,", " 7 ", "mlp", "1_000",
                          "9" * 40, "0x10", "١٢"])
         | st.integers(-10**6, 10**12).map(str) | st.floats().map(repr)
         | st.text(max_size=16))


def _strict_json(cfg: Any) -> None:
    """A config that passes the check writes as strict JSON (no NaN, no infinity)."""
    json.dumps(to_plain(cfg), allow_nan=False)


@SETTINGS
@given(data=st.data())
def test_set_gives_a_valid_config_or_a_value_error(data: st.DataObject) -> None:
    name, preset = data.draw(st.sampled_from(EXPS)), data.draw(st.sampled_from(presets.PRESETS))
    exp = _exp(name)
    key = data.draw(st.sampled_from(sorted(_leaves(exp.preset(preset)))) | st.text(max_size=10))
    items = [f"{key}={data.draw(_TEXT)}" for _ in range(data.draw(st.integers(1, 2)))]
    try:
        cfg = presets.configure(exp, preset, overrides=items)
    except ValueError:
        return
    assert check_config(cfg) is cfg
    _strict_json(cfg)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.integers(-3, 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.sampled_from(["epochs", "eps", "lr", "steps", "x"]), inner, max_size=2),
    max_leaves=6)
_TAKEN = {"preset", "overrides"}  # configure's own arguments: fields of these names are --set


def _nested(path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    return {head: _nested(rest, value) if rest else value}


@SETTINGS
@given(data=st.data())
def test_python_fields_give_a_valid_config_or_a_value_error(data: st.DataObject) -> None:
    name, preset = data.draw(st.sampled_from(EXPS)), data.draw(st.sampled_from(presets.PRESETS))
    exp = _exp(name)
    paths = sorted(p for p in _leaves(exp.preset(preset)) if p.split(".")[0] not in _TAKEN)
    fields = _nested(data.draw(st.sampled_from(paths)), data.draw(_VALUES))
    try:
        cfg = presets.configure(exp, preset, **fields)
    except ValueError:
        return
    assert check_config(cfg) is cfg
    _strict_json(cfg)


# --- IDX files -------------------------------------------------------------------------------

_IDX_CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]
_DIMS = st.lists(st.sampled_from([0, 1, 2, 3, 28]) | st.integers(0, 2**32 - 1), max_size=10)


def _bounded_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` (its value, or the exception it raised) and the peak of traced memory."""
    tracemalloc.start()
    try:
        out: Any = fn()
    except Exception as e:  # noqa: BLE001 - returned, and asserted on by the caller
        out = e
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.sampled_from(_IDX_CODES), dims=_DIMS, body=st.binary(max_size=600),
       cut=st.none() | st.integers(0, 700), gz=st.booleans(),
       gz_cut=st.none() | st.integers(0, 700))
@example(code=8, dims=[0, 2**32 - 1, 2**32 - 1], body=b"", cut=None, gz=False, gz_cut=None)
def test_idx_file_gives_its_array_or_a_data_error_in_bounded_memory(
        folder: Path, code: int, dims: list[int], body: bytes, cut: int | None, gz: bool,
        gz_cut: int | None) -> None:
    raw = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body
    raw = raw[:cut] if cut is not None else raw
    blob = gzip.compress(raw) if gz else raw
    blob = blob[:gz_cut] if gz and gz_cut is not None else blob
    path = folder / f"f{os.getpid()}.idx"
    path.write_bytes(blob)
    out, peak = _bounded_peak(lambda: idx.read_idx(path))
    # one read chunk, the file and the array (as big as the file's body): never the header's
    assert peak < idx._CHUNK + 4 * len(blob) + (1 << 20), (dims, peak)
    if isinstance(out, Exception):
        assert isinstance(out, DataError), repr(out)
        return
    assert out.shape == tuple(dims) and out.nbytes == len(raw) - 4 - 4 * len(dims)


# --- CIFAR batches ---------------------------------------------------------------------------

def _batch(n: int, protocol: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": b"batch",
             b"filenames": [b"f%d.png" % i for i in range(n)]}
    return pickle.dumps(batch, protocol=protocol)


@st.composite
def _batch_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "spliced"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    good = _batch(draw(st.integers(0, 3)), draw(st.integers(0, 4)), draw(st.integers(0, 9)))
    if kind == "truncated":
        return good[:draw(st.integers(0, len(good)))]
    raw = bytearray(good)
    if kind == "flipped":
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    else:  # random opcodes and arguments spliced in
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = draw(st.binary(min_size=1, max_size=12))
    return bytes(raw)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=_batch_files())
@example(blob=b"\x80\x04\x95" + b"\xff" * 8 + b".")  # a frame longer than memory: OverflowError
@example(blob=b"\x80\x02c_codecs\nencode\nC\x01aX\x03\x00\x00\x00bad\x86R.")  # no such codec
@example(blob=pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[1, 2], [3, 4]]},
                        protocol=4))
@example(blob=pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, [2]]},
                        protocol=4))
def test_cifar_batch_gives_a_valid_batch_or_a_data_error(folder: Path, blob: bytes) -> None:
    path = folder / f"batch{os.getpid()}"
    path.write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, peak = _bounded_peak(lambda: read_batch(path))
    assert peak < 8 * len(blob) + (1 << 20), peak
    if isinstance(out, Exception):
        assert isinstance(out, DataError), repr(out)
        return
    x, y = out
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.shape == (len(x),)
    assert y.dtype == np.int64 and (len(y) == 0 or 0 <= y.min() <= y.max() <= 9)


class _Call:
    """Pickles as a call of ``fn(*args)``."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def _hex_chain(levels: int) -> bytes:
    """_codecs.encode(..., 'hex') applied ``levels`` times to one byte: 2**levels bytes."""
    out = b"\x80\x02c_codecs\nencode\nq\x00C\x01\x00"
    step = b"q\x010h\x00h\x01X\x03\x00\x00\x00hex\x86R"  # memo, pop, encode(prev, 'hex')
    return out + step * levels + b"."


@pytest.mark.parametrize(("blob", "match"), [
    (b"\x80\x02K\x01r" + struct.pack("<I", 1 << 24) + b".", "memo index"),  # 256 MB memo
    (b"\x80\x02K\x01r" + struct.pack("<I", 2**32 - 1) + b".", "memo index"),
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x.", "bytes8"),  # a 1 TB bytes object
    (_hex_chain(24), "refusing _codecs.encode"),  # 16 MB from 400 bytes (34 levels: 16 GB)
    (pickle.dumps({b"data": _Call(np.ndarray, (1000, 3072), "u1"), b"labels": [0] * 1000},
                  protocol=4), "more than the file"),  # an array the file does not hold
])
def test_cifar_hostile_pickles_are_refused_before_they_allocate(tmp_path: Path, blob: bytes,
                                                                match: str) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    out, peak = _bounded_peak(lambda: read_batch(path))
    assert isinstance(out, DataError) and match in str(out), repr(out)
    assert peak < (4 << 20), peak


def test_cifar_protocols_0_to_4_still_load(tmp_path: Path) -> None:
    for protocol in range(5):
        (tmp_path / "b").write_bytes(_batch(3, protocol, seed=protocol))
        x, y = read_batch(tmp_path / "b")
        want = np.random.default_rng(protocol).integers(0, 256, (3, 3072), dtype=np.uint8)
        np.testing.assert_array_equal(x.reshape(3, -1), want)


# --- checkpoint specs ------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)
_SMALL = st.integers(-1, 40)


@st.composite
def _registered_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A spec of a registered architecture with its own argument names and random values."""
    arch = draw(st.sampled_from(sorted(MODELS.names())))
    params = sorted(_signature(arch)[0])
    kwargs = draw(st.dictionaries(st.sampled_from(params) | st.text(max_size=5),
                                  _SMALL | st.lists(_SMALL, max_size=3) | _JSON, max_size=4))
    meta = {"arch": arch, "in_shape": draw(st.lists(_SMALL, min_size=3, max_size=3) | _JSON),
            "num_classes": draw(_SMALL | _JSON), "kwargs": kwargs}
    if draw(st.booleans()):
        meta["mean"] = meta["std"] = draw(st.lists(st.floats(0.1, 1), min_size=1, max_size=3)
                                          | _JSON)
    return meta


@SETTINGS
@given(meta=_registered_specs())
def test_spec_of_a_registered_arch_builds_or_is_refused_without_imports(meta: Any) -> None:
    before = set(sys.modules)
    try:
        spec = parse_spec(meta)
    except ValueError:
        assert set(sys.modules) == before
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-width layers: "initializing zero-element tensors"
        net = spec.build()
    assert set(sys.modules) == before
    assert sum(p.numel() for p in net.parameters()) >= 0 and spec.arch in MODELS
