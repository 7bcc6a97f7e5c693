"""One CreateVersion in progress: checks, hashes and keeps the received bytes as they arrive.

The data goes straight to where it will live (memory chunks for a transient version, a temporary
file for an archived one), so an upload never holds the data twice. Hashing and disk writes of
large chunks run in a worker thread (hashlib releases the GIL), keeping the event loop free.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from apprentice.services.model_registry.errors import InvalidRequest

# Below this, hashing in place is cheaper than a hop to a worker thread.
_THREAD_THRESHOLD = 64 * 1024


def data_hash(digest: bytes) -> str:
    """The registry's hash format: standard padded base64 of the raw SHA-256 digest."""
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class NewVersion:
    """What the client declares in the CreateVersion header."""

    model_id: str
    archived: bool
    data_size: int
    data_hash: str = ""  # empty: not checked
    creation_timestamp: int = 0  # 0: now
    user_data: Mapping[str, str] = field(default_factory=dict)


class Sink(Protocol):
    on_disk: bool

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def discard(self) -> None: ...


class MemorySink:
    """Keeps the uploaded chunks as they are: joining them would copy the whole version."""

    on_disk = False

    def __init__(self) -> None:
        self.segments: list[bytes] = []

    def write(self, data: bytes) -> None:
        if data:
            self.segments.append(data)

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        self.segments.clear()


class Upload:
    def __init__(self, request: NewVersion, sink: Sink) -> None:
        self.request = request
        self.sink = sink
        self.received = 0
        self.data_hash = ""
        self._hasher = hashlib.sha256()

    async def write(self, data: bytes) -> None:
        expected = self.request.data_size
        if self.received + len(data) > expected:
            raise InvalidRequest(
                f"Received more data than the {expected} bytes announced in the header "
                f"(data_size) for model {self.request.model_id!r}, already {self.received + len(data)}. "
                "Set data_size to the exact length of the data."
            )
        self.received += len(data)
        if self.sink.on_disk or len(data) >= _THREAD_THRESHOLD:
            await asyncio.to_thread(self._consume, data)
        else:
            self._consume(data)

    async def finish(self) -> None:
        """Check the size and hash, then make the data durable; raises InvalidRequest on mismatch."""
        expected = self.request.data_size
        if self.received != expected:
            raise InvalidRequest(
                f"The stream ended after {self.received} bytes of data for model {self.request.model_id!r} "
                f"but the header announced {expected} (data_size). Send all the data, "
                "or set data_size to its exact length."
            )
        self.data_hash = data_hash(self._hasher.digest())
        if self.request.data_hash and self.request.data_hash != self.data_hash:
            raise InvalidRequest(
                f"The data received for model {self.request.model_id!r} does not match the header's data_hash: "
                f"expected {self.request.data_hash!r}, computed {self.data_hash!r} (base64 of the SHA-256 "
                "of the data). Send the base64-encoded SHA-256 digest, or leave data_hash empty."
            )
        await asyncio.to_thread(self.sink.finish)

    def discard(self) -> None:
        """Drop what was received (failed or cancelled upload). Never raises."""
        try:
            self.sink.discard()
        except OSError:
            pass

    def _consume(self, data: bytes) -> None:
        self._hasher.update(data)
        self.sink.write(data)
