"""One bidirectional gRPC stream between the orchestrator and a component.

The same class wraps both directions of connection: a call that the orchestrator opened (to an
environment, a service actor or a datalog) and a call that a client actor opened to the orchestrator.
Both expose ``read()`` and ``write()``; gRPC allows one write in flight at a time, so every outgoing
message goes through a single writer task. ``send()`` never blocks the trial: a slow component
delays only its own messages, never the tick of the others.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol

import grpc

log = logging.getLogger(__name__)


class BidiStream(Protocol):
    """What grpc.aio's StreamStreamCall and ServicerContext have in common."""

    async def read(self) -> Any: ...

    async def write(self, message: Any) -> None: ...


class StreamClosed(Exception):
    """The component closed the stream or the connection failed."""


class Connection:
    """Ordered, non-blocking sends and an optional reader loop over a ``BidiStream``."""

    def __init__(self, stream: BidiStream, description: str) -> None:
        self.stream = stream
        self.description = description
        self.closed = False
        self._outbox: collections.deque[Any] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._half_close_after_outbox = False
        self._finishing = False
        self._writer = asyncio.create_task(self._write_loop(), name=f"write {description}")
        self._reader: asyncio.Task | None = None

    # -- outgoing ---------------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        if self.closed:
            return
        self._outbox.append(message)
        self._outbox_ready.set()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._outbox_ready.wait()
                self._outbox_ready.clear()
                while self._outbox:
                    await self.stream.write(self._outbox.popleft())
                if self._half_close_after_outbox:
                    done_writing = getattr(self.stream, "done_writing", None)
                    if done_writing is not None:
                        await done_writing()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any transport failure means the same thing here
            # The reader sees the same failure and reports it; nothing more can be sent.
            log.debug("Writing to %s failed: %s", self.description, _describe(error))
            self._outbox.clear()

    async def finish(self, timeout: float = 5.0) -> None:
        """Send what is queued, half-close, let the other side return its status, then stop.

        A component that does not finish within ``timeout`` has its call cancelled.
        """
        if self.closed or self._finishing:
            return
        self._finishing = True
        self._half_close_after_outbox = True
        self._outbox_ready.set()
        try:
            await asyncio.wait_for(self._wait_until_done(), timeout)
        except (TimeoutError, Exception):  # noqa: BLE001 - whatever happened, the stream is over
            pass
        self.abort()

    async def _wait_until_done(self) -> None:
        await asyncio.shield(self._writer)
        if isinstance(self.stream, grpc.aio.Call):
            await self.stream.code()

    def abort(self) -> None:
        """Stop at once: drop what is queued, stop reading and writing, cancel a client call."""
        if self.closed:
            return
        self.closed = True
        self._writer.cancel()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        cancel = getattr(self.stream, "cancel", None)
        # Only cancel a call that is still open; a finished call keeps its OK status.
        if cancel is not None and isinstance(self.stream, grpc.aio.Call) and not self.stream.done():
            cancel()

    # -- incoming ---------------------------------------------------------------------------------

    async def receive(self) -> Any:
        """The next message; raises StreamClosed at the end of the stream or on failure."""
        try:
            message = await self.stream.read()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise StreamClosed(f"{self.description}: {_describe(error)}") from error
        if message is grpc.aio.EOF:
            raise StreamClosed(f"{self.description} closed its stream")
        return message

    def start_reading(self, on_message: Callable[[Any], None], on_closed: Callable[[str], None]) -> None:
        """Feed every incoming message, in order, to ``on_message``; then ``on_closed(reason)`` once."""

        async def read_loop() -> None:
            try:
                while True:
                    on_message(await self.receive())
            except StreamClosed as closed:
                if not self.closed and not self._finishing:
                    on_closed(str(closed))

        self._reader = asyncio.create_task(read_loop(), name=f"read {self.description}")


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"
