"""Reading untrusted (often decompressed) streams with a hard cap on the bytes they may yield.

A 3 MB gzip file can inflate to gigabytes; :class:`BoundedReader` wraps a stream and raises
:class:`DataError` as soon as a read would take the total past ``limit``, before asking the
stream for those bytes, so memory stays bounded by the limit.

Example:
    >>> import io
    >>> r = BoundedReader(io.BytesIO(b"abcdef"), limit=4, source="x", setting="LIMIT")
    >>> r.read(3)
    b'abc'
    >>> r.read(3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eisbench.data.core.DataError: x: needs more than 4 bytes ...
"""

from __future__ import annotations

from typing import Protocol

from eisbench.data.core import DataError


class Readable(Protocol):
    """A binary stream with ``read`` and ``readline`` (what ``pickle.Unpickler`` needs)."""

    def read(self, n: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


class BoundedReader:
    """``stream`` that yields at most ``limit`` bytes in total, then raises :class:`DataError`.

    ``source`` names the file in messages; ``setting`` names the constant that sets the limit.
    """

    def __init__(self, stream: Readable, *, limit: int, source: str, setting: str) -> None:
        self._stream = stream
        self.limit = limit
        self.consumed = 0
        self._source = source
        self._setting = setting

    def _refuse(self) -> DataError:
        return DataError(
            f"{self._source}: needs more than {self.limit} bytes once decompressed "
            f"({self._setting}); this is not the expected dataset file (it may be a "
            "decompression bomb or corrupt). Delete it and download it again from the official "
            "source"
        )

    def _count(self, data: bytes) -> bytes:
        self.consumed += len(data)
        if self.consumed > self.limit:
            raise self._refuse()
        return data

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (all that is left within the limit when ``n < 0``)."""
        budget = self.limit - self.consumed
        if n is None or n < 0:
            return self._count(self._stream.read(budget + 1))
        if n > budget:
            raise self._refuse()
        return self._count(self._stream.read(n))

    def readline(self, size: int = -1, /) -> bytes:
        """One line, cut at ``size`` bytes and never past the limit."""
        budget = self.limit - self.consumed
        cap = budget + 1 if size is None or size < 0 else min(size, budget + 1)
        return self._count(self._stream.readline(cap))
