"""Bad requests get a clear status and a quiet log, on every gRPC port Apprentice serves.

gRPC deserializes every request before (unary) or while (streaming) the servicer method runs; a
``DecodeError`` there becomes UNKNOWN with a full traceback in the log, once per call. The same
happens with any exception a method lets out, e.g. the SDK's environment and actor servicers
(``apprentice.components``) on a RunTrial call without its ``trial-id`` metadata. This server
interceptor is the one place where that is handled, for the services and the components alike:

- a request whose bytes are not the method's message: INVALID_ARGUMENT naming the message type;
- a trial stream (``TRIAL_STREAMS``) without ``trial-id`` metadata: INVALID_ARGUMENT;
- any other exception out of a method: INTERNAL;

and the log gets at most one line per method and kind of error per ``LOG_INTERVAL`` (the first
unexpected exception of a kind with its traceback, for whoever has to fix it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)

LOG_INTERVAL = 60.0  # seconds: at most one log line per kind of bad request in this time
TRIAL_ID_METADATA = "trial-id"
REQUEST_DRAIN_SECONDS = 1.0  # how long a refused stream waits for the client's first message
# The streams that serve one trial, named by the metadata key above (the protocol notes, §4).
TRIAL_STREAMS = frozenset(
    {
        "/cogmentAPI.ServiceActorSP/RunTrial",
        "/cogmentAPI.EnvironmentSP/RunTrial",
        "/cogmentAPI.DatalogSP/RunTrialDatalog",
    }
)


class RateLimitedLog:
    """At most one warning per kind of problem per ``interval``; the next one says how many were left out."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._quiet_until: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def warning(self, kind: Hashable, message: str, exc_info: BaseException | None = None) -> None:
        now = self._clock()
        if now < self._quiet_until.get(kind, float("-inf")):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" ({suppressed} more like it since the last such line, not logged)"
        self._quiet_until[kind] = now + self._interval
        self._logger.warning("%s", message, exc_info=exc_info)


class UndecodableRequest(DecodeError):
    """The bytes of a request are not a valid ``message_type``."""

    def __init__(self, message_type: str, error: Exception) -> None:
        super().__init__(f"the request is not a valid {message_type} ({error})")
        self.message_type = message_type


@dataclass(frozen=True)
class _Undecodable:
    """What a unary method receives instead of its request when the bytes could not be decoded."""

    error: UndecodableRequest


class RejectBadRequests(grpc.aio.ServerInterceptor):
    """Server interceptor: bad requests and failed methods end with a status, logged with a rate limit."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._log = RateLimitedLog(log, interval)
        # Handlers come from the servicers' generic handlers, one object per method: wrap each once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        if method in TRIAL_STREAMS and not any(key == TRIAL_ID_METADATA for key, _ in handler_call_details.invocation_metadata or ()):
            return self._missing_trial_id(method, handler)
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(method, handler))
        return cached[1]

    def _missing_trial_id(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        async def reject(requests, context: grpc.aio.ServicerContext) -> None:
            self._log.warning((method, TRIAL_ID_METADATA), f"Refused a call of {method}: no {TRIAL_ID_METADATA!r} metadata")
            # Read what the client sent first: a call refused while the client still writes ends,
            # on the client's side, with INTERNAL instead of the status below.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(aiter(requests)), REQUEST_DRAIN_SECONDS)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method} serves one trial: give its id in the {TRIAL_ID_METADATA!r} metadata")

        return grpc.stream_stream_rpc_method_handler(
            reject, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def _wrap(self, method: str, handler) -> grpc.RpcMethodHandler:
        deserialize = handler.request_deserializer
        message_type = _message_type(deserialize)

        def decode(data: bytes) -> Any:
            try:
                return deserialize(data)
            except Exception as error:  # noqa: BLE001 - whatever the parser raises, the bytes are bad
                undecodable = UndecodableRequest(message_type, error)
                if handler.request_streaming:
                    raise undecodable from None  # raised where the method reads the stream
                return _Undecodable(undecodable)  # unary: decoded before the method runs

        async def reject(context: grpc.aio.ServicerContext, error: UndecodableRequest) -> None:
            self._log.warning((method, type(error)), f"Refused a call of {method}: {error}")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{error}: send messages built with the protos of the cogment SDK (cogment.api)",
            )

        async def fail(context: grpc.aio.ServicerContext, error: Exception) -> None:
            self._log.warning((method, type(error)), f"A call of {method} failed: {type(error).__name__}: {error}", exc_info=error)
            await context.abort(grpc.StatusCode.INTERNAL, f"{method} failed ({type(error).__name__}); the server's log says more")

        field = _behavior_field(handler)
        behavior = getattr(handler, field)
        if not (inspect.isasyncgenfunction(behavior) or inspect.iscoroutinefunction(behavior)):
            return handler  # a synchronous method: not one of ours, left as gRPC runs it
        async def ended_by(context: grpc.aio.ServicerContext, error: Exception) -> None:
            """The status of a call that ``error`` ended."""
            if isinstance(error, grpc.aio.AbortError):
                raise error  # the method ended the call with a status of its own
            if isinstance(error, UndecodableRequest):
                await reject(context, error)
            await fail(context, error)

        if inspect.isasyncgenfunction(behavior):

            async def guarded(request, context):
                if isinstance(request, _Undecodable):
                    await reject(context, request.error)
                try:
                    async for reply in behavior(request, context):
                        yield reply
                except Exception as error:  # noqa: BLE001 - every failure ends with a status, logged once per kind
                    await ended_by(context, error)

        else:

            async def guarded(request, context):
                if isinstance(request, _Undecodable):
                    await reject(context, request.error)
                try:
                    return await behavior(request, context)
                except Exception as error:  # noqa: BLE001 - every failure ends with a status, logged once per kind
                    await ended_by(context, error)

        return handler._replace(request_deserializer=decode, **{field: guarded})


def _behavior_field(handler) -> str:
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"


def _message_type(deserialize: Callable[[bytes], Any]) -> str:
    """``cogmentAPI.TrialStartRequest`` for ``TrialStartRequest.FromString``."""
    message_class = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request message"
