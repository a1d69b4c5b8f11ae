"""Files eisbench writes (reports, records, artifacts) get a plain file's mode, not 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from eisbench.core.paths import atomic_write_bytes, current_umask, output_folder


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_write_gives_0644_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    p = tmp_path / "sub" / "report.html"
    atomic_write_bytes(p, b"<p>x</p>")
    assert _mode(p) == 0o644
    atomic_write_bytes(p, b"<p>y</p>")  # replacing keeps the plain mode
    assert _mode(p) == 0o644 and p.read_bytes() == b"<p>y</p>"


def test_atomic_write_respects_a_stricter_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        assert current_umask() == 0o077
        atomic_write_bytes(tmp_path / "secret.json", b"{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "secret.json") == 0o600


def test_atomic_write_matches_a_plain_open(tmp_path: Path, umask_022: None) -> None:
    (tmp_path / "plain").write_bytes(b"")
    atomic_write_bytes(tmp_path / "atomic", b"")
    assert _mode(tmp_path / "atomic") == _mode(tmp_path / "plain")


def test_published_output_folder_is_0755_and_its_files_0644(tmp_path: Path,
                                                            umask_022: None) -> None:
    out = tmp_path / "run"
    with output_folder(out) as work:
        atomic_write_bytes(work / "record.json", b"{}")
    assert _mode(out) == 0o755
    assert _mode(out / "record.json") == 0o644
