"""The orchestrator's gRPC channels to components, shared by trials and closed once unused."""

from __future__ import annotations

import asyncio
import time

import grpc

# A channel no trial has used for this long is closed. Trials that follow each other on the same
# components reuse its connection; endpoints that come and go (or never existed) leave nothing.
CHANNEL_IDLE_SECONDS = 30.0


class GrpcChannels:
    """One channel per target, shared by every trial, so trials reuse open connections.

    Trials ``acquire`` a channel and ``release`` it when they end; ``close_idle`` (called by the
    orchestrator's maintenance) closes those nobody used for ``idle_seconds``.

    A channel whose target went away (a crashed component) is replaced by a fresh one: the old
    one waits out gRPC's growing reconnect backoff, and every call made meanwhile fails at once,
    even after the component is back on its port.
    """

    def __init__(self, options: list[tuple[str, int]], idle_seconds: float = CHANNEL_IDLE_SECONDS) -> None:
        # Each channel keeps its own connection: from gRPC's process-wide pool, a fresh channel
        # would inherit the old one's backoff.
        self._options = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self._idle_seconds = idle_seconds
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._users: dict[str, int] = {}  # trials holding each target
        self._unused_since: dict[str, float] = {}  # targets nobody holds, since when (monotonic)
        self._closing: set[asyncio.Task] = set()

    def __len__(self) -> int:
        """How many channels are open."""
        return len(self._channels)

    def acquire(self, target: str) -> grpc.aio.Channel:
        """The channel to ``target``; the caller must ``release(target)`` once done with it."""
        self._users[target] = self._users.get(target, 0) + 1
        self._unused_since.pop(target, None)
        channel = self._channels.get(target)
        if channel is not None and channel.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            self._close_later(channel)  # no call lives on it: it has no connection
            channel = None
        if channel is None:
            channel = grpc.aio.insecure_channel(target, options=self._options)
            self._channels[target] = channel
        return channel

    def release(self, target: str) -> None:
        users = self._users.get(target, 0) - 1
        if users > 0:
            self._users[target] = users
            return
        self._users.pop(target, None)
        self._unused_since[target] = time.monotonic()

    def close_idle(self) -> None:
        """Close the channels nobody has held for ``idle_seconds``."""
        now = time.monotonic()
        for target, since in list(self._unused_since.items()):
            if now - since >= self._idle_seconds:
                del self._unused_since[target]
                channel = self._channels.pop(target, None)
                if channel is not None:
                    self._close_later(channel)

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        closing = asyncio.create_task(channel.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        await asyncio.gather(*self._closing)
