"""Where eisbench keeps its data and cache (``$EISBENCH_HOME``, default ``~/.cache/eisbench``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def home() -> Path:
    """Root folder of eisbench's data and stage cache; ``$EISBENCH_HOME`` overrides it."""
    root = Path(os.environ.get("EISBENCH_HOME", Path.home() / ".cache" / "eisbench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir() -> Path:
    d = home() / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cache_dir() -> Path:
    d = home() / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def current_umask() -> int:
    """The process's umask: from ``/proc/self/status`` where Linux offers it (no change to the
    process), else by setting it and putting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename).

    A full disk or an interruption leaves the previous file (or none), never a truncated one.
    The file gets the mode a plain ``open(path, "wb")`` would give it (``0o666`` less the
    umask, so 0644 under the usual umask 022), not the temp file's private 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def output_folder(out: Path, *, force: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Write a run's outputs into a fresh sibling of ``out`` and publish them as ``out`` only
    if the block finishes: a run that fails (an error, an interruption, a full disk) leaves
    the previous outputs in ``out`` untouched and no half-written folder behind.

    Checked on entry, before any work: ``out`` is a folder or can be made there, and unless
    ``force`` it holds no previous outputs (an empty folder is fine). Yields the folder to
    write into.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "run"
        >>> with output_folder(out) as work:
        ...     _ = (work / "record.json").write_text("{}")
        >>> sorted(p.name for p in out.iterdir())
        ['record.json']
        >>> with output_folder(out) as work:  # doctest: +ELLIPSIS
        ...     pass
        Traceback (most recent call last):
        ...
        ValueError: --out .../run already holds outputs (record.json): pass --force to replace them ...
    """  # noqa: E501
    out = Path(out)
    check_output_folder(out, force=force, flag=flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    work.chmod(0o777 & ~current_umask())  # a plain mkdir's mode (0755 under umask 022), not 0700
    try:
        yield work
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
        if out.exists():
            os.rename(out, old)
        os.rename(work, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_output_folder(out: Path, *, force: bool = False, flag: str = "--out") -> None:
    """Refuse (``ValueError``) an ``out`` that is a file, cannot be created, or holds outputs
    (unless ``force``)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} must be a folder, got {out}, an existing file")
    base = out.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{flag}: cannot create the folder {out}: {base} is a file")
    if not os.access(base if base != out.absolute() else base.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: cannot write into {base}")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(f"{flag} {out} already holds outputs ({shown}): pass --force to replace "
                         "them (they are replaced only if the new run succeeds), or choose "
                         "another folder")


def disk_full_hint(*paths: Path, min_free: int = 1 << 20) -> str | None:
    """A sentence naming the first of ``paths`` (or their nearest existing ancestor) whose
    disk has less than ``min_free`` bytes free, else None. Used to explain a write that failed
    with a raw library error."""
    for path in paths:
        p = Path(path).absolute()
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        free = st.f_bavail * st.f_frsize
        if free < min_free:
            return (f"the disk holding {p} is full ({free} bytes free): free some space or "
                    "choose another folder, then run again (finished stages are cached; "
                    "previous outputs were left as they were)")
    return None
