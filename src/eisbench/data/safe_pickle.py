"""A restricted unpickler for data files that hold only numpy arrays.

Pickle runs whatever callable the file names, so a plain ``pickle.load`` of a downloaded file
executes code chosen by whoever wrote it. :class:`RestrictedUnpickler` resolves only numpy's array
reconstruction globals (and, on request, ``_codecs.encode``, which Python 3 pickles of ``bytes``
below protocol 3 use, admitted only as ``encode(str, "latin1")`` so that a chain of expanding
codecs cannot inflate a small file); any other global raises ``pickle.UnpicklingError`` before
anything is called. Arrays of Python objects are rejected as well. :func:`check_opcodes` reads
a pickle's opcodes without running them, so that no few-byte file (a huge memo index) makes the
unpickler allocate gigabytes; :func:`safe_loads` runs it first.

Example:
    >>> import io, pickle, numpy as np
    >>> safe_loads(pickle.dumps((np.zeros(3), np.arange(2))))
    (array([0., 0., 0.]), array([0, 1]))
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from eisbench.data.bounded import Readable

ARRAY_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})
"""The globals a pickle of plain numpy arrays (protocol <= 4) needs."""

CODECS_GLOBALS: frozenset[tuple[str, str]] = frozenset({("_codecs", "encode")})
"""Python 3 pickles of byte strings below protocol 3 call ``_codecs.encode(str, "latin1")``."""

_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def check_opcodes(raw: bytes) -> None:
    """Read every opcode of the pickle ``raw`` without running it: a length past the end of the
    data, an unknown opcode or a memo index beyond the opcodes read so far (a pickle any Python
    wrote numbers its memo entries from 0; a huge index makes the unpickler allocate gigabytes)
    raises ``pickle.UnpicklingError``."""
    try:
        for n, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(raw))):
            if op.name in _MEMO_PUTS and not (isinstance(arg, int) and 0 <= arg <= n):
                raise pickle.UnpicklingError(
                    f"memo index {arg} after {n} opcodes: not a pickle any Python wrote (it "
                    "would make the unpickler allocate gigabytes)")
    except (ValueError, TypeError, struct.error) as e:
        raise pickle.UnpicklingError(f"not a readable pickle ({e})") from e


def _latin1_encode(obj: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes call it, and only so."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(
            f"refusing _codecs.encode({type(obj).__name__}, {encoding!r}): a data file may only "
            "use it to store bytes (encode(str, 'latin1'))")
    return codecs.encode(obj, "latin1")


def _reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2 moved numpy.core to numpy._core
        from numpy._core.multiarray import _reconstruct as fn  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn  # type: ignore[attr-defined,no-redef]
    return fn  # type: ignore[no-any-return]


def _resolve(module: str, name: str) -> Any:
    if name == "_reconstruct":
        return _reconstruct()
    if (module, name) == ("numpy", "ndarray"):
        return np.ndarray
    if (module, name) == ("numpy", "dtype"):
        return np.dtype
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    raise pickle.UnpicklingError(f"no resolver for {module}.{name}")  # pragma: no cover


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` admits only the globals in ``allowed``.

    Args:
        file: binary file object positioned at the pickle.
        allowed: subset of ``ARRAY_GLOBALS | CODECS_GLOBALS``.
        encoding: how to decode Python 2 ``str`` objects ("latin1" keeps numpy data intact,
            "bytes" returns them as bytes).
    """

    def __init__(
        self,
        file: Readable,
        *,
        allowed: frozenset[tuple[str, str]] = ARRAY_GLOBALS,
        encoding: str = "latin1",
    ) -> None:
        super().__init__(file, encoding=encoding)
        unknown = allowed - ARRAY_GLOBALS - CODECS_GLOBALS
        if unknown:
            raise ValueError(f"cannot admit {sorted(unknown)}: only numpy array globals")
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: this data file may only contain "
                f"numpy arrays (allowed: {', '.join(sorted('.'.join(g) for g in self._allowed))})."
                " The file is corrupt, in an unexpected format, or malicious; do not open it "
                "with plain pickle"
            )
        return _resolve(module, name)


def _reject_object_arrays(obj: Any) -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise pickle.UnpicklingError("refusing an array of Python objects in a data file")
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _reject_object_arrays(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            _reject_object_arrays(item)


def safe_load(
    file: Readable,
    *,
    allowed: frozenset[tuple[str, str]] = ARRAY_GLOBALS,
    encoding: str = "latin1",
) -> Any:
    """Unpickle ``file`` with :class:`RestrictedUnpickler`; see there for the arguments."""
    obj = RestrictedUnpickler(file, allowed=allowed, encoding=encoding).load()
    _reject_object_arrays(obj)
    return obj


def safe_loads(
    data: bytes,
    *,
    allowed: frozenset[tuple[str, str]] = ARRAY_GLOBALS,
    encoding: str = "latin1",
) -> Any:
    """:func:`safe_load` from bytes, after :func:`check_opcodes`."""
    check_opcodes(data)
    return safe_load(io.BytesIO(data), allowed=allowed, encoding=encoding)
