"""Content-addressed stage cache: a stage runs once per (name, config, inputs, code version).

:meth:`Store.run` returns a finished stage's output from disk, or computes it in a stable
``<key>.partial`` folder (so a stage that checkpoints, like training, resumes after an
interruption) and publishes it by renaming the folder once complete.

It also returns the stage's *reference*, ``<key>@<content>``: the folder key plus a hash of the
stage's file hashes. Downstream stages name their inputs by these references, so they are keyed
by the content of their inputs, not by their names: an upstream stage that was recomputed
(after a corruption, or on a machine where training is not bitwise deterministic) with other
bytes gives its dependants new keys instead of serving results computed from the old bytes.

What it serves, it verifies: ``done.json`` lists the sha256 of every file the stage wrote, and a
cached stage whose files no longer match (a corrupted or hand-edited file) is reported and
recomputed, never loaded. A lock per stage lets two runs share one cache: the second waits for
the first and then reuses its result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from eisbench.core.config import stable_hash, to_plain
from eisbench.core.paths import atomic_write_bytes
from eisbench.core.version import VERSION

T = TypeVar("T")


@dataclass
class StageLog:
    """Timing of every stage a run touched, in order (goes into the record)."""

    entries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Store:
    root: Path

    def key(self, name: str, config: Any, inputs: tuple[str, ...] = (), version: int = 1) -> str:
        return stable_hash(name, config, list(inputs), VERSION, version)

    def folder(self, name: str, ref: str) -> Path:
        """The folder of stage ``name`` whose reference (or key) :meth:`run` returned."""
        return self.root / name / ref.partition("@")[0]

    def run(self, name: str, config: Any, *, compute: Callable[[Path], T],
            save: Callable[[T, Path], None], load: Callable[[Path], T],
            inputs: tuple[str, ...] = (), version: int = 1,
            log: StageLog | None = None) -> tuple[T, str]:
        """Return ``(output, ref)`` of stage ``name``: cached if finished, else computed.

        ``compute(work_dir)`` may write resumable state into ``work_dir``; ``save(out, dir)``
        writes the output's files; ``load(dir)`` reads them back. ``inputs`` names what the
        stage read: upstream stages' references and datasets' content hashes. ``ref`` is
        ``<key>@<content>`` (see the module's docstring): pass it on as a downstream input.
        """
        key = self.key(name, config, inputs, version)
        final = self.root / name / key
        final.parent.mkdir(parents=True, exist_ok=True)
        stamp = {"name": name, "code_version": VERSION, "stage_version": version,
                 "inputs": list(inputs)}
        with FileLock(str(self.root / name / f"{key}.lock")):
            if (final / "done.json").exists():
                meta = _verified(final, name=name, key=key)
                if meta is not None:
                    if any(meta.get(k) != v for k, v in stamp.items()):  # an older done.json
                        _write_done(final, {**meta, **stamp})
                    out = load(final)
                    if log is not None:
                        log.entries.append({"name": name, "key": key,
                                            "seconds": meta["seconds"], "cached": True})
                    return out, f"{key}@{content_id(meta['files'])}"
            out, meta = self._compute(final, config, stamp, compute=compute, save=save)
        if log is not None:
            log.entries.append({"name": name, "key": key, "seconds": meta["seconds"],
                                "cached": False})
        return out, f"{key}@{content_id(meta['files'])}"

    def _compute(self, final: Path, config: Any, stamp: dict[str, Any], *,
                 compute: Callable[[Path], T], save: Callable[[T, Path], None]
                 ) -> tuple[T, dict[str, Any]]:
        """Compute into ``<key>.partial`` (kept across interruptions), then publish it;
        returns the output and its ``done.json``."""
        work = final.with_name(f"{final.name}.partial")
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        out = compute(work)
        seconds = time.perf_counter() - t0
        save(out, work)
        atomic_write_bytes(work / "config.json",
                           json.dumps(to_plain(config), indent=2, sort_keys=True).encode())
        meta = {"seconds": seconds, "files": _hashes(work), **stamp}
        _write_done(work, meta)
        if final.exists():  # a corrupted result, reported by _verified: replaced
            shutil.rmtree(final)
        work.rename(final)
        return out, meta


def content_id(files: dict[str, str]) -> str:
    """A stage's content hash: the hash of its files' sha256 (``done.json``'s ``files``)."""
    return stable_hash(files)


def _write_done(folder: Path, meta: dict[str, Any]) -> None:
    atomic_write_bytes(folder / "done.json",
                       json.dumps(meta, indent=1, sort_keys=True).encode())


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except ``done.json``, by relative path."""
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != "done.json":
            out[f.relative_to(folder).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def verify_stage(folder: Path) -> list[str]:
    """What is wrong with the finished stage ``folder`` (``<root>/<stage>/<key>``): one line per
    problem (a changed, missing or unlisted file, or an unreadable ``done.json``); empty if every
    file matches the sha256 its ``done.json`` lists."""
    return _checked(folder)[1]


def _checked(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """(``done.json`` or None if unreadable, problems) of the finished stage ``folder``."""
    try:
        meta: dict[str, Any] = json.loads((folder / "done.json").read_text())
        expected = dict(meta["files"])
        float(meta["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, ["its done.json is unreadable or predates content hashes"]
    found = _hashes(folder)
    return meta, [f"{f} {_file_problem(f, expected, found)}"
                  for f in sorted(expected.keys() | found.keys())
                  if expected.get(f) != found.get(f)]


def _file_problem(f: str, expected: dict[str, str], found: dict[str, str]) -> str:
    """What is wrong with file ``f`` whose hash on disk differs from the one listed."""
    if f not in expected:
        return "was not written by the stage"
    return "is missing" if f not in found else "changed since it was written"


def _verified(final: Path, *, name: str, key: str) -> dict[str, Any] | None:
    """``done.json`` of a finished stage if every file it lists is intact, else None (with a
    warning that names the stage, the files and what happens next)."""
    meta, problems = _checked(final)
    if meta is not None and not problems:
        return meta
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    warnings.warn(f"stage cache: {name}/{key} ({final}): {'; '.join(problems[:5])}{more}; "
                  "recomputing it instead of serving it", stacklevel=3)
    return None


@dataclass(frozen=True)
class CacheReport:
    """What :func:`verify_cache` or :func:`verify_data_cache` found: ``bad`` maps each broken
    entry (``stage/key``, or a data file's relative path) to its problems."""

    what: str
    verified: int
    bad: dict[str, list[str]]
    unfinished: tuple[str, ...] = ()

    def summary(self) -> str:
        tail = f", {len(self.unfinished)} unfinished (.partial)" if self.what == "stages" else ""
        return f"{self.verified} {self.what} verified, {len(self.bad)} bad{tail}"


def verify_cache(root: Path) -> CacheReport:
    """Check every finished stage ``<root>/<stage>/<key>/`` with :func:`verify_stage`;
    ``<key>.partial`` folders (interrupted or running stages) are counted, not checked."""
    bad: dict[str, list[str]] = {}
    verified, unfinished = 0, []
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        entry = f"{folder.parent.name}/{folder.name}"
        if folder.name.endswith(".partial"):
            unfinished.append(entry)
        elif problems := verify_stage(folder):
            bad[entry] = problems
        else:
            verified += 1
    return CacheReport("stages", verified, bad, tuple(unfinished))


def verify_data_cache(root: Path) -> CacheReport:
    """Check every dataset cache file ``<root>/**/*.safetensors`` against its ``<file>.sha256``
    (:func:`eisbench.data.cache.read_verified`)."""
    from eisbench.data.cache import read_verified
    from eisbench.data.core import DataError

    bad: dict[str, list[str]] = {}
    verified = 0
    for path in sorted(root.rglob("*.safetensors")):
        try:
            read_verified(path)
        except DataError as e:
            bad[path.relative_to(root).as_posix()] = [str(e)]
        else:
            verified += 1
    return CacheReport("data files", verified, bad)


@dataclass(frozen=True)
class GcReport:
    """What :func:`collect_garbage` removed (or would remove): each entry with its reason, the
    bytes it held, and the interrupted stages it kept (their resume state)."""

    removed: dict[str, str]
    freed_bytes: int
    kept: int
    interrupted: tuple[str, ...]

    def summary(self, *, dry_run: bool = False) -> str:
        verb = "would remove" if dry_run else "removed"
        return (f"{verb} {len(self.removed)} stages ({self.freed_bytes / 2**20:.1f} MiB), "
                f"kept {self.kept}, {len(self.interrupted)} interrupted (.partial) kept: "
                "rerun to resume them, or delete them by hand")


def collect_garbage(root: Path, *, dry_run: bool = False) -> GcReport:
    """Remove the finished stages under ``root`` that no run of this code can reach again.

    Unreachable: a stage written by another code version (its key holds the version), one that
    fails :func:`verify_stage` (it would be recomputed, never served), one whose ``done.json``
    does not say what it read, and one whose upstream stage is gone or now holds other content
    (its inputs name ``<key>@<content>`` references; see :class:`Store`), transitively. Kept:
    everything else, and every ``.partial`` folder (an interrupted stage's resume state).
    Each removal takes the stage's lock, so a running stage is never removed under it.
    """
    stages = {f"{p.parent.name}/{p.name}": p for p in sorted(root.glob("*/*"))
              if p.is_dir() and not p.name.endswith(".partial")}
    metas, removed = {}, {}
    for entry, folder in stages.items():
        meta, problems = _checked(folder)
        if meta is None or problems:
            removed[entry] = "fails verification: " + "; ".join(problems)[:200]
        elif "code_version" not in meta:
            removed[entry] = "written by an older eisbench (its done.json has no provenance)"
        elif meta["code_version"] != VERSION:
            removed[entry] = f"written by eisbench {meta['code_version']}"
        else:
            metas[entry] = meta
    alive = {f"{e.partition('/')[2]}@{content_id(m['files'])}" for e, m in metas.items()}
    changed = True
    while changed:  # drop stages whose upstream is gone, until nothing changes
        changed = False
        for entry, meta in list(metas.items()):
            lost = [i for i in meta["inputs"] if "@" in i and i not in alive]
            if lost:
                removed[entry] = f"its input {lost[0]} is gone or changed"
                alive.discard(f"{entry.partition('/')[2]}@{content_id(meta['files'])}")
                del metas[entry]
                changed = True
    freed = sum(f.stat().st_size for e in removed for f in stages[e].rglob("*") if f.is_file())
    if not dry_run:
        for entry in removed:
            folder = stages[entry]
            with FileLock(str(folder.with_name(f"{folder.name}.lock"))):
                shutil.rmtree(folder, ignore_errors=True)
    interrupted = tuple(f"{p.parent.name}/{p.name}" for p in sorted(root.glob("*/*.partial")))
    return GcReport(removed, freed, len(metas), interrupted)
