"""Where a run's independent units of work run: in this process, one after another
(:class:`Serial`, the default), or as Ray tasks (:class:`RayExecutor`, the optional extra
``ray``).

An executor has one verb, ``map(fn, items, ...) -> list``: ``fn`` is a plain picklable function
of one item, the results come back in the order of ``items``, and ``on_done(i, result)`` is
called in this process as each unit finishes (in the order they finish), for progress lines.
``on_error(i, error)``, if given, stands in for the result of a unit that did not return (its
worker died, or ``fn`` raised), so the others' results are kept; without it the error is
raised.
Every unit runs with this process's torch intra-op thread count (``torch.get_num_threads()``
when ``map`` is called; :func:`threads` sets it for a block): the floating-point sums of a
training step depend on it, so a Ray run's record equals the serial run's at equal threads, and
only then. A Ray task declares that many CPUs (at most a node's), so on a 2-core machine a
2-thread run takes its tasks one at a time; ``threads(1)`` (``--threads 1``) runs two at once,
and its records equal a serial ``--threads 1`` run's.
Units share the stage cache (:class:`~eisbench.runs.store.Store`) through its folder: every
worker must see that path. Two units that need the same stage take its lock in turn, and the
second reuses what the first wrote.

A run picks its executor with :func:`using`; code with independent units asks :func:`current`,
or calls :func:`prefetch` (units computed as tasks into the stage cache, which the caller's own
loop then loads, so its record is the serial one) or :func:`prefetch_seeds` (an experiment's
seeds that way).

Example:
    >>> with using(Serial()):
    ...     current().map(abs, [-1, 2, -3])
    [1, 2, 3]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from eisbench.core.progress import say
from eisbench.runs.store import Store

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("serial", "ray")
MISSING_RAY = ("the Ray executor needs the optional extra ray: pip install -e '.[ray]' "
               "-c constraints.txt (or run with --executor serial)")
_PASSED_ENV = ("EISBENCH_HOME",)  # what a worker must share with this process


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, num_gpus: float = 0.0,
            on_done: Callable[[int, R], None] | None = None,
            on_error: Callable[[int, BaseException], R] | None = None) -> list[R]: ...

    def describe(self) -> str: ...


class Serial:
    """Every unit in this process, one after another."""

    name = "serial"

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, num_gpus: float = 0.0,
            on_done: Callable[[int, R], None] | None = None,
            on_error: Callable[[int, BaseException], R] | None = None) -> list[R]:
        out = []
        for i, item in enumerate(items):
            try:
                out.append(fn(item))
            except Exception as e:
                if on_error is None:
                    raise
                out.append(on_error(i, e))
            if on_done is not None:
                on_done(i, out[-1])
        return out

    def describe(self) -> str:
        return f"serial, {_threads_text(torch.get_num_threads())}"


class RayExecutor:
    """Every unit a Ray task with this process's torch thread count, declaring that many CPUs
    (at most the largest node's) and ``num_gpus`` GPUs.

    ``address``: the Ray cluster to join (``"auto"``, ``"HOST:PORT"``); None starts a local
    instance with ``num_cpus`` CPUs (default: all), unless this process already joined one
    (``ray.init`` called before). Workers get this process's ``$EISBENCH_HOME``.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address, self.num_cpus = address, num_cpus
        _ray()  # a missing extra fails before any work

    def _init(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address or "local",  # None: never a `ray start` cluster
                     num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, configure_logging=False)
        return ray

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, num_gpus: float = 0.0,
            on_done: Callable[[int, R], None] | None = None,
            on_error: Callable[[int, BaseException], R] | None = None) -> list[R]:
        ray = self._init()
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        n = torch.get_num_threads()
        task = ray.remote(num_cpus=min(n, self._node_cpus(ray)), num_gpus=num_gpus,
                          max_retries=0)(_call)
        refs = [task.remote(fn, env, n, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        out: dict[int, R] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = index[ready[0]]
            try:
                out[i] = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # fn raised, or its worker died
                if on_error is None:
                    raise
                out[i] = on_error(i, e)
            if on_done is not None:
                on_done(i, out[i])
        return [out[i] for i in range(len(items))]

    @staticmethod
    def _node_cpus(ray: Any) -> int:
        """The CPUs of the largest live node (a task asking for more would never start)."""
        cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        return max(1, int(max(cpus, default=1)))

    def describe(self) -> str:
        cpus = self._init().cluster_resources().get("CPU")
        where = f"ray ({int(cpus)} CPUs)" if cpus else "ray"
        return f"{where}, {_threads_text(torch.get_num_threads())} per task"


def _threads_text(n: int) -> str:
    return f"{n} torch thread{'s' if n != 1 else ''}"


def _call(fn: Callable[[T], R], env: dict[str, str], n_threads: int, item: T) -> R:
    """Run ``fn(item)`` in a worker with this process's ``env`` (what :class:`Store` and the
    data cache read) and torch thread count (what the sums depend on)."""
    os.environ.update(env)
    torch.set_num_threads(n_threads)
    return fn(item)


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Run the block (and every unit it maps) on ``n`` torch intra-op threads; None keeps the
    current count. Yields the count in force.

    Example:
        >>> with threads(1) as n:
        ...     n
        1
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def prefetch(fn: Callable[[T], Any], units: Sequence[T], *, what: str,
             num_gpus: float = 0.0) -> None:
    """Under a parallel executor (:func:`current` not serial), run ``fn`` on every unit as an
    independent task whose results land in the shared stage cache; the caller's own loop then
    loads them, so its results are the serial run's (at equal threads). A unit that raises,
    or whose worker dies, is left to that loop, which meets the error and handles it as a
    serial run does. Serially nothing happens. ``what`` names the units in the progress line.

    Example:
        >>> prefetch(print, [1, 2], what="numbers")  # serial: nothing runs
    """
    ex = current()
    if ex.name == "serial" or not units:
        return
    say(f"{what}: {len(units)} tasks on {ex.describe()}")
    ex.map(fn, units, num_gpus=num_gpus, on_error=lambda i, e: None)


C = TypeVar("C")


def prefetch_seeds(per_seed: Callable[[C, Store, int], Any], cfg: C, store: Store,
                   seeds: Sequence[int], *, device: str | torch.device) -> None:
    """:func:`prefetch` for an experiment whose seeds are independent: under a parallel
    executor, ``per_seed(cfg, store, seed)`` runs for every seed as a task (with a
    :class:`~eisbench.runs.store.Store` on ``store.root``, which every worker must see),
    computing that seed's cached stages; the experiment's own loop over ``seeds`` then loads
    them. ``per_seed`` must be a module-level function (a task finds it by its name) and
    should do only the seed's cached work: whatever it computes outside the cache is done
    twice. A unit on a ``cuda`` ``device`` declares one GPU. Serially nothing happens.

    Example:
        >>> prefetch_seeds(print, None, Store(Path("cache")), [0, 1], device="cpu")  # serial
    """
    prefetch(_seed_task, [(per_seed, cfg, store.root, seed) for seed in seeds], what="seeds",
             num_gpus=gpus_for(str(device)))


def _seed_task(unit: tuple[Callable[[Any, Store, int], Any], Any, Path, int]) -> None:
    """One seed computed into the shared stage cache (a task of :func:`prefetch_seeds`)."""
    per_seed, cfg, root, seed = unit
    per_seed(cfg, Store(root), seed)


VARYING = frozenset({"created", "wall_seconds", "seconds", "timing_seconds", "timing",
                     "stage_seconds", "cached", "peak_rss_gib", "git", "executor"})
"""Record fields that may differ between two runs of one config: timings, memory use, the
executor and the git state (a shared checkout may be edited between the runs)."""


def steady(obj: Any) -> Any:
    """A record (or any part of one) without the :data:`VARYING` fields, at every depth: what
    a serial and a Ray run of one config must share.

    Example:
        >>> steady({"metrics": {"acc": 0.9}, "wall_seconds": 3.0, "stages": [{"cached": True}]})
        {'metrics': {'acc': 0.9}, 'stages': [{}]}
    """
    if isinstance(obj, dict):
        return {k: steady(v) for k, v in obj.items() if k not in VARYING}
    if isinstance(obj, list):
        return [steady(v) for v in obj]
    return obj


class MissingRayError(ImportError, RuntimeError):
    """The optional extra ``ray`` is not installed (a RuntimeError too, so the command line
    prints it as an error, not a traceback)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise MissingRayError(MISSING_RAY) from e
    return ray


def executor(name: str = "serial", *, address: str | None = None) -> Executor:
    """The executor ``name`` (one of :data:`EXECUTORS`); ``address`` is for ``ray`` only."""
    if name == "serial":
        if address is not None:
            raise ValueError("address= is for executor='ray' (a Ray cluster), not 'serial'")
        return Serial()
    if name == "ray":
        return RayExecutor(address=address)
    raise ValueError(f"unknown executor {name!r}: expected one of {', '.join(EXECUTORS)}")


def gpus_for(device: str) -> float:
    """The GPUs a unit on ``device`` declares: one for ``cuda``/``cuda:N``, else none."""
    return 1.0 if str(device).startswith("cuda") else 0.0


_CURRENT: ContextVar[Executor | None] = ContextVar("eisbench_executor", default=None)


def current() -> Executor:
    """The executor of the run in progress (:class:`Serial` outside :func:`using`)."""
    return _CURRENT.get() or Serial()


@contextmanager
def using(ex: Executor) -> Iterator[Executor]:
    """Run the block's independent units with ``ex``."""
    token = _CURRENT.set(ex)
    try:
        yield ex
    finally:
        _CURRENT.reset(token)


__all__ = ["EXECUTORS", "Executor", "MissingRayError", "RayExecutor", "Serial", "current",
           "executor", "gpus_for", "prefetch", "prefetch_seeds", "steady",
           "threads", "using"]
