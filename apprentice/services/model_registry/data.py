"""Where the bytes of a version live, and how they are read back in chunks.

Transient versions keep the chunks they were uploaded with (no join: one copy of the data in
memory); archived versions are a file read chunk by chunk in a worker thread, so a 50 MB version
never sits in memory whole and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from apprentice.services.model_registry.errors import RegistryError, UnknownVersion


class VersionData(Protocol):
    size: int

    def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        """The data in order, in pieces of at most ``chunk_size`` bytes (nothing for empty data)."""
        ...


class DamagedData(RegistryError):
    """An archived data file does not hold what its metadata promises (answered as INTERNAL)."""


@dataclass(frozen=True, slots=True)
class MemoryData:
    segments: tuple[bytes, ...]
    size: int

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        for piece in rechunk(self.segments, chunk_size):
            yield piece


@dataclass(frozen=True, slots=True)
class FileData:
    path: str  # not a Path: one is kept per archived version, and a Path costs several times more
    size: int

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        # Once open, the file stays readable even if its model is deleted (renamed away) meanwhile.
        try:
            file = await asyncio.to_thread(open, self.path, "rb")
        except FileNotFoundError:
            raise UnknownVersion(f"This version was deleted (with its model) just before it was read: {self.path}") from None
        try:
            sent = 0
            while piece := await asyncio.to_thread(file.read, chunk_size):
                sent += len(piece)
                if sent > self.size:
                    break
                yield piece
            if sent != self.size:
                raise DamagedData(
                    f"{self.path} holds {'more' if sent > self.size else 'fewer'} bytes than the "
                    f"{self.size} recorded in its metadata; the archive is damaged, store the version again"
                )
        finally:
            file.close()


def rechunk(segments: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    """Cut and glue ``segments`` into pieces of exactly ``chunk_size`` bytes (the last one shorter).

    Segments that already have the right size (what the SDK uploads) are passed on without a copy;
    a client that uploaded tiny chunks still gets few large messages back.
    """
    pending = bytearray()
    for segment in segments:
        if not pending and len(segment) == chunk_size:
            yield segment
            continue
        view = memoryview(segment)
        if pending:
            taken = min(chunk_size - len(pending), len(view))
            pending += view[:taken]
            view = view[taken:]
            if len(pending) < chunk_size:
                continue
            yield bytes(pending)
            pending.clear()
        while len(view) >= chunk_size:
            yield bytes(view[:chunk_size])
            view = view[chunk_size:]
        pending += view
    if pending:
        yield bytes(pending)
